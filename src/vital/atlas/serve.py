"""Serve an atlas folder (on the loopback interface unless told otherwise), nothing outside it."""

from __future__ import annotations

import functools
import ipaddress
import posixpath
import socket
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from vital.errors import VitalError

LOOPBACK = "127.0.0.1"
# vital's working files in an atlas folder: its databases (with SQLite's journals) and locks.
# They are no page, and they hold the absolute paths of the data and the weights.
WORKING_SUFFIXES = (".sqlite", ".sqlite3", ".db", ".lock")
# A request line longer than this is cut in the log: a 20 kB query string is no log line.
LOG_LINE = 300


def is_working_file(name: str) -> bool:
    """Whether ``name`` is one of vital's working files (``mining.sqlite-wal``, ``mining.lock``)."""
    suffix = Path(name).suffix.lower().partition("-")[0]  # ".sqlite-journal" -> ".sqlite"
    return suffix in WORKING_SUFFIXES


class AtlasRequestHandler(SimpleHTTPRequestHandler):
    """Static files of one folder; refuses anything that tries to leave it, lists no folders."""

    def _inside(self) -> Path | None:
        path = urlsplit(self.path).path
        # Decode until stable, so "%2e%2e" and "%252e%252e" are caught as "..".
        for _ in range(5):
            decoded = unquote(path)
            if decoded == path:
                break
            path = decoded
        if "\\" in path or "\x00" in path or ".." in path.split("/"):
            return None
        root = Path(self.directory).resolve()
        target = (root / posixpath.normpath(path).lstrip("/")).resolve()
        return target if target == root or target.is_relative_to(root) else None

    def send_head(self):  # noqa: D102 - the standard library's contract
        target = self._inside()
        if target is None:
            self.send_error(403, "outside the atlas")
            return None
        root = Path(self.directory).resolve()
        parts = target.relative_to(root).parts
        if any(part.startswith(".") for part in parts) or (parts and is_working_file(parts[-1])):
            # vital's own working files (a concepts build's .vital-staging/, marks, databases,
            # locks) are no page
            self.send_error(404, "not part of the atlas")
            return None
        if target.is_dir() and not (target / "index.html").is_file():
            self.send_error(404, "no listing")
            return None
        return super().send_head()

    def list_directory(self, path):  # noqa: D102 - never list folders
        self.send_error(404, "no listing")
        return None

    def log_message(self, format, *args):  # noqa: A002, D102 - quiet unless asked
        if getattr(self.server, "verbose", False):
            line = format % args
            if len(line) > LOG_LINE:
                line = line[: LOG_LINE - 1] + "…"
            super().log_message("%s", line)


class AtlasServer(ThreadingHTTPServer):
    """A threading HTTP server that takes a browser leaving a page mid-download calmly.

    Browsers drop connections whenever a user navigates away before a page's images arrive;
    the standard library prints a traceback for each, which reads like a failure of vital.
    """

    daemon_threads = True
    gone = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)

    def handle_error(self, request, client_address):  # noqa: D102 - socketserver's contract
        if isinstance(sys.exc_info()[1], self.gone):
            return
        super().handle_error(request, client_address)


class AtlasServer6(AtlasServer):
    """:class:`AtlasServer` on an IPv6 address (``--host ::1``)."""

    address_family = socket.AF_INET6


def check_host(host: str) -> str:
    """The address to listen on (``[::1]`` read as ``::1``), or a :class:`VitalError`.

    An empty host would listen on every interface unsaid.
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not bare.strip():
        raise VitalError(
            "--host is empty: give an address (127.0.0.1, this machine only; 0.0.0.0 or ::, "
            "every interface)."
        )
    if bare != bare.strip():
        raise VitalError(f"--host {host!r} has blanks around the address: give it without them.")
    return bare


def is_ipv6(host: str) -> bool:
    """Whether ``host`` is an IPv6 address (``::1``, ``::``)."""
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def url(host: str, port: int) -> str:
    """The address a browser opens: ``http://127.0.0.1:8000/``, ``http://[::1]:8000/``."""
    host = "127.0.0.1" if host == "localhost" else host
    return f"http://[{host}]:{port}/" if is_ipv6(host) else f"http://{host}:{port}/"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(port: object) -> int:
    """A TCP port number (0 picks a free one), or a :class:`VitalError` saying what is wrong."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise VitalError(
            f"--port must be a whole number from 1 to 65535 (0: any free port), not {port!r}."
        )
    return port


def make_server(
    folder: str | Path, port: int = 8000, verbose: bool = False, host: str = LOOPBACK
) -> AtlasServer:
    """An HTTP server for ``folder`` bound to ``host`` (default 127.0.0.1; port 0: a free one).

    Binding another address than the loopback makes the atlas readable by anyone who can reach
    this machine (there is no authentication); the command line warns about it.
    """
    check_port(port)
    host = check_host(host)
    folder = Path(folder)
    if not (folder / "index.html").is_file():
        raise VitalError(
            f"{folder} is not an atlas (no index.html); build one with `vital atlas build`."
        )
    handler = functools.partial(AtlasRequestHandler, directory=str(folder.resolve()))
    try:
        server = (AtlasServer6 if is_ipv6(host) else AtlasServer)((host, port), handler)
    except (OSError, OverflowError) as error:
        raise VitalError(
            f"cannot listen on {host}:{port}: {error}; try another --port or --host."
        ) from error
    server.verbose = verbose
    return server
