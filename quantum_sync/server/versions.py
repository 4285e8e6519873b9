"""Versions and trash: the old content of every file the server replaces or deletes.

Kept in ``<root>/.quantum-sync/versions/`` (on the root's file system, never listed,
journalled or synced): a replaced file by a hard link to its old inode made just before
the rename over it (no copy, whatever its size), a deleted file moved there whole
(rename). Each version is a row of the index's ``versions`` table, keyed by the path it
had; a move re-keys the rows with the files. :class:`VersionArea` is the blocking side
(threads: the group commit's and the operations' own), :class:`Versions` the reactor
side: listing, restore, and pruning by a LoopingCall, planned by the pure
:func:`plan_prune`.

``keep_per_file`` and ``max_bytes`` hold at all times: the transaction that records new
versions also forgets the ones they push past a limit (a count of the path's rows; the
space total kept in a row of its own), and their files go once that transaction has
committed. The hourly pass applies ``keep_days``, checks all three again, recounts the
space, and removes files no row names (after :data:`ORPHAN_AGE`). On a cluster only the
leader runs that pass.

A restore holds the version it reads from the moment before it reads its row until its
copy is made: neither kind of pruning takes it meanwhile (it goes at a later one). On one
server the area knows its restores; a cluster's nodes hold theirs in the database
(:attr:`VersionArea.reads`), so a pruning on any node leaves them.
"""

import collections
import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
from typing import NamedTuple

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from quantum_sync.diskio import file_system_magic, fsync_directory
from quantum_sync.errors import SyncError, is_unavailable
from quantum_sync.protocol import format_time
from quantum_sync.server.passes import Passes
from quantum_sync.server.store import TEMP_PREFIX, storage_error
from quantum_sync.threads import ReactorThreads

#: The versions area's name inside the state directory.
AREA_NAME = "versions"
#: Seconds between pruning passes.
PRUNE_INTERVAL = 3600.0
#: Seconds a file in the area must have been there (by its ctime) before a pass may
#: remove it for want of a row: longer than any transaction that records a version
#: takes, and than the clock skew between the nodes of a cluster and their shared file
#: system (whose server sets the ctime).
ORPHAN_AGE = 3600.0
#: Seconds after a recording that forgot versions at which their rows are checked to be
#: gone before their files go (a commit on another connection may come a moment later).
FORGOTTEN_CHECKS = (0.0, 0.1, 1.0, 10.0)
#: The form of a version id (random, 96 bits, hex).
_ID = re.compile(r"^[0-9a-f]{24}$")
#: The names of the area's files: a version's id, or a copy being made of one.
_AREA_FILE = re.compile(r"^[0-9a-f]{24}(\.copy)?$")
COPY_CHUNK = 1024 * 1024
DAY = 86400.0
#: ``statfs`` numbers of the file systems that write metadata changes to one journal in
#: the order they were made (ext3/4, whose number ext2 shares; XFS): there a link made
#: before a rename is durable once the rename is, and needs no fsync of its own.
ORDERED_METADATA = frozenset({0xEF53, 0x58465342})

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    modified_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    hash TEXT NOT NULL,
    source_client TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    kept REAL NOT NULL
);
DROP INDEX IF EXISTS versions_path;
CREATE INDEX IF NOT EXISTS versions_by_path ON versions (path, kept, id, size);
CREATE INDEX IF NOT EXISTS versions_kept ON versions (kept, id);
CREATE TABLE IF NOT EXISTS versions_space (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    total INTEGER NOT NULL
);
INSERT INTO versions_space (one, total) SELECT 1, (SELECT COALESCE(SUM(size), 0) FROM versions)
    WHERE NOT EXISTS (SELECT 1 FROM versions_space);
"""
_COLUMNS = "id, path, modified_ns, size, hash, source_client, deleted, kept"


@attrs.frozen
class Version:
    """One kept version: the content a file had at ``path`` until ``kept`` (seconds since
    the epoch), when it was replaced or, ``deleted``, removed. ``source_client``: the
    client that wrote that content (``""`` when not known)."""

    id: str
    path: str
    modified_ns: int
    size: int
    hash: str
    source_client: str
    deleted: bool
    kept: float

    def to_json(self) -> dict:
        return {"id": self.id, "path": self.path, "modified": format_time(self.modified_ns / 1e9),
                "size": self.size, "hash": self.hash, "source_client": self.source_client,
                "deleted": self.deleted, "kept": format_time(self.kept)}


# -- retention (pure) -------------------------------------------------------------------


def plan_prune(versions, now: float, policy, busy=frozenset()) -> set:
    """The ids of ``versions`` (each with ``id``, ``path``, ``size`` and ``kept``) that
    ``policy`` (``keep_days``, ``keep_per_file``, ``max_bytes``) no longer keeps at time
    ``now``: those kept longer than ``keep_days`` ago (all of them when it is 0), past
    the newest ``keep_per_file`` of their path, and then the oldest until the rest fit
    in ``max_bytes``. Versions in ``busy`` (being restored) are never chosen."""
    newest_first = sorted(versions, key=lambda v: (v.kept, v.id), reverse=True)
    doomed = _past_age_or_count(newest_first, now, policy)
    if policy.max_bytes is not None:
        _add_oldest_over_budget(newest_first, doomed, busy, policy.max_bytes)
    return doomed - set(busy)


def _past_age_or_count(newest_first, now: float, policy) -> set:
    """The ids of ``newest_first`` older than ``keep_days`` or past the newest
    ``keep_per_file`` of their path."""
    doomed = set()
    per_path = collections.Counter()
    for version in newest_first:
        per_path[version.path] += 1
        too_old = policy.keep_days <= 0 or version.kept < now - policy.keep_days * DAY
        too_many = policy.keep_per_file is not None and per_path[version.path] > policy.keep_per_file
        if too_old or too_many:
            doomed.add(version.id)
    return doomed


def _add_oldest_over_budget(newest_first, doomed: set, busy, max_bytes: int) -> None:
    """Add to ``doomed`` the oldest of ``newest_first`` not in ``busy`` until the
    versions left fit in ``max_bytes``."""
    total = sum(v.size for v in newest_first if v.id not in doomed or v.id in busy)
    for version in reversed(newest_first):
        if total <= max_bytes:
            break
        if version.id not in doomed and version.id not in busy:
            doomed.add(version.id)
            total -= version.size


@attrs.frozen
class RestoreRequest:
    """The body of ``POST /api/restore``: version ``id`` of ``path``, back at ``to``
    (its own path when not given). Paths as received: the caller resolves them."""

    path: str
    id: str
    to: str | None = None


def parse_restore(body) -> RestoreRequest:
    """A :class:`RestoreRequest` from a decoded JSON body, or INVALID_REQUEST."""
    if not isinstance(body, dict) or not isinstance(body.get("path"), str) \
            or not isinstance(body.get("id"), str) or not isinstance(body.get("to", ""), str):
        raise SyncError("INVALID_REQUEST", 'the body must be {"path": "...", "id": "...", "to"?: "..."}')
    unknown = set(body) - {"path", "id", "to"}
    if unknown:
        raise SyncError("INVALID_REQUEST", f"unknown field(s) {sorted(unknown)}")
    return RestoreRequest(body["path"], body["id"], body.get("to"))


# -- the index's table -----------------------------------------------------------------


def create_schema(txn) -> None:
    txn.executescript(SCHEMA)


def _escape_like(path: str) -> str:
    return path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _row_version(row) -> Version:
    vid, path, modified_ns, size, digest, source, deleted, kept = row
    return Version(vid, path, modified_ns, size, digest, source, bool(deleted), kept)


def _listing(txn, path: str) -> list:
    if path:
        txn.execute(f"SELECT {_COLUMNS} FROM versions WHERE path = ?"
                    " OR (deleted = 1 AND path LIKE ? ESCAPE '\\') ORDER BY kept DESC, id",
                    (path, _escape_like(path) + "/%"))
    else:
        txn.execute(f"SELECT {_COLUMNS} FROM versions WHERE deleted = 1 ORDER BY kept DESC, id")
    return [_row_version(row) for row in txn.fetchall()]


def _find(txn, version_id: str):
    txn.execute(f"SELECT {_COLUMNS} FROM versions WHERE id = ?", (version_id,))
    row = txn.fetchone()
    return _row_version(row) if row else None


class Retained(NamedTuple):
    """What retention looks at of one version (light: a pass reads every row)."""

    id: str
    path: str
    size: int
    kept: float


def _retained(txn) -> list:
    txn.execute("SELECT id, path, size, kept FROM versions")
    return [Retained(*row) for row in txn.fetchall()]


def _forget(txn, sizes) -> None:
    """Delete the rows of ``sizes`` (``{id: size}``), and their bytes from the total."""
    txn.executemany("DELETE FROM versions WHERE id = ?", [(vid,) for vid in sizes])
    txn.execute("UPDATE versions_space SET total = total - ?", (sum(sizes.values()),))


def _forget_and_recount(txn, ids, reads) -> set:
    """Delete the rows of ``ids`` (some may be gone already) but those a restore holds
    (``reads``: :class:`LocalReads`), and count the space total from the rows left (a
    safety net too: every change keeps it). Returns the ids forgotten."""
    ids = reads.free(txn, ids) if ids else set()
    txn.executemany("DELETE FROM versions WHERE id = ?", [(vid,) for vid in ids])
    txn.execute("UPDATE versions_space SET total = (SELECT COALESCE(SUM(size), 0) FROM versions)")
    return ids


def _ids(txn) -> set:
    txn.execute("SELECT id FROM versions")
    return {row[0] for row in txn.fetchall()}


def _named(txn, ids) -> set:
    """Those of ``ids`` a row still names."""
    named = set()
    for vid in ids:
        txn.execute("SELECT id FROM versions WHERE id = ?", (vid,))
        named.update(row[0] for row in txn.fetchall())
    return named


#: rows read at a time when the space cap looks for the oldest versions
_OLDEST_PAGE = 64
#: a LIMIT that is no limit, in the SQL of SQLite and PostgreSQL alike
_ALL_ROWS = 2 ** 62


def _over_limits(txn, policy, paths, busy) -> dict:
    """``{id: size}`` of the versions that ``keep_per_file`` (for ``paths``) and then
    ``max_bytes`` no longer allow, oldest first, none of ``busy``: what
    :func:`plan_prune` would choose of them, from each path's rows past its newest
    ``keep_per_file`` and the space total rather than every row."""
    doomed = {}
    if policy.keep_per_file is not None:
        doomed.update(_over_count(txn, paths, policy.keep_per_file, busy))
    if policy.max_bytes is not None:
        doomed.update(_over_space(txn, policy.max_bytes, doomed, busy))
    return doomed


#: one path's versions past its newest N, read from its index alone; a query for each
#: path, joined in one statement for up to :data:`_PATHS_A_QUERY` paths (one round trip
#: to a database server for a group's paths)
_PAST_NEWEST = ("SELECT * FROM (SELECT id, size FROM versions WHERE path = ?"
                " ORDER BY kept DESC, id DESC LIMIT ? OFFSET ?) AS past")
#: below SQLite's limit of terms in a compound SELECT (500)
_PATHS_A_QUERY = 100


def _over_count(txn, paths, keep_per_file, busy) -> list:
    """``(id, size)`` of the versions of ``paths`` past the newest ``keep_per_file`` of
    their path, none of ``busy``."""
    paths, past = sorted(paths), []
    for start in range(0, len(paths), _PATHS_A_QUERY):
        part = paths[start:start + _PATHS_A_QUERY]
        txn.execute(" UNION ALL ".join([_PAST_NEWEST] * len(part)),
                    [value for path in part for value in (path, _ALL_ROWS, keep_per_file)])
        past.extend((vid, size) for vid, size in txn.fetchall() if vid not in busy)
    return past


def _over_space(txn, max_bytes, doomed, busy) -> dict:
    txn.execute("SELECT total FROM versions_space")
    row = txn.fetchone()
    total = (row[0] if row else 0) - sum(doomed.values())
    more, offset = {}, 0
    while total > max_bytes:
        txn.execute("SELECT id, size FROM versions ORDER BY kept, id LIMIT ? OFFSET ?",
                    (_OLDEST_PAGE, offset))
        page = txn.fetchall()
        for vid, size in page:
            if total > max_bytes and vid not in doomed and vid not in busy:
                more[vid] = size
                total -= size
        if len(page) < _OLDEST_PAGE:
            break
        offset += len(page)
    return more


# -- the blocking side -----------------------------------------------------------------


class LocalReads:
    """The restores a pruning must leave beyond those of its own process: none on one
    server (:meth:`VersionArea.begin_read` knows them all). A cluster's
    (:class:`quantum_sync.server.cluster.versionreads.VersionReads`) holds them in the
    database."""

    async def hold(self, version_id: str) -> None:
        """Keep ``version_id`` from every pruning until :meth:`release`."""

    async def release(self, version_id: str) -> None:
        """Let ``version_id`` go (one :meth:`hold` of it)."""

    def free(self, txn, ids) -> set:
        """Those of ``ids`` no restore holds, kept from restores until ``txn`` ends."""
        return set(ids)


class VersionArea:
    """The versions directory of ``store`` (blocking: call from a thread). ``clock``
    gives the kept-at times; with ``enabled`` False nothing new is kept (moves still
    re-key what was). ``policy`` (a :class:`~quantum_sync.config.VersionsConfig`, set
    by :class:`Versions`) is applied as versions are recorded."""

    def __init__(self, store, clock, enabled: bool = True):
        self.store = store
        self.directory = os.path.join(store.state_dir, AREA_NAME)
        self.enabled = enabled
        self.policy = None
        #: called (in the index's thread, in the transaction) with the ids whose rows a
        #: recording forgot, to remove their files once it committed
        self.on_forgotten = None
        self._clock = clock
        self._ordered = False
        self._lock = threading.Lock()
        #: id -> when it was handed out, while its file may be in the area and its row
        #: not yet committed (one that never is, its upload failed, ages out)
        self._unrecorded = {}
        self._reading = collections.Counter()  # version id -> restores reading it
        #: the restores of other processes (a cluster's nodes), see :class:`LocalReads`
        self.reads = LocalReads()

    def prepare(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            self._ordered = file_system_magic(fd) in ORDERED_METADATA
        finally:
            os.close(fd)

    def name_of(self, version_id: str) -> str:
        return os.path.join(self.directory, version_id)

    def _new_id(self) -> str:
        version_id = secrets.token_hex(12)
        with self._lock:
            self._unrecorded[version_id] = self._clock.seconds()
        return version_id

    def _settled(self, ids) -> None:
        with self._lock:
            for version_id in ids:
                self._unrecorded.pop(version_id, None)

    def begin_read(self, version_id: str) -> None:
        """A restore reads ``version_id`` from now until :meth:`end_read`: no pruning
        takes it meanwhile."""
        with self._lock:
            self._reading[version_id] += 1

    def end_read(self, version_id: str) -> None:
        with self._lock:
            self._reading[version_id] -= 1
            if not self._reading[version_id]:
                del self._reading[version_id]

    def busy(self) -> frozenset:
        """The ids restores are reading now."""
        with self._lock:
            return frozenset(self._reading)

    def keep_replaced(self, path: str, current, source_client=None, absolute=None):
        """Before the file at ``path`` (``current``: its ``(FileMetadata, mtime_ns)``, or
        None) is replaced: link its inode into the area. Its :class:`Version`, or None
        when there is nothing to keep. ``source_client``: who wrote it, when known;
        ``absolute``: its on-disk name, when resolved already."""
        if not self.enabled or current is None or current[0].is_directory:
            return None
        absolute = absolute or self.store.resolve(path)
        version_id = self._new_id()
        name = self.name_of(version_id)
        try:
            st = _link_or_copy(absolute, name)
            if st is not None and not stat.S_ISREG(st.st_mode):
                os.unlink(name)
                st = None
            if st is None:
                self._settled([version_id])
                return None
            return self._version(version_id, path, st, current, False, source_client)
        except BaseException:
            self._settled([version_id])
            raise

    def trash(self, path: str, rows) -> list:
        """Before ``path`` is deleted: move every file at and below it into the area
        (``rows``: the index's ``(FileMetadata, mtime_ns)`` of them, whose hashes are
        used where the stat still matches). Their :class:`Version`s."""
        if not self.enabled:
            return []
        cached = {metadata.path: (metadata, mtime_ns) for metadata, mtime_ns in rows}
        kept = []
        for entry in self.store.scan(path):
            if entry.is_directory:
                continue
            version_id = self._new_id()
            name = self.name_of(version_id)
            try:
                os.rename(self.store.resolve(entry.path), name)
            except OSError as error:
                self._settled([version_id])
                if error.errno == errno.EXDEV:  # a mount inside the root: kept as a copy
                    kept.extend(self._copied(entry.path, cached.get(entry.path)))
                elif not isinstance(error, FileNotFoundError):
                    raise
                continue
            st = os.lstat(name)
            if st.st_nlink > 1:  # another name in the root shares it: kept as a copy of its own
                shutil.copy2(name, name + ".copy", follow_symlinks=False)
                os.replace(name + ".copy", name)
                st = os.lstat(name)
            kept.append(self._version(version_id, entry.path, st, cached.get(entry.path), True, None))
        self.settle(kept)  # (then the delete's fsync of the parent directory)
        return kept

    def _copied(self, path, current) -> list:
        version_id = self._new_id()
        name = self.name_of(version_id)
        try:
            shutil.copy2(self.store.resolve(path), name, follow_symlinks=False)
            return [self._version(version_id, path, os.lstat(name), current, True, None)]
        except BaseException:
            self._settled([version_id])
            raise

    def _version(self, version_id, path, st, current, deleted, source_client) -> Version:
        if current is not None and (current[0].size, current[1]) == (st.st_size, st.st_mtime_ns):
            digest = current[0].hash
        else:  # changed since it was indexed: hashed now
            with open(self.name_of(version_id), "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        return Version(version_id, path, st.st_mtime_ns, st.st_size, digest,
                       source_client, deleted, self._clock.seconds())

    def discard(self, version) -> None:
        """Undo :meth:`keep_replaced` whose replacement did not happen."""
        if version is not None:
            self._settled([version.id])
            self._unlink(version.id)

    def settle(self, kept) -> None:
        """Make the links of ``kept`` durable (one directory fsync), after the renames
        they preceded were made durable (nothing more where metadata is journalled in
        order: a second fsync there costs a flush of the disk's cache)."""
        if kept and not self._ordered:
            fsync_directory(self.directory)

    def _unlink(self, version_id: str) -> None:
        try:
            os.unlink(self.name_of(version_id))
        except FileNotFoundError:
            pass

    def remove(self, ids) -> None:
        """Delete the files of versions ``ids``."""
        for version_id in ids:
            self._unlink(version_id)

    def listed(self, since: float) -> tuple:
        """``({name in the area: its ctime}, ids not yet recorded)``, taken in that order
        (see :meth:`Versions.prune`). A link or rename into the area sets the ctime: it
        is when the file came. Ids handed out before ``since`` and still not recorded
        (their upload failed after the link: a directory's fsync) are let go."""
        names = {}
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    names[entry.name] = entry.stat(follow_symlinks=False).st_ctime
                except FileNotFoundError:
                    pass
        with self._lock:
            for version_id in [v for v, taken in self._unrecorded.items() if taken < since]:
                del self._unrecorded[version_id]
            return names, set(self._unrecorded)

    def copy_out(self, version: Version) -> tuple:
        """A named temp file (mode 0644, fsynced) holding ``version``'s bytes, verified
        against its hash: ``(name, stat)``. NOT_FOUND when its file is gone."""
        try:
            source = os.open(self.name_of(version.id), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise SyncError("NOT_FOUND", f"version {version.id} is no longer kept") from None
        try:
            fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.store.temp_dir)
            try:
                digest = hashlib.sha256()
                while chunk := os.read(source, COPY_CHUNK):
                    digest.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                os.fchmod(fd, 0o644)
                os.fsync(fd)
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                os.unlink(name)
                raise
            os.close(fd)
        finally:
            os.close(source)
        if digest.hexdigest() != version.hash:
            os.unlink(name)
            raise SyncError("INTERNAL_ERROR", f"version {version.id} no longer has its recorded content")
        return name, st

    def rekey(self, source: str, destination: str):
        """:func:`rekey`."""
        return rekey(source, destination)

    def recorder(self, kept):
        """A function of a transaction that records ``kept`` (None when it is empty), for
        the ``also`` of :meth:`Index.record` and its kin; it runs before the files' rows
        change, so a version's unknown source client is the one its row names."""
        kept = [version for version in kept if version is not None]
        if not kept:
            return None

        def record(txn):
            txn.executemany(
                f"INSERT INTO versions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, COALESCE(?, (SELECT"
                " source_client FROM files WHERE path = ? AND hash = ?), ''), ?, ?)",
                [(v.id, v.path, v.modified_ns, v.size, v.hash, v.source_client, v.path, v.hash,
                  int(v.deleted), v.kept) for v in kept])
            txn.execute("UPDATE versions_space SET total = total + ?", (sum(v.size for v in kept),))
            if self.policy is not None:
                self._enforce(txn, {v.path for v in kept})
            # the index's one thread commits this before it runs a pruning pass's query
            self._settled([v.id for v in kept])

        return record

    def _enforce(self, txn, paths) -> None:
        """Forget what ``keep_per_file`` (for ``paths``) and ``max_bytes`` no longer
        allow, in ``txn``; their files go after it commits (:attr:`on_forgotten`), or,
        where nothing is listening, by a pass's sweep."""
        doomed = _over_limits(txn, self.policy, paths, self.busy())
        if doomed:  # (those a restore holds go at a later pruning)
            free = self.reads.free(txn, doomed)
            doomed = {vid: size for vid, size in doomed.items() if vid in free}
        if doomed:
            _forget(txn, doomed)
            if self.on_forgotten is not None:
                self.on_forgotten(frozenset(doomed))


def _link_or_copy(absolute: str, name: str):
    """Link the inode of ``absolute`` at ``name``, or copy it there where no link can be
    made or its inode has another name (its bytes could change there): the lstat of
    ``name``, or None when ``absolute`` is gone."""
    try:
        os.link(absolute, name, follow_symlinks=False)
        st = os.lstat(name)
        if st.st_nlink <= 2:
            return st
        os.unlink(name)  # shared with another name
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
    shutil.copy2(absolute, name, follow_symlinks=False)
    return os.lstat(name)


def rekey(source: str, destination: str):
    """A function of a transaction that moves the versions of ``source`` (and below) to
    ``destination`` (for the ``also`` of :meth:`Index.rename`)."""
    def run(txn):
        txn.execute(
            "UPDATE versions SET path = ? || substr(path, ?) WHERE path = ? OR path LIKE ? ESCAPE '\\'",
            (destination, len(source) + 1, source, _escape_like(source) + "/%"))

    return run


class KeepNothing:
    """A version area that keeps nothing (for a FileOperations built without one)."""

    enabled = False

    def keep_replaced(self, path, current, source_client=None, absolute=None):
        return None

    def trash(self, path, rows) -> list:
        return []

    def discard(self, version) -> None:
        pass

    def settle(self, kept) -> None:
        pass

    def recorder(self, kept):
        return None

    def rekey(self, source, destination):
        return None


# -- the reactor side ------------------------------------------------------------------


@attrs.frozen
class _Restored:
    """A version copied out for a restore, in the shape :meth:`FileOperations.upload`
    takes (a finished named temp file and its stat)."""

    path: str
    stat: os.stat_result
    body: None = None


class Versions(Service):
    """Lists and restores the versions of ``area``, recorded in ``index``, and prunes
    them by ``policy`` (a :class:`~quantum_sync.config.VersionsConfig`) every
    ``interval`` seconds of ``clock``: from the start when ``leading``, else from a
    call of :meth:`lead` (a cluster's leader)."""

    log = Logger()

    def __init__(self, area: VersionArea, index, policy, reactor, clock=None,
                 interval: float = PRUNE_INTERVAL, threads=None, leading: bool = True):
        self.area = area
        self.index = index
        self.policy = policy
        self._reactor = reactor
        self._threads = threads if threads is not None else ReactorThreads(reactor)
        self._clock = clock or reactor
        self._leading = leading
        self._passes = Passes(lambda: self.prune(), self._prune_failed, self._clock, interval)
        self._opened = None
        self._pruning = set()
        self._removals = set()  # removals of forgotten versions' files, under way
        area.on_forgotten = lambda ids: reactor.callFromThread(self._forgotten, ids)

    @property
    def policy(self):
        return self.area.policy

    @policy.setter
    def policy(self, policy) -> None:
        self.area.policy = policy

    def _blocking(self, function, *args):
        return self._threads.defer(function, *args)

    def startService(self):
        super().startService()
        self.area.prepare()
        # queued on the index's one thread right after its own schema: before any use
        self._opened = self.index.interaction(create_schema)
        if self._leading:
            self._passes.start()

    @property
    def pruning(self) -> bool:
        """Whether this process runs the pruning passes (on a cluster: the leader)."""
        return self._passes.running

    def lead(self, leading: bool) -> None:
        """Run the pruning passes (a pass now, then every interval), or stop running
        them: a cluster's nodes prune the shared area one at a time."""
        self._leading = leading
        if leading and self.running:
            self._passes.start()
        elif not leading:
            self._passes.stop()

    async def open(self) -> None:
        """Wait until the versions table exists (after :meth:`startService`)."""
        await self._opened

    def stopService(self):
        super().stopService()
        self._passes.stop()
        for removal in list(self._removals):  # what is left, a pass's sweep takes
            removal.cancel()
        return self._passes.last

    def _prune_failed(self, failure) -> None:
        if is_unavailable(failure):
            self.log.warn("versions not pruned (the next pass will): {error}", error=failure.value.message)
        else:
            self.log.failure("pruning versions failed", failure)

    # -- reads -----------------------------------------------------------------------

    async def listing(self, path: str) -> list:
        """The versions of ``path`` and the deleted files below it (``""``: every deleted
        file), newest first."""
        return await self.index.interaction(_listing, path)

    async def find(self, version_id) -> Version | None:
        if not isinstance(version_id, str) or not _ID.match(version_id):
            return None
        return await self.index.interaction(_find, version_id)

    # -- restore ---------------------------------------------------------------------

    async def restore(self, operations, path: str, version_id, to: str, source_client: str,
                      if_match=None, if_none_match=None) -> tuple:
        """Put version ``version_id`` of ``path`` back at ``to`` as an upload would (the
        file there now kept as a version in turn, journalled, broadcast). Returns
        ``(FileMetadata, Change)``; NOT_FOUND for an unknown id or one of another path."""
        if not isinstance(version_id, str) or not _ID.match(version_id):
            raise SyncError("NOT_FOUND", f"{path} has no version {version_id!r}")
        temp, st, version = await self._copied_out(path, version_id)
        try:
            return await operations.upload(to, _Restored(temp, st), version.hash, version.size,
                                           source_client, if_match=if_match, if_none_match=if_none_match)
        finally:
            await self._blocking(self.area.store.discard, temp)  # gone once installed

    async def _copied_out(self, path: str, version_id: str) -> tuple:
        """``(temp file, its stat, Version)``: a copy of version ``version_id`` of
        ``path``, made while no pruning (of this process or, on a cluster, any node)
        may take it. NOT_FOUND when it is not (or no longer) kept."""
        # held before its row is read: a pruning that starts later leaves it
        self.area.begin_read(version_id)
        try:
            await self.area.reads.hold(version_id)
            try:
                version = await self.find(version_id)
                if version is None or version.path != path or version.id in self._pruning:
                    raise SyncError("NOT_FOUND", f"{path} has no version {version_id!r}")
                try:
                    temp, st = await self._blocking(self.area.copy_out, version)
                except OSError as error:
                    raise storage_error(error) from error
                return temp, st, version
            finally:
                await self.area.reads.release(version_id)
        finally:
            self.area.end_read(version_id)

    # -- pruning ---------------------------------------------------------------------

    def _forgotten(self, ids) -> None:
        """Rows a recording forgot (``keep_per_file``, ``max_bytes``): their files go."""
        removal = Deferred.fromCoroutine(self._remove_forgotten(ids))
        self._removals.add(removal)
        removal.addErrback(lambda failure: failure.trap(CancelledError) and None)  # stopped
        removal.addErrback(lambda failure: self.log.failure("removing pruned versions failed", failure))
        removal.addBoth(lambda _: self._removals.discard(removal))

    async def _remove_forgotten(self, ids) -> None:
        # on SQLite this runs after the recording's commit (the index's one thread); a
        # pool of connections (PostgreSQL) may answer before it: rows still there are
        # asked again a little later, and those that stay (rolled back) keep their files
        # (what a recording that committed later leaves, a pass's sweep removes)
        for delay in FORGOTTEN_CHECKS:
            if delay:
                await deferLater(self._reactor, delay, lambda: None)
            named = await self.index.interaction(_named, ids)
            gone = ids - named - self.area.busy()  # (a restore that read its row before it went)
            if gone:
                await self._blocking(self.area.remove, gone)
            ids = named
            if not ids:
                return

    async def prune(self) -> int:
        """One pass: the versions :func:`plan_prune` chooses are forgotten (row, then
        file), the space total recounted, and files in the area that no row names,
        there for :data:`ORPHAN_AGE` (left by a crash, or by an upload that failed
        after its link), removed. Returns how many versions went."""
        versions = await self.index.interaction(_retained)
        planned = await self._blocking(plan_prune, versions, self._clock.seconds(), self.policy,
                                       self.area.busy())
        doomed = planned - self.area.busy()  # a restore may have started meanwhile
        self._pruning |= doomed
        try:
            # those a restore holds (on a cluster, on any node) stay for a later pass
            forgotten = await self.index.interaction(_forget_and_recount, doomed, self.area.reads)
            if forgotten:
                await self._blocking(self.area.remove, forgotten)
            # a file listed before the snapshot of unrecorded ids, and absent from the rows
            # read after it, belongs to no version (see VersionArea.recorder) unless it is
            # another node's, or this one's on an index of several connections, whose
            # commit is a moment away: hence the age
            due = self._clock.seconds() - ORPHAN_AGE
            names, unrecorded = await self._blocking(self.area.listed, due)
            known = await self.index.interaction(_ids)
            orphans = {name for name, ctime in names.items() if _AREA_FILE.match(name) and ctime < due}
            orphans -= unrecorded | known | self._pruning | self.area.busy()
            if orphans:
                await self._blocking(self.area.remove, orphans)
        finally:
            self._pruning -= doomed
        if forgotten:
            self.log.info("pruned {count} old version(s)", count=len(forgotten))
        return len(forgotten)
