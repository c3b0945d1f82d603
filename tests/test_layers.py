"""Tests for igan.layers: noise, batch norms, minibatch discrimination, VBN and weight norm."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from igan.layers import (
    BatchNormNoScale,
    GaussianNoise,
    MinibatchDiscrimination,
    VBNGenerator,
    VirtualBatchNorm,
    data_dependent_init,
    is_weight_normed,
    replace_batchnorm,
    weight_norm,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- GaussianNoise -------------------------------------------------------------------------------


def test_gaussian_noise_identity_in_eval() -> None:
    layer = GaussianNoise(0.5).eval()
    x = torch.randn(10, 4)
    assert torch.equal(layer(x), x)
    assert "sigma=0.5" in repr(layer)


def test_gaussian_noise_std_in_train() -> None:
    layer = GaussianNoise(0.3).train()
    noise = layer(torch.ones(200_000)) - 1.0
    assert abs(noise.mean().item()) < 0.005
    assert abs(noise.std().item() - 0.3) < 0.005


# --- BatchNormNoScale ----------------------------------------------------------------------------


def test_batchnorm_no_scale_by_hand_and_ignores_eval() -> None:
    layer = BatchNormNoScale(1).eval()
    with torch.no_grad():
        layer.bias.fill_(0.5)
    x = torch.tensor([[1.0], [2.0], [6.0]])
    mean = (1.0 + 2.0 + 6.0) / 3
    var = ((1.0 - mean) ** 2 + (2.0 - mean) ** 2 + (6.0 - mean) ** 2) / 3
    expected = [[(v - mean) / math.sqrt(var + 1e-6) + 0.5] for v in (1.0, 2.0, 6.0)]
    assert torch.allclose(layer(x), torch.tensor(expected))
    assert not any(name.startswith("running") for name, _ in layer.named_buffers())


def test_batchnorm_no_scale_conv_per_channel() -> None:
    layer = BatchNormNoScale(3)
    x = torch.randn(4, 3, 5, 5) * 3 + 2
    out = layer(x)
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    assert [name for name, _ in layer.named_parameters()] == ["bias"]


# --- MinibatchDiscrimination ---------------------------------------------------------------------


def mbd_1x1(bias: float = -1.0) -> MinibatchDiscrimination:
    """A=2, B=1, C=1 with theta = [3, 4] (norm 5) and log scale 0, so T = [0.6, 0.8]."""
    layer = MinibatchDiscrimination(2, num_kernels=1, kernel_dim=1)
    with torch.no_grad():
        layer.theta.copy_(torch.tensor([3.0, 4.0]).view(2, 1, 1))
        layer.log_weight_scale.zero_()
        layer.bias.fill_(bias)
    return layer


def test_mbd_output_features() -> None:
    layer = MinibatchDiscrimination(12, num_kernels=7, kernel_dim=3)
    x = torch.randn(5, 12)
    out = layer(x)
    assert out.shape == (5, 12 + 7)
    assert torch.equal(out[:, :12], x)
    assert layer.theta.shape == (12, 7, 3) and layer.log_weight_scale.shape == (7, 3)
    assert torch.equal(layer.bias, torch.full((7,), -1.0))


def test_mbd_by_hand() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    m = [0.6 * 1 + 0.8 * 0, 0.6 * 0 + 0.8 * 1, 0.6 * 1 + 0.8 * 1]  # M = x T
    expected = [
        sum(math.exp(-abs(m[i] - m[j])) for j in range(3) if j != i) - 1.0 for i in range(3)
    ]
    assert torch.allclose(mbd_1x1()(x)[:, 2], torch.tensor(expected))


def test_mbd_sample_does_not_count_itself() -> None:
    layer = mbd_1x1(bias=-0.25)
    assert torch.allclose(layer(torch.tensor([[2.0, 3.0]]))[:, 2], torch.tensor([-0.25]))
    twins = layer(torch.tensor([[2.0, 3.0], [2.0, 3.0]]))[:, 2]
    assert torch.allclose(twins, torch.tensor([math.exp(0.0) - 0.25] * 2))


def test_mbd_init_from_batch() -> None:
    layer = MinibatchDiscrimination(20, num_kernels=10, kernel_dim=5)
    x = torch.randn(64, 20) * 4
    layer.init_from_batch(x)
    with torch.no_grad():
        t = layer.theta * torch.exp(layer.log_weight_scale) / layer.theta.norm(dim=0)
        m = torch.einsum("na,abc->nbc", x, t)  # [N, B, C]
        d = (m[:, None] - m[None]).abs().sum(dim=3)  # [N, N, B]
        d = d + torch.eye(64)[:, :, None] * 1e6
        nearest = d.min(dim=1).values.mean(dim=0)  # [B]
        features = layer(x)[:, 20:]
    assert torch.allclose(nearest, torch.full((10,), 2.0), atol=1e-4)
    assert torch.allclose(features.mean(dim=0), torch.zeros(10), atol=1e-5)


def test_mbd_init_needs_two_samples() -> None:
    with pytest.raises(ValueError):
        MinibatchDiscrimination(3).init_from_batch(torch.randn(1, 3))


def test_mbd_paper_size_matches_cdist_formula() -> None:
    """The layer (fused kernel) against exp(-cdist) on the reference's sizes: A=250, B=100, C=5, N=100."""
    torch.manual_seed(0)
    layer = MinibatchDiscrimination(250)
    x = torch.randn(100, 250, requires_grad=True)
    out = layer(x)
    assert out.shape == (100, 350)
    expected = torch.exp(-layer.distances(x)).sum(dim=2).t() + layer.bias
    assert torch.allclose(out[:, 250:], expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn(100, 100)
    (out[:, 250:] * weights).sum().backward()
    grads = (x.grad.clone(), layer.theta.grad.clone())
    x.grad = layer.theta.grad = None
    (expected * weights).sum().backward()
    assert torch.allclose(grads[0], x.grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(grads[1], layer.theta.grad, rtol=1e-4, atol=1e-5)


# --- VirtualBatchNorm ----------------------------------------------------------------------------


def test_vbn_by_hand_2d() -> None:
    layer = VirtualBatchNorm(1)
    layer.n_ref = 2
    with torch.no_grad():
        layer.weight.fill_(1.0)
    x = torch.tensor([[1.0], [3.0], [5.0]])  # reference rows 1, 3; live row 5
    eps = 1e-5
    ref_mean, ref_meansq = (1.0 + 3.0) / 2, (1.0 + 9.0) / 2
    w = 1 / (2 + 1)
    mean = w * 5.0 + (1 - w) * ref_mean
    meansq = w * 25.0 + (1 - w) * ref_meansq
    expected = [
        (1.0 - ref_mean) / math.sqrt(eps + ref_meansq - ref_mean**2),
        (3.0 - ref_mean) / math.sqrt(eps + ref_meansq - ref_mean**2),
        (5.0 - mean) / math.sqrt(eps + meansq - mean**2),
    ]
    assert torch.allclose(layer(x), torch.tensor(expected).view(3, 1))


def test_vbn_reference_rows_normalised_4d() -> None:
    layer = VirtualBatchNorm(3)
    layer.n_ref = 4
    with torch.no_grad():
        layer.weight.fill_(1.0)
    out = layer(torch.randn(6, 3, 5, 5) * 2 + 1)
    assert out.shape == (6, 3, 5, 5)
    assert torch.allclose(out[:4].mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out[:4].var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)


def test_vbn_init_and_unconfigured() -> None:
    layer = VirtualBatchNorm(500)
    assert abs(layer.weight.mean().item() - 1.0) < 0.01
    assert abs(layer.weight.std().item() - 0.02) < 0.005
    assert torch.equal(layer.bias, torch.zeros(500))
    with pytest.raises(RuntimeError, match="VBNGenerator"):
        layer(torch.randn(4, 500))


def dense_generator() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), VirtualBatchNorm(16), nn.ReLU(), nn.Linear(16, 4))


def conv_generator() -> nn.Module:
    return nn.Sequential(
        nn.Linear(8, 4 * 4 * 6),
        nn.Unflatten(1, (6, 4, 4)),
        VirtualBatchNorm(6),
        nn.ReLU(),
        nn.ConvTranspose2d(6, 3, 5, stride=2, padding=2, output_padding=1),
        VirtualBatchNorm(3),
        nn.Tanh(),
    )


@pytest.mark.parametrize("make", [dense_generator, conv_generator])
def test_vbn_generator_examples_independent(make) -> None:
    model = VBNGenerator(make(), torch.rand(5, 8) * 2 - 1)
    z = torch.rand(7, 8) * 2 - 1
    batch = model(z)
    alone = model(z[:1])
    assert batch.shape[0] == 7
    assert torch.allclose(alone[0], batch[0], atol=1e-6, rtol=0)
    assert model(z[3:]).sub(batch[3:]).abs().max() < 1e-6


def test_vbn_generator_state_and_n_ref() -> None:
    ref_z = torch.randn(5, 8)
    model = VBNGenerator(conv_generator(), ref_z)
    assert torch.equal(model.state_dict()["ref_z"], ref_z)
    assert all(m.n_ref == 5 for m in model.generator.modules() if isinstance(m, VirtualBatchNorm))
    with pytest.raises(ValueError):
        VBNGenerator(nn.Linear(8, 4), ref_z)


def test_replace_batchnorm() -> None:
    model = nn.Sequential(
        nn.Linear(4, 4),
        nn.BatchNorm1d(4),
        nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), BatchNormNoScale(7)),
    )
    assert replace_batchnorm(model, VirtualBatchNorm) == 3
    replaced = [m for m in model.modules() if isinstance(m, VirtualBatchNorm)]
    assert [m.num_features for m in replaced] == [4, 3, 7]
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, BatchNormNoScale)) for m in model.modules())


# --- weight norm ---------------------------------------------------------------------------------


def test_weight_norm_freezes_g_and_saves_it() -> None:
    hidden = weight_norm(nn.Linear(4, 3), train_g=False)
    last = weight_norm(nn.Linear(3, 2), init_scale=0.1)
    assert is_weight_normed(hidden) and is_weight_normed(last)
    assert not is_weight_normed(nn.Linear(4, 3))
    assert not hidden.parametrizations.weight.original0.requires_grad
    assert last.parametrizations.weight.original0.requires_grad
    assert "parametrizations.weight.original0" in hidden.state_dict()
    assert hidden.parametrizations.weight.original0.shape == (3, 1)


def test_weight_norm_conv_transpose_norm_per_output_unit() -> None:
    layer = weight_norm(nn.ConvTranspose2d(6, 4, 5, stride=2, padding=2, output_padding=1))
    assert layer.parametrizations.weight.original0.shape == (1, 4, 1, 1)


def test_weight_norm_rejects_unsupported() -> None:
    with pytest.raises(ValueError):
        weight_norm(nn.Linear(3, 2, bias=False))
    with pytest.raises(TypeError):
        weight_norm(nn.Conv1d(3, 2, 1))


def assert_standardised(out: torch.Tensor, scale: float) -> None:
    dims = [0, *range(2, out.dim())]
    assert torch.allclose(out.mean(dim=dims), torch.zeros(out.shape[1]), atol=1e-5)
    assert torch.allclose(out.std(dim=dims, unbiased=False), torch.full((out.shape[1],), scale), rtol=1e-4)


def test_data_dependent_init_linear() -> None:
    layer = weight_norm(nn.Linear(10, 20), init_scale=0.5)
    x = torch.randn(500, 10) * 3 + 1
    assert data_dependent_init(layer, x) == 1
    with torch.no_grad():
        assert_standardised(layer(x), 0.5)
    assert not layer._forward_hooks


def test_data_dependent_init_conv_transpose() -> None:
    layer = weight_norm(nn.ConvTranspose2d(8, 4, 5, stride=2, padding=2, output_padding=1), init_scale=0.1)
    x = torch.randn(32, 8, 4, 4) + 0.5
    assert data_dependent_init(layer, x) == 1
    with torch.no_grad():
        out = layer(x)
    assert out.shape == (32, 4, 8, 8)
    assert_standardised(out, 0.1)


def test_data_dependent_init_two_layers_in_forward_order() -> None:
    first = weight_norm(nn.Linear(10, 16), train_g=False)
    second = weight_norm(nn.Linear(16, 3), init_scale=0.1)
    model = nn.Sequential(first, nn.ReLU(), second)
    x = torch.randn(200, 10)
    assert data_dependent_init(model, x) == 2
    with torch.no_grad():
        assert_standardised(first(x), 1.0)
        assert_standardised(model(x), 0.1)


def test_data_dependent_init_skips_layers_without_init_scale() -> None:
    fixed = weight_norm(nn.Linear(10, 4), init_scale=None)
    g_before = fixed.parametrizations.weight.original0.clone()
    model = nn.Sequential(weight_norm(nn.Linear(10, 10)), fixed)
    assert data_dependent_init(model, torch.randn(50, 10)) == 1
    assert is_weight_normed(fixed)
    assert torch.equal(fixed.parametrizations.weight.original0, g_before)


def test_data_dependent_init_removes_hooks_on_error() -> None:
    layer = weight_norm(nn.Linear(4, 3))
    model = nn.Sequential(layer, nn.Linear(5, 2))  # shape mismatch in the second layer
    with pytest.raises(RuntimeError):
        data_dependent_init(model, torch.randn(8, 4))
    assert not layer._forward_hooks
