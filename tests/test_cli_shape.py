"""One command-line shape: every list option repeats (integers also take commas), --refs,
--device auto, --version and ``python -m vital``."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
from typer import rich_utils
from typer.testing import CliRunner

import vital
import vital.cli
from conftest import tiny_cnn_model
from vital.cli import app


@pytest.fixture
def seen(monkeypatch):
    """Record what each command hands the library instead of running it."""
    calls: dict[str, dict] = {}
    model = tiny_cnn_model()
    monkeypatch.setattr(vital.cli.session, "load", lambda name, weights, device: calls.update(
        load={"name": name, "device": device}) or model)  # fmt: skip

    def visualize(loaded, targets, references, **kwargs):
        calls["visualize"] = {"targets": targets, "references": references, **kwargs}
        return []

    def compare(loaded, classes, methods, **kwargs):
        calls["compare"] = {"classes": classes, "methods": methods, **kwargs}
        raise SystemExit(0)

    def mine(loaded, layer, data, out, **kwargs):  # the command then stops on the missing report
        calls["mine"] = {"layer": layer, **kwargs}

    def build_atlas(spec, targets, references, out, settings, **kwargs):
        calls["atlas"] = {"targets": targets, **kwargs}
        raise SystemExit(0)

    monkeypatch.setattr("vital.api.visualize", visualize)
    monkeypatch.setattr("vital.compare.compare", compare)
    monkeypatch.setattr("vital.mining.mine", mine)
    monkeypatch.setattr("vital.atlas.build_atlas", build_atlas)
    monkeypatch.setattr("vital.atlas.ModelSpec.__call__", lambda self: model)
    monkeypatch.setattr("vital.mining.mined_references", lambda *args: None)
    # what `atlas build` checks before its folder: mining's plan and the classes' references
    monkeypatch.setattr(
        "vital.mining.plan_mining", lambda model, layer, data, *args, **kwargs: SimpleNamespace(
            images=data)
    )  # fmt: skip
    monkeypatch.setattr("vital.methods.vital_class.class_references", lambda *args: None)
    monkeypatch.setattr(vital.cli.session, "report", lambda *args: None)
    return calls


def invoke(*arguments):
    return CliRunner().invoke(app, [str(a) for a in arguments])


def test_classes_repeat_or_take_commas_in_class_compare_and_atlas(seen, tmp_path):
    assert invoke("class", "-c", "3", "--class", "1,2", "--out", tmp_path).exit_code == 0
    assert seen["visualize"]["targets"] == ["3", "1", "2"]
    assert seen["load"]["device"] == "auto"
    invoke("compare", "-c", "1", "--class", "2", "--class", "3,4", "--out", tmp_path)
    assert seen["compare"]["classes"] == ["1", "2", "3", "4"]
    invoke("compare", "-c", "1", "--method", "vital", "--method", "maco,fourier", "--out", tmp_path)  # noqa: E501
    assert list(seen["compare"]["methods"]) == ["vital", "maco", "fourier"]
    invoke("atlas", "build", "--out", tmp_path / "a", "-c", "1", "--class", "2,3")
    assert [t.index for t in seen["atlas"]["targets"]] == [1, 2, 3]


def test_channels_repeat_or_take_commas_in_neuron_mine_and_atlas(seen, tmp_path, image_folder):
    arguments = ["--layer", "stage3", "--refs", image_folder, "--out", tmp_path]
    assert invoke("neuron", *arguments, "--channel", "3", "-k", "1,2").exit_code == 0
    assert [t.index for t in seen["visualize"]["targets"]] == [3, 1, 2]
    invoke("mine", "--layer", "stage3", "--data", image_folder, "--channel", "4", "-k", "5,6")
    assert seen["mine"]["channels"] == [4, 5, 6]
    invoke("mine", "--layer", "stage3", "--data", image_folder, "--channel", "all")
    assert seen["mine"]["channels"] is None
    invoke("atlas", "build", "--out", tmp_path / "b", "--layer", "stage3", "--data",
           image_folder, "--channel", "7", "--channel", "8,9")  # fmt: skip
    assert [t.index for t in seen["atlas"]["targets"]] == [7, 8, 9]
    result = invoke("neuron", *arguments, "--channel", "3,x")
    assert "--channel takes whole numbers" in str(result.exception)


def test_neuron_patch_takes_auto_or_pixels(seen, tmp_path, image_folder):
    arguments = ["--layer", "stage3", "--channel", "1", "--refs", image_folder, "--out", tmp_path]
    for given, handed in (("auto", "auto"), ("32", 32), ("0", 0)):
        assert invoke("neuron", *arguments, "--patch", given).exit_code == 0
        assert seen["visualize"]["patch_side"] == handed
    del seen["visualize"]
    result = invoke("neuron", *arguments, "--patch", "big")
    assert "--patch takes 'auto' or a side in pixels" in str(result.exception)
    assert "visualize" not in seen


def test_refs_and_device_everywhere(seen, tmp_path, image_folder):
    invoke("class", "-c", "1", "--refs", image_folder, "--out", tmp_path)
    assert seen["visualize"]["references"] == str(image_folder)
    invoke("compare", "-c", "1", "--refs", image_folder, "--out", tmp_path)
    assert seen["compare"]["references"] == str(image_folder)
    invoke("atlas", "build", "--out", tmp_path / "c", "-c", "1", "--refs", image_folder)
    for command in (["demo", "--steps", "1"], ["class", "-c", "1"]):
        invoke(*command, "--out", tmp_path)
        assert seen["load"]["device"] == "auto"


def test_version_and_module_entry_point():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"vital {vital.__version__}"
    process = subprocess.run(
        [sys.executable, "-m", "vital", "--version"], capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0 and process.stdout.strip() == f"vital {vital.__version__}"


@pytest.mark.parametrize(
    ("argv", "option", "words"),
    [
        (["class", "--help"], "--ref-count", "Reference images (views) per"),
        (["atlas", "build", "--help"], "--layer", "Layer whose channels to"),
        (["--help"], "--version", "Print the version and exit."),
    ],
)
def test_help_on_a_narrow_terminal_keeps_options_beside_their_help(
    argv, option, words, monkeypatch
):
    monkeypatch.setattr(rich_utils, "MAX_WIDTH", None)  # no TERMINAL_WIDTH from the environment
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "20"})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    line = next(line for line in lines if line.startswith("│") and f" {option} " in line)
    assert words in line, line
    assert max(len(line) for line in lines) == 80  # the minimum width, not the terminal's 20


def test_help_on_a_wide_terminal_keeps_its_width(monkeypatch):
    monkeypatch.setattr(rich_utils, "MAX_WIDTH", None)
    result = CliRunner().invoke(app, ["class", "--help"], env={"COLUMNS": "150"})
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) == 150
    line = next(line for line in lines if line.startswith("│") and " --ref-count " in line)
    assert "Reference images (views) per target. [default: 50]" in line


@pytest.mark.parametrize("argv", [["class", "--help"], ["--help"], ["atlas", "--help"]])
def test_help_on_a_huge_terminal_is_at_most_200_columns(argv, monkeypatch):
    """rich pads every line to the width: COLUMNS=100000 wrote megabytes of blanks."""
    monkeypatch.setattr(rich_utils, "MAX_WIDTH", None)
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "100000"})
    assert result.exit_code == 0
    assert max(len(line) for line in result.output.splitlines()) == 200


@pytest.mark.parametrize(
    "argv", [["concepts", "--help"], ["explain", "--help"], ["atlas", "build", "--help"]]
)
def test_help_paragraphs_flow_at_80_columns(argv, monkeypatch):
    """A docstring's own line breaks (at 95 columns) must not cut every other help line short."""
    monkeypatch.setattr(rich_utils, "MAX_WIDTH", None)
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    prose = lines[3 : next(i for i, line in enumerate(lines) if line.startswith("╭"))]
    paragraphs = [[]]
    for line in prose:
        if line.strip():
            paragraphs[-1].append(line.rstrip())
        else:
            paragraphs.append([])
    filled = [line for paragraph in paragraphs for line in paragraph[:-1]]  # all but the last
    assert len(filled) >= 3
    assert all(len(line) >= 60 for line in filled), "\n".join(filled)


def test_laid_out_help_paragraphs_keep_their_line_breaks():
    from vital.cli.options import reflowed

    text = "First line.\n\nA paragraph\nwrapped here.\n\nExamples:\n  vital a\n  vital b"
    assert reflowed(text) == (
        "First line.\n\nA paragraph wrapped here.\n\nExamples:\n  vital a\n  vital b"
    )
