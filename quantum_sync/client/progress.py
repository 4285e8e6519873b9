"""A progress bar on the terminal while a folder's large reconcile runs (tqdm).

Only for a daemon in the foreground whose stderr is a terminal: the bar is drawn on it
(the log still goes where twistd sends it). The counts are the ones the progress lines
and ``status`` give (:class:`~quantum_sync.client.fullsync.Progress` of a large reconcile
or journal catch-up), read from each folder's service twice a second.
"""

import os

from tqdm import tqdm
from twisted.application.service import Service
from twisted.internet import task

from quantum_sync.client.fullsync import is_large

#: Seconds between two looks at the folders' progress.
EVERY = 0.5


def wants_bars(nodaemon: bool, stream) -> bool:
    """Bars only in the foreground, on a terminal."""
    try:
        return bool(nodaemon) and os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False


class ProgressBars(Service):
    """One tqdm bar per folder whose large reconcile or catch-up is being carried out.

    ``folders``: name → SyncClientService; ``stream``: where the bars are drawn."""

    def __init__(self, reactor, folders: dict, stream):
        self._reactor, self._folders, self._stream = reactor, folders, stream
        self._bars = {}  # name -> (Progress, tqdm)
        self._loop = None

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.update)
        self._loop.clock = self._reactor
        self._loop.start(EVERY, now=False)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for name in list(self._bars):
            self._close(name)

    @property
    def showing(self) -> list:
        """The names of the folders with a bar drawn."""
        return list(self._bars)

    def update(self):
        """Draw every folder's progress (a new bar for a new reconcile, none after it)."""
        for name, service in self._folders.items():
            engine = service.engine
            progress = engine.progress if engine is not None else None
            shown = self._bars.get(name)
            if shown is not None and shown[0] is not progress:
                self._close(name)
                shown = None
            if progress is None or not is_large(progress):
                continue
            if shown is None:
                bar = tqdm(total=progress.files_total, desc=name, unit="file", file=self._stream, dynamic_ncols=True,
                           leave=False, mininterval=0)
                shown = self._bars[name] = (progress, bar)
            bar = shown[1]
            bar.n = progress.files_done
            left = progress.seconds_left
            bar.set_postfix_str(
                f"{progress.bytes_done / 1e6:.1f}/{progress.bytes_total / 1e6:.1f} MB, {progress.rate / 1e6:.1f} MB/s"
                + ("" if left is None else f", {left:.0f} s left"), refresh=False)
            bar.refresh()

    def _close(self, name):
        _, bar = self._bars.pop(name)
        bar.close()
