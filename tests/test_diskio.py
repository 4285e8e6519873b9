"""diskio.fsync_all: one syncfs for many files on a trusted file system, fsyncs otherwise,
and an error always reported for the files it concerns."""

import os

import pytest

from quantum_sync import diskio


def _written(directory, count):
    fds = []
    for i in range(count):
        fd = os.open(os.path.join(directory, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"x" * 4096)
        fds.append(fd)
    return fds


@pytest.fixture
def syncfs_calls(monkeypatch):
    """The descriptors the real syncfs was called with."""
    calls, real = [], diskio._SYNCFS
    if real is not None:
        monkeypatch.setattr(diskio, "_SYNCFS", lambda fd: calls.append(fd) or real(fd))
    return calls


def _close(fds):
    for fd in fds:
        os.close(fd)


def test_many_files_one_syncfs_where_trusted(tmp_path, syncfs_calls):
    fds = _written(tmp_path, diskio.SYNCFS_FILES)
    try:
        assert diskio.fsync_all(fds) == [None] * len(fds)
        assert syncfs_calls == ([fds[0]] if diskio.syncfs_trusted(fds[0]) else [])
    finally:
        _close(fds)


def test_files_made_in_one_directory_have_only_the_first_looked_up(tmp_path, syncfs_calls, monkeypatch):
    fds = _written(tmp_path, diskio.SYNCFS_FILES)
    looked, real = [], os.fstat
    monkeypatch.setattr(diskio.os, "fstat", lambda fd: looked.append(fd) or real(fd))
    try:
        assert diskio.fsync_all(fds, one_directory=True) == [None] * len(fds)
        assert set(looked) == {fds[0]}
        assert syncfs_calls == ([fds[0]] if diskio.syncfs_trusted(fds[0]) else [])
        looked.clear()
        assert diskio.fsync_all(fds) == [None] * len(fds)
        assert set(looked) == set(fds)  # by default, each descriptor's device is checked
    finally:
        _close(fds)


def test_few_files_are_fsynced_each(tmp_path, syncfs_calls):
    fds = _written(tmp_path, diskio.SYNCFS_FILES - 1)
    try:
        assert diskio.fsync_all(fds) == [None] * len(fds)
        assert syncfs_calls == []
    finally:
        _close(fds)


def test_a_bad_descriptor_fails_alone(tmp_path, syncfs_calls):
    fds = _written(tmp_path, diskio.SYNCFS_FILES + 4)
    os.close(fds[3])
    try:
        results = diskio.fsync_all(fds)
        assert isinstance(results[3], OSError)
        assert results[:3] + results[4:] == [None] * (len(fds) - 1)
        assert syncfs_calls == []
    finally:
        _close(fds[:3] + fds[4:])


def test_a_failed_syncfs_fails_every_file(tmp_path, monkeypatch):
    fds = _written(tmp_path, diskio.SYNCFS_FILES)
    try:
        # the disk cannot fail here on demand; syncfs is made to answer as it would on EIO
        # (and trusted, whatever file system the tests run on)
        monkeypatch.setitem(diskio._TRUSTED_DEVICES, os.fstat(fds[0]).st_dev, True)
        monkeypatch.setattr(diskio, "_SYNCFS", lambda fd: -1)
        monkeypatch.setattr(diskio.ctypes, "get_errno", lambda: 5)
        results = diskio.fsync_all(fds)
        assert all(isinstance(r, OSError) and r.errno == 5 for r in results)
    finally:
        _close(fds)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no tmpfs at /dev/shm")
def test_tmpfs_is_not_trusted(tmp_path):
    fd = os.open("/dev/shm", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert diskio.syncfs_trusted(fd) is False
    finally:
        os.close(fd)


def test_the_kernel_release_is_read(monkeypatch):
    assert diskio.kernel_release() >= (2, 6)
    monkeypatch.setattr(diskio.os, "uname", lambda: os.uname_result(("Linux", "h", "5.7.19-x", "", "x86_64")))
    assert diskio.kernel_release() == (5, 7) < diskio.SYNCFS_KERNEL
