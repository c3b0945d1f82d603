"""The commands besides ``train``: ``sample`` and ``plugins`` (``semisup`` and ``evaluate`` plug in here).

``sample`` and ``evaluate`` rebuild the exact model from a checkpoint's metadata: the model registry
entry, its kwargs and the run's technique options (``igan_modify_models`` runs again, because MBD and
VBN change the architecture), then load the weights straight onto the target device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from igan.config import SEED_MAX
from igan.errors import IganError, UsageError

__all__ = ["register_builtin", "Restored", "restore_models"]


@dataclass
class Restored:
    """A model pair rebuilt from a checkpoint, with what is needed to turn outputs into pixels."""

    models: Any
    config: Any
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    device: torch.device
    path: Path | None = None  # the checkpoint, for messages

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        from igan.datasets.base import outputs_to_uint8

        d = self.meta["data"]
        return outputs_to_uint8(x, d["scale"], d["shift"], d["max_value"])

    @torch.no_grad()
    def generate(self, n: int, seed: int, chunk: int = 1000):
        """uint8 [N, C, H, W] batches of at most ``chunk`` samples, lazily (50k samples fit in memory)."""
        from igan.models import sample_z

        gen = torch.Generator().manual_seed(seed)
        g = self.models.generator
        for i in range(0, n, chunk):
            z = sample_z(min(chunk, n - i), self.models.z_dim, self.models.z_dist, "cpu", generator=gen)
            x = g(z.to(self.device))
            if not bool(x.isfinite().all()):  # NaN pixels would turn into black images and a score
                raise IganError(f"the generator of {self.path or 'the checkpoint'} produced non-finite "
                                "outputs (NaN or infinity)", hint="the run diverged, or a plugin's sampling "
                                "generator is broken; use an earlier checkpoint")
            yield self.to_uint8(x).cpu()


def restore_models(path: Path, device_name: str = "auto", pm=None) -> Restored:
    """Rebuild a checkpoint's models (``path``: the file, or a run directory's last checkpoint).

    Plugins that are missing here are fine when they played no part in the run, or declared that they
    do not affect inference (``igan.ownership``); a missing plugin that may change the model refuses."""
    from igan.checkpoint import load_checkpoint, resolve_checkpoint
    from igan.config import RunConfig
    from igan.ownership import inference_options
    from igan.plugins import get_plugin_manager
    from igan.train import build_models, configure, load_weights, model_registry, resolve_device

    path = resolve_checkpoint(path)
    from igan.compiling import compile_mode
    from igan.train import refuse_nonfinite

    device = resolve_device(device_name)
    compile_mode()  # a bad IGAN_COMPILE fails before any work
    tensors, meta = load_checkpoint(path, device, require=("data",))
    refuse_nonfinite(tensors, path)
    config = RunConfig.from_dict(meta["config"])
    pm = pm or get_plugin_manager()
    from igan.options import collect_options

    parser = collect_options(pm)
    known = parser.options
    for name, why in parser.value_problems(config.options):  # bounds and types, before a model is built
        raise IganError(f"{path}: checkpoint metadata config.options.{name} {why}",
                        hint="the metadata was edited or damaged; use checkpoints/last.safetensors of a run")
    for name, spec in known.items():  # loggers etc. play no part in rebuilding the model
        if spec.run_only and name in config.options:
            config.options[name] = spec.default
    for name in inference_options(path, meta, tensors, pm, parser):
        config.options.pop(name, None)
    registry = model_registry(pm)
    if config.model not in registry:
        raise IganError(f"{path} uses model {config.model!r}, which no installed plugin provides",
                        hint="install the plugin that registers it")
    configure(pm, config)
    d = meta["data"]
    value_range = (d["shift"], d["max_value"] * d["scale"] + d["shift"])
    models = build_models(pm, config, registry[config.model], tuple(d["image_shape"]), value_range)
    load_weights(models, tensors, path, "the file was edited or written by an incompatible plugin version")
    from igan.checkpoint import prefixed
    from igan.plugins import call_impl

    for impl in pm.hook.igan_prepare_inference.get_hookimpls():  # each plugin sees its own tensors
        call_impl(impl, "igan_prepare_inference", models=models, config=config,
                  tensors=prefixed(tensors, f"plugin.{impl.plugin_name}"))
    models.generator.to(device)
    models.discriminator.to(device).eval()  # noise/dropout off; G keeps batch statistics (reference)
    return Restored(models, config, meta, tensors, device, Path(path))


def sample(
    checkpoint: Annotated[Path, typer.Argument(
        help="a .safetensors checkpoint written by igan, or a run directory (its last checkpoint)")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="number of images")] = 64,
    out: Annotated[Path, typer.Option("-o", "--out", help="grid.png, images.npz, or a folder for PNGs")] = Path(
        "samples.png"),
    seed: Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, help="noise seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda")] = "auto",
) -> None:
    """Write samples from a checkpoint: a PNG grid, an .npz of uint8 NHWC images, or a folder of PNGs."""
    from igan.fileio import make_dirs, remove_created, writing
    from igan.images import save_images

    folder = out.suffix.lower() not in (".png", ".npz")
    created = make_dirs(out if folder else out.parent, "-o folder")  # before any work: a file there, read-only, ...
    try:
        restored = restore_models(checkpoint, device)
        if out.suffix.lower() == ".png" and n > 4096:
            raise UsageError(f"a grid of {n} images is too large", hint="write an .npz or a folder for many samples")
        with writing(out):
            if not folder:
                save_images(torch.cat(list(restored.generate(n, seed))), out)
            else:
                written = 0
                for chunk in restored.generate(n, seed):
                    save_images(chunk, out, start=written)
                    written += chunk.shape[0]
    except BaseException:
        remove_created(created)
        raise
    print(out)


def plugins(as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False) -> None:
    """List plugins: name, version, source, hooks implemented (and broken ones with their error)."""
    from rich.table import Table

    from igan.console import stderr
    from igan.plugins import get_plugin_manager, plugin_infos

    from igan.cli import core_owned

    rows = plugin_infos(get_plugin_manager(reserved=core_owned(), strict=False))  # broken ones are listed
    if as_json:
        print(json.dumps([{"name": r.name, "version": r.version, "source": r.source, "module": r.module,
                           "hooks": r.hooks, "run_hooks": {cls: hooks for cls, hooks in r.run_hooks},
                           "affects_inference": r.affects_inference, "error": r.error} for r in rows], indent=2))
        return
    table = Table("name", "version", "source", "hooks")

    def short(hooks: list[str]) -> str:
        return ", ".join(h.removeprefix("igan_") for h in hooks)

    for r in rows:
        if r.error:
            table.add_row(r.name, r.version, r.source, f"[red]broken: {r.error}[/]")
            continue
        # the hooks of the objects the plugin registers per run (igan_configure) fire during the run
        per_run = "".join(f"\nper run ({cls}): {short(hooks)}" for cls, hooks in r.run_hooks)
        table.add_row(r.name, r.version, r.source, short(r.hooks) + per_run)
    stderr.print(table)
    print("\n".join(r.name for r in rows))


def register_builtin(app: typer.Typer, pms, parser, training_command) -> None:
    app.command("sample")(sample)
    app.command("plugins")(plugins)
    from igan import evaluate
    evaluate.register(app, pms)
    from igan import semisup_cli

    semisup_cli.register(app, pms, parser, training_command)
    from igan import report

    report.register(app)
