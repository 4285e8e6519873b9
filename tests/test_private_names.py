"""No module of quantum_sync outside quantum_sync/adapters/ uses a private detail of
another library (Twisted, Autobahn, watchdog, treq...): those live in one adapter module
per library, each pinned by its own test (see quantum_sync/adapters/__init__.py)."""

import ast
import pathlib

import quantum_sync

PACKAGE = pathlib.Path(quantum_sync.__file__).parent
ADAPTERS = PACKAGE / "adapters"

#: Names of other libraries' internals, flagged on any object: private ones our own
#: code also binds (so the rule below would miss them) and public-looking ones that are
#: not part of a public API.
KNOWN = frozenset({
    # Twisted
    "_tempDataLen", "dataBuffer", "_tempDataBuffer", "_producer", "_handlingRequest", "_command",
    "_path", "_factory", "_endpointFactory", "_HTTP11ClientFactory", "_networkProducer",
    "startID", "shutdownID", "finalClose",
    # Autobahn
    "_perMessageCompress", "sendCloseFrame", "send_queue",
    # watchdog
    "_add_callback", "_inotify", "_inotify_fd", "_raw_queue", "_dispatch_raw_buffers", "_closed",
})

#: Documented public APIs whose names begin with an underscore.
PUBLIC = frozenset({"_exit", "_replace", "_asdict", "_fields", "_make"})


def bound_names(trees) -> set:
    """Every name our own code binds: definitions, assignments (to names and attributes),
    parameters and keyword arguments."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.keyword) and node.arg:
                names.add(node.arg)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.alias) and node.asname:
                names.add(node.asname)
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _uses(node, own_module: bool):
    """The attribute names ``node`` reads by name: ``x.name``, ``getattr(x, "name")``
    and ``hasattr``/``setattr`` alike, and names imported from another package."""
    if isinstance(node, ast.Attribute):
        yield node.attr, node.lineno, node.ctx
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) > 1 \
            and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
        yield node.args[1].value, node.lineno, None
    elif isinstance(node, ast.ImportFrom) and not own_module:
        for alias in node.names:
            yield alias.name, node.lineno, None


def library_private_uses(sources: dict) -> list:
    """``path:line: name`` for each private detail of another library used in
    ``sources`` (path -> source text)."""
    trees = {path: ast.parse(text) for path, text in sources.items()}
    ours = bound_names(trees.values())
    found = []
    for path, tree in trees.items():
        this_module = bound_names([tree])
        for node in ast.walk(tree):
            own_module = isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("quantum_sync"))
            on_self = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            for name, line, ctx in _uses(node, own_module):
                if name in PUBLIC or (isinstance(ctx, ast.Store) and name not in KNOWN):
                    continue  # our own attribute being set
                if name in KNOWN and on_self and name in this_module:
                    continue  # a class of this module keeps its own attribute of that name
                if name in KNOWN or (_private(name) and name not in ours):
                    found.append(f"{path}:{line}: {name}")
    return found


def test_no_private_detail_of_another_library_outside_the_adapters():
    sources = {str(p.relative_to(PACKAGE.parent)): p.read_text()
               for p in sorted(PACKAGE.rglob("*.py")) if ADAPTERS not in p.parents}
    assert library_private_uses(sources) == []


def test_the_check_sees_each_way_of_reaching_in():
    sample = '''
from twisted.web.client import Agent, _HTTP11ClientFactory
from quantum_sync.server import _ours_to_import

class Ours:
    def __init__(self, producer):
        self._mine = 1
        self._producer = producer
        os._exit

    def _path(self):
        return self._producer, self._path()

    def fine(self, other):
        return self._mine, other._mine, getattr(other, "_mine")

    def reaches(self, transport, channel, agent, protocol):
        transport._tempDataLen, transport.dataBuffer, transport._producer
        getattr(channel, "_path", b""), hasattr(channel, "_handlingRequest")
        agent._endpointFactory = None
        protocol.sendCloseFrame(code=1008)
        return protocol._someLibraryState
'''
    found = [entry.split(": ")[1] for entry in library_private_uses({"m.py": sample})]
    assert sorted(found) == sorted(["_HTTP11ClientFactory", "_tempDataLen", "dataBuffer", "_producer", "_path",
                                    "_handlingRequest", "_endpointFactory", "sendCloseFrame", "_someLibraryState"])
