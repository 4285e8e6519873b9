"""Log observers: newline-delimited JSON for log shippers.

``twistd -n --logger=quantum_sync.logs.json_observer quantum-sync ...`` writes one JSON
object per event to stdout (fields included: the access log's method, path, status ...).
"""

import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
)


def json_observer(stream=None, level: LogLevel = LogLevel.info):
    """An observer writing NDJSON to ``stream`` (stdout) for events at ``level`` or above."""
    output = jsonFileLogObserver(stream or sys.stdout, recordSeparator="")
    return FilteringLogObserver(output, [LogLevelFilterPredicate(defaultLogLevel=level)])
