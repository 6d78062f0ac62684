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


def test_top1_counts_only_the_classes_first_on_their_photo():
    from convergence import top1_where

    ranks = [1, 2, 1, 1]
    assert top1_where(ranks, [True, True, True, False]) == 2  # the 4th is first but not chosen
    assert top1_where(ranks, [False, False, False, True]) == 1


def test_seed_sets_are_averaged_per_point_with_each_value_shown():
    from seed_sets import means_table

    def run(base, realism, top1, labels=("fast @100", "setting 1 @2000")):
        rows = [
            {"kind": "classes", "label": label, "top1_of_first": top1, "judge_top5": 5,
             "realism_own": realism + shift, "realism_gap": 0.4, "seconds": 1.0}
            for label, shift in zip(labels, (0.0, 0.1), strict=False)
        ]  # fmt: skip
        return {"seed_base": base, "judge": "j", "rows": rows}

    text = means_table([run(0, 0.5, 4), run(7, 0.7, 3, labels=("fast @100",))], "classes")
    fast = next(line for line in text.splitlines() if line.startswith("| fast @100"))
    assert "**0.600** (0.500 / 0.700)" in fast and "**3.5** (4.0 / 3.0)" in fast
    slow = next(line for line in text.splitlines() if line.startswith("| setting 1 @2000"))
    assert "(n = 1)" in slow and "**0.600** (0.600)" in slow  # seed set 7 lacks the point
    assert "seed sets 0 / 7" in text


def test_seed_sets_are_distinct_whole_numbers():
    import argparse

    from seed_sets import seed_bases

    assert seed_bases("0,7, 14") == [0, 7, 14]
    for bad in ("abc", "0,0", ",", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_bases(bad)
