"""A hostile-input round: closed pipes, repeated options, odd hosts and folders, wide help."""

from __future__ import annotations

import errno
import io
import sys
from types import SimpleNamespace

import pytest
from PIL import Image

import vital.cli
import vital.cli.generate
from vital.cli import session


class _FailingOutput(io.StringIO):
    """A standard output whose writes fail as a closed pipe or a full disk does."""

    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number

    def write(self, text: str) -> int:
        raise OSError(self.number, "pipe closed" if self.number == errno.EPIPE else "disk full")

    def flush(self) -> None:
        raise OSError(self.number, "pipe closed" if self.number == errno.EPIPE else "disk full")


def _main(monkeypatch, capsys, *arguments):
    """``vital ARGUMENTS`` as the shell runs it: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["vital", *map(str, arguments)])
    with pytest.raises(SystemExit) as exit_info:
        vital.cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _result(describe: str):
    record = SimpleNamespace(method="vital", setting=None, settings={"steps": 1}, evaluation={})
    return SimpleNamespace(
        record=record,
        target=SimpleNamespace(describe=lambda: describe),
        paths={},
        stored=False,
        alpha=None,
        image=Image.new("RGB", (8, 8), (200, 100, 0)),
    )


def test_the_grid_is_saved_before_anything_is_printed(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _FailingOutput(errno.EPIPE))
    with pytest.raises(BrokenPipeError):
        session.report([_result("espresso"), _result("moped")], tmp_path, "class")
    assert (tmp_path / "class-grid.png").is_file()


def test_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _FailingOutput(errno.EPIPE))
    code, _, err = _main(monkeypatch, capsys, "models")
    assert code == 141  # 128 + SIGPIPE, as the shell reports a tool its reader left
    assert err == ""


def test_a_full_disk_under_the_output_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _FailingOutput(errno.ENOSPC))
    code, _, err = _main(monkeypatch, capsys, "models")
    assert code == 1
    assert err.strip().splitlines() == ["error: could not write the output: disk full"]


def _no_work(*args, **kwargs):
    pytest.fail("the command ran: the repeated option was not refused")


@pytest.mark.parametrize(
    ("arguments", "line"),
    [
        (["class", "-c", "1", "--steps", "1", "--steps", "2"], "--steps was given twice (1, 2)"),
        (["class", "-c", "1", "--seed=1", "--seed", "2"], "--seed was given twice (1, 2)"),
        (["class", "-c", "1", "--model=a", "-mb"], "--model was given twice (a, b)"),
        (["classes", "--search", "cat", "--search", "dog"], "--search was given twice"),
        (
            ["layers", "m", "--match", "a", "--match", "b", "--match", "c"],
            "given 3 times (a, b, c)",
        ),
    ],
)
def test_an_option_of_one_value_given_twice_is_refused(monkeypatch, capsys, arguments, line):
    monkeypatch.setattr(session, "load", _no_work)
    monkeypatch.setattr(vital.cli.generate, "_generate", _no_work)
    code, _, err = _main(monkeypatch, capsys, *arguments)
    assert code == 2
    assert err.startswith("error: ") and line in err and err.strip().endswith(": give it once.")
    assert len(err.strip().splitlines()) == 1


def test_help_is_shown_even_with_an_option_given_twice(monkeypatch, capsys):
    code, out, err = _main(monkeypatch, capsys, "class", "--steps", "1", "--steps", "2", "--help")
    assert code == 0 and "--steps" in out and err == ""


def test_list_options_and_flags_may_repeat(monkeypatch, capsys):
    arguments = ["class", "-c", "1", "--class", "2", "-c3", "--force", "--force", "--help"]
    code, out, err = _main(monkeypatch, capsys, *arguments)
    assert code == 0 and "--steps" in out and err == ""


@pytest.mark.parametrize("home_relative", ["~/results", "~"])
def test_a_quoted_tilde_is_the_home_folder(tmp_path, monkeypatch, home_relative):
    from vital.store import output_folder

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    folder = output_folder(home_relative)
    assert folder == (tmp_path / "home" / home_relative[2:])
    assert folder.is_dir() and not (tmp_path / "~").exists()


def test_the_command_line_writes_under_the_home_for_a_quoted_tilde(tmp_path, monkeypatch, capsys):
    from conftest import tiny_cnn_model, write_images

    write_images(tmp_path / "refs", 2)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(session, "load", lambda *args: tiny_cnn_model())
    arguments = ["class", "-c", "1", "--refs", "refs", "--steps", "1", "--out", "~/results"]
    code, _, err = _main(monkeypatch, capsys, *arguments)
    assert code == 0, err
    assert (tmp_path / "home" / "results" / "index.sqlite").is_file()
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize(
    ("out", "words"),
    [
        ("x ", "has blanks at the start or end of a name"),
        (" x", "has blanks at the start or end of a name"),
        ("a /b", "has blanks at the start or end of a name"),
        ("-", "is no folder"),
        ("file:///x", "is a URL"),
        ("s3://bucket/x", "is a URL"),
    ],
)
def test_an_output_folder_no_one_means_is_refused_in_one_line(
    tmp_path, monkeypatch, capsys, out, words
):
    from vital.errors import VitalError
    from vital.store import output_folder

    monkeypatch.chdir(tmp_path)
    with pytest.raises(VitalError, match=words):
        output_folder(out)
    monkeypatch.setattr(session, "load", _no_work)
    code, _, err = _main(monkeypatch, capsys, "class", "-c", "967", "--out", out)
    assert code == 2 and words in err and "--out DIR" in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_an_atlas_is_not_written_among_the_users_photos(tmp_path):
    """`atlas import --out PHOTOS` was taken where `concepts --out PHOTOS` was refused: its pages
    marked the photos' folder as vital's output, and later runs left the photos out."""
    from vital.atlas import Atlas
    from vital.errors import VitalError

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "cat.jpg")
    with pytest.raises(VitalError, match="holds images that vital did not write"):
        Atlas(photos)
    assert sorted(p.name for p in photos.iterdir()) == ["cat.jpg"]
    Atlas(tmp_path / "atlas")  # a new folder, and then one vital wrote, are taken
    Image.new("RGB", (8, 8)).save(tmp_path / "atlas" / "stray.png")
    Atlas(tmp_path / "atlas")


def test_pictures_may_go_into_a_folder_that_is_also_an_atlas(tmp_path):
    """`explain` and `class` share their default --out (vital-out): explain makes it an atlas,
    and class must still write there (refusing it broke `make demo` after an explain)."""
    from vital.atlas import Atlas
    from vital.store import ResultSink

    Atlas(tmp_path / "vital-out")
    assert ResultSink(tmp_path / "vital-out").store.index.is_file()
