"""Convergence over several seed sets: ``convergence.py`` once per seed set, then the means.

One 7-picture run is a noisy measure: the loop is chaotic, and runs that differ only in float
rounding move a seed set's realism by up to 0.06 (benchmarks/RESULTS.md, "`fast` in 100 steps:
the untried levers"). A claim between two points therefore rests on several seed sets. This
runs ``benchmarks/convergence.py`` for each ``--seed-bases`` entry (``--jobs`` processes of one
torch thread each; every argument after ``--`` goes to it unchanged), keeps each seed set's rows
in ``--out``/``seeds-B.json`` and its log, and prints one table of means (bold) per kind and point,
with each seed set's value in parentheses. Classes: explained top-1 counts only the classes the
explained model ranks first on their own photo (the class goal's classes).

    PYTHONPATH=src python benchmarks/seed_sets.py --seed-bases 0,7,14,21,28,35,42,49,56,63 \\
        --out benchmarks/out/seeds/fast100 -- --kinds classes --points fast@100 \\
        --baseline-steps '' --cache benchmarks/out/seeds/cache

The same command with ``--judge efficientnet_lite1`` (after the ``--``) scores the cached
pictures with the other judge without recomputing them (``convergence.py``'s cache).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).parent


def run_seed_set(seed_base: int, out: Path, arguments: list[str]) -> Path:
    """One ``convergence.py`` run (one torch thread); its rows' JSON file."""
    rows = out / f"seeds-{seed_base}.json"
    command = [sys.executable, str(HERE / "convergence.py"), *arguments]
    command += ["--seed-base", str(seed_base), "--json", str(rows)]
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
    """``--seed-bases 0,7,14`` as distinct whole numbers (argparse reports a wrong one)."""
    try:
        bases = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"whole numbers separated by commas, not {text!r}"
        ) from None
    if not bases or len(set(bases)) != len(bases):
        raise argparse.ArgumentTypeError(f"one or more distinct seed sets, not {text!r}")
    return bases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seed-bases", type=seed_bases, default="0,7,14,21,28", help="comma-separated"
    )
    parser.add_argument("--jobs", type=int, default=2, help="seed sets run at once")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "seeds")
    parser.add_argument("convergence", nargs=argparse.REMAINDER, help="-- convergence.py's args")
    args = parser.parse_args()
    arguments = args.convergence[1:] if args.convergence[:1] == ["--"] else args.convergence
    for reserved in ("--seed-base", "--json", "--figures", "--append"):
        if any(a == reserved or a.startswith(reserved + "=") for a in arguments):
            parser.error(f"{reserved} is set per seed set here; leave it out")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; give a folder for the seed sets' rows and logs")
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        paths = list(pool.map(lambda b: run_seed_set(b, args.out, arguments), args.seed_bases))
    runs = [json.loads(path.read_text()) for path in paths]
    kinds = dict.fromkeys(r["kind"] for run in runs for r in run["rows"])
    print("\n".join(means_table(runs, kind) for kind in kinds))


if __name__ == "__main__":
    main()
