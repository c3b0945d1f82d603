"""TensorBoard logging (``--tensorboard``): a view of the run, not its record.

With the flag, each run also writes TensorBoard event files to ``<run_dir>/tensorboard/`` through
``torch.utils.tensorboard.SummaryWriter`` (which needs the ``tensorboard`` package, the
``igan[tensorboard]`` extra):

- every scalar ``igan_log`` receives, under its own key (``loss/D``, ``loss/G``, ``loss/G/ha``, ``fm``,
  ``test_error``, ...), at the step it was logged;
- the learning rates of both optimizers (``lr/G``, ``lr/D``) at each logging point;
- the grid of samples from the fixed noise (the one saved as ``samples/epoch_NNNN.png``) at each epoch end;
- the run's config (and the plugin versions) as text when the first event is written.

``metrics.jsonl`` stays the source of truth; nothing here changes the run. In a distributed run only
rank 0 writes (as it alone writes metrics.jsonl). The writer is opened at the first event, so on
``--resume`` it knows the first step it writes and purges the events a crashed continuation left at or
after that step (``SummaryWriter(purge_step=...)``).
"""

from __future__ import annotations

import json
from typing import Any

from igan.errors import UsageError
from igan.plugins import hookimpl

# A logger: `igan sample`/`evaluate` rebuild the same models without this plugin.
affects_inference = False

HINT = 'pip install "igan[tensorboard]"'
PANEL = "Logging"


@hookimpl
def igan_addoption(parser):
    parser.add("tensorboard", bool, panel=PANEL, run_only=True,
               help="also write TensorBoard event files to <run>/tensorboard/ (losses, metrics, learning "
                    f"rates, sample grids, config); needs {HINT}")


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, imported on first use (it pulls in tensorboard)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise UsageError(f"--tensorboard needs the tensorboard package, which is not installed ({exc})",
                         hint=HINT) from exc
    except Exception as exc:  # noqa: BLE001 - a broken install (e.g. an incompatible protobuf)
        raise UsageError(f"--tensorboard: the tensorboard package failed to import: "
                         f"{type(exc).__name__}: {exc}", hint=f"reinstall it: {HINT}") from exc
    return SummaryWriter


@hookimpl
def igan_configure(config, pm):
    if config.opt("tensorboard"):
        writer_class = summary_writer_class()  # a missing package is a usage error before any training
        pm.register(TensorBoardLogger(writer_class), "tensorboard.run")


def _upscale(grid, factor: int):
    return grid.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else grid


class TensorBoardLogger:
    """Per-run state: the writer, opened at the first event."""

    def __init__(self, writer_class: Any) -> None:
        self.writer_class = writer_class
        self.writer = None
        self.lr_step: int | None = None

    def _open(self, run, step: int):
        if self.writer is None:
            purge = step if run.config.resume else None
            self.writer = self.writer_class(log_dir=str(run.run_dir / "tensorboard"), purge_step=purge)
            self.writer.add_text("config", _code_block(json.loads(run.config.to_json())), step)
            infos = getattr(run.pm, "igan_infos", {})
            plugins = {name: info.version for name, info in infos.items() if info.error is None}
            self.writer.add_text("plugins", _code_block(plugins), step)
        return self.writer

    @hookimpl
    def igan_log(self, run, step, values):
        if not _is_main(run):
            return
        writer = self._open(run, step)
        for key, value in values.items():
            writer.add_scalar(key, float(value), step)
        if self.lr_step != step:  # igan_log fires twice at an epoch end (losses, then metrics)
            self.lr_step = step
            for net, opt in (("G", run.opt_g), ("D", run.opt_d)):
                for i, group in enumerate(opt.param_groups):
                    writer.add_scalar(f"lr/{net}" if i == 0 else f"lr/{net}/{i}", float(group["lr"]), step)
        writer.flush()  # a run killed between logging points keeps what it logged

    @hookimpl
    def igan_epoch_end(self, run, epoch):
        from igan.images import make_grid

        if not _is_main(run):
            return None
        writer = self._open(run, run.step)
        images = run.generate(run.fixed_z.shape[0], run.fixed_z)
        grid = _upscale(make_grid(images), 4 if max(images.shape[-2:]) < 64 else 1)  # as samples/*.png
        writer.add_image("samples", grid, run.step, dataformats="HWC")
        writer.flush()
        return None

    @hookimpl
    def igan_train_end(self, run):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _is_main(run) -> bool:
    dist = getattr(run, "dist", None)
    return dist is None or dist.is_main


def _code_block(data: dict[str, Any]) -> str:
    """JSON as a markdown code block (TensorBoard renders text summaries as markdown)."""
    return "\n".join("    " + line for line in json.dumps(data, indent=2, sort_keys=True).splitlines())
