"""The fused minibatch-similarity kernel (igan.kernels) against the formula of §3.2, eager and compiled."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from igan import kernels
from igan.compiling import MaybeCompiled, compile_mode
from igan.kernels import minibatch_similarity

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                    reason="torch.compile's CPU backend needs a C++ compiler")


def textbook(m: torch.Tensor) -> torch.Tensor:
    """o[i, b] = sum_{j != i} exp(-sum_c |m[i,b,c] - m[j,b,c]|), the reference's way: +1e6 on the diagonal."""
    d = (m[:, None] - m[None]).abs().sum(dim=3)  # [N, N, B]
    d = d + torch.eye(m.shape[0], dtype=m.dtype)[:, :, None] * 1e6
    return torch.exp(-d).sum(dim=1)


def test_by_hand() -> None:
    # N=3, B=1, C=2: d(0,1) = 1 + 2 = 3, d(0,2) = 0 + 1 = 1, d(1,2) = 1 + 1 = 2.
    m = torch.tensor([[[0.0, 0.0]], [[1.0, 2.0]], [[0.0, 1.0]]])
    e01, e02, e12 = math.exp(-3), math.exp(-1), math.exp(-2)
    expected = torch.tensor([[e01 + e02], [e01 + e12], [e02 + e12]])
    assert torch.allclose(minibatch_similarity(m), expected)


@pytest.mark.parametrize("shape", [(1, 3, 2), (2, 1, 1), (7, 4, 5), (33, 10, 3)])
def test_matches_textbook_values_and_gradients(shape) -> None:
    torch.manual_seed(0)
    m = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(shape[0], shape[1], dtype=torch.float64)
    (minibatch_similarity(m) * weights).sum().backward()
    ours = m.grad.clone()
    m.grad = None
    (textbook(m) * weights).sum().backward()
    assert torch.allclose(minibatch_similarity(m), textbook(m), rtol=1e-12, atol=1e-12)
    assert torch.allclose(ours, m.grad, rtol=1e-10, atol=1e-12)


def test_gradcheck() -> None:
    torch.manual_seed(1)
    m = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(minibatch_similarity, (m,))


def test_ties_use_zero_subgradient_like_autograd() -> None:
    # Two identical samples: |t| at t = 0 has derivative 0 in autograd; the kernel agrees.
    m = torch.tensor([[[1.0, 2.0]], [[1.0, 2.0]], [[0.0, 0.0]]], requires_grad=True)
    minibatch_similarity(m).sum().backward()
    ours = m.grad.clone()
    m.grad = None
    textbook(m).sum().backward()
    assert torch.allclose(ours, m.grad)


def test_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"\[N, B, C\]"):
        minibatch_similarity(torch.zeros(4, 5))


def test_compile_mode_from_environment(monkeypatch) -> None:
    for value, mode in [("0", "off"), ("off", "off"), ("1", "on"), ("auto", "auto"), ("", "auto")]:
        monkeypatch.setenv("IGAN_COMPILE", value)
        assert compile_mode() == mode
    monkeypatch.delenv("IGAN_COMPILE")
    assert compile_mode() == "auto"


def _boom(fn, **kwargs):
    def fail(*args):
        raise RuntimeError("no compiler here")

    return fail


def test_failed_compile_falls_back_to_eager_once(monkeypatch) -> None:
    monkeypatch.setenv("IGAN_COMPILE", "auto")
    monkeypatch.setattr(torch, "compile", _boom)
    kernel = MaybeCompiled(kernels._similarity_forward)
    m = torch.randn(3, 2, 5)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        o, _ = kernel(m)
    assert torch.equal(o, kernels._similarity_forward(m)[0])
    o2, _ = kernel(m)  # no second attempt, no second warning
    assert kernel._failed and torch.equal(o2, o)


def test_compile_on_propagates_errors(monkeypatch) -> None:
    monkeypatch.setenv("IGAN_COMPILE", "1")
    monkeypatch.setattr(torch, "compile", _boom)
    with pytest.raises(RuntimeError, match="no compiler here"):
        MaybeCompiled(kernels._similarity_forward)(torch.randn(3, 2, 5))


@needs_compiler
def test_compiled_equals_eager(monkeypatch) -> None:
    """The torch.compile'd kernel (what runs by default) against the eager one: forward and backward,
    on two batch sizes (a kernel per shape)."""
    monkeypatch.setenv("IGAN_COMPILE", "1")
    torch.manual_seed(2)
    forward = MaybeCompiled(kernels._similarity_forward)
    backward = MaybeCompiled(kernels._similarity_backward)
    for n in (20, 13):
        mt, grad = torch.randn(8, 5, n), torch.randn(8, n)
        o, e = forward(mt)
        o_ref, e_ref = kernels._similarity_forward(mt)
        assert torch.allclose(o, o_ref, rtol=1e-5, atol=1e-6)
        assert torch.allclose(e, e_ref, rtol=1e-5, atol=1e-6)
        g = backward(mt, e_ref, grad)
        assert torch.allclose(g, kernels._similarity_backward(mt, e_ref, grad), rtol=1e-5, atol=1e-5)


@needs_compiler
def test_train_with_compiled_minibatch_layer(train_cli, tmp_path, monkeypatch, single_thread) -> None:
    """`igan train --mbd` end to end with the compiled kernel (init, training and sampling batch
    shapes) gives the same losses as the eager kernel from the same seed."""
    losses = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("IGAN_COMPILE", mode)
        code, _, err = train_cli(tmp_path / mode, "--mbd", steps=3)
        assert code == 0, err
        rows = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        losses[mode] = [r["loss/D"] for r in rows if "loss/D" in r]
    assert len(losses["1"]) == 3
    assert losses["1"] == pytest.approx(losses["0"], rel=1e-4)


def test_gradgradcheck() -> None:
    """Twice differentiable (a gradient penalty on D's input differentiates the backward): the double
    backward agrees with finite differences of the backward, in float64."""
    torch.manual_seed(2)
    m = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(minibatch_similarity, (m,))


def test_double_backward_matches_the_textbook_formula() -> None:
    """The R1-style second derivative through the kernel equals the one through the plain formula."""
    torch.manual_seed(3)
    m = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, dtype=torch.float64)

    def penalty_grad(fn):
        (g,) = torch.autograd.grad((fn(m) * w).sum(), m, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), m)
        return gg

    assert torch.allclose(penalty_grad(minibatch_similarity), penalty_grad(textbook), rtol=1e-10, atol=1e-12)
