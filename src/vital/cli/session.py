"""What a running command shares: the model loader, the result report, the interrupt message."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer


class Session:
    """What a running command has saved, for the message after Ctrl-C."""

    out: Path | None = None
    finished: int = 0
    resumable: bool = False
    # A command's own account of what an interrupt keeps; a function when it depends on what
    # was finished by then.
    message: str | Callable[[], str] | None = None

    @classmethod
    def reset(cls) -> None:
        """Nothing written yet: the state at the start of a command."""
        cls.out, cls.finished, cls.resumable, cls.message = None, 0, False, None

    @classmethod
    def count(cls, _result) -> None:
        """Count one finished result (``on_result`` of :func:`vital.visualize`)."""
        cls.finished += 1


def load(model: str, weights: str | None, device: str):
    """Load a model; an embedded one whose weights are missing yields its fallback, said once."""
    from vital.zoo import load_model_or_fallback

    loaded, notice = load_model_or_fallback(model, weights=weights, device=device)
    if notice:
        typer.secho(f"note: {notice}", fg=typer.colors.YELLOW, err=True)
    return loaded


def report(results, out: Path, title: str) -> None:
    """Write ``OUT/TITLE-grid.png`` of all results, then print a line per result.

    The grid is written first: printing can fail (``vital class … | head -1`` closes the pipe)
    and the work must be saved by then.
    """
    path = _write_grid(results, out, title)
    if results:
        record = results[0].record
        named = f"setting {record.setting}, " if record.setting is not None else ""
        typer.echo(f"{record.method}: {named}{record.settings['steps']} steps")
    for result in results:
        evaluation = result.record.evaluation
        line = f"  {result.target.describe():32s} -> {result.paths.get('png', '')}"
        if "probability" in evaluation:
            line += f"  p={evaluation['probability']:.3f} rank={evaluation['rank']}"
        if "activation" in evaluation:
            line += f"  activation={evaluation['activation']:.3g}"
            extras = [
                f"{label} {evaluation[key]:.3g}"
                for key, label in (("reference_activation", "references"),
                                   ("initial_activation", "noise"))
                if evaluation.get(key) is not None
            ]  # fmt: skip
            line += f" ({', '.join(extras)})" if extras else ""
        typer.echo(line + ("  (stored)" if result.stored else ""))
    stored = sum(result.stored for result in results)
    if stored:
        typer.echo(
            f"{stored} stored picture(s) made earlier with the same inputs were reused from "
            f"{out} (--force computes them again)."
        )
    typer.echo(f"grid: {path}")


def _write_grid(results, out: Path, title: str) -> Path:
    """Save the grid of ``results`` as ``OUT/TITLE-grid.png``; its path."""
    from vital.files import save_image
    from vital.grids import grid

    if any(r.alpha is not None for r in results):
        # Each image next to its RGBA view, where the transparency shows the evidence.
        from vital.grids import display_pixels, to_image

        cells, captions = [], []
        for r in results:
            cells += [r.image, to_image(display_pixels(r.pixels), r.alpha)]
            captions += [_caption(r), "RGBA (transparency)"]
        sheet = grid(cells, captions, columns=min(4, len(cells)))
    else:
        sheet = grid([r.image for r in results], [_caption(r) for r in results])
    path = out / f"{title}-grid.png"
    save_image(path, sheet)
    return path


def _caption(result) -> str:
    """The target's name, and why its picture does not show it where the record says so."""
    from vital.record import shortfall

    failed = shortfall(result.record.evaluation)
    return result.target.describe() + (f" ({failed})" if failed else "")


def check_out(out: Path) -> Path:
    """Fail before any work when results could not be written; create nothing yet."""
    from vital.store import writable_folder

    return writable_folder(out)


def visualize(loaded, targets, references, out: Path, **arguments):
    """Run :func:`vital.visualize`, counting finished results for the interrupt message."""
    from vital.api import visualize as run

    Session.out = out
    return run(loaded, targets, references, out=out, on_result=Session.count, **arguments)


def interrupted() -> str:
    """The message after Ctrl-C: what was saved, and whether running again resumes."""
    if Session.message is not None:
        return Session.message if isinstance(Session.message, str) else Session.message()
    if Session.out is None:
        return "interrupted: nothing was written."
    if Session.resumable:
        return (
            f"interrupted: everything finished is saved in {Session.out}; run the same command "
            "again to resume where it stopped."
        )
    return (
        f"interrupted: {Session.finished} finished result(s) saved in {Session.out} "
        "(each batch is written when it finishes)."
    )
