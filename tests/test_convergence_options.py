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


def _arguments(**given):
    from convergence import CHANNEL_PHOTOS, CLASSES

    defaults = {
        "steps": "50,100", "baseline_steps": "300", "points": "", "channel_points": "",
        "kinds": "classes,channels", "classes": ",".join(map(str, CLASSES)),
        "channel_photos": ",".join(CHANNEL_PHOTOS), "channel_references": 20,
    }  # fmt: skip
    return SimpleNamespace(**{**defaults, **given})


def test_the_defaults_and_good_options_pass():
    from convergence import argument_problem

    assert argument_problem(_arguments()) is None
    good = _arguments(points="fast@100,1@2000", steps="", baseline_steps="", kinds="channels",
                      channel_photos="rocket,grace_hopper", channel_references=1)  # fmt: skip
    assert argument_problem(good) is None


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("channel_photos", "astronaut", "--channel-photos"),  # no class to score it against
        ("channel_photos", "coffee,nowhere", "--channel-photos"),
        ("channel_photos", "coffee,coffee", "twice"),
        ("classes", "abc", "--classes"),
        ("classes", "1", "--classes"),  # no embedded photo of class 1
        ("classes", "967,967", "twice"),
        ("points", "fast100", "SETTING@STEPS"),
        ("points", "fast@0", "SETTING@STEPS"),
        ("points", "seven@100", "does not exist"),
        ("channel_points", "fast@-3", "--channel-points"),
        ("kinds", "nothing", "--kinds"),
        ("steps", "", "--steps"),
        ("steps", "10,x", "--steps"),
        ("baseline_steps", "0", "--baseline-steps"),
        ("channel_references", 0, "--channel-references"),
    ],
)
def test_a_wrong_option_is_named_before_anything_runs(option, value, said):
    from convergence import argument_problem

    problem = argument_problem(_arguments(**{option: value}))
    assert problem is not None and said in problem


def test_options_of_a_kind_not_run_are_not_checked():
    from convergence import argument_problem

    assert argument_problem(_arguments(kinds="channels", classes="abc")) is None
    assert argument_problem(_arguments(kinds="classes", channel_photos="astronaut")) is None
