"""Progress: tqdm's bar on a terminal, plain newline-terminated lines in a log, nothing if off."""

from __future__ import annotations

import io
import os
import sys

import pytest
import tqdm.auto
import tqdm.std

from conftest import quadratic_objective, write_images
from vital.atlas import build_atlas
from vital.mining.scan import mine
from vital.optimize import Settings, optimize, resolved
from vital.progress import LOG_INTERVAL, progress_bar
from vital.references import from_folder
from vital.targets import ClassTarget
from vital.zoo import Preprocessing

STEPS = 12


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def run_optimize(progress: bool | str) -> None:
    settings = resolved(Settings(steps=STEPS))
    optimize(quadratic_objective(0.5), 2, Preprocessing(input_size=16), settings, "cpu", progress)


def test_without_a_terminal_a_run_writes_plain_lines(capsys, monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    run_optimize("batch 1/2")
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    assert err.endswith("\n")
    lines = err.splitlines()
    # A short run is shorter than the interval: its first and its last line.
    assert len(lines) == 2, lines
    assert all(line.startswith("optimising batch 1/2: ") for line in lines)
    assert f"0/{STEPS} step (0%)" in lines[0]
    last = lines[-1]
    assert f"{STEPS}/{STEPS} step (100%)" in last
    assert "elapsed" in last and "left" in last and "step/s" in last and "loss=" in last


def test_lines_come_at_most_once_an_interval(capsys, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])  # tqdm's clock
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    bar = progress_bar(10, "atlas", unit="unit", desc="ignored in logs")
    for _ in range(10):
        clock[0] += LOG_INTERVAL / 3
        bar.update()
        bar.set_postfix(failed=0)  # a forced refresh must not add lines either
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == ["0/10", "3/10", "6/10", "9/10", "10/10"]
    assert lines[-1].startswith("atlas: 10/10 unit (100%), 01:40 elapsed, 00:00 left")


def test_tqdm_mininterval_sets_the_interval(capsys, monkeypatch):
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    run_optimize(True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == STEPS + 1  # the start and one line per step
    assert [line.split()[1] for line in lines] == [f"{n}/{STEPS}" for n in range(STEPS + 1)]


def test_on_a_terminal_the_bar_is_tqdms(monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    bar = progress_bar(STEPS, "optimising", desc="stage 1")
    assert type(bar) is tqdm.auto.tqdm
    bar.close()
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    run_optimize("batch 1/2")
    written = sys.stderr.getvalue()
    # tqdm's meter, redrawn in place, with the terminal's label; cleared at the end (leave=False).
    assert written.startswith(f"\rbatch 1/2:   0%|          | 0/{STEPS} [00:00<?, ?step/s]")
    assert written.endswith("\r") and "\n" not in written and "optimising" not in written


@pytest.mark.parametrize("stream", [io.StringIO, FakeTerminal])
def test_progress_false_writes_nothing(stream, monkeypatch):
    monkeypatch.setattr(sys, "stderr", stream())
    run_optimize(False)
    assert sys.stderr.getvalue() == ""


def test_mining_writes_lines_to_a_log(tmp_path, tiny_cnn, capsys):
    write_images(tmp_path / "data", 6)
    data, out = tmp_path / "data", tmp_path / "out"
    mine(tiny_cnn, "stage1", data, out, top_images=2, patch_side=0, workers=0)
    err = capsys.readouterr().err
    assert "\r" not in err
    stage_one = [line for line in err.splitlines() if line.startswith("mining stage 1: ")]
    assert stage_one[0].startswith("mining stage 1: 0/6 img")
    assert stage_one[-1].startswith("mining stage 1: 6/6 img (100%)")


def test_an_atlas_build_writes_lines_and_its_units_no_bars_of_their_own(tmp_path, tiny_cnn, capsys):
    write_images(tmp_path / "refs", 2)
    targets = [ClassTarget(i, f"class {i}") for i in range(2)]
    references = lambda target: from_folder(tmp_path / "refs", count=2)  # noqa: E731
    build_atlas(tiny_cnn, targets, references, tmp_path / "atlas", {"steps": 3}, render=False)
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)
    assert lines[0].startswith("atlas: 0/2 unit (0%)"), lines
    assert lines[-1].startswith("atlas: 2/2 unit (100%)") and "failed=0" in lines[-1]
    assert not [line for line in lines if line.startswith("optimising")]


def test_a_run_counts_its_reference_views_before_the_first_step(
    tmp_path, tiny_cnn, capsys, monkeypatch
):
    """An inner unit's references (a forward and a relevance pass per view, per stage) took a
    minute and more before the first step's line, in silence."""
    import vital
    from vital.targets import Channel

    monkeypatch.setenv("VITAL_CACHE", str(tmp_path / "cache"))
    write_images(tmp_path / "refs", 3)
    arguments = {"settings": {"steps": 2}, "reference_count": 4}
    vital.visualize(tiny_cnn, [Channel("stage3", 1)], tmp_path / "refs", **arguments)
    lines = capsys.readouterr().err.splitlines()
    counted = [line for line in lines if line.startswith("references: ")]
    assert counted and lines.index(counted[-1]) < lines.index(
        next(line for line in lines if line.startswith("optimising"))
    )
    assert int(counted[-1].split(" ")[1]) >= 4 and " view, " in counted[-1]
    vital.visualize(tiny_cnn, [Channel("stage3", 1)], tmp_path / "refs", **arguments)
    lines = capsys.readouterr().err.splitlines()  # all from the cache: nothing to count
    assert not [line for line in lines if line.startswith("references: ")]
    vital.visualize(tiny_cnn, [1], tmp_path / "refs", **arguments)  # a class's, as it starts
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if line.startswith("references: ")], lines
    quiet = {**arguments, "progress": False}
    vital.visualize(tiny_cnn, [Channel("stage3", 2)], tmp_path / "refs", **quiet)
    assert capsys.readouterr().err == ""


def test_concepts_says_how_far_each_stage_before_the_pictures_got(tmp_path, tiny_cnn, capsys):
    """Crops' features, relevance and examples can take minutes; each writes its own lines."""
    from vital.concepts import concepts

    write_images(tmp_path / "data", 3)
    concepts(
        tiny_cnn, 3, tmp_path / "data", layer="stage3", count=2, crops=12, examples=2,
        pictures=False, out=tmp_path / "out",
    )  # fmt: skip
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)
    for stage, total, unit in (("crops' features", 12, "crop"), ("relevance", 3, "image"),
                               ("examples", None, "example")):  # fmt: skip
        mine = [line for line in lines if line.startswith(f"concepts: {stage}: ")]
        assert len(mine) >= 2, lines
        done = mine[-1].split(": ")[2].split(" ")[0]
        assert done.split("/")[0] == done.split("/")[1] and f" {unit} (100%)" in mine[-1]
        assert total is None or done == f"{total}/{total}"


def test_concepts_without_progress_writes_no_stage_lines(tmp_path, tiny_cnn, capsys):
    from vital.concepts import concepts

    write_images(tmp_path / "data", 2)
    concepts(
        tiny_cnn, 3, tmp_path / "data", layer="stage3", count=2, crops=8, examples=2,
        pictures=False, out=tmp_path / "out", progress=False,
    )  # fmt: skip
    assert "concepts: " not in capsys.readouterr().err


def test_a_tqdm_setting_tqdm_cannot_read_is_set_aside_and_named_once(tmp_path):
    """TQDM_MININTERVAL=abc made tqdm raise as torch imported it: every command a traceback."""
    import subprocess

    script = (
        "import os, warnings\n"
        "warnings.simplefilter('always')\n"
        "import vital\n"
        "from vital.progress import progress_bar\n"
        "print(sorted(k for k in os.environ if k.startswith('TQDM_')))\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    progress_bar(2, 'x', disable=True).close()\n"
        "    progress_bar(2, 'x', disable=True).close()\n"
        "print([str(w.message).split('=')[0] for w in seen])\n"
    )
    environment = {**os.environ, "TQDM_MININTERVAL": "abc", "TQDM_NCOLS": "7"}
    process = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True
    )
    assert process.returncode == 0, process.stderr
    kept, warned = process.stdout.splitlines()
    assert kept == "['TQDM_NCOLS']"  # the readable one stays
    assert warned == "['TQDM_MININTERVAL']"  # named once, at the first bar
