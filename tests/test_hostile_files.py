"""Hostile round two: odd references, damaged and unusual image files, full disks, two builds.

Each test names the class of problem it guards; the cases are what a user meets (a references
mapping of folders, a rebuild through another path, a phone photo, a Latin-1 file name, a full
disk, a second build in another terminal).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vital
import vital.cli
from conftest import tiny_cnn_model, write_images
from test_hostile import assert_one_line_error, bomb_png, run
from vital.atlas import build_atlas, render_site
from vital.errors import VitalError
from vital.references import from_folder
from vital.targets import Channel, ClassTarget

STEPS = {"steps": 2}


@pytest.fixture
def classes(tmp_path):
    """Class sub-folders 0, 1 and 2 with two images each."""
    for index in range(3):
        write_images(tmp_path / "classes" / str(index), 2, seed=index)
    return tmp_path / "classes"


def build(folder, classes, count=1, model=None, **kwargs):
    """An atlas of the first ``count`` classes with the tiny model (2 steps)."""
    return build_atlas(
        model or tiny_cnn_model(),
        [ClassTarget(i) for i in range(count)],
        lambda t: from_folder(classes / str(t.index), count=2),
        folder,
        STEPS,
        progress=False,
        **kwargs,
    )


# --- references given as a mapping ------------------------------------------------------------


def test_a_references_mapping_takes_folders(classes):
    model = tiny_cnn_model()
    for key in (1, ClassTarget(1), "1"):
        for folder in (classes / "1", str(classes / "1")):
            (result,) = vital.visualize(model, [1], {key: folder}, settings=STEPS, progress=False)
            assert str(classes / "1") in result.record.references["summary"]
    channel = Channel("stage3", 2)
    (result,) = vital.visualize(
        model, [channel], {channel: classes / "2"}, settings=STEPS, progress=False
    )
    assert str(classes / "2") in result.record.references["summary"]
    for wrong in (5, ["a.jpg"], {1: classes}):
        with pytest.raises(VitalError, match=r"references of class 1.* are a folder"):
            vital.visualize(model, [1], {1: wrong}, settings=STEPS, progress=False)


def test_a_reference_count_counts_the_images_read(tmp_path):
    folder = tmp_path / "refs"
    write_images(folder, 4)
    for name in ("broken.jpg", "empty.png"):
        (folder / name).write_text("not an image")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        (result,) = vital.visualize(
            tiny_cnn_model(), [1], folder, settings=STEPS, progress=False, reference_count=10
        )
    references = result.record.references
    assert references["distinct_images"] == 4
    assert "of 4 image(s)" in references["summary"]


# --- what was written, by which path ------------------------------------------------------------


def test_an_atlas_built_through_a_relative_out_keeps_the_users_edit(tmp_path, classes, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build("atlas", classes, 1)
    index = tmp_path / "atlas" / "index.html"
    edited = index.read_text().replace("</body>", "<p>my notes</p></body>")
    index.write_text(edited)
    for folder in ("atlas", tmp_path / "atlas", "./atlas/../atlas"):
        with pytest.raises(VitalError, match=r"index\.html"):
            build(folder, classes, 2)
        assert index.read_text() == edited
    index.unlink()  # moved away: every path to the atlas rebuilds it, nothing refused
    build(tmp_path / "atlas", classes, 2)
    build("atlas", classes, 3)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "atlas")
    report = build(link, classes, 3)
    assert report.skipped == 3


def test_a_ledger_written_by_an_older_vital_through_a_relative_out_is_re_rooted(
    tmp_path, classes, monkeypatch
):
    import sqlite3

    monkeypatch.chdir(tmp_path)
    build("atlas", classes, 1)
    with sqlite3.connect(tmp_path / "atlas" / "atlas.sqlite") as connection:
        # As vital wrote it before: paths from the working folder, no digests, no stamps.
        rows = connection.execute("SELECT path, written FROM atlas_files").fetchall()
        connection.execute("DROP TABLE atlas_files")
        connection.execute(
            "CREATE TABLE atlas_files (path TEXT PRIMARY KEY, written REAL NOT NULL, "
            "size INTEGER, mtime_ns INTEGER)"
        )
        connection.executemany(
            "INSERT INTO atlas_files VALUES (?, ?, NULL, NULL)",
            [(f"atlas/{path}", written) for path, written in rows],
        )
    assert build(tmp_path / "atlas", classes, 2).skipped == 1  # its own files, not refused


def test_a_file_vital_wrote_and_that_was_touched_or_copied_back_is_still_vitals(tmp_path, classes):
    folder = tmp_path / "atlas"
    build(folder, classes, 1)
    index = folder / "index.html"
    os.utime(index, (1, 1))  # a backup tool restored it with another time: same content
    page = next((folder / "units").glob("*.html"))
    page.write_bytes(page.read_bytes())  # rewritten with the same bytes
    build(folder, classes, 2)
    same_size = index.read_text()
    index.write_text(same_size[:-8] + "EDITED!\n")  # an edit of the same length
    os.utime(index, (1, 1))
    with pytest.raises(VitalError, match=r"index\.html"):
        render_site(folder)


# --- two builds into one folder at once --------------------------------------------------------


def test_two_builds_into_one_folder_at_once(tmp_path, classes, monkeypatch):
    """Both builds finish; nothing is refused; the atlas is one vital calls its own."""
    folder = tmp_path / "atlas"
    models = [tiny_cnn_model(), tiny_cnn_model()]  # made here: torch's seed is per process
    meeting = threading.Barrier(2, timeout=30)
    met = set()

    def together(rename):
        def rename_together(*args, **kwargs):
            # Both builds put their first file in place at the same moment: by then both have
            # written it under its temporary name (the same name, before).
            if threading.get_ident() not in met:
                met.add(threading.get_ident())
                meeting.wait()
            return rename(*args, **kwargs)

        return rename_together

    monkeypatch.setattr(os, "replace", together(os.replace))
    monkeypatch.setattr(Path, "replace", together(Path.replace))
    errors = []

    def one_build(model):
        try:
            build(folder, classes, 2, model=model)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=one_build, args=(model,)) for model in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(met) == 2
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert build(folder, classes, 2).skipped == 2  # reused: the atlas is whole and vital's


def test_two_minings_into_one_index_at_once(tmp_path, monkeypatch):
    """Both finish with the one result; the second waits for the first instead of clashing."""
    from test_mining import LAYER, dump, mine_kwargs, planted_model, write_dataset
    from vital.mining.index import MiningIndex

    data = tmp_path / "data"
    write_dataset(data)
    alone = dump(vital.mine(planted_model(), LAYER, data, tmp_path / "a", **mine_kwargs()).database)
    meeting = threading.Barrier(2, timeout=5)
    original = MiningIndex.dataset_id

    def meet_then_add(index, images):
        # Both add the dataset at the same moment, if both get that far at once.
        with contextlib.suppress(threading.BrokenBarrierError):
            meeting.wait()
        return original(index, images)

    monkeypatch.setattr(MiningIndex, "dataset_id", meet_then_add)
    models = [planted_model(), planted_model()]
    outcomes = []

    def one_mining(model):
        try:
            outcomes.append(vital.mine(model, LAYER, data, tmp_path / "out", **mine_kwargs()))
        except BaseException as error:  # noqa: BLE001 - reported below
            outcomes.append(error)

    threads = [threading.Thread(target=one_mining, args=(model,)) for model in models]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    assert dump(tmp_path / "out" / "mining.sqlite") == alone


def test_an_atlas_database_being_created_by_another_build_is_not_taken_for_a_foreign_one(
    tmp_path, classes
):
    folder = tmp_path / "atlas"
    folder.mkdir()
    (folder / "atlas.sqlite").touch()  # what another build's sqlite3.connect has made so far
    assert build(folder, classes, 1).finished == 1


def test_a_temporary_file_name_is_unique_per_write(tmp_path, monkeypatch):
    """Two writers of one name never share a temporary file (the rename of one cannot fail)."""
    import vital.files

    target = tmp_path / "picture.png"
    started = threading.Barrier(2, timeout=10)
    original = vital.files._write

    def write_together(descriptor, data):
        started.wait()
        original(descriptor, data)

    monkeypatch.setattr(vital.files, "_write", write_together)
    threads = [
        threading.Thread(target=vital.files.write_file, args=(target, bytes([n]) * 100))
        for n in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_bytes() in (b"\x01" * 100, b"\x02" * 100)
    assert [p.name for p in tmp_path.iterdir()] == ["picture.png"]


# --- a full disk --------------------------------------------------------------------------------


def no_space(descriptor, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_one_line_naming_the_folder(monkeypatch, capsys, tmp_path, classes):
    import vital.files

    monkeypatch.setattr(vital.files, "_write", no_space)
    cache = Path(os.environ["VITAL_CACHE"])
    out = tmp_path / "out"
    arguments = ["class", "-c", "1", "--refs", classes, "--steps", "1", "--out", out]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, _, err = run(monkeypatch, capsys, *arguments, model=tiny_cnn_model())
    lines = [line for line in err.splitlines() if line.strip()]
    assert any("cache" in line and "No space left" in line for line in lines[:-1]), err
    assert_one_line_error(code, lines[-1], str(out), "No space left on device")
    leftovers = [p for p in [*out.rglob("*"), *cache.rglob("*")] if p.is_file()]
    assert [p.name for p in leftovers if p.name != "index.sqlite"] == []


@pytest.mark.parametrize("kind", ["png", "json", "html", "jpg", "sqlite"])
def test_a_full_disk_during_an_atlas_build_leaves_nothing_half_written(
    monkeypatch, tmp_path, classes, kind
):
    import vital.files

    folder = tmp_path / "atlas"
    build(folder, classes, 1)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    original = vital.files._write

    if kind == "sqlite":  # sqlite writes its own files: a full disk is its "disk is full"
        import sqlite3

        real_connect = sqlite3.connect

        def full(*args, **kwargs):
            connection = real_connect(*args, **kwargs)
            connection.execute("PRAGMA max_page_count = 1")  # no more pages than it has
            return connection

        monkeypatch.setattr(sqlite3, "connect", full)
    else:

        def full_for_kind(descriptor, data):
            name = os.readlink(f"/proc/self/fd/{descriptor}")
            if f".{kind}." in name:
                no_space(descriptor, data)
            original(descriptor, data)

        monkeypatch.setattr(vital.files, "_write", full_for_kind)
    with pytest.raises(VitalError, match=f"cannot write into the folder {folder}"):
        build(folder, classes, 2)
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert not [p for p in after if p.name.endswith(".tmp")]
    for path, content in before.items():  # what was there is intact
        if path.suffix != ".sqlite":
            assert after[path] == content


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_a_file_size_limit_is_one_line_and_leaves_no_temporary_files(tmp_path, classes):
    """A real quota: the kernel refuses writes past 6 kB (EFBIG), in a fresh process."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import vital.cli
        from conftest import tiny_cnn_model
        model = tiny_cnn_model()
        vital.cli._load = lambda *args: model
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))
        vital.cli.main(["class", "-c", "1", "--refs", {str(classes)!r}, "--steps", "1",
                        "--out", {str(out)!r}])
        """
    )
    environment = {**os.environ, "VITAL_CACHE": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}
    environment["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert_one_line_error(2, lines[-1], f"cannot write into the folder {out}", "free space")
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert resource  # imported for the skip condition's platform


# --- unusual image files ------------------------------------------------------------------------


def latin1_file(folder: Path) -> bytes:
    """An image whose file name is Latin-1 ``café.png`` (not valid UTF-8); its bytes path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = os.fsencode(folder) + b"/caf\xe9.png"
    write_images(folder / "source", 1, seed=9)
    os.rename(os.fsencode(folder / "source" / "img000.png"), path)
    (folder / "source").rmdir()
    return path


def test_a_file_name_that_is_not_utf8_is_read_or_skipped_with_a_warning(
    monkeypatch, capsys, tmp_path
):
    folder = tmp_path / "data"
    write_images(folder, 3)
    latin1_file(folder)
    model = tiny_cnn_model()
    arguments = ["mine", "--layer", "stage2", "--data", folder, "--ref-count", "2", "--patch", "0"]
    code, out, err = run(monkeypatch, capsys, *arguments, "--out", tmp_path / "m", model=model)
    assert code == 0, err
    assert "caf\\xe9.png" in err and "UTF-8" in err
    # As references the image is read; records name it printably.
    refs = tmp_path / "refs"
    latin1_file(refs)
    (result,) = vital.visualize(model, [1], refs, settings=STEPS, progress=False)
    assert result.record.references["distinct_images"] == 1
    result.record.to_json().encode("utf-8")
    explanation = vital.explain(
        model, os.fsdecode(latin1_file(tmp_path / "one")), layer="stage2", out=tmp_path / "e",
        progress=False,
    )  # fmt: skip
    assert "caf\\xe9.png" in explanation.image["source"]


def test_a_decompression_bomb_is_called_too_large_everywhere(tmp_path, monkeypatch):
    import vital.files

    bomb = bomb_png(tmp_path / "huge.png")
    model = tiny_cnn_model()
    with pytest.raises(VitalError, match="too large to decode safely"):
        vital.explain(model, bomb, layer="stage2", out=tmp_path / "e", progress=False)
    # An ordinary image above a lowered limit is a bomb too (Pillow's error, not its warning).
    photo = write_images(tmp_path / "photo", 1)[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(VitalError, match="too large to decode safely"):
        vital.files.open_image(photo)
    with pytest.warns(UserWarning, match="too large to decode safely"):
        with pytest.raises(VitalError, match="could be read"):
            vital.visualize(model, [1], photo.parent, settings=STEPS, progress=False)


def upright_and_tagged(path: Path) -> Image.Image:
    """Save a JPEG stored sideways with EXIF "rotate 90° clockwise"; return how it looks."""
    upright = np.zeros((48, 32, 3), dtype=np.uint8)  # portrait: red top, blue bottom
    upright[:24, :, 0] = 255
    upright[24:, :, 2] = 255
    looks = Image.fromarray(upright)
    stored = looks.transpose(Image.Transpose.ROTATE_90)  # landscape, as the sensor saw it
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    stored.save(path, exif=exif, quality=95)
    return looks


def test_exif_orientation_is_honoured_wherever_images_are_read(tmp_path):
    import vital.files
    from vital.explanation.pipeline import load_image
    from vital.mining.datasets import CropDataset, center_crop_uint8
    from vital.references import ImageSource, center_crop, open_rgb

    path = tmp_path / "phone.jpg"
    looks = upright_and_tagged(path)
    opened = vital.files.open_image(path)
    assert opened.size == looks.size == (32, 48)
    assert np.abs(np.asarray(opened, dtype=int) - np.asarray(looks, dtype=int)).mean() < 8
    expected = center_crop(opened, 32)
    assert torch.equal(center_crop(open_rgb(ImageSource.from_path(path)), 32), expected)
    assert torch.equal(load_image(path, 32)[0], expected)
    position, crop, readable = CropDataset([str(path)], [0], 32)[0]
    assert readable and torch.equal(crop, center_crop_uint8(opened, 32))
    # The top of the upright photo is red: the crop the model sees has red above blue.
    assert expected[0, :8].mean() > 0.8 and expected[2, -8:].mean() > 0.8


# --- one validation of numbers ------------------------------------------------------------------


@pytest.mark.parametrize("batch", [0, -1, 1.5, True])
def test_a_batch_below_one_is_refused_by_every_entry(tmp_path, classes, batch):
    model = tiny_cnn_model()
    calls = [
        lambda: vital.visualize(model, [1], classes, batch_size=batch, progress=False),
        lambda: build(tmp_path / "a", classes, 1, batch_size=batch),
        lambda: vital.explain(
            model,
            classes / "1" / "img000.png",
            layer="stage2",
            out=tmp_path / "e",
            batch_size=batch,
            progress=False,
        ),  # fmt: skip
        lambda: vital.mine(model, "stage2", classes, tmp_path / "m", batch_size=batch),
    ]
    for call in calls:
        with pytest.raises(VitalError, match=r"batch.*at least 1"):
            call()
    assert not (tmp_path / "a").exists() and not (tmp_path / "e").exists()


@pytest.mark.parametrize("command", ["class", "explain", "atlas", "mine"])
def test_batch_zero_is_refused_by_every_command(monkeypatch, capsys, tmp_path, classes, command):
    image = classes / "1" / "img000.png"
    arguments = {
        "class": ["class", "-c", "1", "--refs", classes],
        "explain": ["explain", image, "--layer", "stage2"],
        "atlas": ["atlas", "build", "--class", "1", "--refs", classes],
        "mine": ["mine", "--layer", "stage2", "--data", classes, "--patch", "0"],
    }[command]
    out = tmp_path / "out"
    code, _, err = run(
        monkeypatch, capsys, *arguments, "--batch", "0", "--out", out, model=tiny_cnn_model()
    )
    assert_one_line_error(code, err, "batch", "at least 1")
    assert not out.exists()


# --- weights by URL ----------------------------------------------------------------------------


def test_weights_by_url_are_downloaded_into_torchs_cache(tmp_path, monkeypatch):
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(3)
    state = mobilenet_v3_small().state_dict()
    served = tmp_path / "served" / "small-weights.pth"
    served.parent.mkdir()
    torch.save(state, served)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = vital.load_model("mobilenet_v3_small", weights=served.as_uri())
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "small-weights.pth"
    assert cached.is_file()
    assert torch.equal(model.module.state_dict()["classifier.3.bias"], state["classifier.3.bias"])
    assert served.as_uri() in model.weights_source
    with pytest.raises(VitalError, match="cannot download weights from"):
        vital.load_model("mobilenet_v3_small", weights=(tmp_path / "nothing.pth").as_uri())
    # https: through the same downloader (no network here: it hands over the served file)
    fetched = []

    def download(url, destination, *args, **kwargs):
        fetched.append(url)
        Path(destination).write_bytes(served.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    url = "https://example.org/models/other-weights.pth"
    vital.load_model("mobilenet_v3_small", weights=url)
    assert fetched == [url]
    vital.load_model("mobilenet_v3_small", weights=url)
    assert fetched == [url]  # the second time from the cache
    with pytest.raises(VitalError, match="http, https or file"):
        vital.load_model("mobilenet_v3_small", weights="s3://bucket/weights.pth")


def test_mine_names_the_files_it_could_not_read(monkeypatch, capsys, tmp_path):
    folder = tmp_path / "data"
    write_images(folder, 3)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    arguments = ["mine", "--layer", "stage2", "--data", folder, "--ref-count", "2", "--patch", "0"]
    code, out, err = run(
        monkeypatch, capsys, *arguments, "--out", tmp_path / "m", model=tiny_cnn_model()
    )
    assert code == 0, err
    assert "1 unreadable skipped" in out
    assert f"unreadable: {folder / 'broken.jpg'}" in out
