"""GAN losses of "Improved Techniques for Training GANs" (Salimans et al. 2016), §3 and §5.

Pure functions of logits and features: no state, no hooks. Every loss returns a scalar tensor, the
mean over the batch, and is written with ``softplus``/``logsumexp`` so it stays finite for large
logits (paper-notes §1.1, §6.3: the reference code is stable and readers often misread it).

The discriminator emits K logits; the fake class's logit is fixed at 0 (§5), so
``D(x) = Z/(Z+1) = sigmoid(logsumexp(l))``. ``gan_logit`` turns K logits into that single GAN
logit, and with K=1 it is the plain GAN's logit, so one code path serves both models.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "gan_logit",
    "bce_with_target",
    "discriminator_loss",
    "generator_loss_nonsaturating",
    "generator_loss_minimax",
    "feature_matching_loss",
    "supervised_loss",
    "unsupervised_discriminator_loss",
    "historical_averaging_penalty",
    "pull_away_term",
    "conditional_entropy",
    "low_density_penalty",
]

FEATURE_MATCHING_NORMS = ("l1", "l2")


def gan_logit(logits: Tensor) -> Tensor:
    """The logit of D(x) for K class logits with the fake logit fixed at 0 (§5): lse over classes."""
    return torch.logsumexp(logits, dim=1)  # [N, K] -> [N]


def bce_with_target(logit: Tensor, target: float) -> Tensor:
    """Binary cross-entropy of sigmoid(logit) against a (possibly soft) target, batch mean.

    ``-log sigmoid(l) = softplus(-l)`` and ``-log(1 - sigmoid(l)) = softplus(l)``; soft targets are
    what one-sided label smoothing needs (§3.4).
    """
    loss = target * F.softplus(-logit) + (1.0 - target) * F.softplus(logit)  # [N]
    return loss.mean()


def discriminator_loss(real_logit: Tensor, fake_logit: Tensor, real_target: float = 1.0) -> Tensor:
    """D's GAN loss. Only the real target is smoothed; fake targets stay 0 (one-sided, §3.4)."""
    return bce_with_target(real_logit, real_target) + bce_with_target(fake_logit, 0.0)


def generator_loss_nonsaturating(fake_logit: Tensor, target: float = 1.0) -> Tensor:
    """``-log D(G(z))`` for target 1; a target below 1 matches a smoothed D (paper-notes §1.6)."""
    return bce_with_target(fake_logit, target)


def generator_loss_minimax(fake_logit: Tensor) -> Tensor:
    """``mean log(1 - D(G(z))) = -mean softplus(l)``: the saturating loss of the reference MBD scripts.

    paper-notes §1.2: the released minibatch-discrimination scripts use this, not the -log D trick.
    """
    return -F.softplus(fake_logit).mean()


def feature_matching_loss(real_features: Tensor, fake_features: Tensor, norm: str = "l2") -> Tensor:
    """Distance between the batch means of D's features on real and generated data (§3.1).

    ``"l2"`` is the mean squared difference over features (reference MNIST); ``"l1"`` the mean
    absolute difference (reference CIFAR-10/SVHN, paper-notes §1.2). The real side is detached: the
    loss trains only the generator.
    """
    if norm not in FEATURE_MATCHING_NORMS:
        raise ValueError(f"feature matching norm must be one of {FEATURE_MATCHING_NORMS}, got {norm!r}")
    real_mean = real_features.detach().flatten(1).mean(dim=0)  # [F]
    fake_mean = fake_features.flatten(1).mean(dim=0)  # [F]
    diff = real_mean - fake_mean  # [F]
    return diff.abs().mean() if norm == "l1" else diff.square().mean()


def supervised_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Softmax cross-entropy over the K real classes: ``-mean l[y] + mean lse(l)`` (§5)."""
    return F.cross_entropy(logits, labels)


def unsupervised_discriminator_loss(logits_unl: Tensor, logits_fake: Tensor) -> Tensor:
    """The reference code's ``loss_unl`` for the K+1 discriminator (§5, paper-notes §1.1).

    The reference writes ``-0.5 mean(lse_unl) + 0.5 mean(softplus(lse_unl)) + 0.5 mean(softplus(lse_fake))``.
    Since ``-x + softplus(x) = softplus(-x)``, the first two terms are ``0.5 mean(softplus(-lse_unl))``
    (= 0.5 E[-log D(x)]), which avoids cancelling two large numbers; the value is the same.
    """
    lse_unl = gan_logit(logits_unl)  # [N]
    lse_fake = gan_logit(logits_fake)  # [M]
    return 0.5 * F.softplus(-lse_unl).mean() + 0.5 * F.softplus(lse_fake).mean()


def historical_averaging_penalty(params: Sequence[Tensor], averages: Sequence[Tensor]) -> Tensor:
    """``sum_i ||theta_i - avg_i||^2`` over all tensors (§3.3); the averages are constants."""
    if len(params) != len(averages) or not params:
        raise ValueError(
            f"historical averaging needs one average per parameter, got {len(params)} parameters "
            f"and {len(averages)} averages"
        )
    return _HistoricalPenalty.apply(len(params), *params, *averages)


class _HistoricalPenalty(torch.autograd.Function):
    """sum_i ||theta_i - avg_i||^2 as one autograd node with the closed-form gradient 2 (theta - avg).

    The plain expression records four autograd nodes per parameter tensor; on the paper's MLPs that
    bookkeeping, not the arithmetic, made historical averaging cost 16 % of a training step."""

    @staticmethod
    def forward(ctx, n: int, *tensors: Tensor) -> Tensor:  # tensors = params..., averages...
        # foreach ops: one call over all tensors instead of a Python loop of small ops.
        diffs = torch._foreach_sub([p.detach() for p in tensors[:n]], [a.detach() for a in tensors[n:]])
        ctx.save_for_backward(*diffs)
        return torch.stack([torch.dot(d.reshape(-1), d.reshape(-1)) for d in diffs]).sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        diffs = ctx.saved_tensors
        # not in place: a caller may run this backward twice (retain_graph=True)
        return (None, *torch._foreach_mul(diffs, 2 * grad), *[None] * len(diffs))


# ---- beyond the paper: the terms of "Good Semi-supervised Learning that Requires a Bad GAN" ------------
# (Dai, Yang, Yang, Cohen, Salakhutdinov, NeurIPS 2017; reference code kimiyoung/ssl_bad_gan)


def pull_away_term(features: Tensor) -> Tensor:
    """``1/(N(N-1)) sum_{i != j} cos(f_i, f_j)^2``: the pull-away term (Zhao et al. 2017, EBGAN), which
    Bad GAN adds to G's loss as a cheap stand-in for the generator's entropy: it is small when the
    generated batch's D features point in different directions. An all-zero feature row (possible after
    a ReLU) counts as orthogonal to everything instead of making the term NaN."""
    f = features.flatten(1)
    n = f.shape[0]
    if n < 2:
        raise ValueError("the pull-away term needs a batch of at least 2")
    unit = F.normalize(f, dim=1)  # [N, F]; eps keeps zero rows at zero
    cos = unit @ unit.t()  # [N, N]
    off_diagonal = cos.square().sum() - cos.diagonal().square().sum()
    return off_diagonal / (n * (n - 1))


def conditional_entropy(logits: Tensor) -> Tensor:
    """Mean entropy of D's K-class softmax, ``-mean_i sum_k p_ik log p_ik`` (Bad GAN's conditional-entropy
    term on unlabelled data: minimising it makes D confident away from its decision boundaries)."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def low_density_penalty(log_density: Tensor, threshold: Tensor | float) -> Tensor:
    """Bad GAN's low-density term for the "complement" generator: the mean excess of log p(G(z)) over a
    threshold, over the samples above it (0 when none is): ``sum_i max(0, log p_i - eps) / #{i: log p_i > eps}``.
    It pushes generated samples out of the data's high-density regions, where a bad GAN belongs."""
    excess = F.relu(log_density - threshold)  # [N]
    count = (excess > 0).sum().clamp_min(1)
    return excess.sum() / count
