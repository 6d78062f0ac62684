"""Options typed where they change nothing are refused before any work, not dropped unseen."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from PIL import Image

import vital.cli.atlas
import vital.cli.explain
from vital import cli


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 40), (120, 80, 40)).save(path)
    return path


@pytest.fixture
def _run(monkeypatch, capsys):
    """``vital ARGUMENTS`` as the shell runs it: exit status and all output."""

    def run(arguments):
        monkeypatch.setattr(sys, "argv", ["vital", *map(str, arguments)])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        captured = capsys.readouterr()
        return SimpleNamespace(exit_code=exit_info.value.code, output=captured.out + captured.err)

    return run


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        (["--count", "10"], "--count"),  # typed, though it is the default value
        (["--by", "concepts", "--top", "7"], "--top"),
        (["--by", "concepts", "--data", "."], "--data"),
        (["--by", "concepts", "--mined-as", "patch"], "--mined-as"),
        (["--by", "concepts", "--ref-count", "5"], "--ref-count"),
        (["--no-pictures", "--resolution", "1"], "--resolution"),
        (["--no-pictures", "--steps", "5", "--seed", "2"], "--steps and --seed"),
        (["--by", "concepts", "--no-pictures", "--batch", "2"], "--batch"),
    ],
)
def test_explain_refuses_options_that_change_nothing(
    _run, photo, tmp_path, monkeypatch, extra, refused
):
    monkeypatch.setattr(vital.cli.explain.session, "load", _no_model)
    result = _run(["explain", photo, "--layer", "features.18", "--out", tmp_path / "out", *extra])
    assert result.exit_code == 2, result.output
    assert f"leave out {refused}." in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        (["--steps", "5"], "--steps"),
        (["--setting", "1", "--seed", "3"], "--setting and --seed"),
        (["--ref-count", "5"], "--ref-count"),
        (["--mined-as", "patch"], "--mined-as"),
        (["--store", "."], "--store"),
        (["--force"], "--force"),
    ],
)
def test_explain_without_data_refuses_what_only_pictures_use(
    _run, photo, tmp_path, monkeypatch, extra, refused
):
    """Without --data nothing is mined, so nothing is pictured: those options would do nothing."""
    monkeypatch.setattr(vital.cli.explain.session, "load", _no_model)
    result = _run(["explain", photo, "--layer", "features.18", "--out", tmp_path / "out", *extra])
    assert result.exit_code == 2, result.output
    assert "without --data" in result.output and f"leave out {refused}." in result.output
    assert not (tmp_path / "out").exists()


def test_explain_with_data_takes_the_picture_options(_run, photo, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(vital.cli.explain.session, "load", lambda *a: "model")
    monkeypatch.setattr(vital.cli.explain, "_explain_one", lambda *a, **k: calls.append(k))
    arguments = ["--data", tmp_path, "--steps", "5", "--ref-count", "3", "--force"]
    result = _run(["explain", photo, "--layer", "L", "--out", tmp_path / "out", *arguments])
    assert result.exit_code == 0, result.output
    assert [(c["settings"], c["reference_count"], c["force"]) for c in calls] == [
        ({"steps": 5}, 3, True)
    ]


def test_explain_by_concepts_takes_too_many_concepts_in_its_own_words(
    _run, photo, tmp_path, monkeypatch
):
    monkeypatch.setattr(vital.cli.explain.session, "load", _no_model)
    result = _run(["explain", photo, "--layer", "L", "--by", "concepts", "--count", "1000"])
    assert result.exit_code == 2
    assert "--count is at most 128" in result.output and "--crops" not in result.output


def test_explain_keeps_what_concepts_use_without_pictures(_run, photo, tmp_path, monkeypatch):
    """Without pictures the seed still draws the crops and the factorisation."""
    calls = []
    monkeypatch.setattr(vital.cli.explain.session, "load", lambda *a: "model")
    monkeypatch.setattr(
        vital.cli.explain, "explain_by_concepts", lambda *a, **k: calls.append(k["seed"])
    )
    arguments = ["--by", "concepts", "--no-pictures", "--seed", "3", "--force", "--count", "4"]
    result = _run(["explain", photo, "--layer", "L", "--out", tmp_path / "out", *arguments])
    assert result.exit_code == 0, result.output
    assert calls == [3]


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        (["--by", "concepts", "--class", "1", "--top-images", "5"], "--top-images"),
        (["--by", "concepts", "--class", "1", "--patch", "32"], "--patch"),
        (["--data", ".", "--count", "4"], "--count"),
        (["--data", ".", "--crop-scale", "0.1,0.2"], "--crop-scale"),
    ],
)
def test_atlas_build_refuses_options_that_change_nothing(_run, tmp_path, extra, refused):
    result = _run(["atlas", "build", "--layer", "features.18", "--out", tmp_path / "a", *extra])
    assert result.exit_code == 2, result.output
    assert f"leave out {refused}." in result.output


def test_atlas_build_by_concepts_checks_the_count_before_any_picture(_run, tmp_path, monkeypatch):
    monkeypatch.setattr(vital.cli.atlas, "ModelSpec", _no_model, raising=False)
    result = _run([
        "atlas", "build", "--by", "concepts", "--layer", "features.18", "--class", "espresso",
        "--count", "9", "--crops", "8", "--out", tmp_path / "a",
    ])  # fmt: skip
    assert result.exit_code == 2
    assert "9 concepts cannot be found in 8 crops" in result.output
    assert "units visualised" not in result.output


def _no_model(*_args, **_kwargs):
    raise AssertionError("the refusal comes before the model is loaded")
