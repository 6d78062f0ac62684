"""benchmarks/convergence.py's seed sets and setting overrides (no model runs)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from convergence import Point, Run, parse_overrides, point_key  # noqa: E402

MODEL = SimpleNamespace(fingerprint="stub")


def test_overrides_are_parsed_as_settings_fields():
    assert parse_overrides(["views=2", "half_resolution_steps=30", "lr=0.2"]) == (
        ("views", 2),
        ("half_resolution_steps", 30),
        ("lr", 0.2),
    )
    # steps, seed: own options; None: the driver would run the preset and label it a variant
    for bad in (["nonsense=1"], ["views"], ["steps=100"], ["seed=3"], ["resolution=None"]):
        with pytest.raises(SystemExit):
            parse_overrides(bad)


def test_a_seed_set_and_a_variant_are_their_own_points():
    plain = point_key("classes", "vital", "fast", 100, MODEL, Run(), targets=[1])
    assert "seed_base" not in plain  # seed set 0 keeps the key it had before the option
    second = point_key("classes", "vital", "fast", 100, MODEL, Run(seed_base=7), targets=[1])
    assert second["seed_base"] == 7 and second != plain
    views = Run(overrides=(("views", 2),))
    variant = point_key("classes", "vital", "fast", 100, MODEL, views, targets=[1])
    assert variant["recipe"]["views"] == 2 and plain["recipe"]["views"] == 1
    assert Run(7, (("views", 2),)).settings(100) == {"steps": 100, "seed": 7, "views": 2}


def test_a_variant_is_named_in_its_label():
    point = Point("classes", "vital", "fast", 100, None, 1.0, variant="views=2")
    assert point.label == "fast views=2 @100"
    assert Point("classes", "vital", "1", 2000, None, 1.0).label == "setting 1 @2000"
