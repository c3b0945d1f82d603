"""The reference code's Adam (paper-notes §1.10): the same moments and bias correction as
``torch.optim.Adam``, but epsilon inside the square root: lr * m_hat / sqrt(v_hat + eps).

For gradients much larger than sqrt(eps) = 1e-4 the two are identical. For smaller gradients PyTorch's
update stays near lr * sign(g) while the reference's shrinks with the gradient, so slow drifts driven by
tiny gradients are damped. On MNIST with 100 labels this decides whether training works: with
``torch.optim.Adam`` the GAN collapsed after ~8,000 steps (D separated real from generated data
completely, the feature-matching loss jumped from ~5 to ~500 and the test error rose again); with this
update the same run kept improving past 15,000 steps (docs/reproduction.md). PyTorch has no option
for this placement of eps, hence this small class; ``--adam torch`` selects PyTorch's fused Adam.
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["ReferenceAdam", "make_optimizer"]


class ReferenceAdam(torch.optim.Optimizer):
    """Adam with eps inside the square root; state keys as torch.optim.Adam's (step, exp_avg, exp_avg_sq)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        # Capturable mode (``set_capturable``) is an attribute, not a group setting, so checkpoints
        # (their ``opt_groups``) are the same in both modes.
        self.capturable = False
        self._lr: list[torch.Tensor] = []  # capturable mode: each group's learning rate, on the device
        self._lr_seen: list[float] = []

    def set_capturable(self, on: bool) -> None:
        """Switch to (or back from) the form a CUDA graph can capture (``igan.capture``): step counts and
        the learning rate live on the parameters' device and the bias corrections are computed there, so
        a replayed update reads the current values instead of the ones seen when it was captured. The
        same update; the bias corrections are formed in float64 on the device instead of in Python, and
        the last multiply-add is split in two, so results can differ in the last bit."""
        if on:
            for group in self.param_groups:
                counts = {float(self.state[p]["step"]) for p in group["params"] if self.state.get(p)}
                if len(counts) > 1:  # the capturable update keeps one count per group
                    raise ValueError(f"the parameters of one group are at different step counts {sorted(counts)}")
        self.capturable = on
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state:
                    state["step"] = state["step"].to(p.device if on else "cpu", torch.float32)
        self._lr = [torch.tensor(float(g["lr"]), dtype=torch.float64, device=g["params"][0].device)
                    for g in self.param_groups] if on else []
        self._lr_seen = [float(g["lr"]) for g in self.param_groups] if on else []

    def sync_lr(self) -> None:
        """Capturable mode: copy a changed ``group["lr"]`` (the schedule sets it) to its device tensor.
        Called before each replay of a captured step, outside the graph (``fill_`` launches no sync)."""
        for i, group in enumerate(self.param_groups):
            if float(group["lr"]) != self._lr_seen[i]:
                self._lr[i].fill_(float(group["lr"]))
                self._lr_seen[i] = float(group["lr"])

    def load_state_dict(self, state_dict) -> None:
        # torch keeps "step" where the checkpoint put it (on the GPU when loaded there); reading a GPU
        # count in the eager update below would wait for the device once per tensor and step.
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "step" in state:
                    state["step"] = state["step"].to(p.device if self.capturable else "cpu", torch.float32)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ARG002 - the signature of torch.optim.Optimizer.step
        if self.capturable:
            return self._capturable_step()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1  # a CPU scalar: reading it below never waits for an accelerator
            # One foreach call per operation over all tensors that share a step count (normally all of
            # them): the same elementwise maths as a per-tensor loop, in a handful of kernel launches.
            by_step: dict[float, list[torch.Tensor]] = {}
            for p in params:
                by_step.setdefault(float(self.state[p]["step"]), []).append(p)
            for t, ps in by_step.items():
                exp_avg, denom = self._moments(ps, beta1, beta2, 1 - beta2 ** t, group["eps"])
                torch._foreach_addcdiv_(ps, exp_avg, denom, value=-group["lr"] / (1 - beta1 ** t))
        return None

    def _moments(self, params: list, beta1: float, beta2: float, bias2, eps: float) -> tuple[list, list]:
        """Update the moments of ``params`` in place (one foreach call per operation); returns the first
        moments and sqrt(v_hat + eps), eps inside the square root as the reference. ``bias2`` is
        1 - beta2^t, a float or (captured) a device tensor."""
        grads = [p.grad for p in params]
        exp_avg = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sq = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
        denom = torch._foreach_div(exp_avg_sq, bias2)  # v_hat
        torch._foreach_add_(denom, eps)
        torch._foreach_sqrt_(denom)
        return exp_avg, denom

    def _capturable_step(self) -> None:
        """The update above with the step count, bias corrections and learning rate as device tensors."""
        for i, group in enumerate(self.param_groups):
            beta1, beta2 = group["betas"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if not (params[0].is_cuda and torch.cuda.is_current_stream_capturing()):
                self.sync_lr()  # never inside a capture: the graph would replay the value seen then
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
            steps = [self.state[p]["step"] for p in params]
            torch._foreach_add_(steps, 1)
            t = steps[0].double()  # one count per group (set_capturable checks)
            exp_avg, denom = self._moments(params, beta1, beta2, (1 - beta2 ** t).float(), group["eps"])
            update = torch._foreach_div(exp_avg, denom)
            torch._foreach_mul_(update, (self._lr[i] / (1 - beta1 ** t)).float())
            torch._foreach_sub_(params, update)
        return None


def make_optimizer(kind: str, params: list[torch.nn.Parameter], lr: float,
                   betas: tuple[float, float]) -> torch.optim.Optimizer:
    """``reference`` (default, as the paper's code) or ``torch`` (PyTorch's fused Adam, eps outside)."""
    if kind == "torch":
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    return ReferenceAdam(params, lr=lr, betas=betas)
