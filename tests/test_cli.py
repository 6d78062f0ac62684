import json
import sys

import pytest

from vital import cli


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["vital", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_user_mistakes_are_one_line_messages(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # the runs' default --out, vital-out, is made before a refusal
    code, _, err = run_cli(monkeypatch, capsys, "class", "--class", "expresso", "--steps", "1")
    assert code == 2 and "did you mean 'espresso'" in err and "Traceback" not in err
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "class",
        "--model",
        "resnet18",
        "--weights",
        "/no/file.pth",
        "--class",
        "1",
    )
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(monkeypatch, capsys, "class", "--class", "1", "--refs", "/no/dir")
    assert code == 2 and "does not exist" in err


def test_layers_lists_shapes_and_default_taps(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "layers", "resnet18", "--match", "layer4")
    assert code == 0
    assert "layer4.1" in out and "(512, 7, 7)" in out
    assert "default taps (discovered automatically" in out and "layer4=1" in out


def test_classes_search(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "classes", "--search", "espresso")
    assert code == 0 and "967  n07920052   espresso" in out


@pytest.mark.slow
def test_class_command_writes_images_records_and_grid(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        "class",
        "--class",
        "espresso",
        "--class",
        "moped",
        "--steps",
        "2",
        "--resolution",
        "64",
        "--ref-count",
        "2",
        "--out",
        str(tmp_path),
    )
    assert code == 0, out
    records = sorted(tmp_path.glob("*.json"))
    assert len(records) == 2
    assert json.loads(records[0].read_text())["settings"]["resolution"] == 64
    assert (tmp_path / "class-grid.png").is_file() and "grid:" in out


def test_channels_last_is_a_flag_that_reaches_the_run(monkeypatch, capsys, tmp_path):
    common = ["class", "--class", "espresso", "--steps", "1", "--resolution", "64"]
    common += ["--ref-count", "2"]
    runs = {"on": ["--channels-last"], "off": []}
    for name, flag in runs.items():
        code, out, _ = run_cli(monkeypatch, capsys, *common, *flag, "--out", str(tmp_path / name))
        assert code == 0, out
    for name, expected in (("on", True), ("off", False)):
        (record,) = (tmp_path / name).glob("*.json")
        assert json.loads(record.read_text())["settings"]["channels_last"] is expected


def test_shared_settings_leave_out_what_was_not_given_and_the_seed_on_request():
    from vital.cli.options import settings_of

    common = {"steps": 5, "seed": 3, "resolution": None, "precision": None}
    assert settings_of({**common, "channels_last": False}) == {"steps": 5, "seed": 3}
    given = settings_of({**common, "channels_last": True}, seed=False)
    assert given == {"steps": 5, "channels_last": True}  # explain passes its seed by itself
