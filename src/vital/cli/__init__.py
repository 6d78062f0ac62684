"""The ``vital`` command: parses options, calls the library, prints where results went.

Commands pass the library only what the user gave (overrides); the defaults are the methods'
own (:func:`vital.driver.resolve_settings`). The options several commands take are declared
once in :mod:`vital.cli.options`; each command group has its own module, registered here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import warnings
from typing import Annotated

import click
import typer

from vital.cli import atlas, concepts, explain, generate, listing, mine, options, session
from vital.cli.vocabulary import cli_wording
from vital.errors import VitalError

app = typer.Typer(
    cls=options.Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="VITAL feature visualisation: see what a vision model's classes and neurons encode.",
)


def _version(value: bool) -> None:
    if value:
        from vital.version import __version__

        typer.echo(f"vital {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """VITAL feature visualisation: see what a vision model's classes and neurons encode."""


# The order here is the order `vital --help` lists the commands in.
app.command("class", cls=options.Command)(generate.class_command)
app.command("compare", cls=options.Command)(generate.compare_command)
app.command("neuron", cls=options.Command)(generate.neuron)
app.command("demo", cls=options.Command)(generate.demo)
app.command("layers", cls=options.Command)(listing.layers)
app.command("classes", cls=options.Command)(listing.classes)
app.command("models", cls=options.Command)(listing.models)
app.command("mine", cls=options.Command)(mine.mine_command)
app.command("explain", cls=options.Command)(explain.explain_command)
app.command("concepts", cls=options.Command)(concepts.concepts_command)
app.add_typer(atlas.atlas_app, name="atlas")

# typer >= 0.29 carries its own copy of click, whose errors are not click's own classes.
_CLICKS = (click, *([typer._click] if hasattr(typer, "_click") else []))
_USAGE_ERRORS = tuple(module.exceptions.ClickException for module in _CLICKS)
_ABORTS = (KeyboardInterrupt, click.exceptions.Abort, typer.Abort)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a batch scheduler's end of job) taken as Ctrl-C."""


# Whether this command got SIGTERM: typer reports any interrupt as exit status 130, and a
# terminated command exits with 143 (128 + 15) as a shell reports it.
_terminated = False


def _terminate(signum, frame) -> None:
    global _terminated
    _terminated = True
    raise _Terminated


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM ends a command as Ctrl-C does, while the block runs.

    Python's default for SIGTERM ends the process at once: no message saying what was saved,
    and no clean-up (temporary files, staging folders and locks are left, for the next run to
    sort out). As an interrupt, the same ``finally`` blocks run and the same message is shown.
    """
    global _terminated
    _terminated = False
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (a test's runner): nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each (``warning: …``), without the source line Python adds."""
    typer.secho(f"warning: {cli_wording(str(message))}", fg=typer.colors.YELLOW, err=True)


class _OutputError(Exception):
    """Writing the standard output failed (``error``): a closed pipe, a full disk."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _Output:
    """The standard output, whose failures are told apart from those of the files vital writes.

    Everything else (encoding, ``isatty``, ``fileno``) is the stream's own.
    """

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        """Write ``text``; a failure raises :class:`_OutputError`."""
        if self._stream is None:  # started with the output closed (``vital … >&-``)
            raise _OutputError(OSError(errno.EBADF, "the standard output is closed"))
        try:
            return self._stream.write(text)
        except OSError as error:
            raise _OutputError(error) from error

    def flush(self) -> None:
        """Flush; a failure raises :class:`_OutputError`."""
        if self._stream is None:  # nothing was written, or write said so already
            return
        try:
            self._stream.flush()
        except OSError as error:
            raise _OutputError(error) from error

    def isatty(self) -> bool:
        """Whether the output is a terminal (a closed one is not)."""
        return self._stream is not None and self._stream.isatty()

    def __getattr__(self, name: str):
        if self._stream is None:  # Python sets sys.stdout to None when descriptor 1 is closed
            raise AttributeError(name)
        return getattr(self._stream, name)


# The exit status of a command whose reader closed the pipe: 128 + SIGPIPE, as the shell
# reports a Unix tool that SIGPIPE ended (`set -o pipefail` scripts tell it from a failure).
CLOSED_PIPE_STATUS = 128 + 13  # SIGPIPE is signal 13 on Linux and macOS


def _output_lost(error: OSError) -> int:
    """The exit status after the standard output failed, with a line on stderr but for a pipe.

    A closed pipe (``vital classes | head -1``) ends quietly as Unix tools do: nothing on
    stderr and status 141 (:data:`CLOSED_PIPE_STATUS`), the reader having taken what it
    wanted. The output then goes to the null device so that Python's own flush at exit fails
    no more (Python's "Note on SIGPIPE"). Another failure (a full disk) is one line, status 1.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's captured output)
        pass
    if error.errno == errno.EPIPE:
        return CLOSED_PIPE_STATUS
    typer.secho(
        f"error: could not write the output: {error.strerror or error}",
        fg=typer.colors.RED,
        err=True,
    )
    return 1


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes end with a one-line message and exit status 2."""
    session.Session.reset()
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning
    stdout = sys.stdout
    sys.stdout = _Output(stdout)
    try:
        with _terminate_as_interrupt():
            code = app(args=argv, standalone_mode=False)
        sys.stdout.flush()  # what is still buffered fails here, not unseen at exit
    except _OutputError as lost:
        sys.stdout = stdout
        sys.exit(_output_lost(lost.error))
    except VitalError as error:
        typer.secho(f"error: {cli_wording(str(error))}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except _ABORTS:
        typer.echo(session.interrupted(), err=True)
        sys.exit(143 if _terminated else 130)
    except _USAGE_ERRORS as error:  # a missing or malformed option: click's usage message
        error.show()
        sys.exit(error.exit_code)
    except OSError as error:
        # A path typed past the file system's limits fails wherever it is first used (a
        # reference folder, a weights file, the data); that is the user's path, not a fault.
        if error.errno != errno.ENAMETOOLONG:
            raise
        from vital.store import shortened

        named = shortened(os.fsdecode(error.filename)) if error.filename else "a path given"
        typer.secho(
            f"error: {named} is too long a path for this system ({error.strerror}); give a "
            "shorter one.",
            fg=typer.colors.RED,
            err=True,
        )
        sys.exit(2)
    finally:
        warnings.showwarning = shown
        sys.stdout = stdout
    if code == 130:  # typer turns Ctrl-C into this exit status before we see the interrupt
        typer.echo(session.interrupted(), err=True)
        code = 143 if _terminated else code
    sys.exit(code if isinstance(code, int) else 0)
