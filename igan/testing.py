"""Helpers for unit-testing a plugin's hooks without a training run (public: ``igan.testing``).

``make_step`` builds the ``Step`` a loss hook receives, as the D phase builds it: the batches you
give, D's outputs on them (computed with the ``discriminator`` you give, with ``requires_grad`` on the
inputs your plugin asks for), and a stand-in run that carries the configuration and label targets::

    step = igan.testing.make_step(x_real=torch.rand(4, 3), discriminator=my_d, config=igan.RunConfig(),
                                  input_grads=("x_real",))
    terms = MyPenalty(1.0).igan_extra_loss(step=step, net="D")

The stand-in run has only ``config``, ``targets``, ``step``, ``device``, ``role``, ``parallel`` and
``input_grads``; a hook that needs more (models, optimizers, data) is better tested with a tiny run
through the CLI (docs/writing-plugins.md, section 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from igan.config import RunConfig
from igan.models import DOut
from igan.train import LabelTargets, ParallelMember, Step

__all__ = ["make_step", "StepRun"]


@dataclass
class StepRun:
    """The part of ``Run`` that ``make_step``'s steps carry."""

    config: RunConfig = field(default_factory=RunConfig)
    targets: LabelTargets = LabelTargets()
    step: int = 0
    device: torch.device = torch.device("cpu")
    input_grads: tuple[str, ...] = ()
    parallel: ParallelMember | None = None

    @property
    def role(self) -> str:
        return self.config.role


def _dout(value: Any) -> DOut:
    if isinstance(value, DOut):
        return value
    logits = value if value.dim() == 2 else value.reshape(value.shape[0], -1)
    return DOut(logits, logits)


def make_step(*, x_real: torch.Tensor | None = None, discriminator: Callable | None = None,
              fake: torch.Tensor | None = None, z: torch.Tensor | None = None, x_lab: torch.Tensor | None = None,
              y_lab: torch.Tensor | None = None, d_real: Any = None, d_fake: Any = None, net: str = "D",
              it: int = 0, config: RunConfig | None = None, targets: LabelTargets | None = None,
              input_grads: tuple[str, ...] = ()) -> Step:
    """A ``Step`` for calling a hook directly in a test.

    With ``discriminator`` (a module or function returning ``DOut``, or logits), ``d_real``/``d_fake``/
    ``d_lab`` are its outputs on ``x_real``/``fake``/``x_lab``, computed after the tensors named in
    ``input_grads`` got ``requires_grad`` (as the host does for ``needs_input_grad``). Without it, pass
    ``d_real``/``d_fake`` yourself (``DOut`` or logits)."""
    run = StepRun(config=config or RunConfig(), targets=targets or LabelTargets(), step=it,
                  device=x_real.device if x_real is not None else torch.device("cpu"),
                  input_grads=tuple(input_grads))
    if "x_real" in input_grads and x_real is not None:
        x_real = x_real.detach().requires_grad_(True)
    if "fake" in input_grads and fake is not None:
        fake = fake.detach().requires_grad_(True)
    if "x_lab" in input_grads and x_lab is not None:
        x_lab = x_lab.detach().requires_grad_(True)
    d_lab = None
    if discriminator is not None:
        d_real = discriminator(x_real) if x_real is not None else d_real
        d_fake = discriminator(fake) if fake is not None else d_fake
        d_lab = discriminator(x_lab) if x_lab is not None else None
    step = Step(run=run, it=it, x_real=x_real, z=z, fake=fake,  # type: ignore[arg-type]
                d_real=_dout(d_real) if d_real is not None else None,  # type: ignore[arg-type]
                d_fake=_dout(d_fake) if d_fake is not None else None,  # type: ignore[arg-type]
                x_lab=x_lab, y_lab=y_lab, d_lab=_dout(d_lab) if d_lab is not None else None, net=net,
                discriminator=discriminator)
    if net == "G":
        step.d_real_g = step.d_real
    return step
