"""The ``vital`` command's entry point: an interrupt while vital still loads."""

from __future__ import annotations

import builtins
import signal
from importlib.metadata import entry_points

import pytest

import vital_entry


def _loading_is_interrupted(monkeypatch, interrupt: BaseException) -> None:
    real_import = builtins.__import__

    def interrupted_import(name, *args, **kwargs):
        if name == "vital.cli":
            raise interrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted_import)


@pytest.mark.parametrize(
    ("interrupt", "status"), [(KeyboardInterrupt(), 130), (vital_entry._Terminated(), 143)]
)
def test_an_interrupt_while_loading_ends_in_one_line(monkeypatch, capsys, interrupt, status):
    _loading_is_interrupted(monkeypatch, interrupt)
    with pytest.raises(SystemExit) as ended:
        vital_entry.main()
    assert ended.value.code == status
    assert capsys.readouterr().err == f"{vital_entry.STARTING_INTERRUPTED}\n"


def test_sigterm_is_an_interrupt_only_while_loading(monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    seen = []
    monkeypatch.setattr("vital.cli.main", lambda: seen.append(signal.getsignal(signal.SIGTERM)))
    vital_entry.main()
    assert seen == [before]  # the command installs its own handling (vital.cli.main)
    assert signal.getsignal(signal.SIGTERM) == before
    with pytest.raises(KeyboardInterrupt):
        vital_entry._terminate(signal.SIGTERM, None)


def test_the_installed_command_starts_at_the_entry_point():
    (command,) = entry_points(group="console_scripts", name="vital")
    assert command.value == "vital_entry:main"
