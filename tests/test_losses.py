import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from vital import losses
from vital.losses import l2, rank_order, sort_matching_loss, sorted_prototype, tv_l1, tv_l2


def brute_force_w2(features: torch.Tensor, prototype: torch.Tensor) -> float:
    """Squared W2 per channel via an explicit optimal assignment, averaged over (C, P)."""
    total = 0.0
    for f, q in zip(features.double().numpy(), prototype.double().numpy(), strict=True):
        cost = (f[:, None] - q[None, :]) ** 2
        rows, cols = linear_sum_assignment(cost)
        total += cost[rows, cols].sum()
    return total / features.numel()


def test_zero_when_features_equal_a_single_reference():
    torch.manual_seed(0)
    reference = torch.randn(1, 4, 25)
    prototype = sorted_prototype(reference)
    assert sort_matching_loss(reference, prototype).item() == 0.0


def test_invariant_to_permuting_positions():
    torch.manual_seed(1)
    features = torch.randn(2, 3, 30)
    prototype = torch.randn(3, 30).sort(-1).values
    permuted = features[..., torch.randperm(30)]
    assert torch.allclose(
        sort_matching_loss(features, prototype), sort_matching_loss(permuted, prototype)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_brute_force_wasserstein(seed):
    torch.manual_seed(seed)
    features = torch.randn(1, 5, 12) * 2 + 1
    prototype = sorted_prototype(torch.randn(7, 5, 12))
    loss = sort_matching_loss(features, prototype).item()
    assert loss == pytest.approx(brute_force_w2(features[0], prototype), rel=1e-5)


def test_gradient_matches_finite_differences():
    torch.manual_seed(3)
    features = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    prototype = sorted_prototype(torch.randn(4, 3, 10, dtype=torch.float64))
    weights = torch.rand(1, 3, 1, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda f: sort_matching_loss(f, prototype, weights), (features,), eps=1e-6, atol=1e-6
    )


def test_prototype_is_mean_quantile_function():
    references = torch.tensor([[[3.0, 1.0, 2.0]], [[0.0, 5.0, 4.0]]])
    expected = torch.tensor([[(1 + 0) / 2, (2 + 4) / 2, (3 + 5) / 2]])
    assert torch.equal(sorted_prototype(references), expected)


def test_per_image_losses_are_independent():
    torch.manual_seed(4)
    features = torch.randn(3, 2, 8)
    prototypes = torch.randn(3, 2, 8).sort(-1).values
    together = sort_matching_loss(features, prototypes)
    alone = torch.stack(
        [sort_matching_loss(features[i : i + 1], prototypes[i])[0] for i in range(3)]
    )
    assert torch.allclose(together, alone)


def test_resolution_mismatch_is_reported():
    with pytest.raises(ValueError, match="same resolution"):
        sort_matching_loss(torch.zeros(1, 2, 9), torch.zeros(2, 16))


def test_priors_against_direct_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5, 6))
    diffs = [
        x[..., :, :-1] - x[..., :, 1:],
        x[..., :-1, :] - x[..., 1:, :],
        x[..., 1:, :-1] - x[..., :-1, 1:],
        x[..., :-1, :-1] - x[..., 1:, 1:],
    ]
    for i in range(2):
        expected_l2 = sum(np.sqrt((d[i] ** 2).sum()) for d in diffs)
        expected_l1 = sum(np.abs(d[i]).mean() for d in diffs)
        tensor = torch.from_numpy(x)
        assert tv_l2(tensor)[i].item() == pytest.approx(expected_l2)
        assert tv_l1(tensor)[i].item() == pytest.approx(expected_l1)
        assert l2(tensor)[i].item() == pytest.approx(np.sqrt((x[i] ** 2).sum()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rank_order_sorts_every_row(dtype):
    generator = torch.Generator().manual_seed(3)
    values = torch.randn(2, 5, 301, generator=generator, dtype=dtype)
    values[0, 0, :50] = 0.0  # ties, as ReLU features have
    values[0, 1, :3] = torch.tensor([-0.0, float("inf"), -float("inf")], dtype=dtype)
    values[1, 2] = values[1, 2].round()  # many small ties
    order = rank_order(values)
    assert order.shape == values.shape and order.dtype == torch.int64
    assert torch.equal(order.sort(dim=-1).values, torch.arange(301).expand(2, 5, 301))
    assert torch.equal(values.gather(-1, order), values.sort(dim=-1).values)


def test_rank_order_of_a_non_contiguous_view():
    values = torch.randn(40, 30).t()  # rows are strided
    assert torch.equal(values.gather(-1, rank_order(values)), values.sort(dim=-1).values)


def stable_order(values: torch.Tensor) -> np.ndarray:
    """The contract of ``rank_order``, independently: by value, ``-0.0`` first, then position."""
    rows = values.reshape(-1, values.shape[-1]).numpy()
    positions = np.arange(rows.shape[-1])
    order = [np.lexsort((positions, ~np.signbit(row), row)) for row in rows]
    return np.stack(order).reshape(values.shape)


def tied_rows(length: int, generator: torch.Generator) -> torch.Tensor:
    """Rows of the kinds taps give: ReLU zeros (many, most, few), dead, clamped, signed zeros."""
    noise = torch.randn(9, length, generator=generator)
    rows = [
        noise[0].clamp_min(0),  # ReLU: half exact zeros
        noise[1].clamp_min(1.2),  # most values tie at the minimum
        noise[2].clamp_min(-2.0),  # a few ties at the minimum (under an eighth)
        torch.zeros(length),  # a dead channel
        noise[3].clamp(0, 0.5),  # ReLU6-like: ties at both ends
        noise[4].round(),  # ties everywhere
        noise[5].clamp_min(0) * torch.where(noise[6] > 0, 1.0, -1.0),  # 0.0 and -0.0 mixed
        noise[7],  # no ties
        torch.full((length,), 3.0),  # constant, not zero
    ]
    return torch.stack(rows)


@pytest.mark.parametrize("length", [49, 196, 3136, 12544])
@pytest.mark.parametrize("small_chunks", [False, True])
def test_rank_order_puts_ties_in_position_order(length, small_chunks, monkeypatch):
    # The loss's gradient scatters each rank's target to a position: tied values must receive
    # their targets in one fixed order (position order) whatever path sorted their row.
    if small_chunks:  # every path on short rows: chunks of a few rows, "long" rows from 32
        monkeypatch.setattr(losses, "_CHUNK_VALUES", 3 * length)
        monkeypatch.setattr(losses, "_LONG_ROW", 32)
    generator = torch.Generator().manual_seed(length)
    values = torch.stack([tied_rows(length, generator), tied_rows(length, generator).flip(0)])
    order = rank_order(values)
    assert order.shape == values.shape and order.dtype == torch.int64
    assert np.array_equal(order.numpy(), stable_order(values))


def test_loss_and_gradient_equal_the_direct_form_with_ties():
    # The direct form: each position's target is the prototype at its rank, through autograd.
    torch.manual_seed(5)
    values = torch.randn(2, 4, 300).clamp_min(0)  # ReLU-like: many exact ties at 0
    prototypes = torch.randn(2, 4, 300).clamp_min(0).sort(-1).values
    importance = torch.rand(2, 4, 1)
    fused = values.clone().requires_grad_(True)
    direct = values.clone().requires_grad_(True)
    order = direct.detach().argsort(dim=-1)
    target = torch.empty_like(prototypes).scatter_(-1, order, prototypes)
    expected = ((direct - target) ** 2 * importance).flatten(1).mean(dim=1)
    loss = sort_matching_loss(fused, prototypes, importance)
    (loss * torch.tensor([1.0, 3.0])).sum().backward()
    (expected * torch.tensor([1.0, 3.0])).sum().backward()
    assert torch.allclose(loss, expected, rtol=1e-5)
    # Tied positions may trade targets; the gradient summed over each tie group may not.
    assert torch.allclose(fused.grad.sum(-1), direct.grad.sum(-1), rtol=1e-4, atol=1e-7)
    untied = values > 0
    assert torch.allclose(fused.grad[untied], direct.grad[untied], rtol=1e-4, atol=1e-7)


def test_gradient_gives_tied_positions_their_targets_in_position_order():
    # Long ReLU rows take the path that leaves the zeros out of the sort: each zero must still
    # get the target of its position-order rank, as in the direct form with a stable order.
    generator = torch.Generator().manual_seed(11)
    values = tied_rows(3136, generator)[None]
    prototypes = torch.randn(1, 9, 3136, generator=generator).sort(-1).values
    order = torch.from_numpy(stable_order(values))
    target = torch.empty_like(prototypes).scatter_(-1, order, prototypes)
    direct = values.clone().requires_grad_(True)
    ((direct - target) ** 2).mean().backward()
    fused = values.clone().requires_grad_(True)
    sort_matching_loss(fused, prototypes).sum().backward()
    assert torch.allclose(fused.grad, direct.grad, rtol=1e-5, atol=1e-12)


def test_importance_per_position_is_refused():
    with pytest.raises(ValueError, match="whole channels"):
        sort_matching_loss(torch.zeros(1, 2, 5), torch.zeros(2, 5), torch.ones(1, 2, 5))
