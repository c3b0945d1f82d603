"""A small density model of images that igan fits itself: a Gaussian mixture in the top principal
components, plus an isotropic Gaussian for the rest (a mixture of probabilistic PCA with shared axes).

Bad GAN's low-density term (``igan.techniques.low_density``) needs log p(x) of the data distribution,
differentiable in x. The paper uses a PixelCNN++ trained beforehand (hours on a GPU, and its weights
cannot be downloaded here). This model is the cheap variant: fitted in seconds on a CPU at the start of
a run from the unlabelled training images, deterministic (fixed seed, so every seed of a ``--seeds K``
experiment gets the same model: it describes the data, not the run), and small enough to live in the
checkpoint. It is a much weaker density model than a PixelCNN (it sees a linear subspace and blobs in
it, not pixel-level structure), which docs/techniques.md states beside the results.

    y = U^T (x - mu)                    coordinates in the top-P principal axes U [D, P]
    r = (x - mu) - U y                  the residual, in the other D - P dimensions
    log p(x) = log sum_k w_k N(y; m_k, diag(s_k^2)) + log N(r; 0, sigma^2 I_{D-P})

The mixture is fitted by EM (k-means++-style seeding on a fixed generator, variances floored), sigma^2 is
the mean residual variance of the fitting images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["DensityModel", "fit_density"]

_VAR_FLOOR = 1e-4  # keeps a component from collapsing onto a few identical images


class DensityModel:
    """``log_prob(x) -> [N]`` for images x [N, ...]; its tensors (``state()``) go into checkpoints."""

    KEYS = ("mean", "axes", "log_weights", "centres", "variances", "residual_var")

    def __init__(self, mean: Tensor, axes: Tensor, log_weights: Tensor, centres: Tensor, variances: Tensor,
                 residual_var: Tensor) -> None:
        self.mean = mean  # [D]
        self.axes = axes  # [D, P], orthonormal columns
        self.log_weights = log_weights  # [K]
        self.centres = centres  # [K, P]
        self.variances = variances  # [K, P]
        self.residual_var = residual_var  # []

    def state(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self.KEYS}

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor]) -> "DensityModel":
        return cls(*(tensors[k] for k in cls.KEYS))

    def to(self, device: torch.device | str) -> "DensityModel":
        return DensityModel(*(getattr(self, k).to(device) for k in self.KEYS))

    def log_prob(self, x: Tensor) -> Tensor:
        centred = x.flatten(1) - self.mean  # [N, D]
        y = centred @ self.axes  # [N, P]
        residual = centred - y @ self.axes.t()  # [N, D]
        return _mixture_log_prob(y, self.log_weights, self.centres, self.variances) + _isotropic_log_prob(
            residual, self.residual_var, self.mean.shape[0] - self.axes.shape[1])


def _mixture_log_prob(y: Tensor, log_weights: Tensor, centres: Tensor, variances: Tensor) -> Tensor:
    """log sum_k w_k N(y; m_k, diag(v_k)) for y [N, P] -> [N]."""
    return torch.logsumexp(log_weights + _component_log_probs(y, centres, variances), dim=1)


def _component_log_probs(y: Tensor, centres: Tensor, variances: Tensor) -> Tensor:
    """log N(y_i; m_k, diag(v_k)) [N, K]."""
    p = y.shape[1]
    diff = y.unsqueeze(1) - centres  # [N, K, P]
    maha = (diff.square() / variances).sum(-1)  # [N, K]
    return -0.5 * (maha + variances.log().sum(-1) + p * math.log(2 * math.pi))


def _isotropic_log_prob(r: Tensor, var: Tensor, dims: int) -> Tensor:
    """log N(r; 0, var I) over ``dims`` dimensions (r lies in that subspace) -> [N]."""
    if dims <= 0:
        return torch.zeros(r.shape[0], dtype=r.dtype, device=r.device)
    return -0.5 * (r.square().sum(1) / var + dims * (var.log() + math.log(2 * math.pi)))


@torch.no_grad()
def fit_density(x: Tensor, dims: int = 50, components: int = 50, iters: int = 50, seed: int = 0,
                max_images: int = 20000) -> DensityModel:
    """Fit the model to images x [N, ...] (float, the generator's output space). Deterministic for a
    given x and ``seed``; uses at most ``max_images`` images (an evenly spaced subset)."""
    flat = x.flatten(1).double()
    if flat.shape[0] > max_images:
        flat = flat[torch.linspace(0, flat.shape[0] - 1, max_images).long()]
    n, d = flat.shape
    dims = max(1, min(dims, d - 1, n - 1))
    components = max(1, min(components, n))
    mean = flat.mean(0)
    centred = flat - mean
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:dims].t().contiguous()  # [D, P]
    y = centred @ axes
    residual = centred - y @ axes.t()
    residual_var = (residual.square().sum(1).mean() / max(d - dims, 1)).clamp_min(_VAR_FLOOR)

    gen = torch.Generator().manual_seed(seed)
    centres = _seed_centres(y, components, gen)
    variances = y.var(0, unbiased=False).clamp_min(_VAR_FLOOR).expand(components, dims).clone()
    log_weights = torch.full((components,), -math.log(components), dtype=y.dtype)
    for _ in range(iters):  # EM for a diagonal Gaussian mixture
        resp = torch.softmax(log_weights + _component_log_probs(y, centres, variances), dim=1)  # [N, K]
        mass = resp.sum(0).clamp_min(1e-8)  # [K]
        centres = (resp.t() @ y) / mass[:, None]
        variances = ((resp.t() @ y.square()) / mass[:, None] - centres.square()).clamp_min(_VAR_FLOOR)
        log_weights = (mass / n).log()
    return DensityModel(*(t.float().contiguous() for t in (mean, axes, log_weights, centres, variances,
                                                             residual_var)))


def _seed_centres(y: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to its squared distance."""
    first = int(torch.randint(y.shape[0], (1,), generator=gen))
    chosen = [first]
    dist = (y - y[first]).square().sum(1)
    for _ in range(1, k):
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1 / dist.numel())
        nxt = int(torch.multinomial(probs, 1, generator=gen))
        chosen.append(nxt)
        dist = torch.minimum(dist, (y - y[nxt]).square().sum(1))
    return y[chosen].clone()
