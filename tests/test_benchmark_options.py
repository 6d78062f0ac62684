"""benchmarks/seed_sets.py's and benchmarks/speed.py's option checks (no model runs)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


# --- seed_sets.py -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0", "-2", "abc", "1.5", ""])
def test_seed_sets_jobs_are_one_or_more(text):
    from seed_sets import jobs

    with pytest.raises(argparse.ArgumentTypeError, match="1 or more"):
        jobs(text)


def test_seed_sets_jobs_are_read_as_given():
    from seed_sets import build_parser, jobs

    assert jobs("1") == 1 and jobs("4") == 4
    assert build_parser().parse_args(["--jobs", "3"]).jobs == 3
    assert build_parser().parse_args([]).jobs == 2


def test_seed_sets_refuse_jobs_zero_on_the_command_line(capsys):
    from seed_sets import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--jobs", "0"])
    assert exit_.value.code == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert said[-1].endswith("argument --jobs: how many seed sets run at once: a whole number of "
                             "1 or more, not '0'")  # fmt: skip


def test_seed_sets_refuse_a_negative_seed_set():
    from seed_sets import seed_bases

    with pytest.raises(argparse.ArgumentTypeError, match="0 or more"):
        seed_bases("0,-7")


def test_seed_sets_make_their_folder(tmp_path):
    from seed_sets import out_problem

    out = tmp_path / "a" / "b"
    assert out_problem(out) is None and out.is_dir()
    assert out_problem(out) is None  # and take one that is there
    assert list(out.iterdir()) == []  # the write probe leaves nothing behind


def test_seed_sets_name_a_folder_under_a_file(tmp_path):
    from seed_sets import out_problem

    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "seeds"
    problem = out_problem(out)
    assert problem == (
        f"--out {out} cannot be written (Not a directory); give a folder you can write to"
    )
    assert "is a file" in out_problem(tmp_path / "file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_seed_sets_name_a_read_only_folder(tmp_path):
    from seed_sets import out_problem

    tmp_path.chmod(0o500)
    try:
        problem = out_problem(tmp_path / "seeds")
    finally:
        tmp_path.chmod(0o700)
    assert problem is not None and "cannot be written" in problem


def test_seed_sets_pass_what_convergence_takes():
    from seed_sets import convergence_problem

    assert convergence_problem([]) is None
    assert convergence_problem(["--quick"], seed_base=63) is None
    fast = ["--kinds", "classes", "--points", "fast@100", "--baseline-steps", "", "--cache", "c"]
    assert convergence_problem(fast) is None  # the module doc's command


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["--seed-base", "3"], "--seed-base is set per seed set here; leave it out"),
        (["--seed", "3"], "--seed-base is set per seed set here"),  # argparse's abbreviation
        (["--seed-base", "0"], "--seed-base is set per seed set here"),  # even the default
        (["--json=rows.json"], "--json is set per seed set here"),
        (["--fig", "x"], "--figures is set per seed set here"),
        (["--append"], "--append is set per seed set here"),
        (["--quick", "--steps", "5"], "after --: --quick sets --steps itself"),
        (["--settings", "7"], "after --: --settings: setting 7 does not exist"),
        (["--judge", "bogus"], "after --: --judge takes"),
        (["--bogus"], "after --: unrecognized arguments: --bogus"),
        (["--channel-references", "x"], "after --: argument --channel-references: invalid int"),
    ],
)
def test_seed_sets_refuse_what_convergence_would_before_any_seed_set(arguments, said):
    from seed_sets import convergence_problem

    problem = convergence_problem(arguments)
    assert problem is not None and problem.startswith(said)
    assert "\n" not in problem


def test_seed_sets_check_the_largest_seed_set():
    from seed_sets import convergence_problem

    assert "--seed-base is a whole number" in convergence_problem([], seed_base=2**63 - 1)


def test_seed_sets_let_convergence_print_its_help(capsys):
    from seed_sets import convergence_problem

    with pytest.raises(SystemExit) as exit_:
        convergence_problem(["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: convergence.py")


# --- speed.py ---------------------------------------------------------------------------------


def _speed_problem(argv):
    from speed import argument_problem, build_parser

    return argument_problem(build_parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--steps", "20", "--device", "cpu"],
        ["--device", "auto"],
        ["--one", "mobilenet_v2", "8"],
        ["--one", "resnet50", "1", "--steps", "4", "--device", "cpu"],  # what the table runs
        ["--references", "16", "--device", "cpu"],  # the same
        ["--ratio", "--rounds", "3", "--threads", "2", "--clock", "cpu", "--steps", "5"],
        ["--ratio", "--before", str(Path(__file__).resolve().parents[1] / "src")],
        ["--ratio-json", "--steps", "4", "--clock", "wall", "--threads", "1"],  # what --before runs
    ],
)
def test_speed_takes_good_options(argv):
    assert _speed_problem(argv) is None


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["--one", "mobilenet_v2", "abc"],
            "--one MODEL BATCH: BATCH is a whole number of 1 or more, not 'abc'",
        ),
        (["--one", "mobilenet_v2", "0"], "BATCH is a whole number of 1 or more, not '0'"),
        (["--one", "mobilenet_v2", "-1"], "BATCH is a whole number"),
        (["--one", "mobilenet_v2", "1.5"], "BATCH is a whole number"),
        (["--device", "bogus"], "--device: unknown device 'bogus': use auto, cpu or cuda."),
        (["--one", "mobilenet_v2", "1", "--device", "tpu"], "--device:"),
        (["--references", "-5"], "--references is a count: 1 or more, not -5"),
        (["--references", "0"], "--references is a count: 1 or more, not 0"),
        (["--steps", "0"], "--steps is a count"),
        (["--ratio", "--rounds", "0"], "--rounds is a count"),
        (["--ratio", "--threads", "0"], "--threads is how many threads"),
        (["--rounds", "3"], "--rounds does nothing without --ratio; leave it out"),
        (["--threads", "2"], "--threads does nothing without --ratio"),
        (["--clock", "cpu"], "--clock does nothing without --ratio"),
        (["--before", "src"], "--before does nothing without --ratio"),
        (["--one", "mobilenet_v2", "1", "--rounds", "2"], "--rounds does nothing with --one"),
        (["--references", "16", "--steps", "9"], "--steps does nothing with --references"),
        (
            ["--ratio", "--device", "cuda"],
            "--device does nothing with --ratio (it times on the CPU)",
        ),
        (["--ratio", "--before", "no-such-checkout/src"], "holds no vital package"),
        (["--ratio", "--clock", "cpu", "--steps", "2"], "use --steps 3 or more"),
    ],
)
def test_speed_names_a_wrong_option_before_any_model_loads(argv, said):
    problem = _speed_problem(argv)
    assert problem is not None and said in problem and "\n" not in problem


@pytest.mark.parametrize(
    "argv",
    [
        ["--ratio", "--one", "mobilenet_v2", "1"],
        ["--one", "mobilenet_v2", "1", "--references", "16"],
        ["--ratio", "--references", "16"],
        ["--one", "mobilenet_v2"],
    ],
)
def test_speed_measures_one_thing_at_a_time(argv, capsys):
    from speed import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_speed_says_an_unknown_model_in_one_line(capsys):
    """vital.load_model refuses the name before it builds anything; run() says it as an error."""
    from speed import run

    assert run(["--one", "bogusmodel", "1", "--steps", "1"]) == 2
    said = capsys.readouterr()
    lines = said.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("speed.py: error: unknown model 'bogusmodel'")
    assert said.out == ""


def test_speed_refuses_a_bad_batch_through_its_parser(capsys):
    from speed import run

    with pytest.raises(SystemExit) as exit_:
        run(["--one", "mobilenet_v2", "0"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        "speed.py: error: --one MODEL BATCH: BATCH is a whole number of 1 or more, not '0'"
    )


def test_relevance_cost_takes_image_sides_it_can_run():
    from relevance_cost import sides

    assert sides("16,224") == [16, 224]
    for wrong in ("8", "x", "", "16,4096"):
        with pytest.raises(argparse.ArgumentTypeError, match="image sides from 16"):
            sides(wrong)


# --- peak_memory.py ---------------------------------------------------------------------------


def test_memory_cases_are_kind_side_and_batch():
    from peak_memory import case

    assert case("neuron@512") == ("neuron", 512, 1)
    assert case("class@1024x2") == ("class", 1024, 2)
    for bad in ("neuron", "pixel@512", "class@abc", "class@8", "class@4096", "class@512x9"):
        with pytest.raises(argparse.ArgumentTypeError):
            case(bad)
