"""Serve an atlas folder (on the loopback interface unless told otherwise), nothing outside it."""

from __future__ import annotations

import functools
import ipaddress
import posixpath
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from vital.errors import VitalError

LOOPBACK = "127.0.0.1"


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
        if any(part.startswith(".") for part in target.relative_to(root).parts):
            # vital's own working files (a concepts build's .vital-staging/, marks) are no page
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
            super().log_message(format, *args)


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


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface only."""
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
    folder = Path(folder)
    if not (folder / "index.html").is_file():
        raise VitalError(
            f"{folder} is not an atlas (no index.html); build one with `vital atlas build`."
        )
    handler = functools.partial(AtlasRequestHandler, directory=str(folder.resolve()))
    try:
        server = AtlasServer((host, port), handler)
    except (OSError, OverflowError) as error:
        raise VitalError(
            f"cannot listen on {host}:{port}: {error}; try another --port or --host."
        ) from error
    server.verbose = verbose
    return server
