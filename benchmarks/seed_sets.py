"""Convergence over several seed sets: ``convergence.py`` once per seed set, then the means.

One 7-picture run is a noisy measure: the loop is chaotic, and runs that differ only in float
rounding move a seed set's realism by up to 0.06 (benchmarks/RESULTS.md, "`fast` in 100 steps:
the untried levers"). A claim between two points therefore rests on several seed sets. This
runs ``benchmarks/convergence.py`` for each ``--seed-bases`` entry (``--jobs`` processes of one
torch thread each; every argument after ``--`` goes to it unchanged), keeps each seed set's rows
in ``--out``/``seeds-B.json`` and its log, and prints one table of means (bold) per kind and point,
with each seed set's value in parentheses. Classes: explained top-1 counts only the classes the
explained model ranks first on their own photo (the class goal's classes). The arguments after
``--`` meet ``convergence.py``'s own checks once, before any seed set starts; with ``--quick``
there, a seed set's figures go where ``--quick`` puts them (``CACHE/quick``, for a seed set B > 0
``CACHE/quick/seeds-B``) instead of into ``--out``.

    PYTHONPATH=src python benchmarks/seed_sets.py --seed-bases 0,7,14,21,28,35,42,49,56,63 \\
        --out benchmarks/out/seeds/fast100 -- --kinds classes --points fast@100 \\
        --baseline-steps '' --cache benchmarks/out/seeds/cache

The same command with ``--judge efficientnet_lite1`` (after the ``--``) scores the cached
pictures with the other judge without recomputing them (``convergence.py``'s cache).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).parent


def run_seed_set(seed_base: int, out: Path, arguments: list[str], figures: bool = True) -> Path:
    """One ``convergence.py`` run (one torch thread); its rows' JSON file.

    Its figures go into ``out``, unless ``figures`` is False (``--quick`` places them itself).
    """
    rows = out / f"seeds-{seed_base}.json"
    command = [sys.executable, str(HERE / "convergence.py"), *arguments]
    command += ["--seed-base", str(seed_base), "--json", str(rows)]
    if figures:
        command += ["--figures", str(out / f"figures-{seed_base}")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(out / f"seeds-{seed_base}.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    if done.returncode:
        raise SystemExit(f"seed set {seed_base} failed: see {out / f'seeds-{seed_base}.log'}")
    return rows


# Columns of the means table per kind: (header, row key, format).
COLUMNS = {
    "classes": [
        ("explained top-1 (of the classes first on their photo)", "top1_of_first", "{:.1f}"),
        ("judge top-5", "judge_top5", "{:.1f}"),
        ("realism", "realism_own", "{:.3f}"),
        ("gap", "realism_gap", "{:.3f}"),
        ("s / picture", "seconds", "{:.1f}"),
    ],
    "channels": [
        ("≥ ½ references' activation", "half", "{:.1f}"),
        ("mean relative activation", "relative", "{:.2f}"),
        ("judge top-5", "judge_top5", "{:.1f}"),
        ("realism", "realism_own", "{:.3f}"),
        ("gap", "realism_gap", "{:.3f}"),
        ("s / picture", "seconds", "{:.1f}"),
    ],
}


def means_table(runs: list[dict], kind: str) -> str:
    """A Markdown table of each point's mean over the seed sets, each seed set's value after it.

    ``runs`` are ``convergence.py --json`` contents (one per seed set), in seed-set order.
    """
    labels = list(
        dict.fromkeys(r["label"] for run in runs for r in run["rows"] if r["kind"] == kind)
    )
    columns = COLUMNS[kind]
    judge = runs[0]["judge"]
    bases = " / ".join(str(run["seed_base"]) for run in runs)
    head = f"| {kind}, judge {judge} (seed sets {bases}) | " + " | ".join(c[0] for c in columns)
    lines = [head + " |", "|---" * (len(columns) + 1) + "|"]
    for label in labels:
        rows = [
            next((r for r in run["rows"] if r["kind"] == kind and r["label"] == label), None)
            for run in runs
        ]
        present = [r for r in rows if r is not None]
        cells = []
        for _, key, form in columns:
            values = [r[key] for r in present if key in r]
            if not values:
                cells.append("–")
                continue
            each = " / ".join(form.format(v) for v in values)
            cells.append(f"**{form.format(statistics.mean(values))}** ({each})")
        count = f" (n = {len(present)})" if len(present) < len(runs) else ""
        lines.append(f"| {label}{count} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_bases(text: str) -> list[int]:
    """``--seed-bases 0,7,14`` as distinct whole numbers of 0 or more (argparse reports a wrong
    one: ``convergence.py --seed-base`` takes no negative one)."""
    try:
        bases = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"whole numbers separated by commas, not {text!r}"
        ) from None
    if not bases or len(set(bases)) != len(bases) or min(bases) < 0:
        raise argparse.ArgumentTypeError(
            f"one or more distinct seed sets of 0 or more, not {text!r}"
        )
    return bases


def jobs(text: str) -> int:
    """``--jobs N``: how many seed sets run at once, a whole number of 1 or more."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(
            f"how many seed sets run at once: a whole number of 1 or more, not {text!r}"
        )
    return count


def out_problem(out: Path) -> str | None:
    """Make the ``--out`` folder; what stops the seed sets writing into it, or None.

    Checked before any seed set starts: a folder that cannot be made or written would otherwise
    end the first seed set with a traceback.
    """
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file; give a folder for the seed sets' rows and logs"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        return f"--out {out} cannot be written ({reason}); give a folder you can write to"
    return None


# convergence.py's options that every seed set sets itself, by their argparse names
RESERVED = ("seed_base", "json", "figures", "append")


def convergence_problem(arguments: list[str], seed_base: int = 0) -> str | None:
    """What ``convergence.py`` would refuse in the arguments after ``--``, or None.

    Asked once, before any seed set starts, of its own parser and checks (they import torch and
    vital, not a model), so that a wrong option is one error line instead of every seed set
    failing into its log; ``seed_base`` is the largest seed set's. ``--help`` there prints
    convergence.py's help and exits.
    """
    from convergence import argument_problem  # benchmarks/ is on the path
    from convergence import build_parser as convergence_parser

    parser = convergence_parser()
    parser.prog = "convergence.py"  # its --help and usage are convergence.py's
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args = parser.parse_args(arguments)
    except SystemExit as exit_:
        if not exit_.code:  # --help
            raise
        last = said.getvalue().strip().splitlines()[-1]
        return f"after --: {last.partition('error: ')[2] or last}"
    for name in RESERVED:
        option = "--" + name.replace("_", "-")
        written = any(a == option or a.startswith(option + "=") for a in arguments)
        # also abbreviated (--seed 3, --fig x: argparse takes them)
        if written or getattr(args, name) != parser.get_default(name):
            return f"{option} is set per seed set here; leave it out"
    args.seed_base = seed_base
    problem = argument_problem(args)
    return f"after --: {problem}" if problem else None


def build_parser() -> argparse.ArgumentParser:
    """The command line: seed sets, jobs, the folder, then ``--`` and convergence.py's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seed-bases", type=seed_bases, default="0,7,14,21,28", help="comma-separated"
    )
    parser.add_argument("--jobs", type=jobs, default=2, help="seed sets run at once")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "seeds")
    parser.add_argument("convergence", nargs=argparse.REMAINDER, help="-- convergence.py's args")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    arguments = args.convergence[1:] if args.convergence[:1] == ["--"] else args.convergence
    problem = convergence_problem(arguments, max(args.seed_bases)) or out_problem(args.out)
    if problem:
        parser.error(problem)
    from convergence import build_parser as convergence_parser  # checked above: they parse

    # --quick sets the figures' folder itself (one per seed set) and refuses --figures
    figures = not convergence_parser().parse_args(arguments).quick
    with ThreadPoolExecutor(args.jobs) as pool:
        paths = list(
            pool.map(lambda b: run_seed_set(b, args.out, arguments, figures), args.seed_bases)
        )
    runs = [json.loads(path.read_text()) for path in paths]
    kinds = dict.fromkeys(r["kind"] for run in runs for r in run["rows"])
    print("\n".join(means_table(runs, kind) for kind in kinds))


if __name__ == "__main__":
    main()
