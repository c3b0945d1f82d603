"""Rebuild a checkpoint's model pair for ``igan sample`` and ``igan evaluate``.

``sample`` and ``evaluate`` rebuild the exact model from a checkpoint's metadata: the model registry
entry, its kwargs and the run's technique options (``igan_modify_models`` runs again, because MBD and
VBN change the architecture), then load the weights straight onto the target device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from igan.errors import IganError

__all__ = ["Restored", "restore_models", "evaluation_discriminator"]


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


def evaluation_discriminator(restored):
    """The discriminator a semi-supervised checkpoint is tested with: the moving average of D when the
    checkpoint holds it (``plugin.semisup.run.ema.*``), else D's own weights; eval mode, on its device.
    Returns (module, whether the average was used)."""
    import copy

    from igan.checkpoint import prefixed
    from igan.console import warn

    config = restored.config
    if config.command != "semisup":
        raise IganError(f"this checkpoint is of an unsupervised `igan {config.command}` run: its discriminator "
                        "has no class logits to measure a test error with",
                        hint="use a checkpoint of `igan semisup`, or a sample-quality metric "
                             "(--metric classifier-score, is, fid)")
    d = restored.models.discriminator
    ema_state = prefixed(restored.tensors, "plugin.semisup.run.ema")
    if ema_state:
        d = copy.deepcopy(d)
        try:
            d.load_state_dict(ema_state)
        except RuntimeError as exc:
            raise IganError(f"the moving average of D in the checkpoint does not fit D: "
                            f"{str(exc).splitlines()[0]}", hint="the checkpoint may be damaged") from exc
    else:
        warn("the checkpoint holds no moving average of D (plugin.semisup.run.ema.*); using D's own weights")
    return d.to(restored.device).eval(), bool(ema_state)
