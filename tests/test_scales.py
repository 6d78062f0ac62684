"""Coarse stages: pictures and references low-passed the same way, pooled or blurred."""

from __future__ import annotations

import torch

from vital.references import average_over_views, compute_prototypes, from_folder
from vital.scales import coarse_key, coarsen


def _checkerboard(side: int) -> torch.Tensor:
    """A one-pixel checkerboard over a smooth ramp: what 2×2 pooling removes and keeps."""
    rows = torch.arange(side).view(-1, 1)
    columns = torch.arange(side).view(1, -1)
    board = ((rows + columns) % 2).float() - 0.5
    ramp = columns.float() / side
    return (board + ramp).expand(1, 3, side, side).clone()


def test_both_views_remove_what_pooling_removes_and_only_the_pooled_one_shrinks():
    x = _checkerboard(16)
    pooled = coarsen(x, 2, "pooled")
    blurred = coarsen(x, 2, "blurred")
    assert pooled.shape[-1] == 8 and blurred.shape == x.shape
    # The one-pixel checkerboard is gone from both; the ramp stays.
    assert (blurred - x).abs().max() > 0.4
    horizontal = blurred[..., 1:] - blurred[..., :-1]
    assert horizontal.abs().max() < 0.2 and horizontal.mean() > 0
    # The blurred view is the pooled one, upsampled: pooling it again gives the pooled view
    # back up to the bilinear filter's smoothing of the ramp (none inside a linear ramp).
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert torch.allclose(coarsen(blurred, 2, "pooled")[inner], pooled[inner], atol=1e-6)
    assert torch.equal(coarsen(x, 1, "blurred"), x) and torch.equal(coarsen(x, 1), x)
    assert torch.equal(coarsen(x, 2, "auto"), pooled)  # undecided: the pooled view


def test_references_are_coarsened_like_the_picture(tiny_cnn, image_folder, tmp_path):
    """The references' views reach ``summarize`` as the synthetic image reaches the model,
    and the blurred view's prototypes are cached apart from the pooled ones."""
    references = from_folder(image_folder, count=3, seed=0)
    views = torch.stack(list(references.views(32)))
    expected = coarsen(tiny_cnn.preprocessing.normalize(views), 2, "blurred").mean(dim=0)
    seen = average_over_views(
        tiny_cnn, references, 32, lambda x: {"x": x}, 2, coarse_view="blurred"
    )
    assert seen["x"].shape == (3, 32, 32) and torch.allclose(seen["x"], expected, atol=1e-6)
    pooled = compute_prototypes(tiny_cnn, ["stem"], references, 32, 2, cache_dir=tmp_path)
    blurred = compute_prototypes(
        tiny_cnn, ["stem"], references, 32, 2, cache_dir=tmp_path, coarse_view="blurred"
    )
    assert blurred["stem"].shape[-1] == 4 * pooled["stem"].shape[-1]  # full-size positions
    assert coarse_key(2, "pooled") == coarse_key(2, "auto") == coarse_key(1, "blurred") == []
