import json
import sqlite3
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from vital.cli import app
from vital.references import export_sample_photos


@pytest.mark.slow
def test_atlas_build_of_mined_channels_and_classes_from_the_cli(tmp_path):
    photos = tmp_path / "photos"
    export_sample_photos(photos)
    arguments = ["atlas", "build", "--out", str(tmp_path / "atlas"), "--layer", "features.16"]
    arguments += ["--channel", "2,9", "--class", "espresso", "--data", str(photos)]
    arguments += ["--top-images", "3", "--patch", "0", "--ref-count", "2", "--steps", "2"]
    arguments += ["--resolution", "64", "--device", "cpu"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "3 units visualised, 0 failed" in result.output
    with sqlite3.connect(tmp_path / "atlas" / "atlas.sqlite") as connection:
        rows = dict(connection.execute("SELECT unit, record FROM results").fetchall())
    assert set(rows) == {"class/967", "features.16/2", "features.16/9"}
    channel = json.loads(rows["features.16/2"])
    assert channel["relevance"] == "lrp" and "mined" in channel["references"]["summary"]
    assert channel["settings"]["tv_l2"] == pytest.approx(3e-7)
    assert json.loads(rows["class/967"])["settings"]["tv_l2"] == 0
    assert "files" in channel and "rgba" in channel["files"]
    assert [step for step, _ in channel["activation_trace"]] == [1, 2]
    page = tmp_path / "atlas" / "units" / f"{channel['files']['png'][:-4]}.html"
    assert "aria-label='activation over the run'" in page.read_text()
    again = CliRunner().invoke(app, arguments)
    assert "0 units visualised, 0 failed, 3 already done" in again.output
    assert "reused 3 unit(s) stored with the same inputs" in again.output
    changed = CliRunner().invoke(app, [*arguments[:-6], "--steps", "3", *arguments[-4:]])
    assert changed.exit_code == 0, changed.output
    assert "recomputing features.16/2: settings.steps 2 → 3" in changed.output
    assert "3 units visualised, 0 failed, 0 already done" in changed.output
    forced = CliRunner().invoke(app, [*arguments[:-6], "--steps", "3", *arguments[-4:], "--force"])
    assert "recomputing 3 stored unit(s) (--force)" in forced.output
    assert "3 units visualised" in forced.output


def test_atlas_build_refuses_a_folder_with_the_users_index(tmp_path):
    (tmp_path / "atlas").mkdir()
    (tmp_path / "atlas" / "index.html").write_text("my index")
    arguments = ["atlas", "build", "--out", str(tmp_path / "atlas"), "--class", "espresso"]
    process = subprocess.run(
        [sys.executable, "-m", "vital", *arguments], capture_output=True, text=True
    )
    assert process.returncode == 2
    (line,) = process.stderr.strip().splitlines()
    assert line.startswith("error: ") and "index.html" in line and "never overwrites" in line
    assert (tmp_path / "atlas" / "index.html").read_text() == "my index"
    assert [p.name for p in (tmp_path / "atlas").iterdir()] == ["index.html"]
