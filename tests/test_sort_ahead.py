"""The sort-matching targets started on a worker give what sorting after the pass gives."""

import multiprocessing
import os
import threading

import pytest
import torch
from tests.conftest import tiny_cnn_model, write_images
from torch import nn

import vital
from vital import losses, objectives
from vital.losses import (
    sort_matching_loss,
    sort_targets,
    sort_targets_ahead,
    sort_targets_shared,
)
from vital.objectives import SortMatching
from vital.presets import Tap
from vital.taps import tapped

LAYERS = ("stem", "stage1", "stage3")


@pytest.fixture(autouse=True)
def _a_free_core(monkeypatch):
    """torch on one thread of two cores, whatever this machine has: the worker's case."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(losses, "_cores", lambda: 2)
    yield
    torch.set_num_threads(threads)


def _who_sorts(monkeypatch) -> list[str]:
    """Record the thread of every :func:`rank_order` call (the worker's or the caller's)."""
    threads: list[str] = []
    original = losses.rank_order

    def recorded(values):
        name = threading.current_thread().name
        sharer = name.startswith("vital-share")
        threads.append(
            "worker" if name.startswith("vital-sort") else "sharer" if sharer else "caller"
        )
        return original(values)

    monkeypatch.setattr(losses, "rank_order", recorded)
    return threads


def _terms_and_gradient(module: nn.Module, image: torch.Tensor, ahead: bool, monkeypatch):
    with monkeypatch.context() as patch:
        if not ahead:
            patch.setattr(objectives, "sort_targets_ahead", lambda *args, **kwargs: None)
        return _objective_run(module, image)


def _objective_run(module: nn.Module, image: torch.Tensor):
    with torch.no_grad(), tapped(module, LAYERS, stop_early=True) as probe:
        shapes = {name: features.shape[1:] for name, features in probe(image).items()}
    generator = torch.Generator().manual_seed(0)
    prototypes = {
        1: [
            {name: torch.rand(shapes[name], generator=generator).sort(-1).values for name in LAYERS}
            for _ in range(len(image))
        ]
    }
    taps = [Tap(name, weight) for name, weight in zip(LAYERS, (1.0, 0.5, 2.0), strict=True)]
    with tapped(module, LAYERS, stop_early=True) as tap:
        objective = SortMatching(tap, taps, prototypes)
        x = image.clone().requires_grad_(True)
        terms = objective(x, 1)
        torch.stack(list(terms.values())).sum().backward()
    return {name: value.detach() for name, value in terms.items()}, x.grad


def test_sort_targets_put_the_prototype_value_of_each_rank_at_its_position():
    generator = torch.Generator().manual_seed(3)
    values = torch.randn(2, 4, 300, generator=generator)  # no ties: one rank per position
    prototype = torch.randn(2, 4, 300, generator=generator).sort(-1).values
    rank = values.argsort(-1).argsort(-1)
    assert torch.equal(sort_targets(values, prototype), prototype.gather(-1, rank))
    shared = prototype[0]  # one (C, P) prototype for every image
    assert torch.equal(sort_targets(values, shared), shared.expand(2, 4, 300).gather(-1, rank))


def test_targets_written_a_share_of_channels_at_a_time_are_the_whole_tensor_s():
    generator = torch.Generator().manual_seed(5)
    values = torch.randn(2, 6, 400, generator=generator)
    prototype = torch.randn(2, 6, 400, generator=generator).sort(-1).values
    shared = torch.full_like(values, float("nan"))
    sort_targets(values[:, :4], prototype[:, :4], out=shared[:, :4])
    sort_targets(values[:, 4:], prototype[:, 4:], out=shared[:, 4:])
    assert torch.equal(shared, sort_targets(values, prototype))


def test_the_loss_against_targets_has_the_sorted_form_s_gradient_to_the_bit():
    generator = torch.Generator().manual_seed(4)
    values = torch.randn(3, 5, 700, generator=generator)
    values[:, :, ::3] = 0.0  # ties, as ReLU features have
    prototype = torch.randn(3, 5, 700, generator=generator).sort(-1).values
    importance = torch.rand(3, 5, 1, generator=generator)
    results = []
    for targets in (None, sort_targets(values, prototype)):
        features = values.clone().requires_grad_(True)
        loss = sort_matching_loss(features, prototype, importance, targets=targets)
        (loss * torch.tensor([1.0, 0.5, 2.0])).sum().backward()
        results.append((loss.detach(), features.grad))
    (sorted_loss, sorted_gradient), (loss, gradient) = results
    assert torch.equal(gradient, sorted_gradient)
    torch.testing.assert_close(loss, sorted_loss)  # summed in another order
    with pytest.raises(ValueError, match="targets"):
        sort_matching_loss(values, prototype, targets=values[:, :, :10])


def test_sort_targets_ahead_gives_sort_targets_and_declines_what_numpy_does_not_sort():
    values = torch.randn(3, 5, 700)
    values[:, :, ::3] = 0.0  # ties
    prototype = torch.randn(5, 700).sort(-1).values
    expected = sort_targets(values, prototype)
    assert torch.equal(sort_targets_ahead(values, prototype).result(), expected)
    assert sort_targets_ahead(values.double(), prototype.double()) is None
    assert sort_targets_ahead(torch.empty(2, 3, 0), torch.empty(3, 0)) is None


def test_no_worker_where_torch_uses_every_core(monkeypatch):
    values, prototype = torch.randn(3, 500), torch.randn(500).sort().values
    monkeypatch.setattr(losses, "_cores", lambda: torch.get_num_threads())
    assert sort_targets_ahead(values, prototype) is None
    monkeypatch.setattr(losses, "_cores", lambda: torch.get_num_threads() + 1)
    assert torch.equal(
        sort_targets_ahead(values, prototype).result(), sort_targets(values, prototype)
    )


def test_shared_targets_are_the_whole_tensor_s_and_use_every_core(monkeypatch):
    generator = torch.Generator().manual_seed(6)
    values = torch.randn(2, 6, 5000, generator=generator)
    values[:, :, ::4] = 0.0  # ties
    prototype = torch.randn(6, 5000, generator=generator).sort(-1).values
    threads = _who_sorts(monkeypatch)
    shared = sort_targets_shared(values, prototype)
    assert sorted(threads) == ["caller", "sharer"]
    assert torch.equal(shared, sort_targets(values, prototype))


def test_many_free_cores_still_get_one_share_worker(monkeypatch):
    # a process with one torch thread is often one of many: no thread per core in each
    monkeypatch.setattr(losses, "_cores", lambda: 16)
    values = torch.randn(1, 32, 5000)
    threads = _who_sorts(monkeypatch)
    shared = sort_targets_shared(values, values[0].sort(-1).values)
    assert sorted(threads) == ["caller", "sharer"]
    assert torch.equal(shared, sort_targets(values, values[0].sort(-1).values))


@pytest.mark.parametrize(
    ("cores", "threads", "values"),
    [
        (1, 1, torch.randn(2, 6, 5000)),  # no other core
        (2, 2, torch.randn(2, 6, 5000)),  # torch's threads on every core
        (2, 1, torch.randn(2, 6, 100)),  # too small to be worth a thread
        (2, 1, torch.randn(2, 6, 5000, dtype=torch.float64)),  # numpy does not sort it
    ],
)
def test_no_sharing_where_only_the_caller_would_sort(cores, threads, values, monkeypatch):
    monkeypatch.setattr(losses, "_cores", lambda: cores)
    torch.set_num_threads(threads)  # the fixture gives torch its own count back
    assert sort_targets_shared(values, values[0].sort(-1).values) is None


def test_a_busy_cpu_sorts_every_tap_after_the_forward_pass(monkeypatch):
    monkeypatch.setattr(losses, "_cores", lambda: torch.get_num_threads())
    module = tiny_cnn_model().module.eval()
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    threads = _who_sorts(monkeypatch)
    _objective_run(module, image)
    assert threads == ["caller"] * len(LAYERS)


def _targets_in_a_forked_child(values, queue):
    prototype = values[0].sort().values
    ahead = sort_targets_ahead(values, prototype).result(timeout=60)
    queue.put([ahead.tolist(), sort_targets_shared(values, prototype).tolist()])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this system")
def test_a_forked_child_sorts_ahead_too():
    values = torch.randn(2, 4, 5000)
    sort_targets_ahead(values, values).result()  # the parent's workers exist before the fork
    sort_targets_shared(values, values)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_targets_in_a_forked_child, args=(values, queue))
    child.start()
    targets = queue.get(timeout=60)  # the parent's workers, copied without threads, never answer
    child.join(timeout=60)
    expected = sort_targets(values, values[0].sort().values).tolist()
    assert child.exitcode == 0 and targets == [expected, expected]


def test_targets_started_ahead_give_the_same_loss_and_gradient_as_sorting_after(monkeypatch):
    module = tiny_cnn_model().module.eval()
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    threads = _who_sorts(monkeypatch)
    after, after_gradient = _terms_and_gradient(module, image, ahead=False, monkeypatch=monkeypatch)
    assert threads == ["caller"] * len(LAYERS)

    threads = _who_sorts(monkeypatch)
    ahead, ahead_gradient = _terms_and_gradient(module, image, ahead=True, monkeypatch=monkeypatch)
    assert threads == ["worker"] * len(LAYERS)
    assert after.keys() == ahead.keys()
    for name in after:
        torch.testing.assert_close(after[name], ahead[name])  # summed in another order
    assert torch.equal(after_gradient, ahead_gradient)


class _WrittenAfterTheTap(nn.Module):
    """A tapped convolution whose output a later in-place ReLU rewrites."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.stage1 = nn.Conv2d(8, 8, 3, 1, 1)
        self.stage3 = nn.Conv2d(8, 16, 3, 2, 1)

    def forward(self, x):
        stem = self.stem(x)
        torch.relu_(stem)  # after the tap read it: the early sort saw other values
        return self.stage3(self.stage1(stem)).mean((2, 3))


def test_an_output_rewritten_after_its_tap_is_sorted_again(monkeypatch):
    torch.manual_seed(0)
    module = _WrittenAfterTheTap().eval()
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    after, after_gradient = _terms_and_gradient(module, image, ahead=False, monkeypatch=monkeypatch)

    threads = _who_sorts(monkeypatch)
    ahead, ahead_gradient = _terms_and_gradient(module, image, ahead=True, monkeypatch=monkeypatch)
    # every tap was started ahead; the rewritten stem was sorted once more by the loss
    assert sorted(threads) == ["caller"] + ["worker"] * len(LAYERS), threads
    for name in after:
        torch.testing.assert_close(after[name], ahead[name])  # summed in another order
    assert torch.equal(after_gradient, ahead_gradient)


@pytest.mark.parametrize(
    ("setting", "overrides"),
    [
        ("1", {}),
        ("fast", {}),
        ("1", {"channels_last": True}),  # taps read channels-last outputs
        ("1", {"precision": "bfloat16"}),  # the sorted features are a float32 copy
        ("1", {"views": 2}),  # two forward passes a step, each with its own orders
    ],
)
def test_a_class_run_is_bit_identical_with_the_sorts_started_ahead(
    setting, overrides, monkeypatch, tmp_path
):
    settings = {"steps": 6, **overrides}
    run = {"setting": setting, "settings": settings, "seeds": [4, 5], "progress": False}
    threads = _with_and_without(monkeypatch, tmp_path, run, "sort_targets_ahead")
    assert "worker" in threads and "caller" not in threads


def _with_and_without(monkeypatch, tmp_path, run: dict, switched_off: str) -> list[str]:
    """Two class runs, the second without ``objectives.<switched_off>``: the same pixels.

    Returns who sorted in the first run.
    """
    for index in (1, 3):
        write_images(tmp_path / "tree" / str(index), 2, seed=index)
    model = tiny_cnn_model()
    threads = _who_sorts(monkeypatch)
    with_it = vital.visualize(model, [1, 3], tmp_path / "tree", **run)
    seen = list(threads)
    monkeypatch.setattr(objectives, switched_off, lambda *args, **kwargs: None)
    without = vital.visualize(model, [1, 3], tmp_path / "tree", **run)
    for first, second in zip(with_it, without, strict=True):
        assert torch.equal(first.pixels, second.pixels)
    return seen


def test_a_class_run_sorting_after_the_pass_is_bit_identical_with_its_sorts_shared(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(losses, "_SHARE_VALUES", 64)  # the tiny CNN's taps shared too
    # nothing started during the pass: the loss sorts after it
    monkeypatch.setattr(objectives, "sort_targets_ahead", lambda *args, **kwargs: None)
    run = {"settings": {"steps": 6}, "seeds": [4, 5], "progress": False}
    threads = _with_and_without(monkeypatch, tmp_path, run, "sort_targets_shared")
    assert "sharer" in threads and "worker" not in threads


@pytest.mark.parametrize(
    ("setting", "options"), [("1", {}), ("fast", {}), ("1", {"relevance_floor": 0.5})]
)
def test_a_channel_run_is_bit_identical_with_its_sorts_shared_between_cores(
    setting, options, monkeypatch, image_folder
):
    monkeypatch.setattr(losses, "_SHARE_VALUES", 64)  # the tiny CNN's taps shared too
    model = tiny_cnn_model()
    targets = [vital.Channel("stage3", 2), vital.Channel("stage2", 1)]
    run = {
        "setting": setting,
        "settings": {"steps": 6},
        "seeds": [4, 5],
        "reference_count": 2,
        "progress": False,
        **options,
    }
    threads = _who_sorts(monkeypatch)
    ahead = vital.visualize(model, targets, image_folder, **run)
    assert "sharer" in threads and "caller" in threads
    monkeypatch.setattr(objectives, "sort_targets_shared", lambda *args, **kwargs: None)
    after = vital.visualize(model, targets, image_folder, **run)
    for first, second in zip(ahead, after, strict=True):
        assert torch.equal(first.pixels, second.pixels)
        assert torch.equal(first.alpha, second.alpha)
