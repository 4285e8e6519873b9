"""The web UI in headless Chromium against a real server on 127.0.0.1, with real sync
clients on real folders: the listing, live changes, uploads, renames and deletes that
reach a client's folder, a folder of 10,000 files, login and roles, a hostile file name,
and the connection indicator across a server restart.

One browser serves the whole module (:mod:`tests.browser`); every page has its own
context. Every wait has a deadline (Playwright's timeout, or the disk poll's).
"""

import base64
import hashlib
import json
import os
import shutil
import sys
import time

import pytest
import pytest_twisted

from tests import browser as browser_support
from tests.browser import BrowserThread, open_page, require_browser, row_selector
from tests.support import HttpClient, start_server, wait_for as wait_on_disk
from tests.test_auth_e2e import PASSWORDS, auth_section
from tests.clients import read, write

HOSTILE = "<img src=x onerror=window.__pwned=1>"


@pytest.fixture(scope="module")
def browser(reactor):
    require_browser()  # CI installs chromium (.ci/run): there a missing one fails
    running = BrowserThread(reactor)
    yield running
    running.close()


class UiSession:
    """The servers a test starts and the pages it opens, all closed when it ends (the
    pages first, then the servers; a test's sync clients stop before either)."""

    def __init__(self, reactor, tmp_path, browser):
        self.reactor, self.tmp_path, self.browser = reactor, tmp_path, browser
        self.servers, self.pages = [], []
        self._http = None

    def root(self, files: dict):
        """The root the servers serve (``tmp_path/root``), holding ``files`` ({name: bytes})."""
        root = self.tmp_path / "root"
        root.mkdir(exist_ok=True)
        for name, data in files.items():
            (root / name).write_bytes(data)
        return root

    async def api(self, method, url, **options):
        """``HttpClient.json`` of one request to a server, as another client would send it."""
        if self._http is None:
            self._http = HttpClient(self.reactor)
        return await self._http.json(method, url, **options)

    async def serve(self, **handler_overrides):
        server = await start_server(self.reactor, self.tmp_path, **handler_overrides)
        self.servers.append(server)
        return server

    async def open(self, url, **options):
        page = await open_page(self.browser, url, **options)
        self.pages.append(page)
        return page

    async def client_page(self, clients, path, data):
        """A server, client ``a``'s folder with ``path`` (``data``) written in it, and a
        page that lists that file."""
        server = await self.serve()
        folder = (await clients.start(server, "a")).config.folder
        write(folder, path, data)
        page = await self.open(server.url)
        await self.browser.run(lambda b: page.wait_for_selector(row_selector(path)))
        return server, folder, page

    async def close(self):
        for page in self.pages:
            await self.browser.run(lambda b, page=page: page.context.close())
        if self._http is not None:
            await self._http.close()
        for server in self.servers:
            await server.stop()


@pytest_twisted.async_yield_fixture
async def ui(reactor, tmp_path, browser):
    session = UiSession(reactor, tmp_path, browser)
    yield session
    await session.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def claims(token: str) -> dict:
    """A JWT's claims, unverified (whole seconds)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def paths_listed(browser, page) -> list:
    return await browser.run(lambda b: page.eval_on_selector_all(
        ".row", "rows => rows.map(r => r.dataset.path)"))


async def answer_dialog(browser, page, value=None):
    """Fill (when ``value`` is given) and confirm the page's open dialog."""
    def fill(b):
        page.wait_for_selector("#dialog[open]")
        if value is not None:
            page.fill("#dialog-input", value)
        page.click("#dialog-ok")
    await browser.run(fill)


@pytest_twisted.ensureDeferred
async def test_lists_the_files_and_shows_a_clients_write_without_reload(reactor, tmp_path, browser, ui, clients):
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_bytes(b"alpha")
    (root / "top.bin").write_bytes(b"x" * 2048)
    server = await ui.serve()
    client = await clients.start(server, "a")
    page = await ui.open(server.url)
    assert await paths_listed(browser, page) == ["docs", "top.bin"]
    cells = await browser.run(lambda b: page.eval_on_selector(
        row_selector("top.bin"), "r => [...r.querySelectorAll('span.size, span.modified, span.hash')].map(c => c.textContent)"))
    _, listing = await ui.api("GET", server.url + "/api/list")
    (modified,) = [m["modified"] for m in listing if m["path"] == "top.bin"]
    shown = await browser.run(lambda b: page.evaluate(
        "(text) => new Date(text).toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' })", modified))
    assert cells == ["2.0 KiB", shown, sha(b"x" * 2048)[:8]]
    await browser.run(lambda b: page.click(row_selector("docs") + " button.dir"))
    await browser.run(lambda b: page.wait_for_selector(row_selector("docs/a.txt")))
    assert await browser.run(lambda b: page.text_content("#crumbs")) == "root/docs"
    await browser.run(lambda b: page.evaluate("window.__same_page = true"))
    await wait_on_disk(reactor, lambda: read(client.config.folder, "docs/a.txt") == b"alpha",
                       what="the client's first sync")
    write(client.config.folder, "docs/new.txt", b"written by a client")
    # the row appears, highlighted, in the page that was never reloaded
    await browser.run(lambda b: page.wait_for_selector(row_selector("docs/new.txt") + ".changed"))
    assert await browser.run(lambda b: page.evaluate("window.__same_page")) is True
    assert await paths_listed(browser, page) == ["docs/a.txt", "docs/new.txt"]
    # the activity feed names the operation, the path and the client
    await browser.run(lambda b: page.click(".tab[data-view=activity]"))
    first = await browser.run(lambda b: page.eval_on_selector(
        "#activity tr", "r => [...r.cells].slice(1).map(c => c.textContent)"))
    assert first == ["Create", "docs/new.txt", "a"]
    await browser.run(lambda b: page.click(".tab[data-view=files]"))
    shot = tmp_path / "ui.png"
    await browser.run(lambda b: page.screenshot(path=str(shot)))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("QS_UI_SCREENSHOT"):  # docs/ui.md's picture
        shutil.copy(shot, os.environ["QS_UI_SCREENSHOT"])
    assert page.errors == []


@pytest_twisted.ensureDeferred
async def test_upload_rename_and_delete_reach_a_client_folder(reactor, tmp_path, browser, ui, clients):
    server, folder, page = await ui.client_page(clients, "other.txt", b"taken")
    data = os.urandom(300 * 1024) + bytes(range(256))

    def choose(b):  # the "Upload files" button opens the file input's chooser
        with page.expect_file_chooser() as chooser:
            page.click("#upload-button")
        chooser.value.set_files(files=[{"name": "up.bin", "mimeType": "application/octet-stream", "buffer": data}])
    await browser.run(choose)
    await wait_on_disk(reactor, lambda: read(folder, "up.bin") == data, what="the uploaded file")
    await browser.run(lambda b: page.wait_for_selector('#upload-items li.done[data-path="up.bin"]'))
    bars = await browser.run(lambda b: page.eval_on_selector_all(
        '#upload-overall, #upload-items li[data-path="up.bin"] progress', "bars => bars.map(p => [p.value, p.max])"))
    assert bars == [[len(data), len(data)]] * 2  # the file's bar and the overall one, full

    # a rename onto an existing name: the server's message is shown, nothing changes
    await browser.run(lambda b: page.click(row_selector("up.bin") + " .act-rename"))
    await answer_dialog(browser, page, "other.txt")
    await browser.run(lambda b: page.wait_for_selector("#error:not([hidden])"))
    message = await browser.run(lambda b: page.text_content("#error-text"))
    _, answer = await ui.api("POST", server.url + "/api/sync", data=json.dumps(
        {"operations": [{"Move": {"from": "up.bin", "to": "other.txt"}}]}).encode())
    assert message == answer["results"][0]["message"]
    assert read(folder, "other.txt") == b"taken"

    await browser.run(lambda b: page.click(row_selector("up.bin") + " .act-rename"))
    await answer_dialog(browser, page, "moved/renamed.bin")
    await wait_on_disk(reactor, lambda: read(folder, "moved/renamed.bin") == data
                       and read(folder, "up.bin") is None, what="the rename")
    await browser.run(lambda b: page.click(row_selector("moved") + " button.dir"))
    sent = []  # /api/sync requests from here on: the cancelled Delete sends none

    def cancel(b):
        page.on("request", lambda request: sent.append(request.post_data) if "/api/sync" in request.url else None)
        page.click(row_selector("moved/renamed.bin") + " .act-delete")
        page.wait_for_selector("#dialog[open]")
        page.click("#dialog-cancel")
        page.wait_for_selector("#dialog", state="hidden")
    await browser.run(cancel)
    await browser.run(lambda b: page.click(row_selector("moved/renamed.bin") + " .act-delete"))
    await answer_dialog(browser, page)
    await wait_on_disk(reactor, lambda: read(folder, "moved/renamed.bin") is None, what="the delete")
    await browser.run(lambda b: page.wait_for_selector(row_selector("moved/renamed.bin"), state="detached"))
    assert [json.loads(body)["operations"] for body in sent] == [
        [{"Delete": {"path": "moved/renamed.bin", "if_match": sha(data)}}]]
    assert page.errors == []


@pytest_twisted.ensureDeferred
async def test_a_folder_of_10000_files_opens_and_scrolls(reactor, tmp_path, browser, ui):
    big = tmp_path / "root" / "big"
    big.mkdir(parents=True)
    for i in range(10000):
        (big / f"f{i:05d}.txt").write_bytes(b"%d" % i)
    server = await ui.serve()
    started = time.monotonic()
    page = await ui.open(server.url + "/#/big", ready=False)
    await browser.run(lambda b: page.wait_for_selector(row_selector("big/f00000.txt")))
    print(f"time to first row of 10,000: {time.monotonic() - started:.3f} s")
    assert await browser.run(lambda b: page.text_content("#list-count")) == "10000 entries"
    in_dom = await browser.run(lambda b: page.eval_on_selector_all(".row", "rows => rows.length"))
    assert 10 < in_dom < 100  # only what is in view
    await browser.run(lambda b: page.eval_on_selector("#list", "l => { l.scrollTop = l.scrollHeight; }"))
    await browser.run(lambda b: page.wait_for_selector(row_selector("big/f09999.txt")))
    await browser.run(lambda b: page.eval_on_selector("#list", "l => { l.scrollTop = l.scrollHeight / 2; }"))
    await browser.run(lambda b: page.wait_for_selector(row_selector("big/f05000.txt")))
    assert await browser.run(lambda b: page.eval_on_selector_all(".row", "rows => rows.length")) < 100
    # sorting by name the other way round brings the last file to the top
    await browser.run(lambda b: page.click(".columns .col[data-sort=name]"))
    await browser.run(lambda b: page.eval_on_selector("#list", "l => { l.scrollTop = 0; }"))
    await browser.run(lambda b: page.wait_for_function(
        "() => document.querySelector('.row').dataset.path === 'big/f09999.txt'"))
    assert await browser.run(lambda b: page.get_attribute(".columns .col[data-sort=name]", "data-order")) == "desc"
    # the filter narrows the 10,000 to one
    await browser.run(lambda b: page.fill("#filter", "f04242"))
    await browser.run(lambda b: page.wait_for_selector("#list-count:text('1 entry')"))
    assert await paths_listed(browser, page) == ["big/f04242.txt"]
    assert page.errors == []


@pytest_twisted.ensureDeferred
async def test_login_roles_and_a_wrong_password(reactor, tmp_path, browser, ui):
    ui.root({"a.txt": b"alpha"})
    server = await ui.serve(auth=auth_section(tmp_path))

    urls = []  # of every request and WebSocket the pages open

    async def log_in(user, password):
        page = await ui.open(server.url, ready=False)

        def submit(b):
            page.on("request", lambda request: urls.append(request.url))
            page.on("websocket", lambda socket: urls.append(socket.url))
            page.wait_for_selector("#login:not([hidden])")
            page.fill("#login-user", user)
            page.fill("#login-password", password)
            page.click("#login-submit")
        await browser.run(submit)
        return page

    page = await log_in("rita", "not her password")
    await browser.run(lambda b: page.wait_for_selector("#login-error:not(:empty)"))
    shown = await browser.run(lambda b: page.text_content("#login-error"))
    _, answer = await ui.api("POST", server.url + "/api/v1/auth/login", expect=401,
                             data=json.dumps({"username": "rita", "password": "x"}).encode())
    assert shown == answer["error"]["message"]
    assert await browser.run(lambda b: page.is_hidden("#app"))

    reader = await log_in("rita", PASSWORDS["rita"])
    await browser.run(lambda b: reader.wait_for_selector("body[data-ready=true]"))
    await browser.run(lambda b: reader.wait_for_selector("#connection[data-state=live]"))
    assert await paths_listed(browser, reader) == ["a.txt"]
    assert await browser.run(lambda b: reader.query_selector_all(".act-delete, .act-rename")) == []
    assert await browser.run(lambda b: reader.query_selector(row_selector("a.txt") + " .act-download"))
    for control in ("#upload-button", "#upload-folder-button", "#new-folder"):
        assert await browser.run(lambda b: reader.is_hidden(control)), control

    def fetch(b):  # with the token in a header: the page saves what it fetched
        with reader.expect_download() as caught:
            reader.click(row_selector("a.txt") + " .act-download")
        return caught.value.path()
    assert open(await browser.run(fetch), "rb").read() == b"alpha"
    assert "token" not in reader.url
    assert any(url.endswith("/ws") for url in urls)
    assert [url for url in urls if "token" in url] == []  # in headers and the auth message only
    assert await browser.run(lambda b: reader.text_content("#user")) == "rita (read)"
    # connected clients are for admins: the page shows the server's refusal
    await browser.run(lambda b: reader.click(".tab[data-view=status]"))
    await browser.run(lambda b: reader.wait_for_selector("#clients-note:not([hidden])"))
    token = await browser.run(lambda b: reader.evaluate(
        "() => JSON.parse(sessionStorage.getItem('quantum-sync.token')).token"))
    _, refused = await ui.api("GET", server.url + "/ws/status", expect=403,
                              headers={"Authorization": [f"Bearer {token}"]})
    assert await browser.run(lambda b: reader.text_content("#clients-note")) == \
        f"Connected clients: {refused['error']['message']}"

    writer = await log_in("wendy", PASSWORDS["wendy"])
    await browser.run(lambda b: writer.wait_for_selector(row_selector("a.txt") + " .act-delete"))
    assert await browser.run(lambda b: writer.is_visible("#upload-button"))
    for page in ui.pages:
        assert page.errors == []


@pytest_twisted.ensureDeferred
async def test_a_name_made_of_markup_is_shown_as_text(reactor, tmp_path, browser, ui):
    ui.root({HOSTILE: b"<script>window.__pwned=2</script>"})
    server = await ui.serve()
    page = await ui.open(server.url)
    # and one more arriving live, into the list and the activity feed
    await ui.api("POST", server.url + "/api/upload", params={"path": HOSTILE + "2"}, data=b"x")
    await browser.run(lambda b: page.wait_for_selector(row_selector(HOSTILE + "2")))
    names = await browser.run(lambda b: page.eval_on_selector_all(
        ".row .name", "cells => cells.map(c => c.textContent)"))
    assert names == [HOSTILE, HOSTILE + "2"]
    await browser.run(lambda b: page.click(".tab[data-view=activity]"))
    feed = await browser.run(lambda b: page.text_content("#activity"))
    assert HOSTILE + "2" in feed
    assert await browser.run(lambda b: page.evaluate("document.querySelectorAll('main img').length")) == 0
    assert await browser.run(lambda b: page.evaluate("window.__pwned")) is None
    assert page.errors == []


@pytest_twisted.ensureDeferred
async def test_the_indicator_across_a_restart_and_the_change_made_meanwhile(reactor, tmp_path, browser, ui):
    root = ui.root({"before.txt": b"before"})
    server = await ui.serve()
    listen = f"tcp:{server.port}:interface=127.0.0.1"
    page = await ui.open(server.url)
    requests = []
    await browser.run(lambda b: page.on("request", lambda r: requests.append(r.url)))
    await browser.run(lambda b: page.wait_for_selector("#connection[data-state=live]"))
    await browser.run(lambda b: page.evaluate("""() => {
        window.__tries = [];  // [when, "next try in X s"] as the indicator says it
        const indicator = document.getElementById('connection');
        new MutationObserver(() => window.__tries.push([performance.now(), indicator.title]))
            .observe(indicator, { attributeFilter: ['title'] });
    }"""))
    await server.stop()
    await browser.run(lambda b: page.wait_for_selector("#connection[data-state=reconnecting]"))
    # three tries, each waiting about twice as long as the one before (±20 %)
    await browser.run(lambda b: page.wait_for_function(
        "() => window.__tries.filter(([, title]) => title.startsWith('next try in')).length >= 3"))
    tries = [(at, float(title.split()[3])) for at, title in
             await browser.run(lambda b: page.evaluate("window.__tries")) if title.startswith("next try in")]
    for attempt, (at, delay) in enumerate(tries[:3]):
        assert 0.4 * 2 ** attempt - 0.05 <= delay <= 0.6 * 2 ** attempt + 0.05, tries
    for (at, delay), (next_at, _) in zip(tries[:2], tries[1:3]):
        assert next_at - at >= delay * 1000 - 60, tries  # the next try waited its delay
    (root / "meanwhile.txt").write_bytes(b"made while the page was cut off")
    server = await ui.serve(listen=listen)
    await browser.run(lambda b: page.wait_for_selector("#connection[data-state=live]"))
    await browser.run(lambda b: page.wait_for_selector(row_selector("meanwhile.txt")))
    assert await paths_listed(browser, page) == ["before.txt", "meanwhile.txt"]
    # caught up from the journal with its cursor, not by listing everything again
    assert not any("/api/list" in url for url in requests), requests
    assert any("/api/changes?since=" in url for url in requests), requests
    # the schedule itself: doubling from 0.5 s to at most 10 s, spread by ±20 %
    delays = await browser.run(lambda b: page.evaluate("""async () => {
        const { retryDelay } = await import('/ui/live.js');
        return [0.5, 0, 0.999999].map((random) => [0, 1, 2, 3, 4, 5, 9, 40].map((n) => retryDelay(n, random)));
    }"""))
    assert delays[0] == [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]
    assert [round(d) for d in delays[1]] == [400, 800, 1600, 3200, 6400, 8000, 8000, 8000]
    assert [round(d) for d in delays[2]] == [600, 1200, 2400, 4800, 9600, 12000, 12000, 12000]


@pytest_twisted.ensureDeferred
async def test_a_new_journal_behind_the_same_address_is_listed_anew(reactor, tmp_path, browser, ui):
    ui.root({"old.txt": b"of the first server"})
    server = await ui.serve()
    listen = f"tcp:{server.port}:interface=127.0.0.1"
    page = await ui.open(server.url)
    await browser.run(lambda b: page.wait_for_selector("#connection[data-state=live]"))
    _, figures = await ui.api("GET", server.url + "/ws/metrics")
    await server.stop()
    await browser.run(lambda b: page.wait_for_selector("#connection[data-state=reconnecting]"))
    # another server (its own root and journal) at the same address, its journal as long
    # as the first one's or longer: the page's cursor names a place in it, but not the same
    other = tmp_path / "other"
    other.mkdir()
    for name in ("n1.txt", "n2.txt", "n3.txt"):
        (other / name).write_bytes(name.encode())
    server = await ui.serve(listen=listen, root=str(other))
    _, now = await ui.api("GET", server.url + "/ws/metrics")
    assert now["journal_head"] >= figures["journal_head"]
    await browser.run(lambda b: page.wait_for_selector("#connection[data-state=live]"))
    await browser.run(lambda b: page.wait_for_selector(row_selector("n1.txt")))
    assert await paths_listed(browser, page) == ["n1.txt", "n2.txt", "n3.txt"]
    assert page.errors == []


@pytest_twisted.ensureDeferred
async def test_new_folder_drops_folder_upload_and_download(reactor, tmp_path, browser, ui, clients):
    server, folder, page = await ui.client_page(clients, "have.txt", b"downloaded bytes")
    await browser.run(lambda b: page.click("#new-folder"))
    await answer_dialog(browser, page, "fresh")
    await wait_on_disk(reactor, lambda: os.path.isdir(os.path.join(folder, "fresh")), what="the new folder")
    await browser.run(lambda b: page.click(row_selector("fresh") + " button.dir"))
    # files dropped on the page go into the folder shown
    await browser.run(lambda b: page.evaluate("""() => {
        const data = new DataTransfer();
        data.items.add(new File(["dropped one"], "one.txt"));
        data.items.add(new File([new Uint8Array([0, 1, 2, 255])], "two.bin"));
        for (const type of ["dragenter", "dragover", "drop"]) {
            document.body.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
        }
    }"""))
    await wait_on_disk(reactor, lambda: read(folder, "fresh/one.txt") == b"dropped one"
                       and read(folder, "fresh/two.bin") == bytes([0, 1, 2, 255]), what="the dropped files")
    # a whole folder through the folder input keeps its tree
    tree = tmp_path / "picked" / "album"
    (tree / "inner").mkdir(parents=True)
    (tree / "cover.txt").write_bytes(b"cover")
    (tree / "inner" / "deep.txt").write_bytes(b"deep")
    await browser.run(lambda b: page.set_input_files("#folder-input", str(tree)))
    await wait_on_disk(reactor, lambda: read(folder, "fresh/album/cover.txt") == b"cover"
                       and read(folder, "fresh/album/inner/deep.txt") == b"deep", what="the folder upload")
    # and a folder dragged from the desktop: Chromium's own drag of a path (DevTools
    # protocol), so the page walks it with webkitGetAsEntry as it would a real drop
    dragged = tmp_path / "desktop" / "dragged"
    (dragged / "sub" / "subsub").mkdir(parents=True)
    (dragged / "top.txt").write_bytes(b"top")
    (dragged / "sub" / "subsub" / "bottom.bin").write_bytes(bytes(range(256)) * 40)

    def drag_folder(b):
        devtools = page.context.new_cdp_session(page)
        data = {"items": [], "files": [str(dragged)], "dragOperationsMask": 1}
        for kind in ("dragEnter", "dragOver", "drop"):
            devtools.send("Input.dispatchDragEvent", {"type": kind, "x": 600, "y": 400, "data": data})
        devtools.detach()
    await browser.run(drag_folder)
    await wait_on_disk(reactor, lambda: read(folder, "fresh/dragged/top.txt") == b"top"
                       and read(folder, "fresh/dragged/sub/subsub/bottom.bin") == bytes(range(256)) * 40,
                       what="the dragged folder")
    await browser.run(lambda b: page.click("#crumbs button:text('root')"))

    def fetch(b):
        with page.expect_download() as caught:
            page.click(row_selector("have.txt") + " .act-download")
        return caught.value.path()
    saved = await browser.run(fetch)
    assert open(saved, "rb").read() == b"downloaded bytes"
    # the server keeps versions: every file has a history, every folder its deleted files
    assert await browser.run(lambda b: page.is_hidden("#deleted-button")) is False
    assert bool(await browser.run(lambda b: page.query_selector_all(".act-history"))) is True
    assert page.errors == []


@pytest_twisted.ensureDeferred
async def test_keep_this_version_moves_the_conflict_copy_over_the_original(reactor, tmp_path, browser, ui, clients):
    copy = "notes.sync-conflict-20240101-120000-bob.txt"
    root = ui.root({"notes.txt": b"theirs", copy: b"mine",
                    "lonely.sync-conflict-20240101-120000-bob.txt": b"no original"})
    server = await ui.serve()
    client = await clients.start(server, "a")
    folder = client.config.folder
    page = await ui.open(server.url)
    badges = await browser.run(lambda b: page.eval_on_selector_all(
        ".row .badge", "badges => badges.map(b => b.closest('.row').dataset.path)"))
    assert sorted(badges) == sorted([copy, "lonely.sync-conflict-20240101-120000-bob.txt"])
    # (a copy whose original is gone has nothing to replace)
    assert await browser.run(lambda b: page.query_selector_all(".act-keep")) != []
    assert await browser.run(lambda b: page.query_selector(
        row_selector("lonely.sync-conflict-20240101-120000-bob.txt") + " .act-keep")) is None
    # the activity feed marks them too
    await browser.run(lambda b: page.click(".tab[data-view=activity]"))
    marked = await browser.run(lambda b: page.eval_on_selector_all(
        "#activity .path", "cells => cells.map(c => [c.firstChild.textContent, !!c.querySelector('.badge')])"))
    assert sorted(marked) == sorted([[copy, True], ["lonely.sync-conflict-20240101-120000-bob.txt", True],
                                     ["notes.txt", False]])
    await browser.run(lambda b: page.click(".tab[data-view=files]"))
    await wait_on_disk(reactor, lambda: read(folder, copy) == b"mine", what="the first sync")
    await browser.run(lambda b: page.click(row_selector(copy) + " .act-keep"))
    await answer_dialog(browser, page)
    await wait_on_disk(reactor, lambda: read(folder, "notes.txt") == b"mine" and read(folder, copy) is None,
                       what="the kept version")
    await browser.run(lambda b: page.wait_for_selector(row_selector(copy), state="detached"))
    assert (root / "notes.txt").read_bytes() == b"mine"
    assert page.errors == []


@pytest_twisted.ensureDeferred
async def test_a_delete_of_a_file_changed_meanwhile_is_refused(reactor, tmp_path, browser, ui):
    root = ui.root({"a.txt": b"seen"})
    server = await ui.serve()
    page = await ui.open(server.url)
    await browser.run(lambda b: page.click(row_selector("a.txt") + " .act-delete"))
    await browser.run(lambda b: page.wait_for_selector("#dialog[open]"))
    # another client changes it while the dialog is open
    await ui.api("POST", server.url + "/api/upload", params={"path": "a.txt"}, data=b"changed")
    await browser.run(lambda b: page.wait_for_selector(
        row_selector("a.txt") + f" .hash:text('{sha(b'changed')[:8]}')"))
    await answer_dialog(browser, page)
    await browser.run(lambda b: page.wait_for_selector("#error:not([hidden])"))
    shown = await browser.run(lambda b: page.text_content("#error-text"))
    assert "a.txt changed since this client saw it" in shown  # the server's message
    assert (root / "a.txt").read_bytes() == b"changed"
    assert page.errors == []


@pytest_twisted.ensureDeferred
async def test_status_shows_clients_and_live_charts(reactor, tmp_path, browser, ui, clients):
    server = await ui.serve()
    await clients.start(server, "status-client")
    page = await ui.open(server.url)
    await browser.run(lambda b: page.click(".tab[data-view=status]"))
    await browser.run(lambda b: page.wait_for_selector("#clients td:text('status-client')"))
    # two samples make a line; the figure beside each chart is the latest one
    await browser.run(lambda b: page.wait_for_function(
        "() => document.getElementById('value-messages').textContent !== ''"))
    connections = await browser.run(lambda b: page.text_content("#value-connections"))
    assert int(connections) >= 2  # the client and the page
    storage = await browser.run(lambda b: page.text_content("#value-storage"))
    assert storage.split()[-1] in ("B", "KiB", "MiB", "GiB", "TiB") and float(storage.split()[0]) > 0
    drawn = await browser.run(lambda b: page.evaluate("""() => {
        const canvas = document.getElementById('chart-connections');
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        return pixels.some((value, index) => index % 4 === 3 && value > 0);
    }"""))
    assert drawn is True
    assert page.errors == []


@pytest_twisted.ensureDeferred
async def test_the_token_is_renewed_before_it_expires(reactor, tmp_path, browser, ui):
    root = ui.root({"a.txt": b"alpha", "b.txt": b"beta"})
    server = await ui.serve(auth=auth_section(tmp_path, ttl=3))
    page = await ui.open(server.url, ready=False)
    sent = []  # the auth messages the page sends on /ws

    def log_in(b):
        page.on("websocket", lambda socket: socket.on("framesent", lambda payload: sent.append(
            json.loads(payload)) if '"auth"' in payload else None))
        page.fill("#login-user", "wendy")
        page.fill("#login-password", PASSWORDS["wendy"])
        page.click("#login-submit")
        page.wait_for_selector("body[data-ready=true]")
        return page.evaluate("() => JSON.parse(sessionStorage.getItem('quantum-sync.token'))")
    first = await browser.run(log_in)
    expires = first["expires_at"]
    # a new token before the first one runs out, then work after it ran out
    await browser.run(lambda b: page.wait_for_function(
        f"() => JSON.parse(sessionStorage.getItem('quantum-sync.token')).token !== {json.dumps(first['token'])}"))
    # the new token goes to the open WebSocket too, in an auth message
    await wait_on_disk(reactor, lambda: any(m.get("id") == "renew" for m in sent), what="the renewed auth")
    assert sent[0]["payload"]["token"] == first["token"]
    second = next(m for m in sent if m.get("id") == "renew")["payload"]["token"]
    assert claims(second)["iat"] < claims(first["token"])["exp"]  # issued before the first ran out
    await browser.run(lambda b: page.wait_for_function(
        f"() => Date.now() > new Date({json.dumps(expires)}).getTime() + 500"))
    await browser.run(lambda b: page.click(row_selector("b.txt") + " .act-delete"))
    await answer_dialog(browser, page)
    await browser.run(lambda b: page.wait_for_selector(row_selector("b.txt"), state="detached"))
    assert not (root / "b.txt").exists()
    assert await browser.run(lambda b: page.get_attribute("#connection", "data-state")) == "live"
    assert await browser.run(lambda b: page.is_hidden("#login"))
    assert page.errors == []


@pytest_twisted.ensureDeferred
async def test_history_and_deleted_files_are_restored_from_the_page(reactor, tmp_path, browser, ui):
    server = await ui.serve()
    for path, data in (("a.txt", b"first"), ("a.txt", b"second"), ("d/gone.txt", b"deleted later")):
        await ui.api("POST", server.url + "/api/upload", params={"path": path}, data=data)
    await ui.api("POST", server.url + "/api/sync", data=json.dumps(
        {"operations": [{"Delete": {"path": "d/gone.txt"}}]}).encode())
    page = await ui.open(server.url)
    await browser.run(lambda b: page.click(row_selector("a.txt") + " .act-history"))
    first = f'#versions[open] tr[data-hash="{sha(b"first")}"] .act-restore'
    await browser.run(lambda b: page.click(first))
    await browser.run(lambda b: page.wait_for_selector("#versions", state="hidden"))
    root = tmp_path / "root"
    await wait_on_disk(reactor, lambda: read(str(root), "a.txt") == b"first", what="the restored version")
    await browser.run(lambda b: page.wait_for_selector(
        row_selector("a.txt") + f" .hash:text('{sha(b'first')[:8]}')"))
    await browser.run(lambda b: page.click(row_selector("d") + " button.dir"))
    await browser.run(lambda b: page.click("#deleted-button"))
    await browser.run(lambda b: page.click('#versions[open] tr[data-path="d/gone.txt"] .act-restore'))
    await wait_on_disk(reactor, lambda: read(str(root), "d/gone.txt") == b"deleted later",
                       what="the restored file")
    await browser.run(lambda b: page.wait_for_selector(row_selector("d/gone.txt")))
    assert page.errors == []


@pytest_twisted.ensureDeferred
async def test_the_tree_model_applies_journal_operations(reactor, tmp_path, browser, ui):
    """tree.js on its own (no DOM, no network), imported into a page of the server."""
    server = await ui.serve()
    page = await ui.open(server.url)
    result = await browser.run(lambda b: page.evaluate("""async () => {
        const { Tree, conflictOriginal, sortEntries, describe } = await import('/ui/tree.js');
        const file = (path, size = 1) => ({ path, size, modified: '2024-01-01T00:00:00Z', hash: 'ab', is_directory: false });
        const tree = new Tree();
        tree.reset([file('a/b/c.txt'), { path: 'a', size: 0, modified: '', hash: '', is_directory: true },
                    { path: 'a/b', size: 0, modified: '', hash: '', is_directory: true }, file('z.txt', 5)]);
        const names = (dir) => tree.children(dir).map((m) => m.path).sort();
        const out = {};
        out.created = tree.apply({ Create: { metadata: file('new/deep/x.txt') } });
        out.implicit = tree.isDirectory('new/deep');
        tree.apply({ Move: { from: 'a', to: 'm/a2' } });
        out.moved = [names(''), names('m/a2/b'), tree.get('a/b/c.txt') === undefined];
        tree.apply({ Delete: { path: 'm' } });
        out.deleted = [names(''), tree.get('m/a2/b/c.txt') === undefined];
        out.conflicts = ['a.sync-conflict-20240101-120000-bob.txt', 'a.tar.sync-conflict-20240101-120000-x.gz',
                         'd/noext.sync-conflict-20240101-120000-bob', 'plain.txt'].map(conflictOriginal);
        out.sorted = sortEntries([file('b', 3), { path: 'dir', is_directory: true, size: 0, hash: '', modified: '' }, file('a', 9)],
                                 'size', false).map((m) => m.path);
        out.described = describe({ Move: { from: 'x', to: 'y' } });
        return out;
    }"""))
    assert result["created"] == ["new/deep/x.txt"]
    assert result["implicit"] is True
    assert result["moved"] == [["m", "new", "z.txt"], ["m/a2/b/c.txt"], True]
    assert result["deleted"] == [["new", "z.txt"], True]
    assert result["conflicts"] == ["a.txt", "a.tar.gz", "d/noext", None]
    assert result["sorted"] == ["dir", "a", "b"]
    assert result["described"] == {"kind": "Move", "path": "x → y"}


@pytest_twisted.ensureDeferred
async def test_a_journal_keeping_few_entries_opens_with_what_it_keeps(reactor, tmp_path, browser, ui):
    server = await ui.serve(journal_retention=5)
    for i in range(12):
        await ui.api("POST", server.url + "/api/upload", params={"path": f"f{i:02d}.txt"}, data=b"%d" % i)
    # the last 100 entries are no longer kept: the feed starts with what comes live
    page = await ui.open(server.url)  # ready: the tree, the feed, the status and versions
    assert len(await paths_listed(browser, page)) == 12
    assert await browser.run(lambda b: page.is_hidden("#error"))
    await browser.run(lambda b: page.click(".tab[data-view=activity]"))
    await ui.api("POST", server.url + "/api/upload", params={"path": "later.txt"}, data=b"later")
    await browser.run(lambda b: page.wait_for_selector("#activity .path:has-text('later.txt')"))
    assert page.errors == []


@pytest_twisted.ensureDeferred
async def test_the_indicator_says_offline_while_the_browser_is(reactor, tmp_path, browser, ui):
    server = await ui.serve()
    page = await ui.open(server.url)
    await browser.run(lambda b: page.wait_for_selector("#connection[data-state=live]"))
    await browser.run(lambda b: page.context.set_offline(True))
    await browser.run(lambda b: page.wait_for_selector("#connection[data-state=offline]"))
    await browser.run(lambda b: page.context.set_offline(False))
    await browser.run(lambda b: page.wait_for_selector("#connection[data-state=live]"))


@pytest_twisted.ensureDeferred
async def test_refusals_show_the_servers_message(reactor, tmp_path, browser, ui):
    server = await ui.serve(enable_upload=False)
    page = await ui.open(server.url)
    await browser.run(lambda b: page.set_input_files("#file-input", files=[
        {"name": "no.bin", "mimeType": "application/octet-stream", "buffer": b"x" * 100000}]))
    await browser.run(lambda b: page.wait_for_selector('#upload-items li.failed[data-path="no.bin"]'))
    shown = await browser.run(lambda b: page.text_content("#error-text"))
    assert shown == "no.bin: uploads are disabled on this server"
    await browser.run(lambda b: page.click("#error-close"))
    await browser.run(lambda b: page.click("#new-folder"))
    await answer_dialog(browser, page, "nope")
    await browser.run(lambda b: page.wait_for_selector("#error:not([hidden])"))
    assert await browser.run(lambda b: page.text_content("#error-text")) == "changes are disabled on this server"
    assert os.listdir(server.root) == [".quantum-sync"]


def test_a_missing_browser_skips_here_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    require_browser()  # (here both are installed)
    for missing in ("chromium", "playwright"):
        with monkeypatch.context() as patch:
            if missing == "chromium":
                patch.setattr(browser_support, "CHROMIUM", "/nonexistent/chromium")
            else:
                patch.setitem(sys.modules, "playwright.sync_api", None)  # import fails
            with pytest.raises(pytest.skip.Exception):
                require_browser()
            patch.setenv("CI", "true")
            with pytest.raises(pytest.fail.Exception, match="CI is set"):
                require_browser()
