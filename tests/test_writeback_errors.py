"""A writeback error is never swallowed (the "fsyncgate" lesson): Linux reports it once
per open file, so the background ``fdatasync`` of :class:`diskio.Writeback` keeps it and
the transfer fails; nothing is installed and the temp file goes. The error is injected
through the ``datasync`` seam the server and the spool take."""

import errno
import os

import pytest
import pytest_twisted

from quantum_sync import diskio
from quantum_sync.server.spools import UploadSpool
from tests.support import start_server


def _failing(code: int):
    """A ``datasync`` that fails like a lost writeback, once per call."""
    calls = []

    def datasync(fd):
        calls.append(fd)
        raise OSError(code, os.strerror(code))

    datasync.calls = calls
    return datasync


def test_writeback_keeps_the_error_of_its_background_sync(tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        flusher = diskio.Writeback(fd, datasync=_failing(errno.EIO))
        flusher.wrote(diskio.Writeback.EVERY)
        assert flusher.stop().errno == errno.EIO
        assert flusher.error.errno == errno.EIO
    finally:
        os.close(fd)


def test_writeback_without_errors_reports_none(tmp_path):
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        flusher = diskio.Writeback(fd)
        os.write(fd, b"x" * 4096)
        flusher.wrote(diskio.Writeback.EVERY)
        assert flusher.stop() is None
    finally:
        os.close(fd)


@pytest.mark.parametrize("code, wanted", [(errno.ENOSPC, "INSUFFICIENT_STORAGE"),
                                          (errno.EIO, "INTERNAL_ERROR")])
def test_a_spool_fails_on_a_writeback_error(tmp_path, code, wanted):
    spool = UploadSpool(str(tmp_path), datasync=_failing(code))
    try:
        for _ in range(9):
            spool.write(b"x" * UploadSpool.BLOCK)
        spool.finish()
        assert spool.error is not None and spool.error.code == wanted
    finally:
        spool.close()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("code, status, wanted", [(errno.ENOSPC, 507, "INSUFFICIENT_STORAGE"),
                                                  (errno.EDQUOT, 507, "INSUFFICIENT_STORAGE"),
                                                  (errno.EIO, 500, "INTERNAL_ERROR")])
@pytest_twisted.ensureDeferred
async def test_an_upload_whose_writeback_failed_is_refused(reactor, tmp_path, http, code, status, wanted):
    datasync = _failing(code)
    running = await start_server(reactor, tmp_path, service_options={"datasync": datasync})
    try:
        body = os.urandom(9 * 1024 * 1024)  # past Writeback.EVERY: one background sync
        answer, error = await http.json("POST", f"{running.url}/api/upload", expect=None,
                                        params={"path": "big.bin"}, data=body)
        assert datasync.calls, "the background sync was never asked for"
        assert (answer, error["error"]["code"]) == (status, wanted), error
        if code == errno.EIO:
            assert os.strerror(errno.EIO) in error["error"]["message"]
        assert not os.path.exists(os.path.join(running.root, "big.bin"))
        assert os.listdir(running.service.store.temp_dir) == []
        _, listing = await http.json("GET", f"{running.url}/api/list")
        assert listing == []
        _, changes = await http.json("GET", f"{running.url}/api/changes")
        assert changes["changes"] == []
    finally:
        await running.stop()
