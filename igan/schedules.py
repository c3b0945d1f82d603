"""Learning-rate schedules: one pure function of the epoch, set once per epoch by the loop.

Every schedule is ``lr * lr_factor(epoch, ...)`` with ``epoch`` counted from 0, in three parts:

- warm-up (``--lr-warmup W``): epochs 0 .. W-1 train at (epoch + 1) / W, the linear warm-up of the
  large-batch literature (Goyal et al. 2017); 0 (default) skips it, as every reference script;
- constant until the decay starts (``--lr-decay-from N``; 0: never, the MNIST scripts after 14 June 2016);
- from epoch N to the last epoch E, ``--lr-schedule``:

  - ``linear`` (default): (E - epoch) / (E - N). The reference CIFAR-10/SVHN scripts,
    lr * min(3 - epoch/400, 1) for E = 1200, N = 800 (paper-notes §2.4-2.5), and the MNIST script of
    9 June 2016, lr * min(3 - epoch/100, 1) for E = 300, N = 200 (the ``paper-v1`` recipe,
    ``igan.recipes``), are both this formula;
  - ``cosine``: 0.5 * (1 + cos(pi * (epoch - N) / (E - N))), SGDR without restarts (Loshchilov &
    Hutter 2017), the common choice of recent GAN and classifier code.

Epoch-wise, not step-wise, because the reference scripts set the rate once per epoch; an epoch count
that is not whole (``--steps``) decays over the fractional last epoch the same way.
"""

from __future__ import annotations

import math

__all__ = ["SCHEDULES", "lr_factor"]

SCHEDULES = ("linear", "cosine")


def lr_factor(epoch: int, epochs: float, decay_from: int | None, schedule: str = "linear",
              warmup: int = 0) -> float:
    """The learning-rate multiplier for 0-based ``epoch`` of ``epochs`` (see the module docstring)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r} (one of {', '.join(SCHEDULES)})")
    factor = 1.0
    if warmup and epoch < warmup:
        factor = (epoch + 1) / warmup
    if not decay_from or decay_from >= epochs or epoch < decay_from:
        return factor
    progress = min(1.0, (epoch - decay_from) / (epochs - decay_from))  # 0 at epoch N, 1 at epoch E
    if schedule == "linear":
        return factor * (1.0 - progress)
    return factor * 0.5 * (1.0 + math.cos(math.pi * progress))
