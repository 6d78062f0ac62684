"""The package version, kept in one place: ``pyproject.toml``, read from the installed metadata."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vital")
except PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
    __version__ = "0+unknown"
