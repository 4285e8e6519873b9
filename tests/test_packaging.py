"""Both twistd plugins ship and are discovered (in place, by ``twistd --help``, and from a
non-editable wheel install)."""

import ast
import configparser
import os
import subprocess
import sys
import sysconfig
import zipfile

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

from quantum_sync.server import webui

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAPNAMES = {"quantum-sync", "quantum-sync-client"}
BIN = os.path.dirname(sys.executable)


def test_both_plugins_are_discovered():
    found = {plugin.tapname: plugin for plugin in getPlugins(IServiceMaker)}
    assert TAPNAMES <= set(found)
    server_options = found["quantum-sync"].options()
    assert {"config", "listen", "root"} <= set(server_options.keys())
    from quantum_sync.server import tap

    assert callable(tap.makeService) and callable(tap.Options)


def test_twistd_help_lists_both():
    result = subprocess.run([os.path.join(BIN, "twistd"), "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    commands = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ")
                and line.split()}
    assert TAPNAMES <= commands, result.stdout


def test_wheel_ships_the_dropin_and_installs_discoverably(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(tmp_path / "dist"), PROJECT],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "dist").iterdir()
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/quantum_sync_plugin.py" in names
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert {"quantum_sync/server/tap.py", "quantum_sync/client/tap.py"} <= names
    ui = {"quantum_sync/server/ui/" + name for name in os.listdir(os.path.join(
        PROJECT, "quantum_sync", "server", "ui"))}
    assert {"quantum_sync/server/ui/index.html", "quantum_sync/server/ui/app.js"} <= ui <= names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=120)
    # -S: no site-packages .pth (so not the editable checkout); twisted itself from the venv
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]]))
    probe = ("import quantum_sync, twisted.plugins as p;"
             "from twisted.plugin import getPlugins;"
             "from twisted.application.service import IServiceMaker;"
             "print(quantum_sync.__file__);"
             "print(sorted(m.tapname for m in getPlugins(IServiceMaker, p)))")
    result = subprocess.run([sys.executable, "-S", "-c", probe], env=env, cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    module_file, tapnames = result.stdout.splitlines()[-2:]
    assert module_file.startswith(str(target))
    assert TAPNAMES <= set(ast.literal_eval(tapnames))
    # the console scripts (contract section 8: quantum-sync-client status|pause|resume)
    for script in ("quantum-sync-client", "quantum-sync-passwd"):
        assert os.access(target / "bin" / script, os.X_OK), script
    result = subprocess.run([str(target / "bin" / "quantum-sync-client"), "status", "--help"], env=env,
                            cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "status [-h] [--config CONFIG] [--json] [FOLDER]" in result.stdout, result


def read_unit(name: str) -> str:
    with open(os.path.join(PROJECT, "etc", name)) as f:
        return f.read()


def test_systemd_units():
    from quantum_sync.config import listen_to_endpoint

    for name in ("quantum-sync.service", "quantum-sync-socket.service"):
        unit = read_unit(name)
        for setting in ("User=quantum-sync", "NoNewPrivileges=yes", "ProtectSystem=strict",
                        "ReadWritePaths=/var/lib/quantum-sync", "PrivateTmp=yes",
                        "ProtectHome=yes", "CapabilityBoundingSet=\n"):
            assert setting in unit, (name, setting)
        assert "twistd --nodaemon --pidfile=" in unit and " quantum-sync --config " in unit
        assert "--logger=quantum_sync.logs.json_observer" in unit
    activated = read_unit("quantum-sync-socket.service")
    endpoint = activated.split("--listen ")[1].split()[0]
    assert listen_to_endpoint(endpoint) == "systemd:domain=INET6:name=quantum-sync"
    socket_unit = read_unit("quantum-sync.socket")
    assert "FileDescriptorName=quantum-sync" in socket_unit
    assert "Service=quantum-sync-socket.service" in socket_unit


def test_systemd_units_verify(tmp_path):
    """``systemd-analyze verify`` accepts the units (with this venv's twistd)."""
    analyze = "/usr/bin/systemd-analyze"
    assert os.path.exists(analyze), "systemd-analyze is part of the test machine's systemd"
    names = ("quantum-sync.service", "quantum-sync-socket.service", "quantum-sync.socket")
    for name in names:
        text = read_unit(name).replace("/opt/quantum-sync/venv/bin/twistd", os.path.join(BIN, "twistd"))
        (tmp_path / name).write_text(text)
    result = subprocess.run([analyze, "verify", "--man=no", *[str(tmp_path / n) for n in names]],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_client_user_unit_template(tmp_path):
    """The client's user unit: one instance per configuration file, started at login;
    ``systemd-analyze verify`` accepts an instance of it."""
    unit = read_unit("quantum-sync-client@.service")
    assert "twistd --nodaemon --pidfile=" in unit and "quantum-sync-client --config %E/quantum-sync/%i.json" in unit
    assert "WantedBy=default.target" in unit and "RestartPreventExitStatus=1" in unit
    assert "User=" not in unit  # a user service runs as its user
    instance = tmp_path / "quantum-sync-client@work.service"
    instance.write_text(unit.replace("/opt/quantum-sync/venv/bin/twistd", os.path.join(BIN, "twistd")))
    result = subprocess.run(["/usr/bin/systemd-analyze", "verify", "--man=no", str(instance)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_package_data_ships_every_kind_of_file_the_ui_serves():
    """A kind served in development but left out of the wheel would be 404 once installed."""
    config = configparser.ConfigParser()
    config.read(os.path.join(PROJECT, "setup.cfg"))
    globs = [g.strip() for g in config["options.package_data"]["quantum_sync.server"].split(",")]
    assert sorted(os.path.splitext(g)[1] for g in globs) == sorted(webui.CONTENT_TYPES)
    shipped = {os.path.splitext(name)[1] for name in os.listdir(webui.UI_DIRECTORY)}
    assert shipped <= set(webui.CONTENT_TYPES)
