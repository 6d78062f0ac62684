"""Leftovers of the hostile rounds: each test fails before its fix."""

from __future__ import annotations

import pytest

from vital import Direction, Settings, visualize
from vital.errors import VitalError

TINY = Settings(steps=1, warmup=0, tv_l2=3e-7, l2=3e-7)


# --- 1. a direction that cannot be driven up ---------------------------------------------------


def test_negative_direction_at_a_post_relu_layer_is_refused_before_references(
    tiny_cnn, tmp_path, monkeypatch
):
    import vital.methods.vital_neuron as vital_neuron

    def never(*args, **kwargs):
        raise AssertionError("references were read before the direction was checked")

    monkeypatch.setattr(vital_neuron, "neuron_references", never)
    with pytest.raises(VitalError, match="cannot be driven up") as error:
        visualize(
            tiny_cnn,
            Direction("stage2", tuple([-0.5] * 16), "down"),
            tmp_path / "refs",
            settings=TINY,
            out=tmp_path / "out",
            progress=False,
        )
    assert "flip its sign" in str(error.value) and "never negative" in str(error.value)
    with pytest.raises(VitalError, match="ReLU's output"):  # the ReLU itself, by its kind
        visualize(
            tiny_cnn,
            Direction("stage2.2", tuple([-0.5] * 16), "down"),
            settings=TINY,
            out=tmp_path / "out",
            progress=False,
        )


def test_negative_direction_at_a_signed_layer_runs(tiny_cnn, image_folder, tmp_path):
    # stage2.1 is a BatchNorm before its ReLU: negative values there can grow
    results = visualize(
        tiny_cnn,
        Direction("stage2.1", tuple([-0.5] * 16), "down"),
        image_folder,
        settings=TINY,
        out=tmp_path / "out",
        reference_count=2,
        progress=False,
    )
    assert len(results) == 1


# --- 2. the API's words for taps, the CLI's on the command line ---------------------------------


def test_no_stages_message_names_the_api_taps_and_the_cli_rewrites_it():
    from vital.cli.vocabulary import cli_wording
    from vital.taps import discover_taps

    with pytest.raises(VitalError) as error:
        discover_taps([])
    message = str(error.value)
    assert "taps=['NAME=WEIGHT']" in message and "--tap" not in message
    assert "(--tap NAME=WEIGHT, one per layer;" in cli_wording(message)
    assert cli_wording("taps=['a=0.1', \"b\"]") == "--tap a=0.1 --tap b"


# --- 3. more concepts to picture than discovered ------------------------------------------------


def test_pictured_above_count_is_said_in_the_notes(image_folder, tmp_path):
    import vital
    from conftest import tiny_cnn_model

    report = vital.concepts(
        tiny_cnn_model(), 3, image_folder, layer="stage3", count=2, crops=8, examples=2,
        pictured=3, settings={"steps": 1}, out=tmp_path / "run", progress=False,
    )  # fmt: skip
    assert "3 concepts were asked to be pictured, but 2 are discovered: each is pictured." in (
        report.notes
    )


# --- 4. a missing layer's advice names the model where it is known ------------------------------


def test_missing_layer_names_the_zoo_model_in_the_advice(tiny_cnn, tmp_path):
    from vital import Channel

    with pytest.raises(VitalError, match=r"Run `vital layers mobilenet_v2` to list them\."):
        visualize(
            "mobilenet_v2", Channel("features.99", 0), settings=TINY, out=tmp_path / "out",
            progress=False,
        )  # fmt: skip
    # a module the user wrapped: its name need not be one `vital layers` loads
    with pytest.raises(VitalError, match=r"Run `vital layers MODEL` to list them\."):
        visualize(
            tiny_cnn, Channel("stage9", 0), settings=TINY, out=tmp_path / "out", progress=False
        )


# --- 5. an atlas's results folder opened without its index --------------------------------------


def test_an_atlas_results_folder_without_index_points_to_the_atlas_index(tmp_path):
    import vital

    (tmp_path / "atlas" / "results").mkdir(parents=True)
    (tmp_path / "atlas" / "atlas.sqlite").write_bytes(b"")
    with pytest.raises(VitalError) as error:
        vital.ResultStore(tmp_path / "atlas" / "results")
    index = str(tmp_path / "atlas" / "atlas.sqlite")
    assert f"index={index!r}" in str(error.value)
    assert not (tmp_path / "atlas" / "results" / "index.sqlite").exists()


# --- 6. whole-word class matches first ----------------------------------------------------------


def test_class_search_lists_whole_word_matches_before_substrings():
    from typer.testing import CliRunner

    from vital.cli import app
    from vital.labels import imagenet_labels

    found = imagenet_labels().search("cat")
    assert found[:5] == [281, 282, 283, 284, 285]  # tabby … Egyptian cat
    bullfrog, oscilloscope = found.index(30), found.index(688)  # catesbeiana, cathode-ray
    assert bullfrog > found.index(285) and oscilloscope > found.index(285)
    assert set(found) >= {30, 688}  # substring matches are still listed, after
    result = CliRunner().invoke(app, ["classes", "--search", "cat"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "tabby" in lines[0] and "bullfrog" not in " ".join(lines[:5])
