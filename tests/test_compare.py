"""`compare` end to end on tiny models, and the CLI on the embedded model."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_cnn_model, write_images
from vital.cli import app
from vital.compare import METHODS, compare, parse_methods, write_report
from vital.errors import VitalError
from vital.references import from_folder


def test_compare_runs_every_method_and_writes_the_report(tiny_cnn, tmp_path):
    references = {}
    for index in (1, 2):
        write_images(tmp_path / f"refs{index}", 3, seed=index)
        references[index] = from_folder(tmp_path / f"refs{index}", count=4)
    comparison = compare(
        tiny_cnn,
        [1, "class 2"],
        METHODS,
        judge=tiny_cnn_model(seed=1),
        references=references,
        settings={"steps": 3},
        out=tmp_path / "runs",
        reference_count=4,
        progress=False,
    )
    assert [row["method"] for row in comparison.summary] == list(METHODS)
    assert all(row["steps"] == 3 for row in comparison.summary)
    assert len(comparison.per_image) == 2 * len(METHODS)
    assert all(0 <= row["acc_top1"] <= 1 for row in comparison.summary)
    assert comparison.summary[0]["fid"].real_images == 8
    assert any("CLIP" in note for note in comparison.notes)
    paths = write_report(comparison, tmp_path / "report")
    table = paths["table"].read_text()
    for method in METHODS:
        assert f"| {method} |" in table
        records = list((tmp_path / "runs" / method).glob("*.json"))
        assert len(records) == 2
        assert json.loads(records[0].read_text())["method"] == method
    with open(paths["csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == list(METHODS)
    assert rows[0]["fid_real_images"] == "8"
    grid = Image.open(paths["grid"])
    assert grid.height > 4 * 160  # one row per method


def test_compare_rejects_unknown_methods_and_no_classes(tiny_cnn):
    with pytest.raises(VitalError, match="unknown method"):
        parse_methods("vital,lucid")
    with pytest.raises(VitalError, match="no targets"):
        compare(tiny_cnn, [], "fourier", settings={"steps": 1}, progress=False)


def test_clip_weights_that_cannot_be_used_are_refused_before_any_picture(
    tiny_cnn, tmp_path, monkeypatch
):
    import vital.compare

    made = []
    monkeypatch.setattr(vital.compare, "visualize", lambda *a, **k: made.append(a))
    with pytest.raises(VitalError, match="CLIP zero-shot needs"):
        compare(tiny_cnn, [1], ["fourier"], clip_weights=tmp_path / "nowhere.pt", out=tmp_path)
    assert made == [] and not (tmp_path / "table.md").exists()


@pytest.mark.slow
def test_cli_compare_and_class_method_on_the_embedded_model(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "compare",
            "--class",
            "espresso,daisy",
            "--method",
            "vital,maco",
            "--judge",
            "efficientnet_lite0",
            "--steps",
            "2",
            "--ref-count",
            "2",
            "--out",
            str(tmp_path / "cmp"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| vital |" in result.output and "| maco |" in result.output
    assert (tmp_path / "cmp" / "grid.png").is_file()
    result = runner.invoke(
        app,
        ["class", "-c", "daisy", "--method", "fourier", "--steps", "2", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    assert list(tmp_path.glob("fourier-class-985-*.json"))


def test_cli_overrides_reach_a_baseline_and_vital_only_options_are_refused(
    monkeypatch, tiny_cnn, tmp_path
):
    import vital.cli

    monkeypatch.setattr(vital.cli.session, "load", lambda *args: tiny_cnn)
    base = ["class", "-c", "3", "--method", "fourier", "--steps", "2", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*base, "--lr", "0.1"])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("fourier-*.json")]
    # the user's lr over fourier's own defaults (betas, warm-up, jitter 8 stay fourier's)
    assert record["settings"]["lr"] == 0.1 and record["settings"]["jitter"] == 8
    for extra, message in (
        (["--setting", "0"], "selects one of VITAL's settings"),
        (["--refs", str(tmp_path)], "uses no reference images"),
        (["--tap", "stem"], "no option taps"),
    ):
        result = CliRunner().invoke(app, [*base, *extra])
        assert isinstance(result.exception, VitalError), result.output
        assert message in str(result.exception)


def test_channel_comparison_scores_every_method_against_the_same_references(
    tiny_cnn, tmp_path, monkeypatch
):
    import torch

    from vital.references import from_folder
    from vital.targets import Channel

    write_images(tmp_path / "refs", 3)
    targets = [Channel("stage3", 1), Channel("stage3", 4)]
    comparison = compare(
        tiny_cnn,
        targets,
        ["vital", "fourier"],
        references=tmp_path / "refs",
        settings={"steps": 3},
        reference_count=4,
        out=tmp_path / "out",
        progress=False,
    )
    assert [row["method"] for row in comparison.summary] == ["vital", "fourier"]
    # the references' mean activation, computed here with a plain forward hook
    views = torch.stack(list(from_folder(tmp_path / "refs", 4).views(32)))
    seen = {}
    handle = tiny_cnn.module.stage3.register_forward_hook(lambda _m, _i, o: seen.update(o=o))
    with torch.no_grad():
        tiny_cnn.module(tiny_cnn.preprocessing.normalize(views))
    handle.remove()
    for row in comparison.per_image:
        channel = int(row["unit"].rpartition("/")[2])
        mean = float(seen["o"][:, channel].mean())
        assert row["reference_activation"] == pytest.approx(mean, rel=1e-4)
        assert row["relative"] == pytest.approx(row["activation"] / mean, rel=1e-6)
    paths = write_report(comparison, tmp_path / "report")
    assert "activation / references'" in paths["table"].read_text()
    assert Image.open(paths["grid"]).width > 0

    import vital.cli

    monkeypatch.setattr(vital.cli.session, "load", lambda *args: tiny_cnn)
    arguments = ["compare", "--layer", "stage3", "--channel", "1,4", "--refs", tmp_path / "refs"]
    arguments += ["--method", "vital,maco", "--steps", "2", "--ref-count", "3"]
    result = CliRunner().invoke(app, [str(a) for a in [*arguments, "--out", tmp_path / "c"]])
    assert result.exit_code == 0, result.output
    for extra, message in (
        (["-c", "1"], "either classes"),
        (["--judge", "efficientnet_lite0"], "score classes"),
        (["--method", "deepinversion"], "not Channel"),
    ):
        result = CliRunner().invoke(
            app, [str(a) for a in [*arguments, *extra, "--out", tmp_path / "refused"]]
        )
        assert message in str(result.exception), result.output
    # refused before any method ran: no picture or record was written
    assert not [path for path in (tmp_path / "refused").rglob("*") if path.is_file()]


@pytest.mark.parametrize(
    ("seed", "settings", "match"),
    [
        (0, {"seed": 5}, "disagree"),  # 0 is a seed like any other, not "not given"
        (2, {"seed": 3}, "disagree"),
        (1.7, None, "whole number"),
        (True, None, "whole number"),
        (-1, None, "whole number"),
        (None, {"seed": "4"}, "whole number"),
    ],
)
def test_compare_checks_its_seed_as_an_atlas_does(tiny_cnn, seed, settings, match):
    with pytest.raises(VitalError, match=match):
        compare(tiny_cnn, [1], "fourier", seed=seed, settings=settings, progress=False)


def test_compare_takes_its_seed_either_way(tiny_cnn, tmp_path):
    write_images(tmp_path / "refs", 3)
    references = {1: from_folder(tmp_path / "refs", count=4)}
    common = {"references": references, "reference_count": 4, "progress": False}
    by_keyword = compare(tiny_cnn, [1], "fourier", seed=4, settings={"steps": 2}, **common)
    by_settings = compare(tiny_cnn, [1], "fourier", settings={"steps": 2, "seed": 4}, **common)
    pictures = [c.results["fourier"][0].pixels for c in (by_keyword, by_settings)]
    assert pictures[0].equal(pictures[1])
    assert by_keyword.results["fourier"][0].record.seed == 4
