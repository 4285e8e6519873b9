"""``.syncignore``: gitignore-style exclusion rules (contract section 7).

The file sits at the top of the folder and is synced like any other file; the engine
re-reads it whenever it changes. The state directory is always excluded (it can never
even be named: :func:`quantum_sync.paths.normalize` refuses it).
"""

import pathspec

from quantum_sync.paths import STATE_DIR_NAME

IGNORE_FILE = ".syncignore"


class IgnoreRules:
    """Compiled ``.syncignore`` patterns; :meth:`is_ignored` answers for canonical paths."""

    def __init__(self, text: str = ""):
        self.text = text
        lines = [line for line in text.splitlines() if line.strip()]
        self._spec = pathspec.GitIgnoreSpec.from_lines(lines)

    def is_ignored(self, path: str, is_directory: bool = False) -> bool:
        """True when ``path`` (or one of its parent directories) is excluded.

        ``.syncignore`` itself is never excluded, so the rules travel with the folder.
        """
        if path == IGNORE_FILE:
            return False
        if path == STATE_DIR_NAME or path.startswith(STATE_DIR_NAME + "/"):
            return True
        if not self.text:
            return False
        return spec_matches(self._spec, path, is_directory)

    @classmethod
    def from_file(cls, filename: str) -> "IgnoreRules":
        """Rules read from ``filename``; a missing or unreadable file means no rules."""
        try:
            with open(filename, encoding="utf-8", errors="replace") as f:
                return cls(f.read())
        except OSError:
            return cls("")


def spec_matches(spec, path: str, is_directory: bool = False) -> bool:
    """True when the pathspec ``spec`` matches ``path`` or one of its parent directories."""
    candidate = path + "/" if is_directory else path
    if spec.match_file(candidate):
        return True
    # a pattern naming a directory matches everything below it
    segments = path.split("/")
    return any(spec.match_file("/".join(segments[:i]) + "/") for i in range(1, len(segments)))
