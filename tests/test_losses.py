"""Tests for igan.losses: each loss against arithmetic done by hand from its formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from igan.losses import (
    bce_with_target,
    discriminator_loss,
    feature_matching_loss,
    gan_logit,
    generator_loss_minimax,
    generator_loss_nonsaturating,
    historical_averaging_penalty,
    supervised_loss,
    unsupervised_discriminator_loss,
)


def softplus(x: float) -> float:
    return math.log(1.0 + math.exp(x))


def close(value: torch.Tensor, expected: float, tol: float = 1e-6) -> bool:
    return value.dim() == 0 and abs(value.item() - expected) < tol


def test_gan_logit_k1_is_the_logit() -> None:
    logits = torch.tensor([[0.0], [2.0], [-3.5]])
    assert torch.equal(gan_logit(logits), torch.tensor([0.0, 2.0, -3.5]))


def test_gan_logit_k3_is_log_sum_exp() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [-1.0, 0.5, 0.0]])
    expected = [
        math.log(math.exp(0.0) + math.exp(1.0) + math.exp(2.0)),
        math.log(math.exp(-1.0) + math.exp(0.5) + math.exp(0.0)),
    ]
    assert torch.allclose(gan_logit(logits), torch.tensor(expected))


def test_bce_with_target_by_hand() -> None:
    logit = torch.tensor([0.0, 2.0])
    expected = (
        0.9 * softplus(-0.0) + 0.1 * softplus(0.0) + 0.9 * softplus(-2.0) + 0.1 * softplus(2.0)
    ) / 2
    assert close(bce_with_target(logit, 0.9), expected)


def test_discriminator_loss_by_hand() -> None:
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([-1.0, 1.0])
    real_part = (softplus(-0.0) + softplus(-2.0)) / 2  # target 1: -log sigmoid(l)
    fake_part = (softplus(-1.0) + softplus(1.0)) / 2  # target 0: -log(1 - sigmoid(l))
    assert close(discriminator_loss(real, fake), real_part + fake_part)


def test_discriminator_loss_smooths_only_real() -> None:
    real, fake = torch.tensor([2.0]), torch.tensor([1.0])
    real_part = 0.9 * softplus(-2.0) + 0.1 * softplus(2.0)
    assert close(discriminator_loss(real, fake, real_target=0.9), real_part + softplus(1.0))


def test_generator_losses_by_hand() -> None:
    fake = torch.tensor([[0.0], [2.0]])
    assert close(generator_loss_nonsaturating(fake), (softplus(-0.0) + softplus(-2.0)) / 2)
    smoothed = (0.375 * softplus(0.0) + 0.625 * softplus(0.0)
                + 0.375 * softplus(-2.0) + 0.625 * softplus(2.0)) / 2
    assert close(generator_loss_nonsaturating(fake, target=0.375), smoothed)
    # mean log(1 - D) with D = sigmoid(l): log(1 - sigmoid(l)) = -log(1 + e^l)
    minimax = (math.log(1 - 1 / (1 + math.exp(-0.0))) + math.log(1 - 1 / (1 + math.exp(-2.0)))) / 2
    assert close(generator_loss_minimax(fake), minimax)


def test_feature_matching_values_by_hand() -> None:
    real = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # batch mean [2, 4]
    fake = torch.tensor([[0.0, 1.0], [1.0, 3.0]])  # batch mean [0.5, 2]
    assert close(feature_matching_loss(real, fake, "l2"), (1.5**2 + 2.0**2) / 2)
    assert close(feature_matching_loss(real, fake, "l1"), (1.5 + 2.0) / 2)


def test_feature_matching_flattens_conv_features() -> None:
    real = torch.ones(4, 2, 3, 3)
    fake = torch.zeros(4, 2, 3, 3)
    assert close(feature_matching_loss(real, fake, "l1"), 1.0)


def test_feature_matching_gradient_only_to_fake() -> None:
    real = torch.randn(5, 3, requires_grad=True)
    fake = torch.randn(5, 3, requires_grad=True)
    feature_matching_loss(real, fake, "l2").backward()
    assert real.grad is None
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_feature_matching_bad_norm() -> None:
    with pytest.raises(ValueError, match="norm"):
        feature_matching_loss(torch.zeros(2, 2), torch.zeros(2, 2), "l3")


def test_supervised_loss_by_hand() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([2, 1])
    lse0 = math.log(math.exp(0.0) + math.exp(1.0) + math.exp(2.0))
    lse1 = math.log(math.exp(1.0) + 2 * math.exp(0.0))
    expected = -(2.0 + 0.0) / 2 + (lse0 + lse1) / 2
    assert close(supervised_loss(logits, labels), expected)


def test_unsupervised_loss_by_hand() -> None:
    unl = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    fake = torch.tensor([[-1.0, 0.0]])
    lse_unl = [math.log(1 + math.exp(1.0)), math.log(math.exp(2.0) + 1)]
    lse_fake = math.log(math.exp(-1.0) + 1)
    # 0.5 E[-log D(x)] + 0.5 E[-log(1 - D(G(z)))], D = Z / (Z + 1)
    d_unl = [math.exp(v) / (math.exp(v) + 1) for v in lse_unl]
    d_fake = math.exp(lse_fake) / (math.exp(lse_fake) + 1)
    expected = 0.5 * sum(-math.log(d) for d in d_unl) / 2 - 0.5 * math.log(1 - d_fake)
    assert close(unsupervised_discriminator_loss(unl, fake), expected)


def reference_loss_unl(logits_unl: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The reference code's literal form (paper-notes §1.1)."""
    lse_unl = torch.logsumexp(logits_unl, dim=1)
    lse_fake = torch.logsumexp(logits_fake, dim=1)
    return (-0.5 * lse_unl.mean() + 0.5 * F.softplus(lse_unl).mean()
            + 0.5 * F.softplus(lse_fake).mean())


def test_unsupervised_stable_form_equals_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    unl = torch.randn(16, 10, generator=gen, dtype=torch.float64) * 3
    fake = torch.randn(16, 10, generator=gen, dtype=torch.float64) * 3
    assert torch.allclose(unsupervised_discriminator_loss(unl, fake), reference_loss_unl(unl, fake))


def test_losses_stable_at_extreme_logits() -> None:
    logits = torch.tensor([[100.0, -100.0], [-100.0, -100.0]], requires_grad=True)
    flat = torch.tensor([100.0, -100.0], requires_grad=True)
    losses = [
        unsupervised_discriminator_loss(logits, logits),
        supervised_loss(logits, torch.tensor([1, 0])),
        discriminator_loss(flat, flat, real_target=0.9),
        generator_loss_nonsaturating(flat),
        generator_loss_minimax(flat),
    ]
    for loss in losses:
        assert torch.isfinite(loss)
        loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(flat.grad).all()


def test_historical_averaging_penalty_by_hand() -> None:
    params = [torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([[3.0]], requires_grad=True)]
    averages = [torch.tensor([0.0, 0.5], requires_grad=True), torch.tensor([[1.0]])]
    penalty = historical_averaging_penalty(params, averages)
    assert close(penalty, 1.0**2 + 1.5**2 + 2.0**2)
    penalty.backward()
    assert torch.equal(params[0].grad, torch.tensor([2.0, 3.0]))  # d/dθ ||θ - θ̄||² = 2(θ - θ̄)
    assert averages[0].grad is None


def test_historical_averaging_mismatch() -> None:
    with pytest.raises(ValueError):
        historical_averaging_penalty([torch.zeros(2)], [])
