"""Tests of igan.metrics.scores: Inception Score and Fréchet distance against hand-computed values,
the original improved-gan formula and scipy's matrix square root (a test-time reference only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from igan.metrics.scores import feature_statistics, frechet_distance, inception_score

# --------------------------------------------------------------------------------------------------
# Inception Score


def _one_hot_logits(labels: list[int], num_classes: int, confidence: float = 60.0) -> torch.Tensor:
    """Logits whose softmax is one-hot up to exp(-60) ~ 1e-26."""
    logits = torch.zeros(len(labels), num_classes, dtype=torch.float64)
    logits[torch.arange(len(labels)), torch.tensor(labels)] = confidence
    return logits


def test_uniform_predictions_score_one() -> None:
    mean, std = inception_score(torch.zeros(100, 1008), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_confident_balanced_predictions_score_number_of_classes() -> None:
    k = 5
    labels = [i % k for i in range(100)]  # each chunk of 10 holds every class exactly twice
    mean, std = inception_score(_one_hot_logits(labels, 1008), splits=10)
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_splits_are_consecutive_chunks_unless_shuffled() -> None:
    logits = _one_hot_logits([0] * 500 + [1] * 500, 10)
    # Two consecutive chunks: each holds one class only, so each scores exp(0) = 1.
    assert inception_score(logits, splits=2) == pytest.approx((1.0, 0.0), abs=1e-9)
    # Shuffled, each chunk holds about 250 of each class: exp(H(marginal)) ~ exp(log 2) = 2.
    mean, std = inception_score(logits, splits=2, shuffle_seed=2020)
    assert mean == pytest.approx(2.0, abs=0.01) and std < 0.01


def test_shuffle_is_torch_fidelitys_permutation() -> None:
    logits = torch.randn(50, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    permuted = logits[np.random.RandomState(2020).permutation(50)]
    assert inception_score(logits, splits=5, shuffle_seed=2020) == inception_score(permuted, splits=5)


def _original_improved_gan_is(preds: np.ndarray, splits: int) -> tuple[float, float]:
    """inception_score/model.py of openai/improved-gan, restated: consecutive splits, np.std."""
    scores = []
    for i in range(splits):
        part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        kl = np.mean(np.sum(kl, 1))
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


@pytest.mark.parametrize("n, splits", [(1000, 10), (997, 10), (64, 3)])
def test_matches_original_formula(n: int, splits: int) -> None:
    rng = np.random.RandomState(n)
    logits = rng.randn(n, 1008) * 4
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    preds = shifted / shifted.sum(axis=1, keepdims=True)
    mean, std = inception_score(torch.from_numpy(logits), splits=splits)
    ref_mean, ref_std = _original_improved_gan_is(preds, splits)
    assert mean == pytest.approx(ref_mean, rel=1e-12)
    assert std == pytest.approx(ref_std, rel=1e-9, abs=1e-12)  # a std is a difference of close numbers


def test_inception_score_input_errors() -> None:
    with pytest.raises(ValueError, match="at least one sample per split"):
        inception_score(torch.zeros(9, 10), splits=10)
    with pytest.raises(ValueError, match="2-D"):
        inception_score(torch.zeros(10), splits=1)
    with pytest.raises(ValueError, match="NaN"):
        inception_score(torch.full((10, 3), float("nan")), splits=1)


def test_extreme_logits_stay_finite() -> None:
    # Probabilities that underflow to exactly 0 must not turn into 0 * log 0 = NaN.
    logits = _one_hot_logits([0, 1, 2, 3] * 5, 10, confidence=2000.0)
    mean, std = inception_score(logits, splits=5)
    assert mean == pytest.approx(4.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Fréchet distance


def _random_spd(d: int, seed: int) -> np.ndarray:
    a = np.random.RandomState(seed).randn(d, 2 * d)
    return a @ a.T / (2 * d)


def test_identical_statistics_give_zero() -> None:
    mu = np.random.RandomState(0).randn(64)
    sigma = _random_spd(64, 1)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


def test_one_dimensional_gaussians() -> None:
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
    m1, s1, m2, s2 = 1.5, 2.0, -0.5, 0.5
    got = frechet_distance([m1], [[s1**2]], [m2], [[s2**2]])
    assert got == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, rel=1e-12)  # 4 + 2.25


def test_diagonal_covariances() -> None:
    a = np.array([1.0, 4.0, 9.0, 0.25])
    b = np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    # sum (mu1 - mu2)^2 = 1 + 0 + 4 + 0 = 5; sum (sqrt a - sqrt b)^2 = 1 + 1 + 0 + 0.25 = 2.25
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(7.25, rel=1e-12)


def test_rank_deficient_covariance_is_finite_and_non_negative() -> None:
    rng = np.random.RandomState(2)
    # 20 samples in 64 dimensions: the sample covariance has rank 19, where scipy's sqrtm struggles.
    _, s1 = feature_statistics(rng.randn(20, 64))
    _, s2 = feature_statistics(rng.randn(20, 64))
    value = frechet_distance(np.zeros(64), s1, np.zeros(64), s2)
    assert math.isfinite(value) and value >= 0
    assert frechet_distance(np.zeros(64), s1, np.zeros(64), s1) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(np.zeros(3), np.zeros((3, 3)), np.ones(3), np.zeros((3, 3))) == pytest.approx(3.0)


@pytest.mark.parametrize("d, seed", [(8, 0), (32, 1), (128, 2)])
def test_matches_scipy_sqrtm(d: int, seed: int) -> None:
    rng = np.random.RandomState(seed)
    mu1, mu2 = rng.randn(d), rng.randn(d)
    s1, s2 = _random_spd(d, seed + 10), _random_spd(d, seed + 20)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    reference = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-9)
    # Torch tensors of either precision are accepted too.
    as_tensors = frechet_distance(torch.from_numpy(mu1), torch.from_numpy(s1), torch.from_numpy(mu2), s2)
    assert as_tensors == pytest.approx(reference, rel=1e-9)


def test_frechet_distance_shape_errors() -> None:
    with pytest.raises(ValueError, match="means"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))


def test_feature_statistics_match_numpy() -> None:
    x = np.random.RandomState(3).randn(50, 6) * 3 + 1
    mu, sigma = feature_statistics(torch.from_numpy(x).float())
    assert mu.dtype == sigma.dtype == torch.float64
    xf = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mu.numpy(), xf.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(xf, rowvar=False), rtol=1e-10)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.zeros((1, 6)))
