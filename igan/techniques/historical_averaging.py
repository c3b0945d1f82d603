"""Historical averaging (paper §3.3): each player's loss gets lambda * ||theta - mean_{i<=t} theta[i]||^2.

The mean over the parameter history is kept online (theta_bar += (theta - theta_bar) / t after every
optimizer step), so no history is stored; the running means and t are saved in the checkpoint.
The reference code does not implement HA (paper-notes §1.5): the paper gives no lambda, so the default
is a small 0.01 that keeps the term a regulariser rather than the dominant loss (tune ``--ha-weight``).
"""

from __future__ import annotations

import torch

from igan import losses
from igan.plugins import hookimpl

# A loss term only: `igan sample`/`evaluate` rebuild the same models without this plugin.
affects_inference = False
from igan.techniques import require_enabled

DEFAULT_WEIGHT = 0.01


@hookimpl
def igan_addoption(parser):
    parser.add("ha", bool, help="historical averaging of both players' parameters (§3.3)")
    parser.add("ha_weight", float, DEFAULT_WEIGHT, min=0.0, help="lambda of the historical-averaging term")


@hookimpl
def igan_configure(config, pm):
    require_enabled(config, "ha", "--ha", ha_weight=DEFAULT_WEIGHT)
    if config.opt("ha"):
        pm.register(HistoricalAveraging(config.opt("ha_weight", DEFAULT_WEIGHT)), "historical_averaging.run")


class HistoricalAveraging:
    # Not capture_safe (igan.capture): the running mean's weight 1/t is a host number that changes every
    # step, and a captured step would replay the value seen at capture.
    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.params: dict[str, list[torch.Tensor]] = {}
        self.means: dict[str, list[torch.Tensor]] = {}
        self.count: dict[str, int] = {}

    @hookimpl
    def igan_train_start(self, run):
        # The history starts with the initial parameters (t = 1).
        for net, module in (("G", run.generator), ("D", run.discriminator)):
            self.params[net] = [p for p in module.parameters() if p.requires_grad]
            self.means[net] = [p.detach().clone() for p in self.params[net]]
            self.count[net] = 1

    @hookimpl
    def igan_extra_loss(self, step, net):
        return {"ha": self.weight * losses.historical_averaging_penalty(self.params[net], self.means[net])}

    @hookimpl
    def igan_after_optimizer_step(self, step, net):
        self.count[net] += 1
        # mean += (p - mean) / t, as one foreach call over the player's tensors
        torch._foreach_lerp_(self.means[net], [p.detach() for p in self.params[net]], 1.0 / self.count[net])

    @hookimpl
    def igan_checkpoint_tensors(self, run):
        out = {f"{net}.count": torch.tensor(self.count[net]) for net in self.means}
        for net, means in self.means.items():
            out.update({f"{net}.mean.{i}": m for i, m in enumerate(means)})
        return out

    @hookimpl
    def igan_restore_tensors(self, run, tensors):
        for net, means in self.means.items():
            self.count[net] = int(tensors[f"{net}.count"])
            for i, m in enumerate(means):
                m.copy_(tensors[f"{net}.mean.{i}"])
