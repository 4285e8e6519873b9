"""Hostile paths (reliability notes S6) against every path-taking endpoint of a real server.

Fixture ``hostile`` (conftest.py): ``root``, a sibling ``root-evil/canary``, a fake ``etc/passwd`` outside the root,
and symlinks ``root/link-out -> etc`` and ``root/link-sib -> ../root-evil``. No answer may
be a 500, nothing outside the root may change, and no outside content may be served.
"""

import hashlib
import json
import os

import pytest_twisted

CANARY = b"canary: must never be served or changed\n"
PASSWD = b"root:x:0:0:fake passwd outside the root\n"

#: The S6 list (literal strings; each is sent once exactly as written, query-encoded).
ATTACKS = [
    "../etc/passwd",
    "../../../../../../../../etc/passwd",
    "/etc/passwd",
    "//etc/passwd",
    "..",
    ".",
    "",
    "a/../../etc/passwd",
    "a/./../../root-evil/canary",
    "../root-evil/canary",
    "..%2froot-evil%2fcanary",
    "%2e%2e/%2e%2e/etc/passwd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "%252e%252e%252fetc%252fpasswd",
    "....//....//etc/passwd",
    "..;/etc/passwd",
    "..%5c..%5cetc%5cpasswd",
    "..\\..\\etc\\passwd",
    "%c0%ae%c0%ae/etc/passwd",
    "%e0%80%ae%e0%80%ae/etc/passwd",
    "..%c0%afetc%c0%afpasswd",
    "%ef%bc%8e%ef%bc%8e%ef%bc%8fetc%ef%bc%8fpasswd",
    "..%00/etc/passwd",
    "ok.txt%00.jpg",
    "%00",
    "a%0d%0aSet-Cookie:%20x=1",
    "C:\\Windows\\win.ini",
    "C:/Windows/win.ini",
    "\\\\server\\share\\x",
    "file:///etc/passwd",
    "link-out/passwd",
    "link-sib/canary",
    "link-out/../../etc/passwd",
    "link-out",
    "link-sib",
    "CON",
    "con.txt",
    "NUL",
    "COM1",
    "LPT9.log",
    "aux.tar.gz",
    "foo.",
    "foo%20",
    "file.txt:stream",
    'a*?<>|".txt',
    "evil%e2%80%aetxt.exe",
    "evil\u202etxt.exe",
    ".qsfolder",
    ".quantum-sync/tmp/x",
    ".quantum-sync/index.sqlite3",
    ".quantum-sync",
    "a//b",
    "a/b/",
    "a" * 256,
    "/".join(["a" * 100] * 41),
    "x\x00y",
    "line\nbreak",
    "\ud800",
]

#: Query strings sent raw (decoded once by the server): percent tricks must stay harmless.
RAW_QUERIES = [
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "%2e%2e%2f%2e%2e%2froot-evil%2fcanary",
    "%252e%252e%252fetc%252fpasswd",
    "%c0%ae%c0%ae/etc/passwd",
    "..%00/etc/passwd",
    "ok.txt%00.jpg",
    "a%0d%0aSet-Cookie:%20x=1",
    "%ff%fe",
    "%2fetc%2fpasswd",
    "link-out%2fpasswd",
    "link-sib%2fcanary",
    "..%5c..%5cetc%5cpasswd",
    "%2e",
    "%2e%2e",
    "caf%C3%A9.txt",
]


def snapshot(directory) -> dict:
    """Every name under ``directory`` (without following links) with its content hash."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    result[path] = hashlib.sha256(f.read()).hexdigest()
            else:
                result[path] = os.readlink(path) if os.path.islink(path) else "dir"
    return result


def assert_safe(code: int, body: bytes, server, what):
    assert code != 500, (what, body[:300])
    assert CANARY not in body and PASSWD not in body, what
    if 200 <= code < 300 and body.startswith(b"{"):
        answer = json.loads(body)
        if "path" in answer:  # a stored file: it must really be inside the root
            real = os.path.realpath(os.path.join(server.root, answer["path"]))
            assert os.path.commonpath([real, server.root]) == server.root, what


async def exercise(http, server, url_for):
    """Send one path through metadata, download, upload and every sync operation."""
    for method, endpoint in (("GET", "metadata"), ("GET", "download"), ("HEAD", "download"),
                             ("POST", "upload"), ("PUT", "upload")):
        response = await http.request(method, url_for(endpoint), data=CANARY if method in ("POST", "PUT") else None)
        body = await response.content()
        assert_safe(response.code, body, server, (method, endpoint, url_for(endpoint)))


@pytest_twisted.ensureDeferred
async def test_hostile_paths_in_queries(hostile):
    server, http, alerts = hostile
    from urllib.parse import quote

    for attack in ATTACKS:
        encoded = quote(attack.encode("utf-8", "surrogatepass"), safe="")
        await exercise(http, server, lambda endpoint: f"{server.url}/api/{endpoint}?path={encoded}")
    for raw in RAW_QUERIES:
        await exercise(http, server, lambda endpoint: f"{server.url}/api/{endpoint}?path={raw}")
    # refusals were reported to the alerts topic
    assert any(kind == "security_alert" for kind, _ in alerts)
    # the traversal attempts never produced a file named like the target anywhere visible
    code, listing = await http.json("GET", f"{server.url}/api/list")
    for entry in listing:
        real = os.path.realpath(os.path.join(server.root, entry["path"]))
        assert os.path.commonpath([real, server.root]) == server.root
        assert not entry["path"].startswith(".quantum-sync")


@pytest_twisted.ensureDeferred
async def test_hostile_paths_in_sync_operations(hostile):
    server, http, alerts = hostile
    await http.json("POST", f"{server.url}/api/upload", params={"path": "victim.txt"}, data=b"v")
    for attack in ATTACKS:
        operations = [
            {"Delete": {"path": attack}},
            {"Move": {"from": "victim.txt", "to": attack}},
            {"Move": {"from": attack, "to": "stolen.txt"}},
            {"Create": {"metadata": {"path": attack, "size": 0, "modified": "2024-01-01T00:00:00Z",
                                     "hash": "", "is_directory": True}}},
        ]
        body = json.dumps({"operations": operations, "client_id": "attacker"},
                          ensure_ascii=True).encode("ascii")
        response = await http.post(f"{server.url}/api/sync", data=body)
        content = await response.content()
        assert_safe(response.code, content, server, attack)
        if response.code == 200:
            for result in json.loads(content)["results"]:
                assert result["status"] in ("applied", "error", "conflict")
        # put the victim back where the next round expects it
        if not os.path.exists(os.path.join(server.root, "victim.txt")):
            await http.json("POST", f"{server.url}/api/upload", params={"path": "victim.txt"}, data=b"v")
    assert not os.path.exists(os.path.join(server.root, "stolen.txt")) or \
        open(os.path.join(server.root, "stolen.txt"), "rb").read() not in (CANARY, PASSWD)


@pytest_twisted.ensureDeferred
async def test_traversal_answers_are_invalid_path(hostile):
    server, http, alerts = hostile
    for attack in ("../etc/passwd", "/etc/passwd", "a/../../etc/passwd", "link-out/passwd",
                   "link-sib/canary", ".quantum-sync/index.sqlite3", "", "a//b", "x\x00y"):
        code, body = await http.json("GET", f"{server.url}/api/download", params={"path": attack},
                                     expect=400)
        assert body["error"]["code"] == "INVALID_PATH", attack
    kinds = {kind for kind, _ in alerts}
    assert kinds == {"security_alert"}


@pytest_twisted.ensureDeferred
async def test_unicode_spellings_are_one_file(hostile):
    server, http, _ = hostile
    await http.json("POST", f"{server.url}/api/upload", params={"path": "caf\u00e9.txt"}, data=b"nfc")
    await http.json("POST", f"{server.url}/api/upload", params={"path": "cafe\u0301.txt"}, data=b"nfd")
    _, listing = await http.json("GET", f"{server.url}/api/list")
    names = sorted(e["path"] for e in listing)
    assert names == ["caf\u00e9.txt"]
    with open(os.path.join(server.root, "caf\u00e9.txt"), "rb") as f:
        assert f.read() == b"nfd"
