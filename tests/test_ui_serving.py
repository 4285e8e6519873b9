"""The web UI's files as a real server serves them (handler key ``ui``), and the headers
that keep an uploaded file from running in the UI's origin."""

import hashlib
import os

import pytest_twisted

from quantum_sync.server import webui
from tests.support import start_server


def header(response, name: str):
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


def assert_locked_down(response):
    policy = header(response, "Content-Security-Policy")
    assert policy is not None
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert "unsafe" not in policy
    assert header(response, "X-Content-Type-Options") == "nosniff"


@pytest_twisted.ensureDeferred
async def test_the_page_and_every_asset_are_served_locked_down(server, http):
    response = await http.get(server.url + "/")
    page = await response.content()
    assert response.code == 200
    assert header(response, "Content-Type") == "text/html; charset=utf-8"
    assert_locked_down(response)
    assert b'<script type="module" src="/ui/app.js">' in page
    assert b"<script>" not in page and b" on" not in page.replace(b" one", b"")  # nothing inline
    names = sorted(os.listdir(webui.UI_DIRECTORY))
    assert {"index.html", "app.js", "style.css"} <= set(names)
    for name in names:
        response = await http.get(server.url + "/ui/" + name)
        body = await response.content()
        assert response.code == 200, name
        with open(os.path.join(webui.UI_DIRECTORY, name), "rb") as f:
            assert body == f.read()
        assert_locked_down(response)
        expected = webui.CONTENT_TYPES[os.path.splitext(name)[1]].decode()
        assert header(response, "Content-Type") == expected
        again = await http.get(server.url + "/ui/" + name,
                               headers={"If-None-Match": [header(response, "ETag")]})
        assert again.code == 304, name
        await again.content()


@pytest_twisted.ensureDeferred
async def test_unknown_asset_and_writes_are_refused(server, http):
    code, body = await http.json("GET", server.url + "/ui/nothing.js", expect=404)
    assert body["error"]["code"] == "NOT_FOUND"
    code, body = await http.json("POST", server.url + "/", expect=405)
    assert body["error"]["code"] == "METHOD_NOT_ALLOWED"


@pytest_twisted.ensureDeferred
async def test_ui_false_serves_nothing(reactor, tmp_path, http):
    running = await start_server(reactor, tmp_path, ui=False)
    try:
        for path in ("/", "/ui/app.js", "/ui/index.html"):
            code, body = await http.json("GET", running.url + path, expect=404)
            assert body["error"]["code"] == "NOT_FOUND"
        await http.json("GET", running.url + "/api/list")  # the API is still there
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_download_is_an_attachment_never_a_page(server, http):
    page = b"<html><script>window.__pwned = 1</script></html>" * 100
    name = "d\u00e9j\u00e0 \"vu\" <b>.html"
    response = await http.post(server.url + "/api/upload", params={"path": name}, data=page)
    assert response.code == 200, await response.content()
    await response.content()
    response = await http.get(server.url + "/api/download", params={"path": name})
    assert await response.content() == page
    disposition = header(response, "Content-Disposition")
    assert disposition.startswith("attachment; ")
    assert "filename*=UTF-8''d%C3%A9j%C3%A0%20%22vu%22%20%3Cb%3E.html" in disposition
    assert 'filename="d_j_ _vu_ <b>.html"' in disposition
    assert_locked_down(response)
    etag = header(response, "ETag")
    assert etag == '"%s"' % hashlib.sha256(page).hexdigest()
    # Range and ETag work as before
    partial = await http.get(server.url + "/api/download", params={"path": name},
                             headers={"Range": ["bytes=6-13"]})
    assert partial.code == 206
    assert await partial.content() == page[6:14]
    assert header(partial, "Content-Disposition") == disposition
    cached = await http.get(server.url + "/api/download", params={"path": name},
                            headers={"If-None-Match": [etag]})
    assert cached.code == 304
    await cached.content()
