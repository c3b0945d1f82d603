"""An exponential moving average of the generator's weights (``--g-ema DECAY``) as an igan plugin.

When training starts (``igan_train_start``, after igan's data-dependent init) the plugin makes a deep
copy of the generator, the *averaged generator*: same architecture, including wrappers such as
virtual batch norm's ``VBNGenerator`` and weight-norm parametrizations, its parameters frozen. After
every generator update (``igan_after_optimizer_step(net="G")``)::

    ema <- decay * ema + (1 - decay) * theta        (every parameter of G)

G's buffers (for example VBN's reference noise ``ref_z``) are not averaged but copied from G whenever
the averaged generator is used or saved. There is no bias correction or warm-up: the average starts at
the initial weights, whose weight after t updates is decay**t (0.999**1000 = 0.37), so pick a decay
with 1 / (1 - decay) well below the number of steps.

Where the average is used (G itself is never touched, so it keeps training on its own weights):

- during training, through ``igan_sampling_generator``: ``Run.generate`` draws from the averaged
  generator, so the fixed-noise grids igan writes at each epoch end (``samples/epoch_*.png``) and the
  images of any plugin that samples through ``Run.generate`` (the built-in ``--tensorboard``) come
  from the average. Plugins that call ``run.generator`` directly see the trained weights;
- in ``igan sample`` and ``igan evaluate``, through ``igan_prepare_inference``: after igan has loaded
  the checkpoint's ``G.*`` weights, the plugin copies the saved average into ``models.generator``.

Checkpoints hold the averaged generator's state dict as ``plugin.gen_ema.run.ema.<name>`` (the same
names as ``G.<name>``) and the number of updates as ``plugin.gen_ema.run.updates``
(``igan_checkpoint_tensors``). ``--resume`` restores both (``igan_restore_tensors``) and continues
the same average; the checkpoint's ``G.*`` tensors are the trained weights, so training itself
resumes exactly.
"""

from __future__ import annotations

import copy
from importlib import metadata

import igan

__all__ = ["GenEma", "RUN_NAME"]

try:
    __version__ = metadata.version("igan-gen-ema")
except metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

# The name the per-run state is registered under: its checkpoint tensors are "plugin.<RUN_NAME>.<key>".
RUN_NAME = "gen_ema.run"


@igan.hookimpl
def igan_addoption(parser):
    parser.add("g_ema", float, None, min=0.0, max=1.0,
               help="keep an exponential moving average of G's weights with this decay (e.g. 0.999); "
                    "epoch sample grids, `igan sample` and `igan evaluate` use it (off by default)")


@igan.hookimpl
def igan_configure(config, pm):
    decay = config.opt("g_ema")
    if decay is None:
        return
    if not 0.0 < decay < 1.0:
        raise igan.UsageError(f"--g-ema must be a decay strictly between 0 and 1, got {decay}",
                              hint="for example --g-ema 0.999 (an average over about the last 1000 updates)")
    # Registered for training and also when `igan sample` / `igan evaluate` rebuild a --g-ema run.
    pm.register(GenEma(decay), RUN_NAME)


def _average_of(tensors):
    """The averaged generator's state dict from this plugin's checkpoint tensors (prefix removed)."""
    return {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}


def _load_average(module, tensors) -> None:
    """Copy a saved average into ``module`` (in place). Every parameter must be there with its shape;
    buffers are copied where present (they equal G's own)."""
    import torch

    state = _average_of(tensors)
    own = module.state_dict()
    params = {name for name, _ in module.named_parameters()}
    missing = sorted(params - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong = sorted(k for k in state.keys() & own.keys() if state[k].shape != own[k].shape)
    if "updates" not in tensors or missing or unexpected or wrong:
        detail = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                  else f"{wrong[0]} has another shape" if wrong else "no update count")
        raise igan.IganError(f"the checkpoint has no (or an incomplete) moving average of G ({detail})",
                             hint="use a checkpoint written by `igan train --g-ema ...` with the same model "
                                  "and technique flags")
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value)


class GenEma:
    """The per-run state: the averaged generator (a frozen copy of G) and the number of updates."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.generator = None  # G itself (the trained weights)
        self.module = None  # the averaged generator
        self.pairs: list = []  # (averaged parameter, G's parameter), in G's order
        self.updates = 0

    # -- training ------------------------------------------------------------------------------

    @igan.hookimpl
    def igan_train_start(self, run):
        g = run.generator
        try:
            module = copy.deepcopy(g)
        except Exception as exc:  # a generator holding something that cannot be copied
            raise igan.IganError(f"--g-ema could not copy the generator ({type(exc).__name__}: {exc})",
                                 hint="train without --g-ema, or make the generator deep-copyable") from exc
        for p in module.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.generator, self.module, self.updates = g, module, 0
        self.pairs = list(zip(module.parameters(), g.parameters()))

    @igan.hookimpl
    def igan_after_optimizer_step(self, step, net):
        if net != "G" or self.module is None:
            return
        self.updates += 1
        for avg, p in self.pairs:  # ema <- decay * ema + (1 - decay) * theta
            avg.lerp_(p.detach(), 1.0 - self.decay)

    def sync_buffers(self) -> None:
        """Copy G's buffers (not averaged) and its train/eval mode into the averaged generator."""
        import torch

        with torch.no_grad():
            for mine, theirs in zip(self.module.buffers(), self.generator.buffers()):
                mine.copy_(theirs)
        self.module.train(self.generator.training)

    @igan.hookimpl
    def igan_sampling_generator(self, run):
        if self.module is None:  # Run.generate before training started
            return None
        self.sync_buffers()
        return self.module

    # -- checkpoints ---------------------------------------------------------------------------

    @igan.hookimpl
    def igan_checkpoint_tensors(self, run):
        import torch

        self.sync_buffers()
        out = {"updates": torch.tensor(self.updates, dtype=torch.int64)}
        out.update({f"ema.{name}": value for name, value in self.module.state_dict().items()})
        return out

    @igan.hookimpl
    def igan_restore_tensors(self, run, tensors):
        _load_average(self.module, tensors)
        self.updates = int(tensors["updates"])
        self.sync_buffers()

    # -- igan sample / igan evaluate -----------------------------------------------------------

    @igan.hookimpl
    def igan_prepare_inference(self, models, config, tensors):
        _load_average(models.generator, tensors)
