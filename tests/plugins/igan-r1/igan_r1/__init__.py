"""The R1 gradient penalty (Mescheder, Geiger & Nowozin 2018) on D's real inputs, as an igan plugin.

A test package of igan's plugin contract (tests/test_contract.py), written against the public API only:

--r1 GAMMA     adds (GAMMA / 2) * E_x ||grad_x D(x)||^2 over the real batch to D's loss (off by default)
--r1-every N   lazy regularisation (Karras et al. 2020): the penalty on every N-th step, times N

It asks the host for the real batch to require grad (``needs_input_grad``), so ``step.d_real`` is
differentiated with respect to ``step.x_real`` without a second D pass, and it keeps per-run state (a
moving average of the squared gradient norm) in the checkpoint. It changes no architecture
(``affects_inference = False``): its checkpoints sample and evaluate without it.
"""

from __future__ import annotations

import torch

import igan

__version__ = "0.1.0"
affects_inference = False  # a loss term only


@igan.hookimpl
def igan_addoption(parser):
    parser.add("r1", float, None, min=0.0, help="weight gamma of the R1 penalty (gamma/2) E||grad_x D(x)||^2")
    parser.add("r1_every", int, 1, min=1, help="apply the penalty every N steps, scaled by N (lazy R1)")


@igan.hookimpl
def igan_configure(config, pm):
    if config.opt("r1") is None:
        if config.is_given("r1_every"):  # refused even when typed at its default value
            raise igan.UsageError("--r1-every given without --r1", hint="add --r1 GAMMA, or drop --r1-every")
        return
    if config.role == "baseline":  # semisup's supervised-only baseline has no GAN to regularise
        return
    pm.register(R1(config.opt("r1"), config.opt("r1_every", 1)), "r1.run")


class R1:
    """Per-run state: the weights, and a moving average of ||grad_x D(x)||^2 (saved in checkpoints)."""

    needs_input_grad = ("x_real",)  # the host creates x_real with requires_grad before D's real pass
    parallel_safe = True  # the loss is a pure function of the step and the settings

    def __init__(self, gamma: float, every: int) -> None:
        self.gamma, self.every = gamma, every
        self.average = torch.zeros(())

    def penalty(self, step) -> torch.Tensor:
        """E_x ||grad_x D(x)||^2 on the real batch, differentiable (create_graph) so D learns from it."""
        logit = igan.losses.gan_logit(step.d_real.logits)  # the real/fake logit (logsumexp for K + 1)
        (grad,) = torch.autograd.grad(logit.sum(), step.x_real, create_graph=True)
        return grad.square().flatten(1).sum(1).mean()

    @igan.hookimpl
    def igan_train_start(self, run):
        self.average = torch.zeros((), device=run.device)

    @igan.hookimpl
    def igan_extra_loss(self, step, net):
        if net != "D" or step.it % self.every:
            return None
        grad_sq = self.penalty(step)
        step.log("r1/grad_sq", grad_sq)
        return {"r1": 0.5 * self.gamma * self.every * grad_sq}

    @igan.hookimpl
    def igan_after_optimizer_step(self, step, net):
        if net == "D" and "r1/grad_sq" in step.logs:
            self.average.lerp_(step.logs["r1/grad_sq"], 0.1)

    @igan.hookimpl
    def igan_checkpoint_tensors(self, run):
        return {"grad_sq_average": self.average}

    @igan.hookimpl
    def igan_restore_tensors(self, run, tensors):
        self.average.copy_(tensors["grad_sq_average"])
