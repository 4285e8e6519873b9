"""``quantum-sync-client``: ask running folders how they are, pause and resume them.

    quantum-sync-client [--config FILE] status [--json] [FOLDER]
    quantum-sync-client [--config FILE] pause FOLDER
    quantum-sync-client [--config FILE] resume FOLDER

FOLDER is a folder's name in the configuration file, or the folder's path. Without
``--config``, ``$XDG_CONFIG_HOME/quantum-sync/client.json`` (``~/.config/...``) is read
when it exists. Each folder's daemon answers on its control socket
(:mod:`quantum_sync.client.control`); a folder whose daemon is not running is said to be.
Exit status: 0, 1 for a usage or configuration error, 3 when a folder asked about has
no daemon running.
"""

import argparse
import http.client
import json
import os
import socket
import sys

from quantum_sync.client.clientconfig import load
from quantum_sync.client.control import MAX_SOCKET_PATH, socket_path, too_long
from quantum_sync.config import ConfigError

NOT_RUNNING = 3
TIMEOUT = 10.0


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the Unix socket at ``path``."""

    def __init__(self, path):
        super().__init__("localhost", timeout=TIMEOUT)
        self._socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self._socket_path)


class NotRunning(Exception):
    """No daemon answers for the folder."""


def ask(folder: str, method: str, what: str) -> dict:
    """The JSON answer of ``folder``'s daemon to ``method /what``."""
    path = socket_path(folder)
    if too_long(path):  # the daemon made none (and logged why)
        raise ConfigError(f"{folder}: no control socket: {path} is longer than a Unix socket's path may be "
                          f"({MAX_SOCKET_PATH} bytes)")
    connection = _UnixConnection(path)
    try:
        connection.request(method, "/" + what)
        response = connection.getresponse()
        body = json.loads(response.read().decode("utf-8"))
    except (FileNotFoundError, ConnectionRefusedError):
        raise NotRunning(folder) from None
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise NotRunning(f"{folder}: {e}") from None
    finally:
        connection.close()
    if response.status != 200:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise SystemExit(f"quantum-sync-client: {folder}: {error.get('message', response.status)}")
    return body


def default_config():
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "quantum-sync", "client.json")


def folders_meant(config_path, folder):
    """``[(name, path)]`` of the folders meant: ``folder`` (a name or a path), or all."""
    configured = []
    if config_path is not None or os.path.exists(default_config()):
        configured = [(f.name, f.client.folder) for f in load(config_path or default_config())]
    if folder is None:
        if not configured:
            raise ConfigError("no folders: name a FOLDER, or give --config")
        return configured
    return [_folder_meant(configured, folder)]


def _folder_meant(configured, folder) -> tuple:
    """``(name, path)`` of ``folder``: a configured folder's name, else a directory
    (named as configured, or by its last part)."""
    for name, path in configured:
        if folder == name:
            return name, path
    if os.path.isdir(folder):
        path = os.path.realpath(folder)
        names = [name for name, p in configured if p == path]
        return names[0] if names else os.path.basename(path), path
    raise ConfigError(f"{folder}: neither a configured folder's name nor a directory")


def describe(status: dict) -> str:
    """The text form of one folder's status."""
    lines = [f"{status['name']}: {status['state']}  ({status['folder']})"]
    if not status.get("running"):
        lines.append("  daemon: not running")
        return "\n".join(lines)
    lines.append(_server_line(status["server"]))
    if "waiting" not in status:
        return "\n".join(lines)
    lines.append(_waiting_line(status["waiting"]))
    lines.extend(_progress_lines(status.get("progress")))
    lines.extend(_transfer_lines(status["transfers"]))
    lines.extend(_listed_lines("conflicts", status["conflicts"]))
    lines.append(_journal_line(status["journal"]))
    lines.extend(_watch_lines(status.get("watch")))
    for guard in status["guards"]:
        lines.append(f"  held: {guard['guard']} ({guard['what']}): {guard['files']} of {guard['synced']} synced files; "
                     f"to release: {guard['release']}")
    return "\n".join(lines)


def _server_line(srv) -> str:
    """The line of the server: its URL, whether it answers, its last error."""
    reach = {True: "reachable", False: "unreachable", None: "not asked yet"}[srv["reachable"]]
    return f"  server: {srv['url']} {reach}" + (f" (last error: {srv['last_error']})" if srv.get("last_error") else "")


def _waiting_line(waiting) -> str:
    """The line of what waits to go up and down."""
    up, down = waiting["up"], waiting["down"]
    return (f"  waiting: up {up['files']} files ({_size(up['bytes'])}), down {down['files']} files ({_size(down['bytes'])})"
            + (f", {waiting['queued']} paths queued for the server" if waiting["queued"] else "")
            + (f", {waiting['held_while_paused']} changes held while paused"
               if waiting["held_while_paused"] else ""))


def _progress_lines(p) -> list:
    """The line of the current sync's progress (none when there is none)."""
    if not p:
        return []
    left = "" if p["seconds_left"] is None else f", about {p['seconds_left']:.0f} s left"
    return [f"  progress: {p['files_done']}/{p['files_total']} files, {_size(p['bytes_done'])}/{_size(p['bytes_total'])}, "
            f"{_size(p['rate_bytes_per_s'])}/s{left}"]


def _listed_lines(label: str, listed) -> list:
    """The line of a ``{"count", "paths"}`` list, when not empty."""
    if not listed["count"]:
        return []
    return [f"  {label}: {listed['count']}: " + ", ".join(listed["paths"])
            + (" ..." if listed["count"] > len(listed["paths"]) else "")]


def _transfer_lines(t) -> list:
    """The lines of the transfers in progress, with the bytes of each running one."""
    lines = _listed_lines("in progress", t)
    for running in t.get("running", []):
        lines.append(f"    {running['direction']} {running['path']}: {_size(running['bytes'])} so far")
    return lines


def _journal_line(j) -> str:
    """The line of the journal: cursor, head, how far behind."""
    behind = "unknown" if j["behind"] is None else f"{j['behind']} behind"
    return f"  journal: cursor {j['cursor']}, head {j['head'] if j['head'] is not None else '?'} ({behind})"


def _watch_lines(w) -> list:
    """The line of the folder's watch: lost events, full reconciles (none from an older daemon)."""
    if w is None:
        return []
    last = w["last_full_reconcile_ago"]
    return [f"  watch: {w['events_lost']} event overflows (inotify), {w['full_reconciles']} full reconciles"
            + ("" if last is None else f", the last {last:.0f} s ago")]


def _size(n) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class _Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit status 1 (not argparse's usage text and 2)."""

    def error(self, message):
        print(f"quantum-sync-client: {message} (--help for usage)", file=sys.stderr)
        raise SystemExit(1)


def parser() -> argparse.ArgumentParser:
    """The command line: ``[--config FILE] status|pause|resume ...`` (``--config`` also
    after the command)."""
    config = _Parser(add_help=False)
    config.add_argument("--config", default=argparse.SUPPRESS,
                        help="the client's JSON configuration (default: ~/.config/quantum-sync/client.json)")
    top = _Parser(prog="quantum-sync-client", description="Status, pause and resume of running sync folders.",
                  parents=[config])
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    status = commands.add_parser("status", help="how each folder is: in sync or not, what waits, progress",
                                 parents=[config])
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.add_argument("folder", nargs="?", metavar="FOLDER")
    for name, text in (("pause", "hold a folder's uploads and downloads (it is still watched)"),
                       ("resume", "resume a paused folder (it catches up)")):
        commands.add_parser(name, help=text, parents=[config]).add_argument("folder", metavar="FOLDER")
    return top


def main(argv=None) -> int:
    """The console script; returns the exit status."""
    args = parser().parse_args(argv)
    args.config = getattr(args, "config", None)
    try:
        meant = folders_meant(args.config, args.folder)
    except ConfigError as e:
        print(f"quantum-sync-client: {e}", file=sys.stderr)
        return 1
    answers, missing = [], 0
    for name, path in meant:
        try:
            if args.command == "status":
                answers.append(ask(path, "GET", "status"))
            else:
                answers.append(ask(path, "POST", args.command))
        except NotRunning:
            missing += 1
            answers.append({"name": name, "folder": path, "running": False, "state": "not running", "in_sync": False})
        except ConfigError as e:
            print(f"quantum-sync-client: {e}", file=sys.stderr)
            return 1
    if args.command == "status" and args.json:
        print(json.dumps({"folders": answers}, indent=2))
    else:
        print("\n".join(describe(a) for a in answers))
    return NOT_RUNNING if missing else 0


if __name__ == "__main__":
    sys.exit(main())
