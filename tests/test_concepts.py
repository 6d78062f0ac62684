import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import (
    stop_after_the_first_picture,
    tiny_cnn_model,
    tiny_vit_model,
    write_images,
)
from typer.testing import CliRunner

import vital
import vital.concepts.pipeline
from vital.cli import app
from vital.concepts import ConceptBasis, concept_shares, discover, fidelity_curves, sample_crops
from vital.concepts.crops import CropSet, around_peak
from vital.concepts.maps import grid_of, upsampled
from vital.concepts.pictures import CONCEPT_FLOOR
from vital.errors import VitalError
from vital.explanation import attributor
from vital.references import ImageSource

CONTRACT = {"model", "layer", "class", "images", "crops", "explained_share", "concepts"}
ENTRY = {"index", "share", "picture", "alpha", "examples", "activation", "reference_activation"}


@pytest.fixture
def data(tmp_path):
    write_images(tmp_path / "images", 3, size=64)
    return tmp_path / "images"


def pixels(seed=0, size=32):
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def basis_of(directions, signed=False):
    rows = np.asarray(directions, dtype=float)
    return ConceptBasis("layer", rows / np.linalg.norm(rows, axis=1, keepdims=True), signed)


def test_shares_of_an_exact_factorisation_are_each_concepts_contribution():
    generator = np.random.default_rng(0)
    basis = basis_of(generator.uniform(0, 1, (3, 12)))
    coefficients = generator.uniform(0, 2, (3, 5))
    activation = torch.from_numpy(basis.directions.T @ coefficients)
    rate = torch.from_numpy(generator.normal(size=(12, 5)))
    relevance = rate * activation  # LRP's form: relevance = rate × activation
    found = concept_shares(basis, activation, relevance)
    for k in range(3):  # concept k's part of the activation, weighted by the rate
        part = np.outer(basis.directions[k], coefficients[k])
        assert found.relevance[k] == pytest.approx(float((rate.numpy() * part).sum()), rel=1e-6)
    assert found.residual == pytest.approx(0, abs=1e-8)
    assert found.total == pytest.approx(float(relevance.sum()))


@pytest.mark.parametrize("signed", [False, True])
def test_shares_and_residual_add_up_to_the_layers_relevance(signed):
    model = tiny_cnn_model()
    with attributor(model, "stage3", "lrp") as attribute:
        found = attribute(pixels())
    activation = found.activation.flatten(1)
    relevance = found.relevance.flatten(1)
    if signed:  # the same relevance on a layer whose values take both signs
        sign = torch.where(torch.rand(activation.shape, generator=torch.Generator()) < 0.5, -1, 1)
        activation = activation * sign
    generator = np.random.default_rng(1)
    basis = basis_of(generator.uniform(0, 1, (4, 32 if signed else 16)), signed)
    shares = concept_shares(basis, activation, relevance)
    # The layer's relevance is the channels' (tested against zennit in test_explain) ...
    assert shares.total == pytest.approx(float(found.channels.sum()), rel=1e-6)
    # ... and the concepts plus the residual are exactly that.
    assert shares.relevance.sum() + shares.residual == pytest.approx(shares.total, rel=1e-9)
    assert shares.shares.sum() == pytest.approx(shares.explained)
    assert not np.allclose(shares.relevance, 0)


def test_a_signed_layer_is_split_into_non_negative_parts():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(20, 6, 4, generator=generator)
    basis = discover(features, "layer", count=3)
    assert basis.signed and basis.directions.shape == (3, 12) and (basis.directions >= 0).all()
    row = basis.directions[0]
    assert np.allclose(basis.direction(0), row[:6] - row[6:])
    unsigned = discover(features.abs(), "layer", count=3)
    assert not unsigned.signed and unsigned.directions.shape == (3, 6)


def test_concept_maps_are_zero_where_the_concept_is_absent():
    basis = basis_of([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]])
    activation = torch.zeros(6, 16)
    activation[:2, :4] = 2.0  # concept 0 in the first row of a 4 × 4 map
    activation[2:4, 4:8] = 1.0  # concept 1 in the second
    activation[:, 12:] = torch.tensor([0.0, 0, 0, 0, 3, 3])[:, None]  # concept 2 in the last
    maps = basis.position_coefficients(activation).reshape(3, 4, 4)
    assert np.all(maps[0, 1:] == 0) and np.all(maps[0, 0] > 0)
    assert np.all(maps[1, [0, 2, 3]] == 0) and np.all(maps[1, 1] > 0)
    assert np.all(maps[:2, 3] == 0) and np.all(maps[:, 2] == 0)  # row 2: nothing at all
    # Upsampled to 32 px (8 px a cell), concept 0 stays zero away from its row's border.
    shown = upsampled(maps[0], (32, 32))
    assert torch.all(shown[12:] == 0) and torch.all(shown[:4] > 0)


def test_deletion_and_insertion_curves_start_where_they_should():
    model = tiny_cnn_model()
    image = pixels(3)
    with attributor(model, "stage3", "lrp") as attribute:
        found = attribute(image)
    activation = found.activation.flatten(1)
    basis = basis_of(np.random.default_rng(0).uniform(0, 1, (3, 16)))
    coefficients = basis.position_coefficients(activation)
    curves = fidelity_curves(
        model, "stage3", image, found.target, basis, activation, coefficients, [0, 1, 2], [4, 5, 6]
    )
    logit = float(found.logits[found.target])
    assert curves.concepts_deletion[0] == pytest.approx(logit, rel=1e-5)
    assert curves.channels_deletion[0] == pytest.approx(logit, rel=1e-5)
    # Nothing kept: the head's output on an all-zero layer (its bias).
    with torch.no_grad():
        bias = float(model.module.head.bias[found.target])
    assert curves.concepts_insertion[0] == pytest.approx(bias, abs=1e-5)
    assert curves.channels_insertion[0] == pytest.approx(bias, abs=1e-5)
    assert len(curves.concepts_deletion) == 4 and curves.channels_deletion[1] != logit


def test_a_crops_view_is_its_box(tmp_path):
    generator = np.random.default_rng(0)
    array = generator.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(array).resize((180, 120), Image.Resampling.NEAREST).save(path)
    crops = sample_crops([ImageSource.from_path(path)], count=6, scale=(0.1, 0.3), seed=2)
    model = tiny_cnn_model()
    views = crops.pixels(model, 64)
    photo = Image.open(path)
    for crop, view in zip(crops.crops, views, strict=True):
        left, top, side = crop.box
        box = photo.crop((left, top, left + side, top + side)).resize((64, 64))
        expected = torch.from_numpy(np.asarray(box, dtype=np.float32) / 255).permute(2, 0, 1)
        assert (view - expected).abs().mean() < 0.08
    assert len(crops.crops) == 6 and len({c.box for c in crops.crops}) == 6


@pytest.mark.parametrize("peak", [(0, 0), (3, 1), (6, 6)])
def test_an_example_is_the_square_around_its_concepts_peak_inside_its_crop(tmp_path, peak):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((200, 300, 3), dtype=np.uint8)).save(path)
    image = ImageSource.from_path(path)
    crop = sample_crops([image], count=1, scale=(0.3, 0.3), seed=1).crops[0]
    left, top, side = crop.box
    grid = np.zeros((7, 7))
    grid[peak] = 1.0
    example = around_peak(image, crop, grid, zoom=0.5)
    x, y, small = example.box
    assert small == round(side / 2) and example.image == crop.image
    assert left <= x and x + small <= left + side and top <= y and y + small <= top + side
    centre = (left + (peak[1] + 0.5) / 7 * side, top + (peak[0] + 0.5) / 7 * side)
    inside = lambda value, low: min(max(value, low + small / 2), low + side - small / 2)  # noqa: E731
    assert abs(x + small / 2 - inside(centre[0], left)) <= 1
    assert abs(y + small / 2 - inside(centre[1], top)) <= 1
    assert around_peak(image, crop, grid, zoom=1.0) is crop
    with pytest.raises(VitalError, match="zoom"):
        around_peak(image, crop, grid, zoom=0.0)


def test_each_example_is_the_tightest_square_that_keeps_its_concept(data):
    from vital.concepts.crops import EXAMPLE_KEEP, EXAMPLE_ZOOMS
    from vital.concepts.discovery import layer_features
    from vital.concepts.pipeline import _examples

    model = tiny_cnn_model()
    crops = sample_crops([ImageSource.from_path(data / "img000.png")], count=12, seed=3)
    features = layer_features(model, "stage3", crops.pixels(model, 32))
    basis = discover(features, "stage3", count=3)
    coefficients = basis.coefficients(features.mean(dim=-1))
    best = {k: [int(i) for i in np.argsort(-coefficients[:, k])[:4]] for k in range(3)}
    crop_pixels = crops.pixels(model, 32)
    passed, settled = [], []
    real_coefficients = vital.concepts.pipeline.crop_coefficients

    def counted(model, basis, pixels, **kwargs):
        passed.append(len(pixels))
        return real_coefficients(model, basis, pixels, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vital.concepts.pipeline, "crop_coefficients", counted)
        examples, pixels, values, chosen = _examples(
            model, crops, crop_pixels, features, coefficients, basis, best, settled.append
        )
    assert len(examples.crops) == len(pixels) == len(values) == 12
    assert sum(settled) == 12
    # Every zoom of every example, as brute force finds them: the first that keeps enough.
    tried = [
        around_peak(crops.images[0], crops.crops[i], grid_of(basis.position_coefficients(
            features[i]))[k], zoom)
        for k in best for i in best[k] for zoom in EXAMPLE_ZOOMS
    ]  # fmt: skip
    every = real_coefficients(
        model, basis, CropSet(crops.images, tuple(tried), crops.scale, crops.seed).pixels(model, 32)
    )
    owners = [(k, i) for k in best for i in best[k]]
    for n, (k, i) in enumerate(owners):
        first = n * len(EXAMPLE_ZOOMS)
        kept = [j for j in range(first, first + len(EXAMPLE_ZOOMS))
                if every[j, k] >= EXAMPLE_KEEP * coefficients[i, k]]  # fmt: skip
        assert examples.crops[n].box == tried[kept[0] if kept else first + 2].box
        assert np.allclose(values[n], every[kept[0] if kept else first + 2], atol=1e-5)
    # ... with fewer squares through the model: none after its example, never a whole crop.
    assert sum(passed) < len(tried)
    assert sum(passed) <= sum(t.box != crops.crops[i].box for t, (_, i) in zip(
        tried, [o for o in owners for _ in EXAMPLE_ZOOMS], strict=True))  # fmt: skip
    sides = {c.box: c.box[2] for c in crops.crops}
    for k, found in chosen.items():
        assert sorted(found) == list(range(4 * k, 4 * k + 4))
        assert [values[i, k] for i in found] == sorted((values[i, k] for i in found), reverse=True)
        for i in found:
            example, crop = examples.crops[i], crops.crops[best[k][i - 4 * k]]
            whole = example.box == crop.box
            assert whole or example.box[2] < sides[crop.box]
            # smaller than its crop only where it keeps enough of the concept
            assert whole or values[i, k] >= EXAMPLE_KEEP * coefficients[best[k][i - 4 * k], k]
    assert any(e.box not in sides for e in examples.crops)  # squares, not only whole crops
    assert EXAMPLE_ZOOMS[-1] == 1.0  # a concept that needs its whole crop keeps it


def _check_contract(out: Path, count: int) -> dict:
    record = json.loads((out / "concepts.json").read_text())
    assert CONTRACT <= record.keys()
    assert isinstance(record["model"], str) and isinstance(record["class"]["index"], int)
    shares = [c["share"] for c in record["concepts"]]
    assert len(shares) == count and shares == sorted(shares, reverse=True)
    assert record["explained_share"] == pytest.approx(sum(shares))
    for concept in record["concepts"]:
        assert ENTRY <= concept.keys()
        for path in [concept["picture"], concept["alpha"], *concept["examples"]]:
            assert not Path(path).is_absolute() and (out / path).is_file()
        assert concept["examples"] and concept["activation"] is not None
        assert concept["reference_activation"] > 0
    assert (out / "overview.png").is_file() and (out / "directions.npy").is_file()
    return record


def test_concepts_end_to_end_on_a_tiny_cnn(tmp_path, data):
    out = tmp_path / "out"
    report = vital.concepts(
        tiny_cnn_model(), 3, data, layer="stage3", count=3, crops=24, examples=4,
        settings={"steps": 3}, out=out, progress=False,
    )  # fmt: skip
    record = _check_contract(out, 3)
    assert record["images"] == 3 and record["crops"] == 24 and not record["discovery"]["signed"]
    assert [c.index for c in report.concepts] == [c["index"] for c in record["concepts"]]
    assert len(list((out / "maps").glob("*.png"))) == 3  # one sheet per image
    example = out / record["concepts"][0]["examples"][0]
    assert Image.open(example).size == (32, 32)
    for concept in record["concepts"]:  # each concept's own examples, its best first
        assert all(
            Path(e).name.startswith(f"concept-{concept['index']}-") for e in concept["examples"]
        )
        values = concept["example_coefficients"]
        assert values == sorted(values, reverse=True)
        ratio = concept["reference_activation"] / np.mean(values)
        assert ratio == pytest.approx(1, rel=1e-4)  # the picture's references are the examples
        picture = json.loads((out / concept["record"]).read_text())
        # matched as a whole: the floor under the relevance (docs/concepts.md, "Pictures")
        assert picture["options"]["relevance_floor"] == CONCEPT_FLOOR > 0
    curves = record["fidelity"]
    assert len(curves["concepts_deletion"]) == 4 and curves["images"] == 3


def test_concepts_end_to_end_on_a_tiny_vit_a_signed_token_layer(tmp_path, data):
    out = tmp_path / "vit"
    vital.concepts(
        tiny_vit_model(), 1, data / "img000.png", layer="blocks.2", count=2, crops=16,
        examples=3, settings={"steps": 2}, out=out, progress=False,
    )  # fmt: skip
    record = _check_contract(out, 2)
    assert record["images"] == 1 and record["discovery"]["signed"]
    assert any("signed" in note for note in record["notes"])
    assert np.load(out / "directions.npy").shape == (2, 32)  # the layer's own channel space


def test_cli_and_api_find_the_same_concepts(tmp_path, data, monkeypatch):
    monkeypatch.setattr("vital.cli.session.load", lambda *a: tiny_cnn_model())
    arguments = ["concepts", "--class", "2", "--layer", "stage3", "--data", str(data)]
    arguments += ["--count", "3", "--crops", "20", "--seed", "4", "--no-pictures"]
    result = CliRunner().invoke(app, [*arguments, "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    vital.concepts(
        tiny_cnn_model(), 2, data, layer="stage3", count=3, crops=20, seed=4, pictures=False,
        out=tmp_path / "api", progress=False,
    )  # fmt: skip
    cli, api = (json.loads((tmp_path / f / "concepts.json").read_text()) for f in ("cli", "api"))
    assert [c["index"] for c in cli["concepts"]] == [c["index"] for c in api["concepts"]]
    assert [c["share"] for c in cli["concepts"]] == [c["share"] for c in api["concepts"]]
    assert np.array_equal(
        np.load(tmp_path / "cli/directions.npy"), np.load(tmp_path / "api/directions.npy")
    )
    for concept in cli["concepts"]:
        assert f"share {concept['share']:6.1%}" in result.output


def test_user_mistakes_are_one_line(tmp_path, data, monkeypatch):
    import vital.cli

    with pytest.raises(VitalError, match="count=K"):
        vital.concepts(tiny_cnn_model(), 2, data, layer="stage3", count=30, crops=10,
                       pictures=False, out=tmp_path, progress=False)  # fmt: skip
    with pytest.raises(VitalError, match="crop scale"):
        vital.concepts(tiny_cnn_model(), 2, data, layer="stage3", crop_scale=(0.5, 0.1),
                       pictures=False, out=tmp_path, progress=False)  # fmt: skip
    monkeypatch.setattr("vital.cli.session.load", lambda *a: tiny_cnn_model())
    arguments = ["concepts", "--class", "2,3", "--layer", "stage3", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        vital.cli.main(arguments)
    assert exit_.value.code == 2


def test_a_missing_data_path_is_named_as_the_data_option(tmp_path, capsys, monkeypatch):
    import vital.cli

    missing = tmp_path / "no-such-photos"
    with pytest.raises(VitalError, match=r"data=.*no-such-photos does not exist"):
        vital.concepts(tiny_cnn_model(), 2, missing, layer="stage3", pictures=False,
                       out=tmp_path / "out", progress=False)  # fmt: skip
    monkeypatch.setattr("vital.cli.session.load", lambda *a: tiny_cnn_model())
    arguments = ["concepts", "-c", "2", "--layer", "stage3", "--data", str(missing)]
    with pytest.raises(SystemExit) as exit_:
        vital.cli.main([*arguments, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"--data {missing} does not exist" in error and "reference folder" not in error


def test_a_plain_folder_of_one_photo_per_class_gives_the_class_its_photo(tmp_path, data):
    from vital.concepts import class_images
    from vital.targets import class_target

    model = tiny_cnn_model()
    (data / "img001.png").rename(data / "class_3.png")
    sources, notes = class_images(model, class_target(model, 3), data)
    assert [Path(s.where).name for s in sources] == ["class_3.png"] and "file name" in notes[0]
    # No name fits classes 0-9 but 3: the images whose top five hold it, else the best one.
    with torch.no_grad():
        logits = {
            p.name: model.module(model.preprocessing.normalize(load(p)[None]))[0]
            for p in sorted(data.iterdir())
        }
    ranks = {c: {n: int((v > v[c]).sum()) for n, v in logits.items()} for c in range(10)}
    for c in set(range(10)) - {3}:
        sources, notes = class_images(model, class_target(model, c), data)
        expected = [n for n, r in ranks[c].items() if r < 5]
        expected = expected or [min(ranks[c], key=lambda n: ranks[c][n])]
        assert [Path(s.where).name for s in sources] == expected and notes


def load(path):
    from vital.references import center_crop

    return center_crop(Image.open(path).convert("RGB"), 32)


def test_explain_by_concepts_from_the_command_line(tmp_path, data, monkeypatch):
    monkeypatch.setattr("vital.cli.session.load", lambda *a: tiny_cnn_model())
    photo = data / "img002.png"
    arguments = ["explain", str(photo), "--layer", "stage3", "--by", "concepts", "--count", "2"]
    result = CliRunner().invoke(app, [*arguments, "--steps", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "concepts").iterdir()  # in the atlas, with its pages
    record = _check_contract(folder, 2)
    assert f"page: {folder / 'index.html'}" in result.output and (folder / "index.html").is_file()
    model = tiny_cnn_model()
    with torch.no_grad():
        image = model.preprocessing.normalize(load(photo)[None])
        predicted = int(model.module(image).argmax())
    assert record["class"]["index"] == predicted and record["images"] == 1
    assert f"{record['explained_share']:.1%} of its relevance" in result.output


def test_concepts_from_a_mining_database_use_its_images(tmp_path, data):
    from vital.mining import mine

    model = tiny_cnn_model()
    mine(model, "stage3", data, tmp_path / "mined", channels=[0], top_images=3, reference_count=2,
         patch_side=16, workers=0, progress=False)  # fmt: skip
    report = vital.concepts(
        model, 1, tmp_path / "mined" / "mining.sqlite", layer="stage3", count=2, crops=12,
        pictures=False, out=tmp_path / "out", progress=False,
    )  # fmt: skip
    assert report.images == 3  # not an ImageNet-style tree: every image it mined


@pytest.mark.parametrize("name", ["concepts.json", "overview.png"])
def test_a_users_files_in_the_out_folder_are_refused_and_kept(tmp_path, data, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("the user's own notes")
    arguments = dict(layer="stage3", count=2, crops=8, examples=2, settings={"steps": 1})
    with pytest.raises(VitalError, match="not written by vital concepts"):
        vital.concepts(tiny_cnn_model(), 3, data, out=out, progress=False, **arguments)
    assert (out / name).read_text() == "the user's own notes"
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing written beside it


def test_an_out_folder_inside_the_data_is_not_taken_for_images(data):
    """Once refused as a class folder ("has class sub-folders"), then its examples and maps
    would have been the next run's images."""
    arguments = dict(layer="stage3", count=2, crops=8, examples=2, pictures=False)
    for _ in range(2):
        report = vital.concepts(
            tiny_cnn_model(), 3, data, out=data / "out", progress=False, **arguments
        )
        assert report.images == 3


def test_an_out_folder_of_the_users_photos_is_refused_and_kept(tmp_path, data):
    before = sorted(p.name for p in data.iterdir())
    arguments = dict(layer="stage3", count=2, crops=8, examples=2, pictures=False)
    with pytest.raises(VitalError, match="holds images that vital did not write.*new or empty"):
        vital.concepts(tiny_cnn_model(), 3, data, out=data, progress=False, **arguments)
    assert sorted(p.name for p in data.iterdir()) == before  # nothing written among them
    vital_out = tmp_path / "vital-out"  # a folder vital wrote pictures into is no one's photos
    write_images(vital_out, 1, size=32)
    (vital_out / "index.sqlite").write_bytes(b"")  # a file of that name is not vital's mark
    with pytest.raises(VitalError, match="holds images that vital did not write"):
        vital.concepts(tiny_cnn_model(), 3, data, out=vital_out, progress=False, **arguments)
    (vital_out / "index.sqlite").unlink()
    vital.store.ResultStore(vital_out, create=True)  # vital's index of the pictures it wrote
    vital.concepts(tiny_cnn_model(), 3, data, out=vital_out, progress=False, **arguments)


def test_a_second_run_replaces_its_own_report(tmp_path, data):
    out = tmp_path / "out"
    arguments = dict(layer="stage3", count=2, crops=8, examples=2, settings={"steps": 1})
    for _ in range(2):
        vital.concepts(tiny_cnn_model(), 3, data, out=out, progress=False, **arguments)
    assert json.loads((out / "concepts.json").read_text())["layer"] == "stage3"


def test_a_rerun_with_fewer_concepts_leaves_no_pictures_of_the_old_ones(tmp_path, data):
    out = tmp_path / "out"
    arguments = dict(layer="stage3", crops=12, examples=2, pictures=False, progress=False)
    vital.concepts(tiny_cnn_model(), 3, data, out=out, count=3, **arguments)
    assert list(out.glob("maps/*/concept-2.png"))  # the first run drew concept 2
    vital.concepts(tiny_cnn_model(), 3, data, out=out, count=2, **arguments)
    record = json.loads((out / "concepts.json").read_text())
    listed = {Path(e).name for c in record["concepts"] for e in c["examples"]}
    assert {p.name for p in (out / "examples").iterdir()} == listed
    assert not list(out.glob("maps/*/concept-2.png"))
    assert len(list((out / "maps").glob("*.png"))) == record["images"]


def test_a_stopped_run_keeps_its_finished_pictures_and_runs_again(tmp_path, data, monkeypatch):
    """Ctrl-C after the first picture: that picture is on disk, and the same command again is
    not refused as if directions.npy were the user's (it was: no concepts.json beside it)."""

    out = tmp_path / "out"
    arguments = dict(layer="stage3", count=2, crops=8, examples=2, settings={"steps": 1},
                     batch_size=1, out=out, progress=False)  # fmt: skip
    stop_after_the_first_picture(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        vital.concepts(tiny_cnn_model(), 3, data, **arguments)
    monkeypatch.undo()
    assert (out / "directions.npy").is_file() and not (out / "concepts.json").exists()
    assert len(list((out / "pictures").glob("*.json"))) == 1  # the finished picture
    vital.concepts(tiny_cnn_model(), 3, data, **arguments)
    _check_contract(out, 2)


@pytest.mark.parametrize("pictures", [False, True])
def test_ctrl_c_names_only_the_pictures_that_were_finished(tmp_path, data, monkeypatch, capsys,
                                                           pictures):  # fmt: skip
    """--no-pictures, stopped: once it pointed at OUT/pictures, a folder that was never made."""
    import vital.cli
    from vital.store import ResultStore

    written = ResultStore.write

    def stop(*args):
        if pictures:  # after the first picture
            written(*args)
        raise KeyboardInterrupt

    target = (ResultStore, "write") if pictures else ("vital.concepts.pipeline.discover",)
    monkeypatch.setattr(*target, stop)
    monkeypatch.setattr("vital.cli.session.load", lambda *a: tiny_cnn_model())
    out = tmp_path / "out"
    arguments = ["concepts", "-c", "2", "--layer", "stage3", "--data", str(data), "--count", "2"]
    arguments += ["--crops", "8", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_:  # the picture options are refused without pictures
        vital.cli.main(
            arguments + (["--steps", "1", "--batch", "1"] if pictures else ["--no-pictures"])
        )
    assert exit_.value.code == 130
    message = capsys.readouterr().err.strip().splitlines()[-1]
    if pictures:
        assert str(out / "pictures") in message and "takes those pictures" in message
    else:
        assert "pictures" not in message and not (out / "pictures").exists()
        assert (
            message
            == "interrupted: the analysis was not finished; the same command again runs it anew."
        )


SEED_RANGE = r"the seed must be a whole number from 0 to 9223372036854775807 \(seed=S\)"


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, True, "3"])
def test_a_seed_outside_vitals_range_is_refused_before_any_work(tmp_path, data, seed):
    out = tmp_path / "out"
    with pytest.raises(VitalError, match=SEED_RANGE):
        vital.concepts(tiny_cnn_model(), 2, data, layer="stage3", seed=seed, pictures=False,
                       out=out, progress=False)  # fmt: skip
    assert not out.exists()


def test_nmf_gets_seeds_below_2_32_as_they_are_and_a_32_bit_one_derived_from_larger_ones():
    from vital.concepts.discovery import nmf_seed

    assert [nmf_seed(s) for s in (0, 7, 2**32 - 1)] == [0, 7, 2**32 - 1]  # results unchanged
    derived = [nmf_seed(s) for s in (2**32, 2**32 + 1, 2**63 - 1)]
    assert all(0 <= s < 2**32 for s in derived) and len(set(derived)) == 3
    assert derived == [nmf_seed(s) for s in (2**32, 2**32 + 1, 2**63 - 1)]  # deterministic
    features = torch.rand(12, 16, 4, generator=torch.Generator().manual_seed(0))
    found = discover(features, "layer", count=3, seed=2**40)
    assert np.array_equal(found.directions, discover(features, "layer", 3, 2**40).directions)
    with pytest.raises(VitalError, match=SEED_RANGE):
        discover(features, "layer", count=3, seed=-1)


def test_numbers_from_numpy_are_taken_and_recorded_as_python_numbers(tmp_path, data):
    # seed=np.int64 used to fail in json after the whole analysis; a numpy crop scale and a
    # relevance backend in capitals were refused.
    out = tmp_path / "out"
    vital.concepts(
        tiny_cnn_model(), 2, data, layer="stage3", count=2, crops=12, seed=np.int64(3),
        crop_scale=np.array([0.2, 0.5]), relevance="GRAD-X-ACT", pictures=False, out=out,
        progress=False,
    )  # fmt: skip
    record = json.loads((out / "concepts.json").read_text())
    assert record["discovery"]["seed"] == 3 and record["relevance"]["backend"] == "grad-x-act"
    assert record["discovery"]["crop_scale"] == [0.2, 0.5]
    for scale in ((np.float32(0.25), np.float64(0.5)), torch.tensor([0.25, 0.5])):
        crops = sample_crops([ImageSource.from_path(data / "img000.png")], 4, scale, seed=1)
        assert crops.scale == (0.25, 0.5) and all(type(v) is float for v in crops.scale)
    for scale in (np.array([[0.2, 0.5]]), (0.2, True), torch.tensor([0.5, 0.2])):
        with pytest.raises(VitalError, match="crop scale"):
            sample_crops([ImageSource.from_path(data / "img000.png")], 4, scale)


def test_the_commands_take_every_seed_vital_takes_and_refuse_others_in_one_line(
    tmp_path, data, monkeypatch
):
    monkeypatch.setattr("vital.cli.session.load", lambda *a: tiny_cnn_model())
    concepts = ["concepts", "--class", "2", "--layer", "stage3", "--data", str(data)]
    concepts += ["--count", "2", "--crops", "12", "--no-pictures", "--out", str(tmp_path / "c")]
    photo = data / "img002.png"
    explained = ["explain", str(photo), "--layer", "stage3", "--by", "concepts", "--count", "2"]
    explained += ["--no-pictures", "--out", str(tmp_path / "e")]
    for arguments in (concepts, explained):
        refused = CliRunner().invoke(app, [*arguments, "--seed", "-1"])
        assert isinstance(refused.exception, VitalError), refused.output
        assert "the seed must be a whole number from 0" in str(refused.exception)
        result = CliRunner().invoke(app, [*arguments, "--seed", str(2**32)])  # NMF's limit + 1
        assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "c" / "concepts.json").read_text())
    assert record["discovery"]["seed"] == 2**32
    (folder,) = (tmp_path / "e" / "concepts").iterdir()
    assert json.loads((folder / "concepts.json").read_text())["discovery"]["seed"] == 2**32


def test_concepts_of_a_class_the_layer_speaks_against_are_listed_largest_share_first():
    """A negative total made the list run 1.1 %, 20.1 %, 39.1 %: smallest share first."""
    from vital.concepts.pipeline import _sign_notes, by_share
    from vital.concepts.shares import ConceptShares

    against = ConceptShares(np.array([-0.1, -1.9, -3.7]), residual=-3.8, total=-9.5)
    assert by_share(against) == [2, 1, 0]
    assert list(against.shares[by_share(against)]) == sorted(against.shares, reverse=True)
    assert by_share(ConceptShares(np.array([0.1, 1.9, -0.2]), 0.2, 2.0)) == [1, 0, 2]
    assert by_share(ConceptShares(np.array([0.0, 0.0]), 0.0, 0.0)) == [0, 1]
    assert "negative" in _sign_notes(-9.5, "L")[0] and _sign_notes(2.0, "L") == []
    assert "is 0" in _sign_notes(0.0, "L")[0]
