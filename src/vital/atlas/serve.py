"""Serve an atlas folder on the loopback interface, and nothing outside that folder."""

from __future__ import annotations

import functools
import posixpath
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


def make_server(folder: str | Path, port: int = 8000, verbose: bool = False) -> ThreadingHTTPServer:
    """An HTTP server for ``folder`` bound to 127.0.0.1 (port 0 picks a free one)."""
    folder = Path(folder)
    if not (folder / "index.html").is_file():
        raise VitalError(
            f"{folder} is not an atlas (no index.html); build one with `vital atlas build`."
        )
    handler = functools.partial(AtlasRequestHandler, directory=str(folder.resolve()))
    try:
        server = ThreadingHTTPServer((LOOPBACK, port), handler)
    except OSError as error:
        raise VitalError(
            f"cannot listen on {LOOPBACK}:{port}: {error}; try another --port."
        ) from error
    server.verbose = verbose
    return server
