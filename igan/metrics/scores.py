"""Inception Score and Fréchet distance from network outputs: pure float64 functions.

* :func:`inception_score` follows the protocol of Salimans et al. (2016) as their released code
  (``inception_score/model.py``) implements it: softmax over the 1008 bias-free logits, predictions cut
  into ``splits`` consecutive chunks, per chunk ``exp(mean_i KL(p(y|x_i) || p_chunk(y)))``, then the
  mean and the population standard deviation (numpy's default, ddof=0) of the chunk scores.
  torch-fidelity computes the same thing, after permuting the samples with
  ``numpy.random.RandomState(2020)``; pass ``shuffle_seed=2020`` to reproduce that exactly.
* :func:`frechet_distance` is FID's formula (Heusel et al. 2017) for two Gaussians, with the matrix
  square root done through a symmetric eigendecomposition, which is exact in exact arithmetic and
  never produces the complex or NaN values that ``scipy.linalg.sqrtm`` can.
* :func:`feature_statistics` gives the mean and the unbiased covariance (``numpy.cov``) of features.

Only torch is used (numpy only to draw torch-fidelity's permutation); inputs may be tensors or arrays.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["inception_score", "frechet_distance", "feature_statistics"]

ArrayLike = Tensor | np.ndarray


def _as_float64(x: ArrayLike, name: str) -> Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def inception_score(logits: ArrayLike, splits: int = 10,
                    shuffle_seed: int | None = None) -> tuple[float, float]:
    """Inception Score ``(mean, std)`` over ``splits`` chunks of ``logits`` [N, C].

    ``logits`` are the pre-softmax class scores (for the standard IS: the Inception network's
    ``logits_unbiased``). The chunks are consecutive rows, ``[i*N//splits, (i+1)*N//splits)``, as in
    the original code; a class-sorted set (real data) must be shuffled first, or each chunk sees few
    classes and the score drops (≈9 instead of ≈11.2 on CIFAR-10 train). ``shuffle_seed`` permutes the
    rows with ``numpy.random.RandomState(shuffle_seed).permutation(N)``, which is what torch-fidelity
    does with seed 2020. The std is the population std (ddof=0), as numpy's ``np.std`` in the original
    code and in torch-fidelity (torchmetrics differs: it uses ddof=1).
    """
    x = _as_float64(logits, "logits")
    if x.dim() != 2:
        raise ValueError(f"logits must be 2-D [N, classes], got shape {tuple(x.shape)}")
    n = x.shape[0]
    if splits < 1:
        raise ValueError(f"splits must be at least 1, got {splits}")
    if n < splits:
        raise ValueError(f"the Inception Score needs at least one sample per split: {n} samples, "
                         f"{splits} splits")
    if shuffle_seed is not None:
        x = x[torch.from_numpy(np.random.RandomState(shuffle_seed).permutation(n))]

    # log_softmax rather than log(softmax): a probability that underflows to 0 then contributes
    # 0 * finite = 0 to the KL sum instead of 0 * -inf = NaN (improved-gan issue #29).
    log_p = torch.log_softmax(x, dim=1)
    p = log_p.exp()
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        log_p_chunk, p_chunk = log_p[lo:hi], p[lo:hi]
        # log of the chunk's marginal p(y) = mean_i p_i(y), computed in log space for the same reason.
        log_marginal = torch.logsumexp(log_p_chunk, dim=0) - math.log(hi - lo)
        kl = (p_chunk * (log_p_chunk - log_marginal)).sum(dim=1).mean()
        scores.append(kl.exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(correction=0))


def feature_statistics(features: ArrayLike) -> tuple[Tensor, Tensor]:
    """Mean [D] and covariance [D, D] (ddof=1, as ``numpy.cov(features, rowvar=False)``), float64."""
    f = _as_float64(features, "features")
    if f.dim() != 2:
        raise ValueError(f"features must be 2-D [N, D], got shape {tuple(f.shape)}")
    if f.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {f.shape[0]}")
    mu = f.mean(dim=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu, sigma


def _psd_sqrt(s: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix; rounding-negative eigenvalues count as 0."""
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` between Gaussians.

    The trace of the square root is computed as ``sum_i sqrt(max(lambda_i, 0))`` over the eigenvalues
    of ``M = S1^(1/2) S2 S1^(1/2)``. Why this is the same number: ``S1 S2 = A B`` and ``M = B A`` with
    ``A = S1^(1/2)`` and ``B = S1^(1/2) S2``, and ``AB`` and ``BA`` have the same eigenvalues (the same
    characteristic polynomial), even when ``S1`` is singular. The principal square root of ``S1 S2``
    therefore has eigenvalues ``sqrt(lambda_i)`` and trace ``sum_i sqrt(lambda_i)``. Why it is safe:
    ``M`` is symmetric positive semi-definite, so a symmetric eigensolver returns real eigenvalues that
    are non-negative up to rounding; clamping the rounding negatives to 0 is exact in the limit, and no
    complex intermediate appears (scipy's ``sqrtm(S1 @ S2)`` works on a non-symmetric matrix and can
    return complex or non-finite results for singular or ill-conditioned covariances, e.g. with fewer
    samples than dimensions). The result is clamped at 0, since a squared distance below 0 can only be
    rounding error.
    """
    m1, m2 = _as_float64(mu1, "mu1"), _as_float64(mu2, "mu2")
    s1, s2 = _as_float64(sigma1, "sigma1"), _as_float64(sigma2, "sigma2")
    if m1.dim() != 1 or m1.shape != m2.shape:
        raise ValueError(f"means must be 1-D of equal length, got {tuple(m1.shape)} and {tuple(m2.shape)}")
    d = m1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be [{d}, {d}], got {tuple(s1.shape)} and {tuple(s2.shape)}")
    # Covariances from numpy/torch are symmetric only up to rounding; eigh must see exact symmetry.
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    root1 = _psd_sqrt(s1)
    m = root1 @ s2 @ root1
    eigenvalues = torch.linalg.eigvalsh((m + m.T) / 2)
    trace_sqrt = eigenvalues.clamp(min=0).sqrt().sum()
    diff = m1 - m2
    value = diff.dot(diff) + torch.trace(s1) + torch.trace(s2) - 2 * trace_sqrt
    return max(float(value), 0.0)
