"""Reference mining against brute-force scans written here, one image and one patch at a time."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from conftest import tiny_cnn_model
from vital.atlas.folder import Atlas
from vital.errors import VitalError
from vital.mining import contact_sheet, list_images, mine, mined, mined_references
from vital.mining.topk import RunningTopK
from vital.references import center_crop, open_rgb, resize_for_crop, sample_photo

LAYER = "stem"  # 8 channels, 16 x 16 positions for the 32 px input
PLANTED = (3, 8, 14, 20, 27)  # images with a red square
COUNT = 30
TOP_IMAGES = 8
TOP = 5
PATCH = 16  # on the 32 px crop: 3 x 3 patches, stride 8
SRC = Path(__file__).resolve().parents[1] / "src"


def planted_model():
    """The tiny CNN with stem channel 0 turned into a red detector (R - G - B)."""
    model = tiny_cnn_model()
    conv, norm = model.module.stem[0], model.module.stem[1]
    with torch.no_grad():
        conv.weight[0] = 0.0
        conv.weight[0, 0] = 1.0
        conv.weight[0, 1] = -1.0
        conv.weight[0, 2] = -1.0
        conv.bias[0] = 0.0
        norm.running_mean[0], norm.running_var[0] = 0.0, 1.0
        norm.weight[0], norm.bias[0] = 1.0, 0.0
    return model


def write_dataset(folder: Path, count: int = COUNT, seed: int = 1) -> dict[int, tuple]:
    """Smooth noise with little red; the PLANTED images get a pure red square.

    Returns the planted squares' centres on the 32 px centre crop, by position.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = {}
    for i in range(count):
        small = rng.integers(0, 256, (6, 6, 3))
        small[..., 0] //= 4
        width = 48 + 4 * (i % 3)
        image = Image.fromarray(small.astype(np.uint8)).resize((width, 48), Image.BICUBIC)
        if i in PLANTED:
            x, y = (int(v) for v in rng.integers(12, 27, 2))
            x += (width - 48) // 2
            ImageDraw.Draw(image).rectangle((x, y, x + 9, y + 9), fill=(255, 0, 0))
            resized, left, top = resize_for_crop(image, 32)
            scale = resized.height / 48
            centres[i] = ((x + 5) * scale - left, (y + 5) * scale - top)
        image.save(folder / f"img{i:03d}.png")
    return centres


def mine_kwargs() -> dict:
    return dict(
        top_images=TOP_IMAGES,
        reference_count=TOP,
        patch_side=PATCH,
        batch_size=4,
        shard_size=8,  # two batches per shard in stage 1, one image per shard in stage 2
        workers=0,
        checkpoint_seconds=0,
        progress=False,
    )


# --- the independent, slow reference ----------------------------------------------------------


def layer_maps(model, pixels: torch.Tensor, directions: np.ndarray | None) -> torch.Tensor:
    """One image (3, H, W) in [0, 1] → (U, h, w) unit maps, through a plain forward hook."""
    mean = torch.tensor(model.preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(model.preprocessing.std).view(3, 1, 1)
    seen = {}
    module = dict(model.module.named_modules())[LAYER]
    handle = module.register_forward_hook(lambda _m, _i, output: seen.update(out=output))
    try:
        with torch.no_grad():
            model.module(((pixels - mean) / std)[None])
    finally:
        handle.remove()
    maps = seen["out"][0]
    if directions is None:
        return maps
    unit = torch.from_numpy(directions / np.linalg.norm(directions, axis=1, keepdims=True))
    return torch.einsum("chw,uc->uhw", maps.double(), unit).float()


def brute_force(model, paths: list[str], directions: np.ndarray | None = None) -> dict:
    """Per unit: [(position, patch score, box, image score)] best first, scanning everything."""
    size = model.preprocessing.input_size
    crops = [center_crop(open_rgb_path(p), size) for p in paths]
    maxima = torch.stack([layer_maps(model, c, directions).amax(dim=(1, 2)) for c in crops])
    starts = range(0, size - PATCH + 1, PATCH // 2)
    best_patches = {}  # position -> (U,) best score, (U,) box
    for position, crop in enumerate(crops):
        scores, boxes = [], []
        for top in starts:  # row-major, as the first of equal maxima wins
            for left in starts:
                tile = crop[:, top : top + PATCH, left : left + PATCH][None]
                tile = F.interpolate(tile, size=(size, size), mode="bilinear")[0]
                scores.append(layer_maps(model, tile, directions).mean(dim=(1, 2)))
                boxes.append((left, top, PATCH))
        best, where = torch.stack(scores).max(dim=0)
        best_patches[position] = (best, [boxes[w] for w in where])
    result = {}
    for u in range(maxima.shape[1]):
        stage1 = sorted(range(len(paths)), key=lambda i: (-maxima[i, u].item(), i))[:TOP_IMAGES]
        stage2 = sorted(stage1, key=lambda i: (-best_patches[i][0][u].item(), i))[:TOP]
        result[u] = [
            (i, best_patches[i][0][u].item(), best_patches[i][1][u], maxima[i, u].item())
            for i in stage2
        ]
    return result


def open_rgb_path(path: str) -> Image.Image:
    return Image.open(path).convert("RGB")


def assert_matches(got: list, want: list, tolerance: float = 1e-5) -> None:
    """Same images, boxes and scores in the same order; only near-ties may swap places."""
    assert len(got) == len(want)
    want_by_position = {w[0]: w for w in want}
    for g, w in zip(got, want, strict=True):
        assert g.score == pytest.approx(w[1], rel=tolerance, abs=tolerance)
        position = int(Path(g.path).stem[3:])
        if position != w[0]:
            assert position in want_by_position
            assert abs(want_by_position[position][1] - w[1]) <= tolerance
            continue
        assert g.box == w[2]
        assert g.image_score == pytest.approx(w[3], rel=tolerance, abs=tolerance)


def dump(database: Path) -> list[tuple]:
    """Everything a finished index says, without ids and times."""
    with sqlite3.connect(database) as connection:
        return connection.execute(
            "SELECT l.model, l.layer, l.unit, l.unit_name, l.settings, l.scanned, l.unreadable, "
            "r.rank, r.position, r.score, r.image_score, r.box_left, r.box_top, r.box_size "
            "FROM lists l JOIN ranked r ON r.list = l.id ORDER BY l.unit, r.rank"
        ).fetchall()


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, dict]:
    centres = write_dataset(tmp_path / "data")
    return tmp_path / "data", centres


# --- tests ------------------------------------------------------------------------------------


def test_running_top_k_equals_a_full_sort_with_ties_and_nan():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, (5, 103)).astype(np.float32)  # many ties
    scores[1, 40] = np.nan
    top = RunningTopK(5, capacity=7)
    start = 0
    while start < scores.shape[1]:
        size = int(rng.integers(1, 12))
        stop = min(start + size, scores.shape[1])
        top.update(torch.from_numpy(scores[:, start:stop]), torch.arange(start, stop))
        start = stop
    for u in range(5):
        clean = np.nan_to_num(scores[u], nan=-np.inf)
        want = np.lexsort((np.arange(clean.size), -clean))[:7]
        assert top.ids[u].tolist() == want.tolist()
        assert top.scores[u].tolist() == clean[want].tolist()


def test_merging_shard_lists_in_any_order_equals_a_full_sort():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, (4, 90)).astype(np.float32)  # many exact ties across shards
    scores[2, 17] = np.nan
    cuts = [0, 11, 12, 40, 41, 77, 90]
    shards = []
    for start, stop in zip(cuts, cuts[1:], strict=False):
        own = RunningTopK(4, capacity=9)
        own.update(torch.from_numpy(scores[:, start:stop]), torch.arange(start, stop))
        shards.append(own)
    want = []
    for u in range(4):
        clean = np.nan_to_num(scores[u], nan=-np.inf)
        order = np.lexsort((np.arange(clean.size), -clean))[:9]
        want.append((order.tolist(), clean[order].tolist()))
    for permutation in ([0, 1, 2, 3, 4, 5], [5, 3, 0, 4, 1, 2], [2, 5, 4, 3, 1, 0]):
        driver = RunningTopK(4, capacity=9)
        snapshot, changes = None, []
        for step, shard in enumerate(permutation):
            new = driver.merge(shards[shard].scores, shards[shard].ids)
            changes.append(driver.changes(new))
            if step == 2:  # a snapshot, then only the changes of the later shards
                snapshot, changes = driver.state(), []
        for u in range(4):
            assert (driver.ids[u].tolist(), driver.scores[u].tolist()) == want[u]
        # The snapshot plus the recorded changes rebuild the same lists (what a resume does).
        rebuilt = RunningTopK.restore(snapshot, 9)
        for recorded in changes:
            rebuilt.merge_changes(recorded)
        assert torch.equal(rebuilt.ids, driver.ids) and torch.equal(rebuilt.scores, driver.scores)


def test_mined_lists_equal_a_brute_force_scan_for_every_channel(dataset, tmp_path):
    folder, centres = dataset
    model = planted_model()
    report = mine(model, LAYER, folder, tmp_path / "out", **mine_kwargs())
    assert report.units == [f"channel:{c}" for c in range(8)]
    assert report.images == COUNT and report.unreadable == 0 and report.scanned == COUNT
    paths = list_images(folder).paths
    expected = brute_force(model, list(paths))
    for channel in range(8):
        _, ranked = mined(report.database, model, LAYER, channel)
        assert_matches(ranked, expected[channel])
    # The planted channel finds exactly the red squares, and its best patch covers each one.
    _, ranked = mined(report.database, model, LAYER, 0)
    assert sorted(int(Path(r.path).stem[3:]) for r in ranked) == sorted(PLANTED)
    for entry in ranked:
        x, y = centres[int(Path(entry.path).stem[3:])]
        left, top, side = entry.box
        assert left <= x <= left + side and top <= y <= top + side


def test_stage_one_alone_ranks_whole_images_as_brute_force(dataset, tmp_path):
    folder, _ = dataset
    model = planted_model()
    kwargs = {**mine_kwargs(), "patch_side": 0, "reference_count": TOP_IMAGES}
    report = mine(model, LAYER, folder, tmp_path / "out", **kwargs)
    paths = list(list_images(folder).paths)
    crops = [center_crop(open_rgb_path(p), 32) for p in paths]
    maxima = torch.stack([layer_maps(model, c, None).amax(dim=(1, 2)) for c in crops])
    for channel in range(8):
        order = sorted(range(COUNT), key=lambda i: (-maxima[i, channel].item(), i))
        want = [
            (i, maxima[i, channel].item(), (0, 0, 32), maxima[i, channel].item()) for i in order
        ]
        assert_matches(mined(report.database, model, LAYER, channel)[1], want[:TOP_IMAGES])


def test_direction_scoring_equals_brute_force_projection(dataset, tmp_path):
    folder, _ = dataset
    model = planted_model()
    directions = np.random.default_rng(3).normal(size=(2, 8))
    report = mine(model, LAYER, folder, tmp_path / "out", directions=directions, **mine_kwargs())
    expected = brute_force(model, list(list_images(folder).paths), directions)
    for d in range(2):
        info, ranked = mined(report.database, model, LAYER, directions[d])
        assert info["unit_name"] == f"direction-{d}"
        assert_matches(ranked, expected[d])
    # Scaling a direction does not change it.
    _, scaled = mined(report.database, model, LAYER, directions[0] * 3.0)
    assert [r.path for r in scaled] == [
        r.path for r in mined(report.database, model, LAYER, directions[0])[1]
    ]


def test_hard_crash_then_resume_gives_the_uninterrupted_index(dataset, tmp_path):
    folder, _ = dataset
    clean = mine(planted_model(), LAYER, folder, tmp_path / "clean", **mine_kwargs())
    # Forward calls: 1 probe, 8 batches (4 shards) of stage 1, then stage 2 (1 per candidate).
    for crash_at in (5, 14):
        database = tmp_path / f"crashed{crash_at}"
        script = CRASH_SCRIPT.format(
            tests=str(Path(__file__).parent), after=crash_at, data=str(folder), db=str(database)
        )
        environment = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{Path(__file__).parent}"}
        finished = subprocess.run(
            [sys.executable, "-c", script], env=environment, capture_output=True, timeout=120
        )
        assert finished.returncode == 3, finished.stderr.decode()[-2000:]
        assert dump(database / "mining.sqlite") == []  # nothing finished yet
        resumed = mine(planted_model(), LAYER, folder, database, **mine_kwargs())
        if crash_at == 5:  # in shard 1's second batch: only shard 0 (8 images) was recorded
            assert resumed.scanned == COUNT - 8
        else:  # stage 1 was finished before the crash
            assert resumed.scanned == 0
        assert dump(resumed.database) == dump(clean.database)


CRASH_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
from test_mining import LAYER, mine_kwargs, planted_model
from vital.mining import mine

model = planted_model()
calls = [0]

def crash(module, inputs, output):
    calls[0] += 1
    if calls[0] == {after}:
        os._exit(3)  # a hard crash: no exception handler, no cleanup runs

dict(model.module.named_modules())[LAYER].register_forward_hook(crash)
mine(model, LAYER, {data!r}, {db!r}, **mine_kwargs())
"""


def test_ctrl_c_saves_progress_and_resume_matches(dataset, tmp_path):
    folder, _ = dataset
    clean = mine(planted_model(), LAYER, folder, tmp_path / "clean", **mine_kwargs())
    model = planted_model()
    calls = [0]

    def interrupt(_module, _inputs, _output):
        calls[0] += 1
        if calls[0] == 6:
            raise KeyboardInterrupt

    handle = dict(model.module.named_modules())[LAYER].register_forward_hook(interrupt)
    kwargs = {**mine_kwargs(), "checkpoint_seconds": 1e9}  # only the interrupt saves
    with pytest.raises(KeyboardInterrupt):
        mine(model, LAYER, folder, tmp_path / "run", **kwargs)
    handle.remove()
    resumed = mine(model, LAYER, folder, tmp_path / "run", **kwargs)
    assert resumed.scanned == COUNT - 16  # two shards of eight were done
    assert dump(resumed.database) == dump(clean.database)


def test_finished_lists_are_reused_and_new_channels_mined(dataset, tmp_path):
    folder, _ = dataset
    model = planted_model()
    first = mine(model, LAYER, folder, tmp_path / "out", channels=[0, 2], **mine_kwargs())
    before = dump(first.database)
    calls = [0]
    module = dict(model.module.named_modules())[LAYER]
    handle = module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    again = mine(model, LAYER, folder, tmp_path / "out", channels=[2, 0], **mine_kwargs())
    assert sorted(again.reused) == ["channel:0", "channel:2"] and again.scanned == 0
    assert calls[0] == 1  # only the probe that reads the layer's channel count
    assert dump(again.database) == before
    more = mine(model, LAYER, folder, tmp_path / "out", channels=[0, 5], **mine_kwargs())
    handle.remove()
    assert more.reused == ["channel:0"] and more.scanned == COUNT
    expected = brute_force(model, list(list_images(folder).paths))
    assert_matches(mined(more.database, model, LAYER, 5)[1], expected[5])


def test_corrupt_and_non_image_files_are_skipped_and_counted(dataset, tmp_path):
    folder, _ = dataset
    (folder / "broken.jpg").write_bytes(os.urandom(2000))
    good = (folder / "img000.png").read_bytes()
    (folder / "sub").mkdir()
    (folder / "sub" / "truncated.png").write_bytes(good[: len(good) // 3])
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub" / "labels.csv").write_text("a,b")
    model = planted_model()
    report = mine(model, LAYER, folder, tmp_path / "out", **{**mine_kwargs(), "workers": 2})
    assert report.images == COUNT + 2
    assert report.unreadable == 2 and report.not_images == 2
    named = sorted(Path(path).name for path in report.unreadable_examples)
    assert named == ["broken.jpg", "truncated.png"]  # so the user can find and mend them
    info, ranked = mined(report.database, model, LAYER, 0)
    assert info["unreadable"] == 2
    assert sorted(int(Path(r.path).stem[3:]) for r in ranked) == sorted(PLANTED)


def test_empty_or_missing_data_gives_a_clear_error(tmp_path, tiny_cnn):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VitalError, match="no images found"):
        mine(tiny_cnn, LAYER, tmp_path / "empty", tmp_path / "out", progress=False)
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    with pytest.raises(VitalError, match="1 other file"):
        mine(tiny_cnn, LAYER, tmp_path / "texts", tmp_path / "out", progress=False)
    with pytest.raises(VitalError, match="neither a folder"):
        mine(tiny_cnn, LAYER, tmp_path / "nowhere", tmp_path / "out", progress=False)


def test_an_out_folder_inside_the_data_is_never_mined(dataset, tmp_path):
    """`cd photos && vital mine --data .` run twice: the second run's data are the photos, not
    the contact sheets the first wrote into ./vital-out (nor another vital folder's files)."""
    folder, _ = dataset
    model = planted_model()
    first = mine(model, LAYER, folder, folder / "vital-out", channels=[0], **mine_kwargs())
    (folder / "vital-out" / "sheets").mkdir()
    sheet = (folder / "img000.png").read_bytes()
    (folder / "vital-out" / "sheets" / "stem-channel-0.png").write_bytes(sheet)
    Atlas(folder / "atlas")  # an atlas an earlier run wrote into the data
    (folder / "atlas" / "overview.png").write_bytes(sheet)
    (folder / "mine").mkdir()  # a user's folder with a file named as vital's marks, not vital's
    (folder / "mine" / "index.sqlite").write_bytes(b"")
    (folder / "mine" / "atlas.sqlite").write_bytes(b"not a database")
    (folder / "mine" / "photo.png").write_bytes(sheet)
    with pytest.warns(UserWarning, match=r"leaving out 2 image\(s\) under .*atlas, .*vital-out"):
        again = mine(model, LAYER, folder, folder / "vital-out", channels=[1], **mine_kwargs())
    assert first.images == COUNT and again.images == COUNT + 1  # the user's folder's photo too
    assert again.not_images == 2  # the user's two files; vital's own are not counted
    _, ranked = mined(again.database, model, LAYER, 1)
    assert all(
        Path(r.path).parent in (folder.resolve(), (folder / "mine").resolve()) for r in ranked
    )


def test_the_data_folder_itself_as_the_out_folder_is_refused(dataset, tmp_path):
    folder, _ = dataset
    with pytest.raises(VitalError, match="is the data folder.*a folder of its own"):
        mine(planted_model(), LAYER, folder, folder, **mine_kwargs())
    assert not (folder / "mining.sqlite").exists()


def test_list_file_and_imagenet_class_folders(tmp_path):
    tree = tmp_path / "train"
    for wnid, seed in (("n01440764", 1), ("n01443537", 2)):
        write_dataset(tree / wnid, count=6, seed=seed)
    by_folder = list_images(tree)
    assert set(by_folder.labels) == {"n01440764", "n01443537"}
    listing = tmp_path / "list.txt"
    lines = [str(Path(p).relative_to(tmp_path)) for p in by_folder.paths]
    listing.write_text("# images\n" + "\n".join(lines) + "\n\n")
    by_list = list_images(listing)
    assert by_list.paths == by_folder.paths and by_list.identity == by_folder.identity
    model = planted_model()
    report = mine(model, LAYER, tree, tmp_path / "out", channels=[0], **mine_kwargs())
    _, ranked = mined(report.database, model, LAYER, 0)
    assert {r.label for r in ranked} <= {"n01440764", "n01443537"}
    assert all(Path(r.path).parent.name == r.label for r in ranked)
    (tmp_path / "bad.txt").write_text("missing.png\n")
    with pytest.raises(VitalError, match="do not exist"):
        list_images(tmp_path / "bad.txt")


def test_mined_references_give_images_or_the_scored_patches(dataset, tmp_path):
    folder, _ = dataset
    model = planted_model()
    report = mine(model, LAYER, folder, tmp_path / "out", channels=[0], **mine_kwargs())
    _, ranked = mined(report.database, model, LAYER, 0)
    images = mined_references(
        tmp_path / "out", model, LAYER, 0, mined_as="image", reference_count=3
    )
    assert [s.identity.split(":")[0] for s in images.sources] == [r.path for r in ranked[:3]]
    patches = mined_references(
        report.database, model, LAYER, 0, mined_as="patch", reference_count=TOP
    )
    views = list(patches.views(32))
    assert len(views) == TOP
    for view, entry in zip(views, ranked, strict=True):
        # The view is the scored patch: the crop's box, enlarged to the input size.
        crop = center_crop(open_rgb_path(entry.path), 32)
        left, top, side = entry.box
        tile = crop[:, top : top + side, left : left + side][None]
        want = F.interpolate(tile, size=(32, 32), mode="bilinear")[0]
        assert (view - want).abs().mean() < 0.06
        assert ((view[0] > 0.9) & (view[1] < 0.1)).float().mean() > 0.1  # the red square
    sheet = contact_sheet(report.database, model, LAYER, 0, count=TOP, columns=5, cell=40)
    assert sheet.size == (4 + 5 * 44, 4 + 64)
    with pytest.raises(VitalError, match="no mined references"):
        mined_references(report.database, model, LAYER, 3)
    with pytest.raises(VitalError, match="does not exist"):
        mined_references(tmp_path / "nothing.sqlite", model, LAYER, 0)


def test_wrong_channels_and_directions_are_user_errors(dataset, tmp_path, tiny_cnn):
    folder, _ = dataset
    with pytest.raises(VitalError, match="channels 0..7"):
        mine(tiny_cnn, LAYER, folder, tmp_path / "out", channels=[8], progress=False)
    with pytest.raises(VitalError, match="one value per channel"):
        mine(tiny_cnn, LAYER, folder, tmp_path / "out", directions=np.ones(5), progress=False)
    with pytest.raises(VitalError, match="not found"):
        mine(tiny_cnn, "stemm", folder, tmp_path / "out", progress=False)
    with pytest.raises(VitalError, match="patch side"):
        mine(tiny_cnn, LAYER, folder, tmp_path / "out", patch_side=64, progress=False)


@pytest.mark.slow
def test_cli_mines_mobilenet_and_writes_sheets(tmp_path):
    from typer.testing import CliRunner

    from vital.cli import app
    from vital.zoo import load_model

    data = tmp_path / "photos"
    data.mkdir()
    for name in ("chelsea", "coffee", "daisy"):
        open_rgb(sample_photo(name)).save(data / f"{name}.jpg")
    np.save(tmp_path / "concept.npy", np.random.default_rng(0).normal(size=160))
    arguments = ["mine", "--layer", "features.16", "--data", str(data), "--top-images", "2"]
    arguments += ["--ref-count", "2", "--patch", "112", "--out", str(tmp_path / "out")]
    arguments += ["--workers", "0"]
    result = CliRunner().invoke(app, [*arguments, "--channel", "3,7"])
    assert result.exit_code == 0, result.output
    assert "2 unit(s) of features.16 over 3 images" in result.output
    sheets = sorted(p.name for p in (tmp_path / "out" / "sheets").iterdir())
    assert sheets == ["features.16-channel-3.png", "features.16-channel-7.png"]
    result = CliRunner().invoke(app, [*arguments, "--direction", str(tmp_path / "concept.npy")])
    assert result.exit_code == 0, result.output
    model = load_model("mobilenet_v2")
    refs = mined_references(
        tmp_path / "out", model, "features.16", 7, mined_as="patch", reference_count=2
    )
    assert len(refs.sources) == 2
    _, ranked = mined(tmp_path / "out", model, "features.16", np.load(tmp_path / "concept.npy"))
    assert len(ranked) == 2


@pytest.mark.slow
def test_neuron_command_uses_mined_references_end_to_end(tmp_path):
    import json

    from typer.testing import CliRunner

    from vital.cli import app

    data = tmp_path / "photos"
    data.mkdir()
    for name in ("chelsea", "coffee", "daisy", "palace"):
        open_rgb(sample_photo(name)).save(data / f"{name}.jpg")
    out = str(tmp_path / "out")
    mining = ["mine", "--layer", "features.16", "--data", str(data), "--channel", "5"]
    mining += ["--top-images", "3", "--ref-count", "2", "--patch", "112", "--out", out]
    mining += ["--workers", "0"]
    assert CliRunner().invoke(app, mining).exit_code == 0
    for mode in ("image", "patch"):
        neuron = ["neuron", "--layer", "features.16", "--channel", "5", "--refs", "mined"]
        neuron += ["--mined-as", mode, "--ref-count", "2", "--steps", "2", "--out", out]
        neuron += ["--force"]  # the patches' picture replaces the whole images' one
        result = CliRunner().invoke(app, [*neuron, "--resolution", "64"])
        assert result.exit_code == 0, result.output
        record = json.loads(next(Path(out).glob("vital-features-16-ch5-seed0.json")).read_text())
        kind = "patches" if mode == "patch" else "images"
        assert f"top 2 mined {kind} of features.16" in record["references"]["summary"]
        assert record["references"]["distinct_images"] == 2
    missing = ["neuron", "--layer", "features.16", "--channel", "6", "--refs", "mined"]
    result = CliRunner().invoke(app, [*missing, "--steps", "1", "--out", out])
    assert isinstance(result.exception, VitalError), result.output
    assert "no mined references" in str(result.exception) and "vital mine" in str(result.exception)
