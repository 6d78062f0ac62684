"""The embedded sample photos are an extra (``vital[samples]``): without it, one clear line."""

import sys
from pathlib import Path

import pytest

from vital import cli
from vital.references import SAMPLE_PHOTOS

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text("utf-8"))


def _names(requirements: list[str]) -> set[str]:
    return {r.split(">")[0].split("=")[0].split("[")[0].strip().lower() for r in requirements}


def test_every_photo_package_is_in_the_samples_extra_and_the_dev_install():
    packages = {loader.requires[1] for loader, _ in SAMPLE_PHOTOS.values()}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert packages <= _names(extras["samples"])
    assert any("samples" in r for r in extras["dev"])  # `make` installs the photos
    # Only for the photos: a plain install for a user's own models and data goes without them.
    assert not {"scikit-image", "matplotlib"} & _names(PYPROJECT["project"]["dependencies"])


def test_the_demo_without_the_photo_packages_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "skimage.data", None)  # import fails as if not installed
    monkeypatch.setattr(sys, "argv", ["vital", "demo", "--steps", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "pip install 'vital[samples]'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
