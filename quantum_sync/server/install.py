"""The blocking half of the group commit: a group of uploads checked against the disk
and put in place, in order, with as few journal commits of the file system as can be.

:class:`~quantum_sync.server.operations.FileOperations` gathers the uploads that arrive
while its lock is held and hands each group to :meth:`GroupInstall.install_all`, in its
own thread, under the lock; it then journals and publishes what was installed.
"""

import os

import attrs
from twisted.internet.defer import Deferred

from quantum_sync.errors import SyncError
from quantum_sync.protocol import FileMetadata
from quantum_sync.server.diskdiff import matches, metadata_of
from quantum_sync.server.store import DiskEntry, NamelessTemp, fsync_directory, storage_error


def _ctime_after_install(target: str, temp_stat) -> int:
    """The ctime of the file just linked or renamed to ``target`` (the link or rename
    changed it), or 0 (unknown) when ``target`` is not that file any more."""
    try:
        placed = os.lstat(target)
    except OSError:
        return 0
    return placed.st_ctime_ns if placed.st_ino == temp_stat.st_ino else 0


def _goes_on(result) -> bool:
    """True when a first-pass result of :meth:`GroupInstall.install_all` lets the upload
    go on (the target's current state, not a refusal or a retry)."""
    return result is not StaleTarget and not isinstance(result, SyncError)


def _check_preconditions(path: str, current, if_match, if_none_match) -> None:
    """Raise CONFLICT/PRECONDITION_FAILED unless an upload may replace ``current``
    (``(FileMetadata, mtime_ns)`` or None) at ``path``."""
    if current is not None and current[0].is_directory:
        raise SyncError("CONFLICT", f"{path} is a directory")
    if if_none_match is not None and if_none_match.strip() == "*" and current is not None:
        raise SyncError("PRECONDITION_FAILED", f"{path} already exists")
    _check_if_match(path, current, if_match)


def _check_if_match(path: str, current, if_match) -> None:
    """PRECONDITION_FAILED unless ``current`` holds the ``If-Match`` hash (``*``: any)."""
    if if_match is None:
        return
    if if_match == "*":
        if current is None:
            raise SyncError("PRECONDITION_FAILED", f"{path} does not exist")
    elif current is None or current[0].hash != if_match:
        raise SyncError("PRECONDITION_FAILED", f"{path} does not have the expected hash")


@attrs.frozen
class WaitingUpload:
    """An upload waiting to be installed by the next group commit."""

    path: str
    temp_path: object  # a finished temp file (name or NamelessTemp), or None: ``body`` is written at install
    body: bytes | None
    sha256: str
    source_client: str
    if_match: str | None
    if_none_match: str | None
    answer: Deferred
    #: the finished temp file's stat when its stager took it (mode 0644 already)
    temp_stat: object = None
    #: group commits that sent it back because its target was a large stale file
    attempts: int = 0
    #: the temp file is the operations' to release when the upload is refused
    release_temp: bool = False

    @property
    def owns_temp(self) -> bool:
        """True when the group commit releases this upload's temp file if not installed
        (a body written by the commit itself, or one handed over)."""
        return self.temp_path is None or self.release_temp


class StaleTarget(Exception):
    """An upload's target is a large file another program changed: it is hashed outside
    the operations lock (a refresh) and the upload tried again."""


#: Times an upload is tried again before a target that keeps changing is a CONFLICT.
STALE_TARGET_ATTEMPTS = 3


class GroupInstall:
    """Installs groups of uploads into ``store``, keeping each replaced file in
    ``versions`` (blocking: run it in the operations' thread, under their lock)."""

    def __init__(self, store, versions):
        self.store = store
        self.versions = versions

    def install_all(self, batch, cached, hash_limit: int) -> list:
        """Install ``batch`` (:class:`WaitingUpload`, in order; ``cached``: the index rows
        of their paths) under the operations lock: per upload, in order, a
        SyncError or ``(current, stored, created directories, (st_ino, st_size,
        st_mtime_ns), the replaced file's Version or None)``; an upload sees the ones
        before it in the batch as the current state of its path.

        In three passes, so that the disk's journal commits once for many files rather
        than once per file: every precondition is checked (in order), then the bodies held
        in memory are written and made durable together, then every upload is installed
        (in order), then each directory written to is fsynced once. A stale target of
        ``hash_limit`` bytes or more gives :class:`StaleTarget` (see :meth:`current`)."""
        results = self._check_all(batch, cached, hash_limit)
        in_memory = [p for p, w in enumerate(batch) if w.temp_path is None and _goes_on(results[p])]
        staged = dict(zip(in_memory, self.store.stage_many([batch[p].body for p in in_memory])))
        self._fsync_written(self._install_checked(batch, results, staged), results)
        self.versions.settle([r[4] for r in results if isinstance(r, tuple) and len(r) == 5 and r[4]])
        return results

    @staticmethod
    def _fsync_written(synced_by, results) -> None:
        """The last pass of :meth:`install_all`: fsync each directory written to once
        (``{directory: [positions]}``); the uploads in one that fails get its error."""
        for directory, positions in synced_by.items():
            try:
                fsync_directory(directory)
            except OSError as error:
                for position in positions:
                    results[position] = storage_error(error)

    def _check_all(self, batch, cached, hash_limit: int) -> list:
        """The first pass of :meth:`install_all`: per upload, the current state of its
        path, or the SyncError refusing it, or :class:`StaleTarget`."""
        state = {}  # path -> (FileMetadata, mtime_ns) | None, once known in this batch
        results, stale = [], set()
        for waiting in batch:
            try:
                current = self._checked_current(waiting, state, stale, cached, hash_limit)
            except StaleTarget:
                stale.add(waiting.path)
                results.append(StaleTarget)
                continue
            except SyncError as error:
                results.append(error)
                continue
            except OSError as error:
                results.append(storage_error(error))
                continue
            # what a later upload of the same path is checked against (its stat comes later)
            state[waiting.path] = (FileMetadata(waiting.path, len(waiting.body or b""), 0, waiting.sha256), 0)
            results.append(current)
        return results

    def _checked_current(self, waiting, state, stale, cached, hash_limit: int):
        """The current state of ``waiting``'s path (``state``: as the uploads before it in
        the batch leave it) once its preconditions hold; raises :class:`StaleTarget`
        or the refusal."""
        path = waiting.path
        if path in stale:  # after an upload of it that waits for its target's hash
            raise StaleTarget()
        if path in state:
            current = state[path]
        else:
            retry = waiting.attempts < STALE_TARGET_ATTEMPTS
            current = self.current(path, cached.get(path), hash_limit if retry else None)
        _check_preconditions(path, current, waiting.if_match, waiting.if_none_match)
        return current

    def _install_checked(self, batch, results, staged) -> dict:
        """The installing pass of :meth:`install_all`: install every upload ``results``
        lets go on (``staged``: the in-memory bodies written, by position), replacing its
        result. Returns ``{directory: [positions]}`` of the directories written to."""
        broken, synced_by, state, authors = set(), {}, {}, {}
        for position, waiting in enumerate(batch):
            current, path = results[position], waiting.path
            if not _goes_on(current):
                if current is not StaleTarget and waiting.release_temp:
                    self.store.discard(waiting.temp_path)  # refused: its staged file goes
                continue
            current = state.get(path, current)  # an earlier upload of the batch, installed just now
            try:
                target, temp_stat, created, version = self._place(
                    waiting, current, staged.get(position), path in broken, authors.get(path))
                synced_by.setdefault(os.path.dirname(target), []).append(position)
                entry = DiskEntry(path, False, temp_stat.st_size, temp_stat.st_mtime_ns,
                                  temp_stat.st_ino, _ctime_after_install(target, temp_stat))
                directories = [metadata_of(d, "") for d in map(self.store.entry, created) if d]
            except (SyncError, OSError) as error:
                broken.add(path)
                results[position] = error if isinstance(error, SyncError) else storage_error(error)
                continue
            state[path], authors[path] = metadata_of(entry, waiting.sha256), waiting.source_client
            st_key = (entry.ino, entry.size, entry.mtime_ns, entry.ctime_ns)
            results[position] = (current, state[path], directories, st_key, version)
        return synced_by

    def _place(self, waiting, current, staged, broken, author) -> tuple:
        """Install one upload over ``current`` (``broken``: an earlier upload of its path
        failed), keeping the replaced file's version. ``(target, the temp file's stat,
        created directories, Version or None)``."""
        path = waiting.path
        try:
            temp, temp_stat = self._staged_for(waiting, staged)
        except (SyncError, OSError):
            if waiting.release_temp:
                self.store.discard(waiting.temp_path)
            raise
        version = None
        try:
            if broken:  # an earlier upload of this path failed: this one was based on it
                raise SyncError("INSUFFICIENT_STORAGE", f"{path}: an earlier upload of it could not be stored")
            walked = self.store.walk(path)  # once for the version's link and the install
            version = self.versions.keep_replaced(path, current, author, walked[0])
            created, target = self.store.install_staged(temp, temp_stat, path, walked)
        except BaseException:
            self.versions.discard(version)
            if waiting.owns_temp:
                self.store.discard(temp)
            raise
        if isinstance(temp, NamelessTemp):
            self.store.discard(temp)  # linked in place: close it
        return target, temp_stat, created, version

    def release_temps(self, uploads) -> None:
        """Release the temp files of ``uploads`` (an installed one is gone already:
        releasing it does nothing)."""
        for waiting in uploads:
            self.store.discard(waiting.temp_path)

    def _staged_for(self, waiting, staged) -> tuple:
        """``(temp, stat)`` of an upload ready to install: its body written by
        :meth:`Store.stage_many` (``staged``), or its spool's finished temp file."""
        if waiting.temp_path is not None:
            return waiting.temp_path, waiting.temp_stat or self.store.readied(waiting.temp_path)
        if isinstance(staged, OSError):
            raise staged
        return staged

    def current(self, path: str, cached, hash_limit=None):
        """The ``(FileMetadata, mtime_ns)`` of ``path`` as the disk has it now (None: not
        there), given its index row ``cached`` (blocking: hashes a changed file).
        A stale file of ``hash_limit`` bytes or more raises :class:`StaleTarget`
        instead of being hashed here."""
        entry = self.store.entry(path)
        if entry is None:
            return None
        if matches(cached, entry):
            return cached
        if hash_limit is not None and not entry.is_directory and entry.size >= hash_limit:
            raise StaleTarget()
        return metadata_of(entry, "" if entry.is_directory else self.store.hash(path))
