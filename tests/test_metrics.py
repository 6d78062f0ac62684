"""Metrics against slow, independent computations, and their input checks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.linalg
import torch

from vital import metrics
from vital.errors import VitalError


def _pixels(count: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """Textbook FID from means and covariances with scipy's general matrix square root."""
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_fid_matches_the_textbook_formula_on_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (400, 6))
    mixing = rng.normal(size=(6, 6))
    b = rng.normal(0.5, 1.0, (300, 6)) @ mixing
    assert metrics.frechet_distance(a, b) == pytest.approx(_reference_fid(a, b), rel=1e-6)
    assert metrics.frechet_distance(b, a) == pytest.approx(_reference_fid(a, b), rel=1e-6)
    # and close to the closed form for the populations: diagonal unit covariances shifted by 2
    c = rng.normal(2.0, 1.0, (20000, 3))
    d = rng.normal(0.0, 1.0, (20000, 3))
    assert metrics.frechet_distance(c, d) == pytest.approx(3 * 2.0**2, rel=0.02)


def test_fid_is_zero_for_identical_sets():
    features = np.random.default_rng(1).normal(size=(50, 8))
    assert metrics.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    # also with fewer samples than dimensions (rank-deficient covariances)
    few = np.random.default_rng(2).normal(size=(5, 40))
    assert metrics.frechet_distance(few, few) == pytest.approx(0.0, abs=1e-6)


def test_fid_rejects_unusable_feature_sets():
    good = np.zeros((5, 4))
    with pytest.raises(VitalError, match="at least 2"):
        metrics.frechet_distance(good[:1], good)
    with pytest.raises(VitalError, match="differ in dimension"):
        metrics.frechet_distance(good, np.zeros((5, 3)))
    with pytest.raises(VitalError, match=r"\(N, D\)"):
        metrics.frechet_distance(np.zeros(5), good)


def test_fid_on_images_reports_its_counts(tiny_cnn):
    result = metrics.fid(_pixels(4, 1), _pixels(6, 2), tiny_cnn)
    assert (result.images, result.real_images, result.dimensions) == (4, 6, 16)
    assert "4 visualisations vs 6 real images" in result.describe()
    assert metrics.fid(_pixels(4, 1), _pixels(4, 1), tiny_cnn).value == pytest.approx(0, abs=1e-6)


def _manual_penultimate(model, pixels):
    module = model.module
    x = model.preprocessing.normalize(pixels)
    with torch.no_grad():
        x = module.stage3(module.stage2(module.stage1(module.stem(x))))
        return module.pool(x).flatten(1)


def test_penultimate_features_are_the_classifier_input(tiny_cnn):
    pixels = _pixels(5)
    expected = _manual_penultimate(tiny_cnn, pixels)
    assert torch.allclose(metrics.features(tiny_cnn, pixels), expected, atol=1e-6)
    # a named layer: its output averaged over positions
    with torch.no_grad():
        stage = tiny_cnn.module.stage1(
            tiny_cnn.module.stem(tiny_cnn.preprocessing.normalize(pixels))
        )
    named = metrics.features(tiny_cnn, pixels, layer="stage1")
    assert torch.allclose(named, stage.mean(dim=(2, 3)), atol=1e-6)
    # images of another size are resized to the model's input
    assert metrics.features(tiny_cnn, _pixels(2, size=48)).shape == (2, 16)


def test_target_scores_match_softmax_and_rank(tiny_cnn):
    pixels = _pixels(6, 3)
    targets = [0, 3, 9, 1, 1, 5]
    with torch.no_grad():
        probabilities = tiny_cnn.module(tiny_cnn.preprocessing.normalize(pixels)).softmax(-1)
    scores = metrics.target_scores(tiny_cnn, pixels, targets)
    for row, probability, target in zip(scores, probabilities, targets, strict=True):
        order = sorted(range(10), key=lambda c: -float(probability[c]))
        assert row["probability"] == pytest.approx(float(probability[target]), rel=1e-5)
        assert row["rank"] == order.index(target) + 1
        assert [entry[0] for entry in row["top5"]] == order[:5]
    ranks = [row["rank"] for row in scores]
    assert metrics.top_k_accuracy(tiny_cnn, pixels, targets, 1) == np.mean([r == 1 for r in ranks])
    assert metrics.top_k_accuracy(tiny_cnn, pixels, targets, 5) == np.mean([r <= 5 for r in ranks])


def test_realism_is_the_cosine_to_class_means(tiny_cnn):
    images, labels = _pixels(3, 4), [0, 1, 0]
    real, real_labels = _pixels(6, 5), [0, 0, 1, 1, 2, 2]
    rows = metrics.realism(tiny_cnn, images, labels, real, real_labels)
    generated = _manual_penultimate(tiny_cnn, images).double().numpy()
    reference = _manual_penultimate(tiny_cnn, real).double().numpy()
    means = {
        c: reference[[i for i, r in enumerate(real_labels) if r == c]].mean(0) for c in (0, 1, 2)
    }

    def cosine(u, v):
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    for row, feature, label in zip(rows, generated, labels, strict=True):
        own = cosine(feature, means[label])
        others = np.mean([cosine(feature, means[c]) for c in (0, 1, 2) if c != label])
        assert row["own"] == pytest.approx(own, abs=1e-5)
        assert row["others"] == pytest.approx(others, abs=1e-5)
        assert row["margin"] == pytest.approx(own - others, abs=1e-5)


def test_relative_activation_divides_by_the_references_mean(tiny_cnn):
    images, references = _pixels(2, 6), _pixels(4, 7)
    with torch.no_grad():

        def stage2(p):
            module = tiny_cnn.module
            x = tiny_cnn.preprocessing.normalize(p)
            return module.stage2(module.stage1(module.stem(x)))[:, 3].mean(dim=(1, 2))

        expected = stage2(images) / stage2(references).mean()
    ratios = metrics.relative_activation(tiny_cnn, "stage2", 3, images, references)
    assert np.allclose(ratios, expected.numpy(), rtol=1e-5)
    with pytest.raises(VitalError, match="channels"):
        metrics.relative_activation(tiny_cnn, "stage2", 99, images, references)


def test_metrics_reject_empty_and_mismatched_inputs(tiny_cnn):
    empty = torch.zeros(0, 3, 32, 32)
    with pytest.raises(VitalError, match="empty"):
        metrics.target_scores(tiny_cnn, empty, [])
    with pytest.raises(VitalError, match="one label per image"):
        metrics.target_scores(tiny_cnn, _pixels(3), [1, 2])
    with pytest.raises(VitalError, match=r"shape \(N, 3, H, W\)"):
        metrics.features(tiny_cnn, torch.zeros(2, 32, 32))
    with pytest.raises(VitalError, match="empty"):
        metrics.fid(empty, _pixels(3), tiny_cnn)
    with pytest.raises(VitalError, match="empty"):
        metrics.fid(_pixels(3), empty, tiny_cnn)
    with pytest.raises(VitalError, match="one label per image"):
        metrics.realism(tiny_cnn, _pixels(2), [0], _pixels(2), [0, 0])
    with pytest.raises(VitalError, match="no real images of class"):
        metrics.realism(tiny_cnn, _pixels(2), [0, 4], _pixels(2), [0, 0])
    with pytest.raises(VitalError, match="not an output"):
        metrics.target_scores(tiny_cnn, _pixels(1), [10])
    with pytest.raises(VitalError, match="empty"):
        metrics.relative_activation(tiny_cnn, "stage2", 0, _pixels(1), empty)


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is not None, reason="open_clip present")
def test_clip_is_skipped_with_a_clear_message():
    with pytest.raises(metrics.MetricUnavailableError, match="open_clip, which is not installed"):
        metrics.clip_zero_shot(_pixels(2), [0, 1], ["cat", "dog"])
