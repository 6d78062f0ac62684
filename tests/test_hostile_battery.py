"""Findings of the hostile battery (benchmarks/RESULTS.md, "Hostile battery …"), one test each.

Each was a traceback, an unclear line, or a valid input refused; every test failed before its fix.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import vital
from conftest import tiny_cnn_model
from vital.errors import VitalError
from vital.labels import imagenet_labels
from vital.methods import method_class
from vital.methods.vital_class import class_folder_names
from vital.optimize import Settings
from vital.references import ReferenceSet, from_folder
from vital.taps import parse_taps
from vital.targets import ClassTarget
from vital.zoo import Model, load_state_dict, resolve_device


def test_a_wordnet_id_not_found_is_a_sentence():
    with pytest.raises(VitalError) as error:
        imagenet_labels().resolve("n07920053")
    assert "not found. Give" in str(error.value)


def test_the_folder_names_a_class_may_have_are_each_listed_once():
    model = Model(torch.nn.Identity(), labels=imagenet_labels())
    names = class_folder_names(model, ClassTarget(967, "espresso"))
    assert names == ["n07920052", "967", "espresso"]


def test_a_reference_count_that_is_no_count_says_which_option(image_folder):
    source = from_folder(image_folder).sources
    for count in (-5, 0, "5", 2.5):
        with pytest.raises(VitalError, match=r"reference_count=N is a whole number"):
            ReferenceSet(source, count)


@pytest.mark.parametrize("typed", ["FAST", " fast ", " 1", "1"])
def test_a_setting_name_as_people_type_it(typed):
    assert Settings.setting(typed) == Settings.setting("fast" if "ast" in typed.lower() else 1)


def test_a_setting_typed_in_capitals_reaches_the_record(image_folder):
    model = tiny_cnn_model()
    result = vital.visualize(
        model, [1], {1: from_folder(image_folder)}, setting="FAST", settings={"steps": 1},
        progress=False,
    )[0]  # fmt: skip
    assert result.record.setting == "fast"


@pytest.mark.parametrize("typed", ["CPU", " cpu", "Cpu"])
def test_a_device_name_in_capitals_is_the_device(typed):
    assert resolve_device(typed) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_gpu_is_named_as_asked():
    with pytest.raises(VitalError, match="'cuda:7' was asked for"):
        resolve_device("cuda:7")


def test_a_method_name_in_capitals_is_the_method():
    from vital.compare import parse_methods

    assert method_class("MaCo", [ClassTarget(1)]) is method_class("maco", [ClassTarget(1)])
    assert parse_methods("VITAL, MaCo") == ["vital", "maco"]


def test_a_tap_given_twice_is_refused():
    with pytest.raises(VitalError, match="'layer3' is given twice"):
        parse_taps(["layer3=1", "layer3=2"])


def test_references_refused_by_a_baseline_name_the_option_on_the_command_line(
    monkeypatch, capsys, image_folder
):
    from test_hostile import assert_one_line_error, run

    code, _, err = run(
        monkeypatch, capsys, "class", "-c", "1", "--method", "deepinversion", "--refs",
        image_folder, "--steps", "1", "--out", image_folder.parent / "out",
        model=tiny_cnn_model(),
    )  # fmt: skip
    assert_one_line_error(code, err, "leave out --refs DIR")


def test_an_empty_weights_file_is_called_empty(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(VitalError, match=r"w.pth is empty \(0 bytes\)"):
        load_state_dict(tmp_path / "w.pth")


def test_a_text_file_given_as_weights_is_not_a_key_error(tmp_path):
    (tmp_path / "w.pth").write_text("hello")
    with pytest.raises(VitalError, match="neither by torch.save nor as .safetensors") as error:
        load_state_dict(tmp_path / "w.pth")
    assert "KeyError" not in str(error.value)


def test_a_pickled_list_as_weights_says_how_to_save_a_state_dict(tmp_path):
    torch.save([1, 2], tmp_path / "w.pth")
    with pytest.raises(VitalError, match=r"found list\); save one with torch.save"):
        load_state_dict(tmp_path / "w.pth")


def test_a_weights_file_cut_short_says_so(tmp_path):
    torch.save({"a": torch.zeros(100)}, tmp_path / "full.pth")
    (tmp_path / "w.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:200])
    with pytest.raises(VitalError, match="cut short") as error:
        load_state_dict(tmp_path / "w.pth")
    assert "miniz" not in str(error.value)


def test_a_pickled_module_as_weights_names_the_state_dict_in_one_line(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "w.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's own warning about pickle protocols stays out
        with pytest.raises(VitalError, match="Python objects besides tensors") as error:
            load_state_dict(tmp_path / "w.pth")
    assert "\n" not in str(error.value) and "Re-running" not in str(error.value)


def test_a_folder_given_as_weights_is_called_a_folder(tmp_path):
    with pytest.raises(VitalError, match="is a folder"):
        load_state_dict(tmp_path)


def test_a_model_name_in_other_cases_is_that_model():
    assert vital.load_model(" MobileNet_V2 ").name == "mobilenet_v2"


@pytest.mark.parametrize("name", [None, "", "  ", 5])
def test_no_model_name_is_one_line_not_a_list_of_guesses(name):
    with pytest.raises(VitalError, match="a model is named by its architecture") as error:
        vital.load_model(name)
    assert "Did you mean" not in str(error.value)


@pytest.mark.parametrize("schema", ['"2"', "null", "[1]", "1.5"])
def test_a_record_whose_schema_is_no_number_is_refused_in_words(schema):
    with pytest.raises(VitalError, match="not a version number"):
        vital.Record.from_json(f'{{"schema": {schema}}}')


def test_one_image_is_a_data_set_of_one_not_a_list_file(image_folder):
    from vital.mining.datasets import list_images

    image = sorted(image_folder.iterdir())[0]
    assert [p.rsplit("/", 1)[-1] for p in list_images(image).paths] == [image.name]


def test_direction_files_that_hold_no_real_vector_are_refused_in_words(tmp_path):
    from vital.methods.vital_neuron import direction_target

    np.savez(tmp_path / "z.npz", a=np.ones(8))
    np.save(tmp_path / "complex.npy", np.ones(8, complex))
    np.save(tmp_path / "object.npy", np.array([None] * 8, dtype=object), allow_pickle=True)
    (tmp_path / "text.npy").write_text("1,2,3")
    expected = {
        "z.npz": r"is an .npz archive \(arrays a\)",
        "complex.npy": "holds complex128 values, not real numbers",
        "object.npy": "cannot read the direction file .* np.save",
        "text.npy": "is not a .npy file",
    }
    expected |= {"missing.npy": "does not exist", ".": "is a folder"}
    for name, message in expected.items():
        with pytest.raises(VitalError, match=message):
            direction_target("layer", tmp_path / name)


def test_a_direction_saved_as_a_row_or_a_column_is_one_vector(tmp_path):
    from vital.methods.vital_neuron import direction_target

    np.save(tmp_path / "row.npy", np.arange(4.0)[None])
    np.save(tmp_path / "column.npy", np.arange(4.0)[:, None])
    for name in ("row.npy", "column.npy"):
        assert direction_target("layer", tmp_path / name).values == (0.0, 1.0, 2.0, 3.0)


def test_mine_reads_its_direction_file_the_same_way(monkeypatch, capsys, tmp_path, image_folder):
    from test_hostile import assert_one_line_error, run

    np.savez(tmp_path / "z.npz", a=np.ones(8))
    code, _, err = run(
        monkeypatch, capsys, "mine", "-l", "stage2", "--data", image_folder, "--direction",
        tmp_path / "z.npz", "--out", tmp_path / "out", model=tiny_cnn_model(),
    )  # fmt: skip
    assert_one_line_error(code, err, "is an .npz archive")


def test_an_empty_list_file_is_called_empty(tmp_path):
    from vital.mining.datasets import list_images

    (tmp_path / "list.txt").write_text("\n# nothing yet\n")
    with pytest.raises(VitalError, match="names no images; write one image path a line"):
        list_images(tmp_path / "list.txt")


def test_crops_of_images_smaller_than_a_crop_stay_inside_them(tmp_path):
    from PIL import Image

    from vital.concepts.crops import sample_crops

    Image.new("RGB", (1, 1), "red").save(tmp_path / "dot.png")
    Image.new("RGB", (3, 40), "blue").save(tmp_path / "sliver.png")
    crops = sample_crops(from_folder(tmp_path).sources, count=8, seed=0).crops
    assert {crop.box[2] for crop in crops} <= {1, 3}


def test_a_sheets_typo_is_refused_before_mining(monkeypatch, capsys, tmp_path, image_folder):
    from test_hostile import assert_one_line_error, run

    code, out, err = run(
        monkeypatch, capsys, "mine", "-l", "stage2", "--data", image_folder, "--sheets",
        "1,abc", "--out", tmp_path / "out", model=tiny_cnn_model(),
    )  # fmt: skip
    assert_one_line_error(code, err, "--sheets takes auto, all, none or channel numbers")
    assert not (tmp_path / "out" / "mining.sqlite").exists() and "index:" not in out


def test_sheets_are_named_by_channel_and_checked_before_mining(
    monkeypatch, capsys, tmp_path, image_folder
):
    from test_hostile import assert_one_line_error, run

    mine = ["mine", "-l", "stage2", "--data", image_folder, "--channel", "3,5", "--patch", "16"]
    code, out, err = run(
        monkeypatch, capsys, *mine, "--sheets", "0", "--out", tmp_path / "a",
        model=tiny_cnn_model(),
    )  # fmt: skip
    assert_one_line_error(code, err, "--sheets [0]: not among the channels mined")
    assert not (tmp_path / "a" / "mining.sqlite").exists()
    code, out, err = run(
        monkeypatch, capsys, *mine, "--sheets", "5,5", "--out", tmp_path / "b",
        model=tiny_cnn_model(),
    )  # fmt: skip
    assert code == 0, err
    assert [p.name for p in (tmp_path / "b" / "sheets").iterdir()] == ["stage2-channel-5.png"]
    assert "contact sheets:" in out and "(1)" in out  # a number given twice is one sheet
    every = ["mine", "-l", "stage2", "--data", image_folder, "--patch", "16"]  # 16 channels
    for sheets, phrase in (("16", "not among the channels of stage2"),
                           ("-1", "not among the channels of stage2"),
                           ("", "--sheets takes auto, all, none or channel numbers")):  # fmt: skip
        code, out, err = run(
            monkeypatch, capsys, *every, "--sheets", sheets, "--out", tmp_path / "c",
            model=tiny_cnn_model(),
        )  # fmt: skip
        assert_one_line_error(code, err, phrase)
        assert not (tmp_path / "c" / "mining.sqlite").exists()  # refused before the pass


@pytest.mark.parametrize("scale", [(0.0, 0.0), (0.1, 5), "0.1,0.4", (0.1, 0.2, 0.3), (0.3, 0.1)])
def test_a_crop_scale_that_is_no_range_names_the_option(scale):
    from vital.cli.vocabulary import cli_wording
    from vital.concepts.crops import check_sampling

    with pytest.raises(VitalError, match=r"crop scale \(crop_scale=\(LOW, HIGH\)\)") as error:
        check_sampling(8, scale)
    assert "(--crop-scale (LOW, HIGH))" in cli_wording(str(error.value))  # as the CLI shows it


@pytest.mark.parametrize("count", [0, "8", 2.5])
def test_a_crop_count_that_is_no_count_names_the_option(count):
    from vital.concepts.crops import check_sampling

    with pytest.raises(VitalError, match=r"crops \(crops=N\) is at least 1"):
        check_sampling(count, (0.1, 0.4))


@pytest.mark.parametrize("pictured", [-1, 0, "2", 1.5, True])
def test_a_number_of_concepts_to_picture_below_one_is_refused(tmp_path, image_folder, pictured):
    with pytest.raises(VitalError, match=r"^pictured=N pictures the N concepts .*at least 1"):
        vital.concepts(
            tiny_cnn_model(), 1, image_folder, layer="stage2", pictured=pictured,
            out=tmp_path, progress=False,
        )  # fmt: skip


@pytest.mark.parametrize(
    "pictures, message",
    [(-1, "pictured=N pictures at least 1 concept"), ("2", "pictures is True or False")],
)
def test_pictures_is_an_on_off_switch(tmp_path, image_folder, pictures, message):
    with pytest.raises(VitalError, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pictures=N is the old pictured=N
        vital.concepts(
            tiny_cnn_model(), 1, image_folder, layer="stage2", pictures=pictures,
            out=tmp_path, progress=False,
        )  # fmt: skip
    with pytest.raises(VitalError, match="pictures=False draws no concept"):
        vital.concepts(tiny_cnn_model(), 1, image_folder, layer="stage2", pictures=False,
                       pictured=2, out=tmp_path, progress=False)  # fmt: skip


def test_layers_matching_nothing_say_so(monkeypatch, capsys):
    from test_hostile import assert_one_line_error, run

    code, _, err = run(
        monkeypatch, capsys, "layers", "tiny", "--match", "zzz", model=tiny_cnn_model()
    )
    assert_one_line_error(code, err, "no layer of tiny has a name containing 'zzz'")


def test_numpy_numbers_are_the_numbers_they_hold(tmp_path, image_folder):
    model = tiny_cnn_model()
    result = vital.visualize(
        model, [np.int64(1)], {1: from_folder(image_folder)}, seeds=np.array([3]),
        settings={"steps": np.int64(1)}, batch_size=np.int64(2), out=tmp_path, progress=False,
    )[0]  # fmt: skip
    assert (result.target.index, result.record.seed, result.record.settings["steps"]) == (1, 3, 1)
    assert json.loads(result.paths["json"].read_text())["seed"] == 3  # the record is JSON


def test_a_class_target_that_is_no_class_is_refused_before_the_run():
    with pytest.raises(VitalError, match="index is a whole number, not 'x'"):
        vital.visualize(tiny_cnn_model(), [ClassTarget("x")], progress=False)
    with pytest.raises(VitalError, match="out of range"):
        vital.visualize(tiny_cnn_model(), [ClassTarget(99)], progress=False)


def test_a_direction_array_of_the_wrong_kind_is_one_line():
    with pytest.raises(VitalError, match=r"not an array of shape \(2, 2\)") as error:
        vital.Direction("layer", np.array([[None, 1], [2, None]], dtype=object))
    assert "\n" not in str(error.value)


def test_api_arguments_of_the_wrong_kind_are_one_line(tmp_path, image_folder):
    model = tiny_cnn_model()
    calls = {
        "layer": lambda: vital.explain(model, image_folder / "img000.png", layer=None),
        "a path": lambda: vital.visualize(model, [1], out=5, progress=False),
        "uint8": lambda: vital.classify(model, torch.zeros(1, 3, 32, 32, dtype=torch.uint8)),
        "percentile": lambda: vital.transparency(torch.rand(1, 3, 4, 4), percentile=200),
        "channels=": lambda: vital.mine(
            model, "stage2", image_folder, tmp_path / "m.sqlite", channels=3, progress=False
        ),  # fmt: skip
        "data is a folder": lambda: vital.mine(
            model, "stage2", [image_folder], tmp_path / "x", progress=False
        ),  # fmt: skip
        "one value per channel": lambda: vital.mine(
            model,
            "stage2",
            image_folder,
            tmp_path / "d.sqlite",
            directions=np.zeros((0, 16)),
            progress=False,
        ),  # fmt: skip
    }
    for phrase, call in calls.items():
        with pytest.raises(VitalError, match=phrase):
            call()


def test_a_bytes_out_folder_is_the_folder_it_names(tmp_path):
    from vital.store import output_folder

    assert output_folder(bytes(tmp_path / "out")) == tmp_path / "out"


def test_class_references_take_a_class_as_every_call_does(image_folder):
    from vital.methods.vital_class import class_references

    assert class_references(tiny_cnn_model(), 1, image_folder, 2, shared_ok=True).count == 2


def test_explain_refuses_a_reference_count_by_its_own_name(tmp_path, image_folder):
    with pytest.raises(VitalError, match="reference_count=N"):
        vital.explain(
            tiny_cnn_model(), image_folder / "img000.png", layer="stage2", data=image_folder,
            reference_count=0, out=tmp_path, progress=False,
        )  # fmt: skip


def test_one_store_folder_is_one_store_not_a_string_of_letters(tmp_path, image_folder):
    with pytest.raises(VitalError, match=r"^store=.*nothing is not a folder"):
        vital.explain(
            tiny_cnn_model(), image_folder / "img000.png", layer="stage2",
            store=str(tmp_path / "nothing"), out=tmp_path, progress=False,
        )  # fmt: skip


def test_contact_sheets_and_mined_references_refuse_counts_below_one(tmp_path, image_folder):
    model = tiny_cnn_model()
    vital.mine(model, "stage2", image_folder, tmp_path / "m.sqlite", channels=[0],
               reference_count=2, patch_side=0, progress=False)  # fmt: skip
    with pytest.raises(VitalError, match="cell=N"):
        vital.contact_sheet(tmp_path / "m.sqlite", model, "stage2", 0, cell=0)
    with pytest.raises(VitalError, match="reference_count=N"):
        vital.mined_references(tmp_path / "m.sqlite", model, "stage2", 0, reference_count=0)


def test_an_explanation_is_an_explanation():
    with pytest.raises(VitalError, match="^an explanation is a JSON object"):
        vital.Explanation.from_dict("x")


def test_explain_refuses_a_misspelt_setting_before_any_work(tmp_path, image_folder):
    with pytest.raises(VitalError, match="unknown setting"):
        vital.explain(
            tiny_cnn_model(), image_folder / "img000.png", layer="stage2", settings={"stepz": 1},
            pictures=False, out=tmp_path, progress=False,
        )  # fmt: skip


@pytest.mark.parametrize("command", [["class", "-c", "1"], ["neuron", "-l", "stage3", "-k", "0"]])
def test_a_tap_repeated_on_the_command_line_is_refused(monkeypatch, capsys, tmp_path, command):
    from test_hostile import assert_one_line_error, run

    code, _, err = run(
        monkeypatch, capsys, *command, "--tap", "stage1=1", "--tap", "stage1=2", "--steps", "1",
        "--out", tmp_path, model=tiny_cnn_model(),
    )  # fmt: skip
    assert_one_line_error(code, err, "'stage1' is given twice")


def test_a_baseline_named_in_capitals_writes_its_own_grid(monkeypatch, capsys, tmp_path):
    from test_hostile import run

    code, _, err = run(
        monkeypatch, capsys, "class", "-c", "1", "--method", "MACO", "--steps", "1", "--out",
        tmp_path, model=tiny_cnn_model(),
    )  # fmt: skip
    assert code == 0, err
    assert "maco-grid.png" in [path.name for path in tmp_path.iterdir()]  # as the name is listed


# --- the third hostile round (benchmarks/RESULTS.md, "A third hostile round") -----------------


def test_the_largest_seed_is_refused_when_more_targets_would_pass_it(tmp_path, image_folder):
    model = tiny_cnn_model()
    references = {1: from_folder(image_folder), 2: from_folder(image_folder)}
    with pytest.raises(VitalError, match=r"at most 9223372036854775806"):
        vital.visualize(
            model, [1, 2], references, settings={"steps": 1, "seed": 2**63 - 1},
            out=tmp_path / "out", progress=False,
        )  # fmt: skip
    assert not list((tmp_path / "out").glob("*.png"))  # refused before any picture


def test_a_resolution_past_what_memory_holds_is_refused():
    Settings(resolution=2048).validate()
    with pytest.raises(VitalError, match=r"from 16 to 2048"):
        Settings(resolution=8192).validate()


def test_taps_that_all_weigh_nothing_are_refused():
    with pytest.raises(VitalError, match="every tap given has weight 0"):
        parse_taps(["layer3=0"])
    with pytest.raises(VitalError, match="every tap given has weight 0"):
        parse_taps(["layer2=0", "layer3=0.0"])
    assert [t.weight for t in parse_taps(["layer2=0", "layer3=1"])] == [0.0, 1.0]  # one is on


def test_one_tap_as_text_is_one_tap_and_other_objects_are_named():
    from vital.taps import user_taps

    assert [(t.layer, t.weight) for t in user_taps("layer3=0.5")] == [("layer3", 0.5)]
    with pytest.raises(VitalError, match="NAME=WEIGHT text"):
        user_taps([5])


@pytest.mark.parametrize(
    ("option", "said"), [({"seeds": 3}, "seeds are one whole number per target"),
                         ({"on_result": 5}, "on_result is a function")],
)  # fmt: skip
def test_api_arguments_of_the_wrong_kind_are_named_before_the_run(
    tmp_path, image_folder, option, said
):
    with pytest.raises(VitalError, match=said):
        vital.visualize(
            tiny_cnn_model(), [1], {1: from_folder(image_folder)}, settings={"steps": 1},
            out=tmp_path / "out", progress=False, **option,
        )  # fmt: skip
    assert not list((tmp_path / "out").glob("*.png"))


def test_concept_data_that_is_no_path_is_named(image_folder):
    from PIL import Image

    from vital.concepts.crops import check_data

    for data in (Image.new("RGB", (8, 8)), [str(next(image_folder.rglob("*.png")))]):
        with pytest.raises(VitalError, match="data is a path"):
            check_data(data)
    check_data(image_folder)  # a folder is fine


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["neuron", "--layer", "stage2", "-k", "0", "--mined-as", "patch"], "--refs mined"),
        (["class", "-c", "1", "--method", "fourier", "--ref-count", "3"], "leave out --ref-count"),
        (
            ["neuron", "-l", "stage2", "-k", "0", "--method", "maco", "--patch", "8", "--rank"],
            "--method maco uses no reference images: leave out --patch and --rank",
        ),
        (
            ["neuron", "-l", "stage2", "-k", "0", "--method", "fourier", "--rank"],
            "leave out --rank",
        ),
        (
            ["neuron", "-l", "stage2", "-k", "0", "--refs", "mined", "--mined-as", "bogus"],
            "--mined-as takes 'image'",
        ),
        (["explain", "--data", "x.png", "-l", "stage2", "--mined-as", "crops"], "--mined-as"),
        (["compare", "-c", "1", "--layer", "stage2"], "--layer is the layer of --channel"),
        (["compare", "-c", "1", "--judge-weights", "w.pth"], "name the judge too"),
    ],
)
def test_an_option_the_run_would_drop_is_refused(monkeypatch, capsys, tmp_path, arguments, said):
    from test_hostile import assert_one_line_error, run

    code, _, err = run(
        monkeypatch, capsys, *arguments, "--steps", "1", "--out", tmp_path / "out",
        model=tiny_cnn_model(),
    )  # fmt: skip
    assert_one_line_error(code, err, said)


def test_a_file_of_several_directions_says_how_to_take_one(tmp_path):
    from vital.methods.vital_neuron import direction_target

    np.save(tmp_path / "directions.npy", np.ones((3, 8)))
    with pytest.raises(VitalError, match=r"a file of 3 directions.*\[K\]"):
        direction_target("stage2", tmp_path / "directions.npy")


def test_the_matplotlib_photo_file_is_closed_once_read(monkeypatch):
    import matplotlib.cbook

    from vital.references import open_rgb, sample_photo

    opened = []
    original = matplotlib.cbook.get_sample_data

    def tracked(name, *args, **kwargs):
        opened.append(original(name, *args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(matplotlib.cbook, "get_sample_data", tracked)
    assert open_rgb(sample_photo("grace_hopper")).size[0] > 100
    assert opened and all(file.closed for file in opened)


@pytest.mark.parametrize(
    ("extra", "said"),
    [(["--no-pictures", "--pictured", "5"], "leave out --pictured"),
     (["--pictured", "0"], "--pictured N pictures at least 1"),
     (["--pictured", "-1"], "--pictured N pictures at least 1")],
)  # fmt: skip
def test_concept_pictures_asked_for_in_two_ways_are_refused(
    monkeypatch, capsys, tmp_path, extra, said
):
    from test_hostile import assert_one_line_error, run

    code, _, err = run(
        monkeypatch, capsys, "concepts", "-c", "1", "--layer", "stage3", *extra,
        "--out", tmp_path / "out", model=tiny_cnn_model(),
    )  # fmt: skip
    assert_one_line_error(code, err, said)
    assert not (tmp_path / "out").exists()


def test_mined_as_is_taken_in_any_case_and_refused_otherwise():
    from vital.cli.options import _mined_as

    assert _mined_as(" Patch") == "patch" and _mined_as("IMAGE") == "image"
    with pytest.raises(VitalError, match="--mined-as takes"):
        _mined_as("patches")
