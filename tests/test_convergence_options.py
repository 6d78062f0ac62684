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
    """The parser's defaults (what ``--quick`` and ``--points`` compare against), then ``given``."""
    from convergence import build_parser

    defaults = vars(build_parser().parse_args([]))
    return SimpleNamespace(**{**defaults, **given})


def test_the_defaults_and_good_options_pass():
    from convergence import argument_problem

    assert argument_problem(_arguments()) is None
    good = _arguments(points="fast@100,1@2000", baseline_steps="", kinds="channels",
                      channel_photos="rocket,grace_hopper", channel_references=1)  # fmt: skip
    assert argument_problem(good) is None
    for fine in (
        {"settings": "0,1,2,fast"}, {"settings": " FAST"}, {"seed_base": 63},
        {"judge": "efficientnet_lite1"}, {"quick": True}, {"quick": True, "seed_base": 7},
        {"quick": True, "points": "fast@20"}, {"set": ["views=2", "lr=0.1"]},
    ):  # fmt: skip
        assert argument_problem(_arguments(**fine)) is None, fine


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
        ("settings", "7", "--settings: setting 7 does not exist"),
        ("settings", "1,seven", "--settings"),
        ("settings", "", "--settings"),
        ("settings", "1,fast,1", "twice"),
        ("settings", "fast, FAST", "twice"),  # the same setting however it is typed
        ("seed_base", -1, "--seed-base is a whole number from 0"),
        ("seed_base", 2**63 - 1, "--seed-base"),  # image 6 would take a seed past 2**63 - 1
        ("judge", "bogus", "--judge takes efficientnet_lite0 or efficientnet_lite1"),
        ("judge", "mobilenet_v2", "--judge"),  # a model, but not a judge the tables name
        ("set", ["views=0"], "--set views=0: the number of views"),  # before the first point
        ("set", ["lr=fast"], "--set lr=fast"),
        ("set", ["nonsense=1"], "--set takes KEY=VALUE"),
    ],
)
def test_a_wrong_option_is_named_before_anything_runs(option, value, said):
    from convergence import argument_problem

    problem = argument_problem(_arguments(**{option: value}))
    assert problem is not None and said in problem


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (["--steps", "5"], "--steps"),
        (["--baseline-steps", ""], "--baseline-steps"),
        (["--classes", "967"], "--classes"),
        (["--channel-photos", "daisy"], "--channel-photos"),
        (["--channel-references", "8"], "--channel-references"),
        (["--figures", "elsewhere"], "--figures"),
        (["--step", "5", "--fig", "x"], "--steps, --figures"),  # abbreviated, as argparse takes
    ],
)
def test_quick_refuses_an_option_it_would_replace(given, named):
    from convergence import argument_problem, build_parser

    problem = argument_problem(build_parser().parse_args(["--quick", *given]))
    assert problem == f"--quick sets {named} itself: leave out {named} or --quick"
    assert argument_problem(build_parser().parse_args(given)) is None  # fine without --quick


def test_quick_names_every_option_it_replaces_in_its_help():
    from convergence import build_parser, quick

    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "quick"]
    for name in quick(Path("cache")):
        assert "--" + name.replace("_", "-") in action.help


def test_quick_checks_the_options_it_leaves_alone():
    from convergence import argument_problem, build_parser

    parse = build_parser().parse_args
    assert "--settings" in argument_problem(parse(["--quick", "--settings", "7"]))
    assert "--judge" in argument_problem(parse(["--quick", "--judge", "bogus"]))


def test_quick_gives_each_seed_set_its_own_figures():
    from convergence import quick

    cache = Path("cache")
    assert quick(cache)["figures"] == cache / "quick"  # where --quick always wrote them
    assert quick(cache, 7)["figures"] == cache / "quick" / "seeds-7"


@pytest.mark.parametrize(("given", "named"), [({"steps": "5"}, "--steps"),
                                              ({"settings": "fast"}, "--settings")])  # fmt: skip
def test_points_refuse_the_settings_and_steps_they_replace(given, named):
    from convergence import argument_problem

    problem = argument_problem(_arguments(points="fast@100", **given))
    assert problem == f"--points names each point's setting and steps: leave out {named}"


def test_options_of_a_kind_not_run_are_not_checked():
    from convergence import argument_problem

    assert argument_problem(_arguments(kinds="channels", classes="abc")) is None
    assert argument_problem(_arguments(kinds="classes", channel_photos="astronaut")) is None


def test_an_output_path_it_could_not_write_is_named_before_anything_runs(tmp_path):
    """--json, --figures and --cache are written after the run (minutes later): a path that
    cannot take them is refused first, and nothing is created by the check."""
    from convergence import argument_problem

    a_file = tmp_path / "rows.json"
    a_file.write_text("{}")
    a_folder = tmp_path / "folder"
    a_folder.mkdir()
    for given, said in (
        ({"json": a_folder}, f"--json {a_folder} is a folder"),
        ({"json": a_file / "rows.json"}, "lies under the file"),
        ({"figures": a_file}, f"--figures {a_file} is a file"),
        ({"cache": a_file / "deeper" / "cache"}, "lies under the file"),
    ):
        problem = argument_problem(_arguments(**given))
        assert problem is not None and said in problem, (given, problem)
    fine = {"json": tmp_path / "new" / "rows.json", "figures": tmp_path / "figs",
            "cache": tmp_path / "c"}  # fmt: skip
    assert argument_problem(_arguments(**fine)) is None
    assert not (tmp_path / "new").exists() and not (tmp_path / "figs").exists()
