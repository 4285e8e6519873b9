"""Both daemons' ``makeService`` tune the garbage collector (run in a subprocess, so this
test process keeps its own settings)."""

import json
import subprocess
import sys

import pytest

from quantum_sync.gctune import THRESHOLDS

SCRIPT = """
import gc, json, sys
from twisted.internet import reactor
kind, folder = sys.argv[1:]
if kind == "server":
    from quantum_sync.server import tap
    options = tap.Options()
    options.parseOptions(["--config", folder + "/sync.json"])
    options.parent = {"nodaemon": True}  # as twistd -n sets it
else:
    from quantum_sync.client import tap
    options = tap.Options()
    options.parseOptions(["--server", "http://127.0.0.1:9", "--local-path", folder + "/folder"])
before = (gc.get_threshold(), gc.get_freeze_count())
tap.makeService(options, reactor)
print(json.dumps({"before": before, "after": (gc.get_threshold(), gc.get_freeze_count())}))
"""


@pytest.mark.parametrize("kind", ["server", "client"])
def test_make_service_tunes_the_collector(tmp_path, kind):
    (tmp_path / "sync.json").write_text(json.dumps({"apps": {"http": {"servers": {"s": {
        "listen": ["127.0.0.1:0"],
        "routes": [{"handle": [{"handler": "file_sync", "root": str(tmp_path / "root")}]}],
    }}}}}))
    result = subprocess.run([sys.executable, "-c", SCRIPT, kind, str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["before"] == [[700, 10, 10], 0]
    threshold, frozen = report["after"]
    assert tuple(threshold) == THRESHOLDS
    assert frozen > 1000  # the modules' objects, at least
