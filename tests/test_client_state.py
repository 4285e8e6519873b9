"""The folder's state database: what a restart or a crash must not lose."""

import os

import pytest_twisted

from quantum_sync.client.reconcile import Entry
from quantum_sync.client.state import Base, FolderState, tmp_dir

FILE = Base(Entry("a" * 64, 10), 1700000000.5, 10, 1700000000500000000)
DIR = Base(Entry("", 0, True), 1700000000.0, 0, 0)


@pytest_twisted.ensureDeferred
async def test_state_survives_a_restart(reactor, tmp_path):
    state = await FolderState(reactor, str(tmp_path)).open()
    assert state.is_new
    client_id = state.client_id()
    assert state.client_id() == client_id  # generated once
    state.set_base("d", DIR)
    state.set_base("d/f.txt", FILE)
    state.set_base("gone.txt", FILE)
    state.forget("gone.txt")
    state.set_cursor(42)
    state.queue("offline.txt")
    state.queue("moved.txt", "was.txt")
    await state.close()

    again = await FolderState(reactor, str(tmp_path)).open()
    try:
        assert not again.is_new
        assert again.client_id() == client_id
        assert again.bases == {"d": DIR, "d/f.txt": FILE}
        assert again.cursor == 42
        assert again.pending == {"offline.txt": None, "moved.txt": "was.txt"}
        again.move("d", "e")
        again.unqueue("offline.txt")
        assert set(again.bases) == {"e", "e/f.txt"}
    finally:
        await again.close()
    third = await FolderState(reactor, str(tmp_path)).open()
    try:
        assert set(third.bases) == {"e", "e/f.txt"} and third.pending == {"moved.txt": "was.txt"}
        assert third.client_id("explicit-id") == "explicit-id"
    finally:
        await third.close()


@pytest_twisted.ensureDeferred
async def test_crash_leftovers_in_tmp_are_removed_on_open(reactor, tmp_path):
    os.makedirs(tmp_dir(str(tmp_path)))
    leftover = os.path.join(tmp_dir(str(tmp_path)), "dl-half-written")
    with open(leftover, "wb") as f:
        f.write(b"partial")
    state = await FolderState(reactor, str(tmp_path)).open()
    try:
        assert os.listdir(tmp_dir(str(tmp_path))) == []
    finally:
        await state.close()


@pytest_twisted.ensureDeferred
async def test_a_copied_folder_takes_a_new_client_id(reactor, tmp_path):
    import shutil

    original = tmp_path / "original"
    original.mkdir()
    state = await FolderState(reactor, str(original)).open()
    first = state.client_id()
    state.set_base("f.txt", FILE)
    await state.close()
    again = await FolderState(reactor, str(original)).open()
    try:
        assert again.client_id() == first and getattr(again, "made_for", None) is None  # the same folder
    finally:
        await again.close()

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)  # with its .quantum-sync/
    copied = await FolderState(reactor, str(copy)).open()
    try:
        assert copied.made_for == str(original)
        second = copied.client_id()
        assert second != first
        assert copied.bases == {"f.txt": FILE}  # what was synced stays known
    finally:
        await copied.close()
    reopened = await FolderState(reactor, str(copy)).open()
    try:
        assert reopened.made_for is None and reopened.client_id() == second  # remembered from now on
    finally:
        await reopened.close()

    given = tmp_path / "given"
    shutil.copytree(original, given)
    kept = await FolderState(reactor, str(given)).open()
    try:
        assert kept.made_for == str(original) and kept.client_id("laptop-1") == "laptop-1"
    finally:
        await kept.close()
    original_again = await FolderState(reactor, str(original)).open()
    try:
        assert original_again.client_id() == first
    finally:
        await original_again.close()


@pytest_twisted.ensureDeferred
async def test_a_failed_write_is_kept_and_written_again(reactor, tmp_path):
    from support import wait_for
    from logcapture import LogCapture

    state = await FolderState(reactor, str(tmp_path)).open()
    try:
        state.client_id()
        await state.flush()
        # the database refuses writes for a while (as a full disk or an I/O error would)
        await state._run(state._db.execute, "PRAGMA query_only=1")
        with LogCapture() as log:
            state.set_base("kept.txt", FILE)
            state.queue("queued.txt")
            await state.flush()
            assert state.unwritten == 2
            state.set_base("later.txt", FILE)  # a change made while the writes fail
            await state._run(state._db.execute, "PRAGMA query_only=0")
            await wait_for(reactor, lambda: state.unwritten == 0, what="the retried write")
        assert sum("writing the folder's state failed" in line for line in log.text().splitlines()) == 1
    finally:
        await state.close()
    again = await FolderState(reactor, str(tmp_path)).open()
    try:
        assert again.bases == {"kept.txt": FILE, "later.txt": FILE} and again.pending == {"queued.txt": None}
    finally:
        await again.close()
