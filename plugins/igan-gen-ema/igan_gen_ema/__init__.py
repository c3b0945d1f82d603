"""An exponential moving average of the generator's weights (``--g-ema DECAY``) as an igan plugin.

After every generator update (``igan_after_optimizer_step(net="G")``)::

    ema <- decay * ema + (1 - decay) * theta        (every parameter of G; buffers are not averaged)

starting from G's weights when training starts (after igan's data-dependent init). The average is
saved in every checkpoint (``igan_checkpoint_tensors``: ``plugin.gen_ema.run.ema.<parameter name>`` and
``plugin.gen_ema.run.updates``) and restored on ``--resume`` (``igan_restore_tensors``), so a resumed
run continues the same average. There is no bias correction or warm-up: the average starts at the
initial weights, whose weight after t updates is decay**t (0.999**1000 = 0.37), so pick a decay with
1 / (1 - decay) well below the number of steps.

Where the average is used:

- the sample grids igan writes at each epoch end (``samples/epoch_*.png``) and every
  ``igan_epoch_end`` evaluation of G that runs after this plugin's: this plugin's ``igan_epoch_end``
  runs first (``tryfirst``) and copies the averaged weights into G, and its ``igan_checkpoint_tensors``,
  which igan calls when it writes the epoch's checkpoint right after the grid, copies the trained
  weights back (bit for bit, in place, so the optimizer's state still matches). The checkpoint's
  ``G.*`` tensors are therefore the trained weights, and ``--resume`` continues training exactly.
  docs/hooks.md states that ``igan_epoch_end`` fires before the epoch's grid and checkpoint are
  written; the plugin also relies on two things no contract states: that every epoch end writes a
  checkpoint right after the grid, and that igan copies G's tensors only after the
  ``igan_checkpoint_tensors`` hooks have run (the tests check both). A training step that finds the
  averages still in G stops with an error instead of training them.
  Under ``torchrun`` only rank 0 (``run.dist.is_main``), which draws the grid and writes the
  checkpoint, swaps.
- ``igan sample`` / ``igan evaluate``: **not directly.** They load the checkpoint's ``G.*`` weights,
  and no hook lets a plugin see a checkpoint's tensors when a model is loaded for inference.
  ``igan g-ema-export CHECKPOINT -o ema.safetensors`` (a command of this plugin) writes a copy whose
  ``G.*`` are the averaged weights; sample or evaluate that copy. Resuming training from the copy is
  refused.

What igan lacks for a cleaner version (proposed to igan's maintainers):

- ``igan_prepare_inference(models, config, tensors)``, fired by ``igan sample`` / ``igan evaluate``
  after they load a checkpoint's weights, with the plugin's own ``plugin.<name>.*`` tensors: the plugin
  would copy the averages into G there, and ``g-ema-export`` would no longer be needed;
- a wrapper hook around training-time sampling (the epoch grid, ``Run.generate``), e.g.
  ``@hookimpl(wrapper=True) def igan_generate(run, n, z)``, fired on every rank: swap in before
  ``yield``, swap out after it, instead of relying on the epoch-end order and on ``run.dist``.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer

import igan

__all__ = ["GenEma", "export_ema_checkpoint", "RUN_NAME"]

try:
    __version__ = metadata.version("igan-gen-ema")
except metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

# The name the per-run state is registered under: its checkpoint tensors are "plugin.<RUN_NAME>.<key>".
RUN_NAME = "gen_ema.run"
EMA_PREFIX = f"plugin.{RUN_NAME}.ema."


@igan.hookimpl
def igan_addoption(parser):
    parser.add("g_ema", float, None, min=0.0, max=1.0,
               help="keep an exponential moving average of G's weights with this decay (e.g. 0.999) and "
                    "draw the epoch sample grids from it (off by default)")


@igan.hookimpl
def igan_configure(config, pm):
    decay = config.opt("g_ema")
    if decay is None:
        return
    if not 0.0 < decay < 1.0:
        raise igan.UsageError(f"--g-ema must be a decay strictly between 0 and 1, got {decay}",
                              hint="for example --g-ema 0.999 (an average over about the last 1000 updates)")
    pm.register(GenEma(decay), RUN_NAME)


@igan.hookimpl
def igan_register_commands(register):
    register("g-ema-export", g_ema_export)


class GenEma:
    """The per-run state: the averaged copy of each parameter of G, and the number of updates."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.names: list[str] = []
        self.params: list = []  # G's parameters (the live tensors)
        self.ema: list = []  # their averages, same order
        self.backup: list | None = None  # G's trained weights while the averages are swapped in
        self.updates = 0

    # -- training ------------------------------------------------------------------------------

    @igan.hookimpl
    def igan_train_start(self, run):
        named = list(run.generator.named_parameters())
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.ema = [p.detach().clone() for p in self.params]
        self.updates = 0

    @igan.hookimpl
    def igan_after_optimizer_step(self, step, net):
        if net != "G":
            return
        if self.backup is not None:
            raise igan.IganError("gen_ema: G still holds the averaged weights during a training step",
                                 hint="igan no longer writes a checkpoint after the epoch-end grid; "
                                      "report this to the igan-gen-ema maintainers")
        self.updates += 1
        for avg, p in zip(self.ema, self.params):  # ema <- decay * ema + (1 - decay) * theta
            avg.lerp_(p.detach(), 1.0 - self.decay)

    # -- using the average -----------------------------------------------------------------------

    def swap_in(self) -> None:
        """Copy the averages into G (keeping the trained weights to put back)."""
        import torch

        if self.backup is not None:
            return
        with torch.no_grad():
            self.backup = [p.detach().clone() for p in self.params]
            for p, avg in zip(self.params, self.ema):
                p.copy_(avg)

    def swap_out(self) -> None:
        """Put G's trained weights back (exactly, in place)."""
        import torch

        if self.backup is None:
            return
        with torch.no_grad():
            for p, raw in zip(self.params, self.backup):
                p.copy_(raw)
        self.backup = None

    @igan.hookimpl(tryfirst=True)
    def igan_epoch_end(self, run, epoch):
        # igan draws the epoch's sample grid right after the igan_epoch_end hooks, then writes the
        # checkpoint: the averages stay in G until igan_checkpoint_tensors below. Under torchrun only
        # rank 0 draws the grid and writes the checkpoint (other ranks never call igan_checkpoint_tensors),
        # so only rank 0 swaps; the other ranks' G keeps training with its own weights.
        dist = getattr(run, "dist", None)
        if dist is None or dist.is_main:
            self.swap_in()
        return None

    @igan.hookimpl
    def igan_train_end(self, run):
        self.swap_out()  # only needed if the host ever stops checkpointing after the grid

    # -- checkpoints ---------------------------------------------------------------------------

    @igan.hookimpl
    def igan_checkpoint_tensors(self, run):
        # igan has already collected G's state dict, whose tensors share storage with G's parameters,
        # and copies them only after this hook: restoring in place makes G.* the trained weights.
        self.swap_out()
        import torch

        out = {"updates": torch.tensor(self.updates, dtype=torch.int64)}
        out.update({f"ema.{name}": avg for name, avg in zip(self.names, self.ema)})
        return out

    @igan.hookimpl
    def igan_restore_tensors(self, run, tensors):
        if "exported" in tensors:
            raise igan.UsageError("this checkpoint was written by `igan g-ema-export`: its G holds the "
                                  "averaged weights, so training cannot resume from it",
                                  hint="resume from the run's own checkpoints/last.safetensors")
        missing = [name for name in self.names if f"ema.{name}" not in tensors]
        if "updates" not in tensors or missing:
            raise igan.IganError("the checkpoint has no (or an incomplete) G moving average",
                                 hint="resume with the --g-ema setting the checkpoint was made with")
        import torch

        with torch.no_grad():
            for name, avg in zip(self.names, self.ema):
                avg.copy_(tensors[f"ema.{name}"])
        self.updates = int(tensors["updates"])


# ------------------------------------------------------------------------------------------------
# igan g-ema-export: a checkpoint whose G is the average, for `igan sample` / `igan evaluate`


def export_ema_checkpoint(checkpoint: Path, out: Path) -> int:
    """Write a copy of ``checkpoint`` whose ``G.<name>`` tensors are the moving averages
    ``plugin.gen_ema.run.ema.<name>``; returns the number of tensors replaced."""
    import os
    import tempfile

    import torch
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file, save_file

    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_file():
        raise igan.IganError(f"checkpoint not found: {checkpoint}",
                             hint="pass the .safetensors file inside a run's checkpoints/ folder")
    if out.resolve() == checkpoint.resolve():
        raise igan.UsageError("--out is the checkpoint itself",
                              hint="write the averaged copy to another file")
    try:
        with safe_open(str(checkpoint), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(checkpoint))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise igan.IganError(f"{checkpoint} is not a readable safetensors checkpoint ({exc})",
                             hint="pass a checkpoint written by `igan train --g-ema ...`") from exc
    ema = {k[len(EMA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)}
    if not ema:
        raise igan.IganError(f"{checkpoint} holds no moving average of G",
                             hint="train with --g-ema DECAY (e.g. 0.999) to keep one")
    missing = sorted(name for name in ema if f"G.{name}" not in tensors)
    if missing:
        raise igan.IganError(f"{checkpoint}: the averages do not match G's weights ({missing[0]} ...)",
                             hint="the file was edited or written by an incompatible plugin version")
    for name, value in ema.items():
        tensors[f"G.{name}"] = value.clone()  # safetensors refuses two names for one storage
    tensors[f"plugin.{RUN_NAME}.exported"] = torch.tensor(1, dtype=torch.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(ema)


def g_ema_export(
    checkpoint: Annotated[Path, typer.Argument(help="a checkpoint of a run trained with --g-ema")],
    out: Annotated[Path, typer.Option("-o", "--out", help="where to write the averaged copy")] = Path(
        "ema.safetensors"),
) -> None:
    """Write a copy of a checkpoint whose generator weights are the moving average of --g-ema, for
    `igan sample` and `igan evaluate` (which load G.* weights)."""
    export_ema_checkpoint(checkpoint, out)
    print(out)
