"""The reference code's Adam (eps inside the square root) against hand-computed updates."""

from __future__ import annotations

import math

import pytest
import torch

from igan.optim import ReferenceAdam, make_optimizer


def test_two_updates_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = ReferenceAdam([p], lr=0.1, betas=(0.5, 0.999), eps=1e-8)
    grads = [torch.tensor([0.5, 1e-5], dtype=torch.float64), torch.tensor([-1.0, 2e-5], dtype=torch.float64)]
    expected = [1.0, -2.0]
    m, v = [0.0, 0.0], [0.0, 0.0]
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        for i in range(2):
            m[i] = 0.5 * m[i] + 0.5 * g[i].item()
            v[i] = 0.999 * v[i] + 0.001 * g[i].item() ** 2
            m_hat, v_hat = m[i] / (1 - 0.5 ** t), v[i] / (1 - 0.999 ** t)
            expected[i] -= 0.1 * m_hat / math.sqrt(v_hat + 1e-8)
        assert p.tolist() == pytest.approx(expected, rel=1e-12)


def test_tiny_gradients_move_less_than_torch_adam():
    """The point of the reference placement: a gradient of 1e-6 moves torch's Adam by ~lr, ours by ~lr/100."""
    a = torch.nn.Parameter(torch.zeros(1))
    b = torch.nn.Parameter(torch.zeros(1))
    ours, theirs = ReferenceAdam([a], lr=1.0), torch.optim.Adam([b], lr=1.0)
    a.grad = torch.full((1,), 1e-6)
    b.grad = torch.full((1,), 1e-6)
    ours.step()
    theirs.step()
    assert abs(b.item()) == pytest.approx(1.0, rel=1e-2)
    assert abs(a.item()) == pytest.approx(1e-6 / math.sqrt(1e-12 + 1e-8), rel=1e-3)  # ≈ 0.01


def test_large_gradients_match_torch_adam_and_state_keys():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(3))
    ours, theirs = make_optimizer("reference", [a], 0.01, (0.5, 0.999)), torch.optim.Adam([b], 0.01, (0.5, 0.999))
    for g in ([0.3, -1.0, 2.0], [0.1, 0.5, -0.7]):
        a.grad, b.grad = torch.tensor(g), torch.tensor(g)
        ours.step()
        theirs.step()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert set(ours.state[a]) == {"step", "exp_avg", "exp_avg_sq"}  # checkpoints flatten the same way
    assert isinstance(make_optimizer("torch", [b], 0.01, (0.5, 0.999)), torch.optim.Adam)


def _loop_reference_adam(params, grads_per_step, lr, betas, eps=1e-8):
    """The update written per tensor and per element as in the reference code, for comparison."""
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is None:
                continue
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            p -= lr * (m[i] / (1 - betas[0] ** t)) / torch.sqrt(v[i] / (1 - betas[1] ** t) + eps)
    return params


def test_foreach_update_matches_per_tensor_formula_with_uneven_steps():
    """Several tensors of different shapes, one of which misses a step's gradient (its own step
    count then lags behind the others')."""
    torch.manual_seed(0)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    init = [torch.randn(s, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, dtype=torch.float64) * 1e-3 for s in shapes] for _ in range(4)]
    grads[1][2] = None  # tensor 2 gets no gradient at step 2
    params = [torch.nn.Parameter(x.clone()) for x in init]
    opt = ReferenceAdam(params, lr=0.003, betas=(0.5, 0.999))
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else g.clone()
        opt.step()
    # the lagging tensor's bias correction uses its own count: replay it with its 3 gradients
    hyper = (0.003, (0.5, 0.999))
    expected = _loop_reference_adam([x.clone() for x in init[:2]], [g[:2] for g in grads], *hyper)
    expected += _loop_reference_adam([init[2].clone()], [[g[2]] for g in grads if g[2] is not None], *hyper)
    for p, e in zip(params, expected):
        assert torch.allclose(p.detach(), e, rtol=1e-12, atol=1e-15)
    assert [int(opt.state[p]["step"]) for p in params] == [4, 4, 3]
