import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vital.errors import VitalError
from vital.losses import sorted_prototype
from vital.references import (
    ImageSource,
    ReferenceSet,
    compute_prototypes,
    from_folder,
    from_imagenet_class,
    open_rgb,
    random_view,
)
from vital.taps import tapped


def test_formats_are_converted_to_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((20, 24), 128, np.uint8)])).save(tmp_path / "a.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.gif")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 200).save(tmp_path / "deep.png")
    for path in sorted(tmp_path.iterdir()):
        image = open_rgb(ImageSource.from_path(path))
        assert image is not None and image.mode == "RGB" and image.size == (24, 20), path


def test_unreadable_files_are_skipped_with_a_warning(tmp_path):
    from tests.conftest import write_images

    write_images(tmp_path, 2)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    good = tmp_path / "img000.png"
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:200])
    references = from_folder(tmp_path, count=4)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        views = list(references.views(16))
    assert len(views) == 4 and all(v.shape == (3, 16, 16) for v in views)


def test_no_usable_image_is_a_clear_error(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(VitalError, match="none of the 1 reference images could be read"):
            list(from_folder(tmp_path).views(16))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VitalError, match="no images found"):
        from_folder(empty)
    with pytest.raises(VitalError, match="does not exist"):
        from_folder(tmp_path / "missing")


def test_few_images_are_expanded_to_count_views_and_say_so(image_folder):
    references = from_folder(image_folder, count=10, seed=3)
    views = list(references.views(24))
    assert len(views) == 10
    assert references.expanded and "not 10 distinct photos" in references.summary()
    # Seeded: the same views again; another seed gives others.
    again = list(from_folder(image_folder, count=10, seed=3).views(24))
    other = list(from_folder(image_folder, count=10, seed=4).views(24))
    assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(views[4:], other[4:], strict=True))


def test_many_images_are_subsampled(tmp_path):
    from tests.conftest import write_images

    write_images(tmp_path, 12)
    references = from_folder(tmp_path, count=5)
    assert len(list(references.views(16))) == 5 and not references.expanded


def test_imagenet_class_folder(tmp_path):
    from tests.conftest import write_images

    write_images(tmp_path / "n07920052", 2)
    assert len(from_imagenet_class(tmp_path, "n07920052").sources) == 2
    with pytest.raises(VitalError, match="no class folder n01440764"):
        from_imagenet_class(tmp_path, "n01440764")


def _counting_sources(folder: Path, opened: list):
    def opener(path):
        def open_():
            opened.append(path)
            return Image.open(path)

        return open_

    return tuple(ImageSource(str(p), opener(p)) for p in sorted(folder.glob("*.png")))


def test_prototypes_stream_equals_all_at_once_and_are_cached(tiny_cnn, image_folder, tmp_path):
    opened: list = []
    references = ReferenceSet(_counting_sources(image_folder, opened), count=7, seed=1)
    layers = ["stem", "stage2"]
    prototypes = compute_prototypes(
        tiny_cnn, layers, references, 32, batch_size=3, cache_dir=tmp_path / "c"
    )
    views = torch.stack(list(references.views(32)))
    with tapped(tiny_cnn.module, layers) as tap, torch.no_grad():
        features = tap(tiny_cnn.preprocessing.normalize(views))
    for layer in layers:
        assert torch.allclose(prototypes[layer], sorted_prototype(features[layer]), atol=1e-6)
    opened.clear()
    cached = compute_prototypes(tiny_cnn, layers, references, 32, cache_dir=tmp_path / "c")
    assert opened == []  # the second run does not read the images again
    assert all(torch.equal(cached[k], prototypes[k]) for k in layers)
    # Another resolution is another prototype.
    other = compute_prototypes(tiny_cnn, layers, references, 16, cache_dir=tmp_path / "c")
    assert other["stem"].shape[-1] == 64 and opened


def test_reference_set_needs_sources():
    with pytest.raises(VitalError, match="no usable reference images"):
        ReferenceSet(())


@pytest.mark.parametrize("size", [(3000, 2), (2, 3000), (1, 1), (40, 7)])
def test_random_views_of_extreme_shapes_are_whole_squares(size):
    # A very thin image leaves no sampled box inside it: the view falls back to its centre.
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), np.uint8))
    generator = np.random.default_rng(1)
    views = [random_view(image, 32, generator) for _ in range(4)]
    assert all(view.shape == (3, 32, 32) and torch.isfinite(view).all() for view in views)


def test_reference_passes_above_224px_hold_fewer_views_with_the_same_mean(tiny_cnn, image_folder):
    """A pass's memory grows with its pixels: above 224 px the views go fewer at a time (one
    at least), and the mean over all views is the same."""
    from vital.references import average_over_views, from_folder, views_per_pass

    assert views_per_pass(16, 224) == 16 and views_per_pass(16, 32) == 16
    assert views_per_pass(16, 448) == 4 and views_per_pass(8, 512) == 1
    assert views_per_pass(8, 2048) == 1 and views_per_pass(1, 300) == 1
    references = from_folder(image_folder, count=6, seed=0)
    sizes: list[int] = []

    def summarize(x):
        sizes.append(x.shape[0])
        return {"mean": x.mean(dim=(2, 3))}

    seen = average_over_views(tiny_cnn, references, 448, summarize, batch_size=16)
    assert sizes == [4, 2]  # 6 views, 4 at a time
    views = torch.stack(list(references.views(448)))
    expected = tiny_cnn.preprocessing.normalize(views).mean(dim=(2, 3)).mean(dim=0)
    assert torch.allclose(seen["mean"], expected, atol=1e-6)


@pytest.mark.parametrize("given", ["", "  "])
def test_an_empty_vital_cache_variable_counts_as_unset(monkeypatch, tmp_path, given):
    """Taken as a path, "" was the working folder, which then got the cache's files."""
    from vital.references import default_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VITAL_CACHE", given)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "vital"
    monkeypatch.setenv("VITAL_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.setenv("VITAL_CACHE", f" {tmp_path / 'cache'}\n")  # pasted with blanks
    assert default_cache_dir() == tmp_path / "cache"
