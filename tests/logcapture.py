"""Capture twisted.logger events in tests: what was logged, and whether anything failed."""

from twisted.logger import formatEvent, globalLogPublisher


class LogCapture:
    """Every log event while installed (``with LogCapture() as log:``)."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def __enter__(self):
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self)

    def text(self) -> str:
        """Every event formatted, plus the repr of each of its own fields (so a secret
        passed as a field but left out of the format string is found too)."""
        parts = []
        for event in self.events:
            parts.append(formatEvent(event))
            parts.extend(repr(v) for k, v in event.items() if not k.startswith("log_"))
        return "\n".join(parts)

    def failures(self) -> list:
        """Events that carry a traceback (``log.failure``, unhandled errors)."""
        return [e for e in self.events if "log_failure" in e]

    def error_messages(self) -> list:
        """Failures and error/critical events, formatted."""
        return [
            formatEvent(e) for e in self.events
            if "log_failure" in e or getattr(e.get("log_level"), "name", "") in ("error", "critical")
        ]
