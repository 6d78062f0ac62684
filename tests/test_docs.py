"""The user docs are true: their code runs, their commands exist, their links resolve.

Every fenced block in README.md and docs/*.md has a language. ``python`` and ``bash`` blocks run
here, in order, one folder per document, on the embedded MobileNetV2 with every optimisation
capped at 2 steps and 4 reference views; a bash block holds only ``vital`` commands (run in
this process). A block that cannot run here says why on the line before it, as an HTML comment
that readers do not see:

    <!-- not run: needs your data and downloaded weights -->

The ``vital`` commands of such blocks, and those in inline code (```vital ...```), are still
checked against the command line: every command and option they name must exist, so a renamed
option fails here. Paths the reader replaces with their own (``photos/``, ``DIR``,
``photo.jpg`` ...) stand for a folder of the embedded sample photos (``PLACEHOLDERS``).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
import typer

import vital.cli
import vital.driver
from vital.cli.vocabulary import OLD_SPELLINGS, TERMS
from vital.optimize import resolved
from vital.references import ReferenceSet, export_sample_photos

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"python", "bash"}
LANGUAGES = RUN | {"text", "json", "toml", "csv", "html", "markdown"}
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(\S.*?)\s*-->$")
FENCE = re.compile(r"^```(\S*)\s*$")
# What the reader replaces with their own files → what stands for it here.
PLACEHOLDERS = {
    "photos/": "photos/",
    "my_photos/": "photos/",
    "top_images/": "photos/",
    "DIR": "photos",
    "/data/images": "photos",
    "photo.jpg": "photos/motorcycle.jpg",
    "coffee.jpg": "photos/coffee.jpg",
}
STEPS = 2
VIEWS = 4  # reference views per target (the time goes into references, not steps)


@dataclasses.dataclass
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    not_run: str | None  # the reason, when marked

    def __str__(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def blocks(document: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, each with the mark on the line before it."""
    found, lines = [], document.read_text("utf-8").splitlines()
    opened = None
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if not fence:
            continue
        if opened is None:
            previous = next((x.strip() for x in reversed(lines[: number - 1]) if x.strip()), "")
            mark = NOT_RUN.match(previous)
            opened = (number, fence.group(1), mark.group(1) if mark else None)
        else:
            start, language, reason = opened
            text = "\n".join(lines[start:number - 1])  # fmt: skip
            found.append(Block(document, start, language, text, reason))
            opened = None
    assert opened is None, f"{document.name}: a code fence opened at line {opened[0]} never closes"
    return found


def prose(document: Path) -> str:
    """The document without its fenced blocks."""
    return re.sub(r"^```.*?^```\s*$", "", document.read_text("utf-8"), flags=re.M | re.S)


def commands(text: str) -> list[list[str]]:
    """Shell commands of a bash block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def placeholders(text: str) -> str:
    for placeholder, stand_in in PLACEHOLDERS.items():
        text = re.sub(rf"(?<![\w./~-]){re.escape(placeholder)}(?![\w])", stand_in, text)
    return text


# --- the command line as data ------------------------------------------------------------------


CLI = typer.main.get_command(vital.cli.app)
CLICK = getattr(typer, "_click", click)  # the click that this typer builds its commands with


def resolve(argv: list[str]) -> tuple[CLICK.Command, list[str], str]:
    """The (sub)command ``vital argv`` runs, the arguments left for it, and its name."""
    command, name = CLI, "vital"
    group = lambda c: isinstance(getattr(c, "commands", None), dict)  # noqa: E731
    while group(command) and argv and not argv[0].startswith("-"):
        sub = command.get_command(CLICK.Context(command), argv[0])
        assert sub is not None, f"`{name}` has no command {argv[0]!r}"
        command, name, argv = sub, f"{name} {argv[0]}", argv[1:]
    return command, argv, name


def check_names(argv: list[str]) -> None:
    """Fail when ``vital argv`` names a command or an option the command line does not have.

    Values are not checked (a placeholder is no file); options are parsed before values.
    """
    command, rest, name = resolve(argv)
    errors = CLICK.exceptions
    try:
        command.make_context(name, list(rest))
    except (typer.Exit, click.exceptions.Exit):  # --version, --help
        pass
    except (errors.BadParameter, errors.MissingParameter, errors.BadOptionUsage):
        pass  # a value: a placeholder, or an option named in the text without one
    except errors.UsageError as error:  # an unknown option, an extra argument
        raise AssertionError(f"`vital {shlex.join(argv)}`: {error.format_message()}") from None


def all_options() -> set[str]:
    names: set[str] = set()

    def walk(command: CLICK.Command) -> None:
        for parameter in command.params:
            names.update(o for o in [*parameter.opts, *parameter.secondary_opts] if "--" in o)
        if isinstance(getattr(command, "commands", None), dict):  # a group
            for sub in command.commands.values():
                walk(sub)

    walk(CLI)
    return names


# --- running the blocks ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("docs-photos") / "photos"
    export_sample_photos(folder)
    return folder


@pytest.fixture
def capped(monkeypatch):
    """Every optimisation in this process runs at most ``STEPS`` steps on ``VIEWS`` references."""
    post_init = ReferenceSet.__post_init__

    def few(self) -> None:
        # Concept discovery's crops are not references: the concepts need every one of them.
        if self.description != "crops":
            object.__setattr__(self, "count", min(self.count, VIEWS))  # a frozen dataclass
        post_init(self)

    monkeypatch.setattr(ReferenceSet, "__post_init__", few)
    optimize = vital.driver.optimize

    def short(objective, count, preprocessing, settings, *args, **kwargs):
        settings = resolved(
            dataclasses.replace(
                settings,
                steps=min(settings.steps, STEPS),
                half_resolution_steps=min(settings.half_resolution_steps, 1),
            )
        )
        return optimize(objective, count, preprocessing, settings, *args, **kwargs)

    monkeypatch.setattr(vital.driver, "optimize", short)


@pytest.fixture
def served(monkeypatch):
    """`vital atlas serve` checks its folder and binds a port, then returns instead of serving."""
    from vital.atlas import serve

    make_server = serve.make_server

    def once(folder, port, *args, **kwargs):
        server = make_server(folder, 0, *args, **kwargs)
        server.serve_forever = lambda *a, **k: None
        return server

    monkeypatch.setattr(serve, "make_server", once)


def run_vital(argv: list[str], where: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        vital.cli.main(argv)
    assert exit_info.value.code in (0, None), f"{where}: `vital {shlex.join(argv)}` failed"


def run_block(block: Block, namespace: dict) -> None:
    text = placeholders(block.text)
    if block.language == "python":
        exec(compile(text, str(block), "exec"), namespace)  # noqa: S102 - the docs' own code
        return
    for argv in commands(text):
        assert argv[0] == "vital", (
            f"{block}: a bash block that runs here holds only `vital` commands, not "
            f"{argv[0]!r}; mark it <!-- not run: REASON --> if it cannot run"
        )
        run_vital(argv[1:], str(block))


def runnable(document: Path) -> list[Block]:
    return [b for b in blocks(document) if b.language in RUN and b.not_run is None]


@pytest.mark.slow
@pytest.mark.parametrize(
    "document",
    [d for d in DOCUMENTS if runnable(d)],
    ids=lambda d: d.relative_to(ROOT).as_posix(),
)
def test_the_code_in_the_docs_runs(document, photos, capped, served, tmp_path, monkeypatch):
    shutil.copytree(photos, tmp_path / "photos")
    # A concept direction for `--direction concept.npy`: one weight per channel of features.16.
    np.save(tmp_path / "concept.npy", np.random.default_rng(0).standard_normal(160))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for block in runnable(document):
        run_block(block, namespace)


# --- what is checked without running -----------------------------------------------------------


def test_every_block_has_a_language_and_every_mark_a_reason():
    problems = []
    for document in DOCUMENTS:
        for block in blocks(document):
            if block.language not in LANGUAGES:
                problems.append(f"{block}: give the block a language (```bash, ```python, ```text)")
            elif block.not_run is not None and block.language not in RUN:
                problems.append(f"{block}: only code blocks are marked not run")
    assert not problems, "\n".join(problems)


def test_every_vital_command_in_the_docs_names_options_the_cli_has():
    checked, problems = 0, []
    for document in DOCUMENTS:
        found = [
            (str(block), argv[1:])
            for block in blocks(document)
            if block.language == "bash"
            for argv in commands(block.text)
            if argv[0] == "vital"
        ]
        found += [
            (f"{document.name} (text)", shlex.split(span)[1:])
            for span in re.findall(r"`(vital [^`]+)`", prose(document))
        ]
        for where, argv in found:
            checked += 1
            try:
                check_names(argv)
            except AssertionError as error:
                problems.append(f"{where}: {error}")
    assert not problems, "\n".join(problems)
    assert checked > 20


def test_every_option_named_in_the_docs_exists():
    # The vocabulary's options (one may belong to a command still to come) are known; the old
    # spellings it still accepts only in docs/cli.md, which lists them.
    known = all_options() | {option for term in TERMS for option in term.option}
    problems = []
    for document in DOCUMENTS:
        named = set(re.findall(r"`(--[a-z][\w-]*)", prose(document)))
        allowed = known | set(OLD_SPELLINGS) if document.name == "cli.md" else known
        if unknown := sorted(named - allowed):
            problems.append(f"{document.name} names options no command has: {unknown}")
    assert not problems, "\n".join(problems)


def test_every_relative_link_and_named_file_in_the_docs_exists():
    problems = []
    for document in DOCUMENTS:
        text = prose(document)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or a heading of the same page
            if not (document.parent / target.split("#")[0]).exists():
                problems.append(f"{document.name} links to {target}, which does not exist")
        # Files named in the text: documents (*.md) and what is under docs/ and benchmarks/,
        # relative to the document or the repository root ({a.md,b.csv}: output names).
        named = re.findall(r"(?<![\w./{,-])((?:[\w.-]+/)*[\w.-]+\.md)\b", text)
        named += re.findall(r"(?<![\w./{,-])((?:docs|benchmarks)/[\w./*-]*[\w*])", text)
        for name in named:
            candidates = [document.parent / name, ROOT / name]
            if not any(list(c.parent.glob(c.name)) for c in candidates):
                problems.append(f"{document.name} names {name}, which does not exist")
    assert not problems, "\n".join(problems)


def test_the_doc_checks_can_fail(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- not run: needs a GPU -->\n```bash\nvital class --colour red\n```\n```\nx\n```\n"
    )
    first, second = blocks(page)
    assert first.not_run == "needs a GPU" and second.language == ""
    with pytest.raises(AssertionError, match="--colour"):
        check_names(commands(first.text)[0][1:])
    with pytest.raises(AssertionError, match="no command"):
        check_names(["clas", "-c", "1"])
    assert placeholders("--refs DIR photo.jpg") == "--refs photos photos/motorcycle.jpg"
