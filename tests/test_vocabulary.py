"""One vocabulary: every command and API function names a concept as vital.cli.vocabulary does.

The test walks the whole click command tree and the public API signatures, so a command or a
parameter added later in its own words fails here.
"""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import vital
import vital.atlas
from vital.atlas import build_atlas
from vital.cli import app
from vital.cli.vocabulary import (
    BY_OPTION,
    OLD_SPELLINGS,
    OLD_SPELLINGS_ON,
    PER_COMMAND,
    TERMS,
    cli_wording,
    markdown_table,
)
from vital.compare import compare
from vital.errors import VitalError
from vital.optimize import DEFAULT_SETTING, Settings
from vital.references import DEFAULT_REFERENCES

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _commands(command, path: str = "vital"):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, f"{path} {name}")


COMMANDS = list(_commands(typer.main.get_command(app)))
OPTIONS = [
    (path, param)
    for path, command in COMMANDS
    for param in command.params
    if param.param_type_name == "option"
]


def test_the_walk_sees_every_command():
    names = {path for path, _ in COMMANDS}
    assert {"vital class", "vital neuron", "vital explain", "vital atlas build"} <= names
    assert len(OPTIONS) > 100


@pytest.mark.parametrize("path, param", OPTIONS, ids=lambda x: getattr(x, "name", x))
def test_every_option_is_spelled_and_defaulted_as_the_table_says(path, param):
    spellings = set(param.opts) | set(param.secondary_opts)
    assert not spellings & set(OLD_SPELLINGS), f"{path}: an old spelling is visible"
    own_old = OLD_SPELLINGS_ON.get(path.partition(" ")[2], {})
    assert not spellings & set(own_old), f"{path}: an old spelling of its own is visible"
    terms = {BY_OPTION[name] for name in spellings if name in BY_OPTION}
    if not terms:
        return
    (term,) = terms
    assert sorted(spellings) == sorted(term.option), f"{path} {param.opts}"
    if term.default is not PER_COMMAND and not param.required:
        default = param.default
        default = str(default) if isinstance(default, Path) else default
        assert default == term.default, f"{path} {param.opts[0]} defaults to {default!r}"
    if term.repeat:
        assert param.multiple, f"{path} {param.opts[0]} must repeat"
    if term.flag:
        assert param.is_flag, f"{path} {param.opts[0]} must be a flag"


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS])
def test_flags_print_as_flags(path):
    words = path.split()[1:]
    help_text = CliRunner().invoke(app, [*words, "--help"], terminal_width=200).output
    assert "--help" in help_text
    assert "<bool>" not in help_text, f"{path}: a flag shows a value type"


def test_batch_is_at_least_one_everywhere():
    for path, param in OPTIONS:
        if "--batch" in param.opts:
            assert param.callback is not None and "at_least_one" in repr(param.callback), path


API = {
    "visualize": vital.visualize,
    "explain": vital.explain,
    "mine": vital.mine,
    "compare": compare,
    "build_atlas": build_atlas,
    "concepts": vital.concepts.concepts,
    "add_concepts": vital.concepts.add_concepts,
    "mined_references": vital.mined_references,
}
# Names the API used before for concepts the table names otherwise (the later ones are still
# accepted with a warning: OLD_API_KEYWORDS).
OLD_API_NAMES = {
    "patch", "patches", "ray_address", "classes", "class_refs",
    "mode", "methods", "steps", "scale", "stores",
}  # fmt: skip
# Old keyword → its new name, per function; each still works, with a FutureWarning.
OLD_API_KEYWORDS = {
    "compare": {"methods": "method", "steps": "settings.steps"},
    "explain": {"stores": "store"},
    "concepts": {"scale": "crop_scale"},
    "add_concepts": {"scale": "crop_scale"},
    "mined_references": {"mode": "mined_as", "count": "reference_count"},
    "mine": {"top": "reference_count", "database": "out"},
}
# The functions that take a model by name, and so where to put it.
TAKE_A_DEVICE = {
    "visualize", "explain", "compare", "build_atlas", "concepts", "add_concepts", "mine"
}  # fmt: skip


@pytest.mark.parametrize("name", API)
def test_api_signatures_use_the_table_names(name):
    parameters = inspect.signature(API[name]).parameters
    assert not set(parameters) & OLD_API_NAMES, name
    assert getattr(API[name], "__renamed__", {}) == OLD_API_KEYWORDS.get(name, {}), name
    assert not set(parameters) & set(OLD_API_KEYWORDS.get(name, {})), name
    if name in TAKE_A_DEVICE:
        assert "device" in parameters and parameters["device"].default is None, name
    if "seeds" in parameters:  # one seed per target; seed (or settings["seed"]) the first's
        assert "seed" in parameters or "settings" in parameters, name
    references = parameters.get("references")
    if references is not None and references.default is not inspect.Parameter.empty:
        assert not isinstance(references.default, int), f"{name}: references= is the folder"
    if "setting" in parameters:
        assert parameters["setting"].default == DEFAULT_SETTING, name
    out = parameters.get("out")
    if out is not None and out.default is not inspect.Parameter.empty:
        assert out.default in (None, "vital-out"), f"{name}: out defaults to {out.default!r}"
    if "reference_count" in parameters:
        count = next(t for t in TERMS if t.option == ("--ref-count",))
        assert parameters["reference_count"].default == count.default, name


def test_docs_carry_the_table():
    assert markdown_table() in DOCS.read_text()


def test_old_spellings_still_work_with_a_warning(monkeypatch, tmp_path):
    seen = {}

    def compare(loaded, targets, methods, **kwargs):
        seen.update(targets=targets, count=kwargs["reference_count"])
        raise SystemExit(0)

    monkeypatch.setattr("vital.compare.compare", compare)
    monkeypatch.setattr("vital.cli.session.load", lambda *args: object())
    monkeypatch.setattr("vital.compare.methods_for", lambda targets: ["vital"])
    monkeypatch.setattr("vital.cli.generate.resolve_targets", lambda model, targets: targets)
    result = CliRunner().invoke(
        app, ["compare", "--classes", "1,2", "--references=3", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert seen == {"targets": ["1", "2"], "count": 3}
    assert "--classes is now --class" in result.output


MINE = ["mine", "--layer", "stage2", "--channel", "0,1", "--top-images", "4", "--patch", "16"]


def test_mine_keeps_ref_count_images_per_unit_and_takes_its_old_top(monkeypatch, tmp_path):
    from conftest import tiny_cnn_model, write_images
    from vital.mining import mined

    model = tiny_cnn_model()
    monkeypatch.setattr("vital.cli.session.load", lambda *args: model)
    data = tmp_path / "data"
    write_images(data, 6)
    mine = [*MINE, "--data", str(data), "--workers", "0"]
    new = CliRunner().invoke(app, [*mine, "--ref-count", "2", "--out", str(tmp_path / "new")])
    assert new.exit_code == 0, new.output
    assert "is now" not in new.output
    old = CliRunner().invoke(app, [*mine, "--top", "3", "--out", str(tmp_path / "old")])
    assert old.exit_code == 0, old.output
    assert "warning: --top is now --ref-count; the old spelling will go." in old.output
    help_text = CliRunner().invoke(app, ["mine", "--help"], terminal_width=200).output
    assert "--ref-count" in help_text and not re.search(r"--top(?![\w-])", help_text)
    for out, count in (("new", 2), ("old", 3)):
        assert len(list((tmp_path / out / "sheets").iterdir())) == 2
        for channel in (0, 1):
            info, ranked = mined(tmp_path / out, model, "stage2", channel)
            assert len(ranked) == count
            assert info["settings"]["top"] == count  # its stored name: older indexes match
    for both in (["--top", "3", "--ref-count", "4"], ["--ref-count=4", "--top=3"]):
        refused = CliRunner().invoke(app, [*mine, *both, "--out", str(tmp_path / "both")])
        assert refused.exit_code != 0  # once, whichever came last won
        assert "--top is the old name of --ref-count: give one of them." in str(refused.exception)
        assert not (tmp_path / "both").exists()


def test_top_stays_the_channels_shown_in_explain(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("vital.cli.session.load", lambda *args: object())
    monkeypatch.setattr(
        "vital.cli.explain._explain_one", lambda *args, **kwargs: seen.update(kwargs)
    )
    arguments = ["explain", str(tmp_path / "photo.png"), "--layer", "stage2", "--top", "3"]
    result = CliRunner().invoke(app, [*arguments, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "is now" not in result.output
    assert (seen["top"], seen["reference_count"]) == (3, DEFAULT_REFERENCES)


def test_the_old_mine_keyword_mines_the_same_lists(tmp_path, image_folder):
    from conftest import tiny_cnn_model
    from vital.mining import mined

    model = tiny_cnn_model()
    kwargs = dict(channels=[0, 1], top_images=3, patch_side=16, workers=0, progress=False)
    with pytest.warns(FutureWarning, match=r"mine: top= is now reference_count=") as seen:
        old = vital.mine(model, "stage2", image_folder, tmp_path / "m", top=2, **kwargs)
    assert seen[0].filename == __file__
    assert old.reused == [] and len(mined(old.database, model, "stage2", 0)[1]) == 2
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        new = vital.mine(model, "stage2", image_folder, tmp_path / "m", reference_count=2, **kwargs)
    assert not [w for w in seen if issubclass(w.category, FutureWarning)]
    assert new.reused == new.units == old.units  # the same settings: nothing mined again
    fewer = vital.mine(model, "stage2", image_folder, tmp_path / "m", reference_count=1, **kwargs)
    assert fewer.reused == [] and len(mined(fewer.database, model, "stage2", 0)[1]) == 1


def test_the_table_names_every_renamed_keyword():
    words = {term.api.split()[0].split("=")[0] for term in TERMS}
    for renames in OLD_API_KEYWORDS.values():
        for new in renames.values():
            assert new.split(".")[0] in words, new
    text = DOCS.read_text()
    for name, renames in OLD_API_KEYWORDS.items():
        for old in renames:
            assert f"`{name}({old}=" in text, f"docs/cli.md does not list {name}({old}=)"


def _warned(call, old: str, new: str):
    """Run ``call``; it must warn once that ``old`` is now ``new``, and refuse (VitalError)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(VitalError) as error:
            call()
    renamed = [w for w in seen if issubclass(w.category, FutureWarning)]
    assert len(renamed) == 1, [str(w.message) for w in seen]
    assert f"{old} is now {new}" in str(renamed[0].message)
    assert renamed[0].filename == __file__  # it points at the caller's line
    return str(error.value)


def test_old_api_keywords_still_work_with_a_warning(tmp_path, image_folder):
    from conftest import tiny_cnn_model

    model = tiny_cnn_model()
    # Each value reaches the new parameter: the refusal names it in the new words.
    message = _warned(
        lambda: vital.mined_references(tmp_path / "m.sqlite", model, "stage2", 0, mode="tile"),
        "mode=",
        "mined_as=",
    )
    assert message == "mined_as='image' or 'patch', not 'tile'."
    message = _warned(lambda: compare(model, [1], methods="lucid"), "methods=", "method=")
    assert message.startswith("unknown method(s) lucid")
    message = _warned(
        lambda: compare(model, [1], "lucid", steps=3, settings={"steps": 4}),
        "steps=",
        "settings={'steps': ...}",
    )
    assert "give one of them" in message
    message = _warned(
        lambda: vital.explain(model, image_folder / "img000.png", layer="stage2",
                              stores=str(tmp_path / "nothing"), out=tmp_path, progress=False),
        "stores=",
        "store=",
    )  # fmt: skip
    assert message.startswith("store=") and message.endswith("nothing is not a folder; give an "
                                                              "atlas or result folder to reuse "
                                                              "pictures from.")  # fmt: skip
    for function in (vital.concepts, vital.concepts.add_concepts):
        message = _warned(
            lambda f=function: f(model, 2, image_folder, layer="stage3", scale=(0.5, 0.1),
                                 pictures=False, out=tmp_path / "c", progress=False),
            "scale=",
            "crop_scale=",
        )  # fmt: skip
        assert "(0.5, 0.1)" in message
    message = _warned(
        lambda: vital.concepts(model, 2, image_folder, layer="stage3", pictures=3, pictured=2),
        "pictures=N",
        "pictured=N",
    )
    assert message == "pictures=N is the old way to say pictured=N: give pictured=N alone."
    message = _warned(
        lambda: vital.mine(model, "stage2", image_folder, tmp_path / "m", top=0, progress=False),
        "top=",
        "reference_count=",
    )
    assert message == "reference_count=N is a whole number of at least 1, not 0."
    with pytest.raises(VitalError, match="give one of them"), pytest.warns(FutureWarning):
        compare(model, [1], "lucid", methods="vital")
    with pytest.raises(VitalError, match="give one of them"), pytest.warns(FutureWarning):
        vital.mine(model, "stage2", image_folder, tmp_path / "m", top=2, reference_count=2)


def test_old_compare_keywords_give_the_same_comparison(tiny_cnn, tmp_path):
    from conftest import write_images

    write_images(tmp_path / "refs", 2)
    class_tree = tmp_path / "refs"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        old = compare(
            tiny_cnn, [1], methods="fourier", steps=2, references=class_tree, progress=False
        )
    assert sorted(str(w.message).split(": ", 1)[1].split(";")[0] for w in seen) == [
        "methods= is now method=",
        "steps= is now settings={'steps': ...}",
    ]
    new = compare(
        tiny_cnn, [1], method="fourier", settings={"steps": 2}, references=class_tree,
        progress=False,
    )  # fmt: skip
    assert old.summary[0]["steps"] == new.summary[0]["steps"] == 2
    assert (old.results["fourier"][0].pixels == new.results["fourier"][0].pixels).all()


def test_library_messages_read_as_options_on_the_command_line():
    message = "pass references=DIR or reference_count=N; steps=N (patch_side=32)"
    assert cli_wording(message) == "pass --refs DIR or --ref-count N; --steps N (--patch 32)"
    assert cli_wording("no = here") == "no = here"
    # flags lose their value; Python callers read the API's words, the command line options
    said = "give force=True to replace it, or another out=DIR (try more steps=N or seed=S)"
    assert cli_wording(said) == (
        "give --force to replace it, or another --out DIR (try more --steps N or --seed S)"
    )


def test_warnings_read_as_options_on_the_command_line(capsys):
    from vital.cli import _one_line_warning

    _one_line_warning(UserWarning("try more steps=N, other references=DIR"), UserWarning, "", 0)
    assert capsys.readouterr().err.strip() == "warning: try more --steps N, other --refs DIR"


def test_steps_zero_and_negative_are_refused_alike():
    messages = []
    for steps in (0, -1):
        with pytest.raises(VitalError) as error:
            Settings.setting("fast", steps=steps).validate()
        messages.append(str(error.value).removesuffix(f"not {steps}."))
    assert messages[0] == messages[1]
    assert "steps=N" in messages[0]


@pytest.mark.parametrize(
    "command",
    [
        ["class", "-c", "1"],
        ["neuron", "-l", "stage3", "-k", "1"],
        ["demo"],
        ["compare", "-c", "1"],
        ["mine", "-l", "stage3", "--data", "."],
        ["explain", "image.png", "-l", "stage3"],
        ["atlas", "build", "-c", "1"],
    ],
    ids=lambda command: command[0],
)
def test_batch_zero_is_refused_the_same_way_everywhere(command):
    result = CliRunner().invoke(app, [*command, "--batch", "0"])
    assert isinstance(result.exception, VitalError), result.output
    assert cli_wording(str(result.exception)) == (
        "--batch N is a whole number of at least 1, not 0."
    )


def test_the_package_docstring_example_runs():
    import doctest

    outcome = doctest.testmod(vital, verbose=False)
    assert outcome.attempted >= 2 and outcome.failed == 0


def test_a_model_prints_in_one_short_line():
    from conftest import tiny_cnn_model

    model = tiny_cnn_model()
    text = repr(model)
    assert "\n" not in text and len(text) < 200
    assert model.labels.name(3) not in text and "10 classes" in text
