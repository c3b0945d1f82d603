"""The one training step and the loop around it: the only place where training hooks fire.

One step (``train_step``), in this fixed order (also in ``docs/hooks.md``)::

    batch = sampler.next();  z ~ p(z);  fake = G(z) without gradients
    D phase   d_real = D(x_unl); d_fake = D(fake); d_lab = D(x_lab) if labelled
              loss_D = igan_discriminator_loss(step) + sum(igan_extra_loss(step, net="D"))
              D optimizer step;  igan_after_optimizer_step(step, net="D")
    G phase   (g_steps times)  fresh z ~ p(z);  fake = G(z)
              d_real_g = D(x_real_g) (first update) or the D phase's d_real;  d_fake = D(fake), D frozen
              loss_G = igan_generator_loss(step) + sum(igan_extra_loss(step, net="G"))
              G optimizer step;  igan_after_optimizer_step(step, net="G")

Real, labelled and generated batches go through D in separate passes (paper-notes §1.1): this matters
for minibatch discrimination and for noise/dropout. Weight-normed weights are computed once per phase,
not once per pass (``parametrize.cached()``; off with stateful parametrizations such as spectral norm).
Techniques return loss terms or modify modules; they never own an optimizer or re-run a forward pass
the step already did. Loss values stay on the device: the loop synchronises only every ``log_every``
steps (``.item()`` is a host sync).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
import torch
from torch import nn
from torch.nn.utils import parametrize

from igan import __version__
from igan.checkpoint import (checkpoint_metadata, flatten_optimizer, load_checkpoint, nonfinite, prefixed,
                             save_checkpoint, unflatten_optimizer)
from igan.compiling import MaybeCompiled
from igan.config import RunConfig
from igan.datasets import ImageDataset, load_dataset
from igan.distributed import Dist
from igan.errors import IganError, Terminated, UsageError
from igan.fileio import os_hint, writing
from igan.layers import cacheable_parametrizations
from igan.models import DOut, ModelDef, Models, initialize_from_data, sample_z
from igan.plugins import call_impl
from igan.sampler import Batch, BatchSampler
from igan.schedules import lr_factor

__all__ = ["LabelTargets", "Step", "Run", "ParallelMember", "INPUT_GRAD_FIELDS", "build_run", "discriminator_phase",
           "generator_phase", "train_step", "fit",
           "fit_runs", "OneRun", "Terminated"]


@dataclass(frozen=True)
class LabelTargets:
    """Targets of the default GAN losses: D's real target (fakes are always 0) and G's target."""

    real: float = 1.0
    generator: float = 1.0


@dataclass
class Step:
    """What the step hooks see. Tensors are on the training device."""

    run: "Run"
    it: int  # 0-based index of this step
    x_real: torch.Tensor
    z: torch.Tensor  # the noise of the current phase: the D phase's, then each G update's own
    fake: torch.Tensor  # G(z): without gradients in the D phase, with them in the G phase
    d_real: DOut
    d_fake: DOut
    x_lab: torch.Tensor | None = None
    y_lab: torch.Tensor | None = None
    d_lab: DOut | None = None
    d_real_g: DOut | None = None  # real-data D outputs the G loss compares against (feature matching)
    net: str = "D"
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    # D as this phase calls it (eager, compiled, DDP-wrapped, or vmapped weights under --parallel): a
    # loss hook that needs one more D pass calls this, never run.discriminator (see docs/hooks.md).
    discriminator: Any = None

    @property
    def config(self) -> RunConfig:
        return self.run.config

    @property
    def targets(self) -> LabelTargets:
        return self.run.targets

    def log(self, name: str, value: torch.Tensor) -> None:
        """Record a scalar for the logs (kept on the device; synchronised at logging points)."""
        self.logs[name] = value.detach()


@dataclass(frozen=True)
class ParallelMember:
    """A run trained with others in one process (``--seeds K --parallel``): its index among the K, and
    the mode (``batched``: the loss hooks run once for all K under vmap; ``interleaved``: each run's own
    step in turn)."""

    index: int
    size: int
    mode: str


@dataclass
class Run:
    """Everything one run holds. Plugins may read it; only the loop advances it."""

    config: RunConfig
    pm: pluggy.PluginManager
    dataset: ImageDataset
    model_def: ModelDef
    models: Models
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sampler: BatchSampler
    device: torch.device
    run_dir: Path
    targets: LabelTargets = LabelTargets()
    step: int = 0
    fixed_z: torch.Tensor | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    d_trainable: list[nn.Parameter] = field(default_factory=list)
    dist: Dist = Dist()
    g_exec: nn.Module | None = None  # what the step calls: the DDP wrappers when distributed
    d_exec: nn.Module | None = None
    d_frozen_exec: nn.Module | None = None  # D as the G phase calls it (no DDP: nothing to synchronise)
    cache_weights: bool = False  # compute parametrized (weight-normed) weights once per phase
    fast_path: bool = False  # --fast-path in effect (on CUDA it also captures the step: igan.capture)
    # Step tensors the D phase creates with requires_grad, because a plugin asked (``needs_input_grad``).
    input_grads: tuple[str, ...] = ()
    parallel: "ParallelMember | None" = None  # set when this run is one of --seeds K --parallel
    records: dict[str, Any] = field(default_factory=dict)  # igan.ownership.plugin_records, for checkpoints
    epochs_ended: int = 0  # the last epoch whose igan_epoch_end fired (kept across resumes)
    segments: list[dict[str, Any]] = field(default_factory=list)  # earlier training segments (resumes)
    segment_start: tuple[int, float] = (0, 0.0)  # (step, perf_counter) at which this segment started

    def __post_init__(self) -> None:
        self.g_exec = self.g_exec or self.models.generator
        self.d_exec = self.d_exec or self.models.discriminator
        self.d_frozen_exec = self.d_frozen_exec or self.models.discriminator

    @property
    def role(self) -> str:
        """``"gan"`` (a GAN run: `igan train`, or `igan semisup`'s K+1 GAN) or ``"baseline"`` (`igan semisup`'s
        supervised-only baseline: no G training, D learns from the labelled batch alone)."""
        return self.config.role

    @property
    def generator(self) -> nn.Module:
        return self.models.generator

    @property
    def discriminator(self) -> nn.Module:
        return self.models.discriminator

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    @property
    def total_steps(self) -> int:
        if self.config.steps is not None:
            return self.config.steps
        return self.config.epochs * self.steps_per_epoch

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def sample_z(self, n: int) -> torch.Tensor:
        return sample_z(n, self.models.z_dim, self.models.z_dist, self.device)

    def data(self, idx: torch.Tensor) -> torch.Tensor:
        return self.dataset.to_float(self.dataset.x_train[idx])

    @torch.no_grad()
    def generate(self, n: int, z: torch.Tensor | None = None, chunk: int = 500) -> torch.Tensor:
        """uint8 [n, C, H, W] samples, produced in chunks so large n does not run out of memory.

        Drawn from ``igan_sampling_generator``'s module when a plugin provides one (e.g. an EMA of G)."""
        g = self.pm.hook.igan_sampling_generator(run=self) or self.generator
        was_training = g.training
        g.eval()  # G's batch norm still uses batch statistics (reference), but never synchronises here
        try:
            out = []
            for i in range(0, n, chunk):
                zi = z[i:i + chunk] if z is not None else self.sample_z(min(chunk, n - i))
                out.append(self.dataset.to_uint8(g(zi)).cpu())
        finally:
            g.train(was_training)
        return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# building a run


DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str) -> torch.device:
    """The torch device for ``--device``: auto (CUDA when there is one), cpu, cuda, cuda:N or mps."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, sep, index = str(name).partition(":")
    if kind not in ("cpu", "cuda", "mps") or (sep and (kind != "cuda" or not index.isdigit())):
        raise UsageError(f"--device {name} is not a device igan can train on",
                         hint=f"use one of: {DEVICE_NAMES}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for, but PyTorch sees no CUDA device",
                         hint="use --device cpu, or install a CUDA build of PyTorch")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: there is no such CUDA device ({torch.cuda.device_count()} visible)",
                         hint=f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for, but PyTorch sees no MPS device",
                         hint="use --device cpu")
    return torch.device(name)


def model_registry(pm: pluggy.PluginManager) -> dict[str, ModelDef]:
    defs: dict[str, ModelDef] = {}

    def register(model_def: ModelDef) -> None:
        if model_def.name in defs:
            raise IganError(f"model {model_def.name!r} is registered twice", hint="disable one of the plugins")
        defs[model_def.name] = model_def

    pm.hook.igan_register_models(register=register)
    return defs


def build_models(pm: pluggy.PluginManager, config: RunConfig, model_def: ModelDef,
                 image_shape: tuple[int, int, int], value_range: tuple[float, float]) -> Models:
    """Build the pair from the registry, then let plugins modify it (MBD, VBN, the K-logit head)."""
    models = model_def.build(image_shape, 1, value_range=value_range, **config.model_kwargs)
    pm.hook.igan_modify_models(models=models, config=config)
    return models


def apply_model_defaults(config: RunConfig, model_def: ModelDef) -> None:
    d = model_def.defaults
    if config.batch_size is None:
        config.batch_size = d.get("batch_size", 100)
    if config.lr is None:
        config.lr = d.get("lr", 3e-4)
    if config.epochs is None and config.steps is None:
        config.epochs = d.get("epochs", 10)
    if config.lr_decay_from is None:
        config.lr_decay_from = d.get("lr_decay_from", 0)


def configure(pm: pluggy.PluginManager, config: RunConfig) -> None:
    """Validate the configuration and let plugins register their per-run state."""
    if config.adam not in ("reference", "torch"):
        raise UsageError(f"--adam must be 'reference' or 'torch', got {config.adam!r}",
                         hint="reference: eps inside the square root, as the paper's code (default); torch: "
                              "torch.optim.Adam (fused)")
    from igan.schedules import SCHEDULES

    if config.lr_schedule not in SCHEDULES:
        raise UsageError(f"--lr-schedule must be one of {', '.join(SCHEDULES)}, got {config.lr_schedule!r}",
                         hint="linear: the reference scripts' decay (default); cosine: half a cosine to 0")
    if config.g_loss not in ("ns", "minimax"):
        raise UsageError(f"--g-loss must be 'ns' or 'minimax', got {config.g_loss!r}",
                         hint="ns = -log D(G(z)) (default); minimax = log(1 - D(G(z)))")
    check_settings(config)
    pm.hook.igan_configure(config=config, pm=pm)
    from igan.plugins import check_hookimpls, guard_hooks

    check_hookimpls(pm)  # plugins registered during configure are checked too
    guard_hooks(pm)


def check_settings(config: RunConfig) -> None:
    """A usage error for the first core setting igan cannot run with (``--lr inf``, ``--lr nan``, a seed
    out of range, ...: ``igan.config.config_problems``), before anything is trained."""
    from dataclasses import asdict

    from igan.config import CHOICES, config_problems

    # choices are reported by ``configure`` with a hint each; plugin options by their parser
    for name, why in config_problems({k: v for k, v in asdict(config).items() if k not in ("options", *CHOICES)}):
        flag = "--" + name.split(".")[-1].replace("_", "-")
        raise UsageError(f"{flag} {why}", hint=f"run `igan {config.command} --help` for the options")


INPUT_GRAD_FIELDS = ("x_real", "fake", "x_lab")


def requested_input_grads(pm: pluggy.PluginManager) -> tuple[str, ...]:
    """The step tensors that registered plugins ask to be created with ``requires_grad`` (attribute
    ``needs_input_grad = ("x_real", ...)`` on the module or per-run object), so a loss hook can
    differentiate D's outputs with respect to its inputs (R1, R2 penalties) without another D pass."""
    wanted: set[str] = set()
    for name, plugin in pm.list_name_plugin():
        asked = getattr(plugin, "needs_input_grad", ())
        asked = (asked,) if isinstance(asked, str) else tuple(asked or ())
        bad = [a for a in asked if a not in INPUT_GRAD_FIELDS]
        if bad:
            raise IganError(f"plugin {name!r} asks for gradients of {', '.join(map(repr, bad))}",
                            hint=f"needs_input_grad may list {', '.join(INPUT_GRAD_FIELDS)}")
        wanted.update(asked)
    return tuple(f for f in INPUT_GRAD_FIELDS if f in wanted)


def build_run(config: RunConfig, pm: pluggy.PluginManager, run_dir: Path | None = None) -> Run:
    from igan.distributed import setup

    from igan.compiling import compile_mode

    dist, device_name = setup(config.device)
    device = resolve_device(device_name)
    compile_mode()  # a bad IGAN_COMPILE fails now, not at the first compiled call
    torch.manual_seed(config.seed)  # the same on every rank: identical initial weights
    dataset, spec = load_dataset(pm, config.dataset, config.data_dir, config.download, config)
    if device.type != "cpu":  # the whole set moves to the device: refuse it there if it cannot fit
        from igan.datasets.memory import require_memory

        require_memory(dataset.nbytes, device, f"dataset {dataset.name} ({dataset.x_train.shape[0]} "
                       f"training images of {'x'.join(map(str, dataset.image_shape))})",
                       hint="use fewer or smaller images, or a device with more free memory")
    dataset = dataset.to(device)
    config.num_classes = dataset.num_classes
    config.dataset_info = dict(dataset.info)
    models_by_name = model_registry(pm)
    config.model = config.model or spec.model_for(dataset)
    if config.model not in models_by_name:
        raise UsageError(f"unknown model {config.model!r}", hint=f"choose one of: {', '.join(sorted(models_by_name))}")
    model_def = models_by_name[config.model]
    from igan.recipes import apply_recipe

    apply_recipe(config, model_def)  # a recipe's defaults come before the model's own
    if not model_def.accepts(dataset.image_shape):
        h, w = dataset.image_shape[-2:]
        fits = sorted(name for name, d in models_by_name.items() if d.accepts(dataset.image_shape))
        raise UsageError(f"model {config.model} takes {model_def.sizes_text()} images, but {dataset.name} has "
                         f"{h}x{w} images", hint=f"models that fit {h}x{w}: {', '.join(fits) or 'none installed'} "
                         f"(without --model, {dataset.name} trains {spec.model_for(dataset)})")
    apply_model_defaults(config, model_def)
    if config.batch_size % dist.world:
        raise UsageError(f"--batch-size {config.batch_size} does not split evenly over {dist.world} processes",
                         hint=f"use a multiple of {dist.world}; each process takes an equal shard of every batch")
    from igan.options import collect_options

    parser = collect_options(pm)
    if config.resume:  # before igan_configure resolves anything: compare the settings as they were given
        check_compatible(config, checkpoint_metadata(config.resume)[0], Path(config.resume), parser)
    configure(pm, config)
    input_grads = requested_input_grads(pm)
    models = build_models(pm, config, model_def, dataset.image_shape, dataset.value_range)
    models.generator.to(device)
    models.discriminator.to(device)

    sampler = BatchSampler(dataset.x_train.shape[0], config.batch_size, device, config.seed)
    # Data-dependent init on 500 random training images, as the reference (paper-notes §1.8).
    init_idx = torch.randperm(dataset.x_train.shape[0], generator=torch.Generator().manual_seed(config.seed))
    x_init = dataset.to_float(dataset.x_train[init_idx[:500].to(device)])
    initialize_from_data(models, x_init, sample_z(x_init.shape[0], models.z_dim, models.z_dist, device))

    g_params = [p for p in models.generator.parameters() if p.requires_grad]
    d_params = [p for p in models.discriminator.parameters() if p.requires_grad]
    from igan.optim import make_optimizer

    betas = (config.beta1, config.beta2)
    g_exec, d_exec = models.generator, models.discriminator
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        # no buffers need syncing (G's batch norm keeps no running statistics), and syncing them before
        # each of D's separate passes would break autograd (pytorch#175024)
        if config.options.get("sync_bn"):
            from igan.layers import BatchNormNoScale

            for m in models.generator.modules():
                if isinstance(m, BatchNormNoScale):
                    m.sync = True
        g_exec = DDP(models.generator, device_ids=ids, forward_sync_buffers=False)
        d_exec = DDP(models.discriminator, device_ids=ids, forward_sync_buffers=False)
        torch.manual_seed(config.seed * 1009 + dist.rank)  # per-rank noise, derived from the run seed
    run = Run(config=config, pm=pm, dataset=dataset, model_def=model_def, models=models,
              opt_g=make_optimizer(config.adam, g_params, config.lr, betas),
              opt_d=make_optimizer(config.adam, d_params, config.lr, betas),
              sampler=sampler, device=device, run_dir=run_dir or Path("."), d_trainable=d_params,
              dist=dist, input_grads=input_grads,
              **_executors(config, device, models, g_exec, d_exec, input_grads))
    from igan.ownership import plugin_records

    run.records = plugin_records(pm, parser, config)
    run.targets = pm.hook.igan_label_targets(config=config) or LabelTargets()
    fixed = torch.Generator().manual_seed(config.seed + 1)
    run.fixed_z = sample_z(64, models.z_dim, models.z_dist, "cpu", generator=fixed).to(device)
    return run


def _executors(config: RunConfig, device: torch.device, models: Models, g_exec: nn.Module,
               d_exec: nn.Module, input_grads: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the step calls. The fast path (``--fast-path``, default on CUDA): the models' forward
    passes through ``torch.compile`` (fused elementwise work, fewer kernel launches; eager again if
    compiling fails) and TF32 matmuls. Off on CPU by default: the compiled MNIST MLPs measured about
    1.5x slower there than eager (docs/performance.md). Without it, weight-normed weights are cached
    per phase; compiled graphs compute them inside the graph instead. When a plugin asks for input
    gradients (an input-gradient penalty differentiates D's backward), the D phase's D stays eager:
    torch.compile's graphs cannot be differentiated twice."""
    fast = config.fast_path if config.fast_path is not None else device.type == "cuda"
    if not fast:
        return {"g_exec": g_exec, "d_exec": d_exec, "d_frozen_exec": models.discriminator,
                "cache_weights": cacheable_parametrizations(models.generator, models.discriminator)}
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls (cuDNN convolutions use TF32 already)
    return {"g_exec": MaybeCompiled(g_exec), "d_exec": d_exec if input_grads else MaybeCompiled(d_exec),
            "d_frozen_exec": MaybeCompiled(models.discriminator), "cache_weights": False, "fast_path": True}


# ----------------------------------------------------------------------------------------------
# the step


def _extra_terms(step: Step, net: str) -> torch.Tensor | float:
    total: torch.Tensor | float = 0.0
    for terms in step.run.pm.hook.igan_extra_loss(step=step, net=net):
        for name, value in (terms or {}).items():
            step.log(f"loss/{net}/{name}", value)
            total = total + value
    return total


def _update(opt: torch.optim.Optimizer, loss: torch.Tensor, step: Step, net: str) -> None:
    """One optimizer update of ``net``, then the after-step hook (under no_grad) and the log entry."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        step.run.pm.hook.igan_after_optimizer_step(step=step, net=net)
    step.log(f"loss/{net}", loss)


def _weights_once(run: Run) -> contextlib.AbstractContextManager:
    """Within a phase no parameter changes until its optimizer step, so each weight-normed weight
    W = g v / ||v|| can be computed once and shared by the phase's D passes (and its backward runs
    once); the cache is dropped when the phase's losses are built, before the update."""
    return parametrize.cached() if run.cache_weights else contextlib.nullcontext()


def discriminator_phase(run: Run, G, D, z: torch.Tensor, x_real: torch.Tensor, x_lab: torch.Tensor | None = None,
                        y_lab: torch.Tensor | None = None) -> tuple[torch.Tensor, Step]:
    """D's loss for one step: G(z) without gradients, D's passes in their fixed order (real, generated,
    labelled), then the loss hooks. Pure of optimizer state, so ``igan.parallel`` runs this same code
    under ``torch.func.vmap`` for K models at once."""
    with torch.no_grad():  # D's input only: G's updates draw their own z
        fake = G(z)
    wants = run.input_grads  # leaves with requires_grad, so d_real etc. differentiate w.r.t. them
    if "x_real" in wants:
        x_real = x_real.detach().requires_grad_(True)
    if "fake" in wants:
        fake = fake.detach().requires_grad_(True)
    if x_lab is not None and "x_lab" in wants:
        x_lab = x_lab.detach().requires_grad_(True)
    step = Step(run=run, it=run.step, x_real=x_real, z=z, fake=fake, d_real=D(x_real), d_fake=D(fake),
                discriminator=D)
    if x_lab is not None:
        step.x_lab, step.y_lab = x_lab, y_lab
        step.d_lab = D(x_lab)
    return run.pm.hook.igan_discriminator_loss(step=step) + _extra_terms(step, "D"), step


def generator_phase(step: Step, G, D, z: torch.Tensor, x_real_g: torch.Tensor | None = None,
                    first: bool = True) -> torch.Tensor:
    """G's loss for one G update with fresh noise ``z`` (D frozen by the caller). On the first update,
    the real batch G's loss compares against is D's view of ``x_real_g`` (an independent real batch,
    without gradients) or else the D phase's real batch."""
    step.net = "G"
    step.z = z
    step.discriminator = D
    step.fake = G(z)
    if first and x_real_g is not None:
        with torch.no_grad():  # only its (detached) features are used
            step.d_real_g = D(x_real_g)
    elif first:
        step.d_real_g = step.d_real
    step.d_fake = D(step.fake)
    return step.run.pm.hook.igan_generator_loss(step=step) + _extra_terms(step, "G")


def train_step(run: Run, batch: Batch | None = None) -> dict[str, torch.Tensor]:
    """One D update then ``g_steps`` G updates. Returns the step's logged scalars (device tensors).
    ``batch``: the step's indices when the caller drew them (``igan.capture`` keeps the sampler out of
    the captured graph); by default the run's sampler draws them."""
    batch = batch if batch is not None else run.sampler.next()
    shard = run.dist.shard  # each process takes its own part of the global batch
    n = run.config.batch_size // run.dist.world

    # ---- discriminator -----------------------------------------------------------------------
    with _weights_once(run):
        z = run.sample_z(n)
        labeled = shard(batch.labeled) if batch.labeled is not None else None
        loss_d, step = discriminator_phase(
            run, run.g_exec, run.d_exec, z, run.data(shard(batch.unlabeled)),
            run.data(labeled) if labeled is not None else None,
            run.dataset.y_train[labeled] if labeled is not None else None)
    _update(run.opt_d, loss_d, step, "D")

    # ---- generator ---------------------------------------------------------------------------
    # D's parameters are frozen here so G's backward pass does no weight-gradient work for D; D is called
    # unwrapped (no DDP) because none of its gradients are synchronised in this phase.
    for p in run.d_trainable:
        p.requires_grad_(False)
    try:
        for k in range(run.config.g_steps):
            with _weights_once(run):  # one cache per G update: G changes between them
                # Fresh noise for every G update, as the reference code (its generator function draws
                # its own z) and the original GAN algorithm; not the D phase's batch.
                z = run.sample_z(n)
                x_real_g = (run.data(shard(batch.generator_real))
                            if k == 0 and batch.generator_real is not None else None)
                loss_g = generator_phase(step, run.g_exec, run.d_frozen_exec, z, x_real_g, first=k == 0)
            _update(run.opt_g, loss_g, step, "G")
    finally:
        for p in run.d_trainable:
            p.requires_grad_(True)
    return step.logs


# ----------------------------------------------------------------------------------------------
# checkpoints of a run


def run_state(run: Run) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    tensors.update({f"G.{k}": v for k, v in run.generator.state_dict().items()})
    tensors.update({f"D.{k}": v for k, v in run.discriminator.state_dict().items()})
    opt_g, groups_g = flatten_optimizer(run.opt_g, "opt_G")
    opt_d, groups_d = flatten_optimizer(run.opt_d, "opt_D")
    tensors.update(opt_g)
    tensors.update(opt_d)
    tensors.update({f"sampler.{k}": v for k, v in run.sampler.state_dict().items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if run.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(run.device)
    for impl in run.pm.hook.igan_checkpoint_tensors.get_hookimpls():
        extra = call_impl(impl, "igan_checkpoint_tensors", run=run) or {}
        tensors.update({f"plugin.{impl.plugin_name}.{k}": v for k, v in extra.items()})
    infos = getattr(run.pm, "igan_infos", {})
    meta = {"igan_version": __version__, "config": json.loads(run.config.to_json()),
            "plugins": {name: info.version for name, info in infos.items() if info.error is None},
            "plugin_records": run.records,
            "model": {"name": run.config.model, "kwargs": run.config.model_kwargs},
            "opt_groups": {"G": groups_g, "D": groups_d}, "step": run.step, "epoch": run.epoch,
            "epochs_ended": run.epochs_ended, "metrics": run.last_metrics, "segments": _segments(run),
            "data": {"name": run.dataset.name, "image_shape": list(run.dataset.image_shape),
                     "scale": run.dataset.scale, "shift": run.dataset.shift, "max_value": run.dataset.max_value,
                     "num_classes": run.dataset.num_classes}}
    return tensors, meta


def hook_args(impl: pluggy.HookImpl, **available: Any) -> dict[str, Any]:
    return {k: v for k, v in available.items() if k in impl.argnames}


def _segments(run: Run) -> list[dict[str, Any]]:
    """The training segments so far, this one included: [{"steps": [from, to], "seconds": s}, ...]."""
    start, t0 = run.segment_start
    current = [{"steps": [start, run.step], "seconds": round(time.perf_counter() - t0, 3)}] if t0 else []
    return [*run.segments, *current]


def save_run(run: Run, path: Path | None = None) -> Path:
    """Write the run's checkpoint (rank 0 only; the other ranks wait at a barrier)."""
    path = path or run.run_dir / "checkpoints" / "last.safetensors"
    if not run.dist.is_main:
        run.dist.barrier()
        return path
    tensors, meta = run_state(run)
    bad = nonfinite(tensors)
    if bad:  # never replace the last good checkpoint with diverged weights
        raise IganError(f"non-finite weights at step {run.step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}):"
                        f" the checkpoint {path} was not written", hint=_kept_hint(run, path))
    try:
        save_checkpoint(path, tensors, meta)
    except OSError as exc:
        kept = "the previous checkpoint is intact" if path.is_file() else "no checkpoint had been written yet"
        raise IganError(f"could not write checkpoint {path}: {exc.strerror or exc}",
                        hint=f"{os_hint(exc)}; {kept}") from exc
    run.pm.hook.igan_after_checkpoint(run=run, path=path)
    run.dist.barrier()
    return path


def _intact(run: Run) -> str | None:
    if (run.run_dir / "checkpoints" / "last.safetensors").is_file():
        return "the last checkpoint is intact: continue from it with --resume"
    return None


def _kept_hint(run: Run, path: Path | None = None) -> str:
    """What is left after a run diverged: its last checkpoint, if it wrote one (a resumed run's included)."""
    path = path or run.run_dir / "checkpoints" / "last.safetensors"
    kept = (f"the last good checkpoint ({path}) is kept" if path.is_file() else
            "no checkpoint had been written yet, so there is nothing to resume")
    return f"{kept}; lower --lr or check the technique settings"


def load_weights(models: Models, tensors: dict[str, torch.Tensor], path: Path, hint: str) -> None:
    """Load a checkpoint's G./D. tensors; a mismatch is a one-line error, not a state-dict traceback."""
    try:
        models.generator.load_state_dict(prefixed(tensors, "G"))
        models.discriminator.load_state_dict(prefixed(tensors, "D"))
    except RuntimeError as exc:
        raise IganError(f"{path} does not fit the model: {str(exc).splitlines()[0]}", hint=hint) from exc


def refuse_nonfinite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A checkpoint whose weights hold NaN or infinity (written by a run that diverged) is refused: its
    samples would be NaN images and its scores meaningless."""
    bad = nonfinite(tensors)
    if bad:
        raise IganError(f"{path} holds non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})",
                        hint="the run diverged before this checkpoint was written; use an earlier checkpoint, or "
                             "train again with a lower --lr")


def check_compatible(config: RunConfig, meta: dict[str, Any], path: Path, parser=None) -> None:
    """Refuse a checkpoint made with another model or technique set. Options the checkpoint predates
    count as their defaults; run-only options (loggers) may differ."""
    saved = RunConfig.from_dict(meta["config"])
    if saved.model != config.model or saved.model_kwargs != config.model_kwargs:
        raise IganError(f"{path} was made with model {saved.model} {saved.model_kwargs}, this run uses "
                        f"{config.model} {config.model_kwargs}", hint="resume with the settings the checkpoint was made with")
    before, now = saved.dataset_info.get("fingerprint"), config.dataset_info.get("fingerprint")
    if before and now and before != now:
        raise IganError(f"{path} was trained on other data than {config.dataset} {config.data_dir or ''} holds now "
                        f"(fingerprint {before} then, {now} now: images were added, removed or changed, or the "
                        "size or split differs)",
                        hint="resume with the data and dataset options the run was trained on, or start a new run")
    specs = parser.options if parser is not None else {}
    diff = {}
    for k, v in config.options.items():
        spec = specs.get(k)
        if spec is not None and spec.run_only:
            continue
        before = saved.options.get(k, spec.default if spec is not None else None)
        if before != v:
            diff[k] = (before, v)
    if diff:
        shown = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise IganError(f"{path} was made with another technique set ({shown})",
                        hint="resume with the technique flags the checkpoint was made with")


def restore_run(run: Run, path: Path) -> None:
    """Put a checkpoint's state into a built run (``--resume``). Refuses, before anything is written, a
    checkpoint with plugin state no registered object owns and a target below the checkpoint's step."""
    from igan.ownership import check_tensor_owners

    tensors, meta = load_checkpoint(path, run.device, require=("step", "opt_groups"))
    refuse_nonfinite(tensors, path)
    check_tensor_owners(path, tensors, run.pm)
    step = int(meta["step"])
    if step > run.total_steps:
        c = run.config
        target = f"--steps {c.steps}" if c.steps is not None else f"--epochs {c.epochs}"
        raise UsageError(f"{path} is at step {step}, beyond the new target {target} ({run.total_steps} steps)",
                         hint=f"give a target beyond step {step} (--steps or --epochs) to train further, or "
                              "leave both out to keep the run's own; nothing was written")
    load_weights(run.models, tensors, path, "the checkpoint was made with another architecture or technique set")
    groups = meta["opt_groups"]
    unflatten_optimizer(run.opt_g, prefixed(tensors, "opt_G"), groups["G"])
    unflatten_optimizer(run.opt_d, prefixed(tensors, "opt_D"), groups["D"])
    run.sampler.load_state_dict(prefixed(tensors, "sampler"))
    torch.set_rng_state(tensors["rng.torch"].cpu())
    if "rng.cuda" in tensors and run.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"].cpu(), run.device)
    run.step = step  # before the plugins, so they can rebuild schedules from it
    # Checkpoints before these records: the epochs completed (a partial last epoch may fire again).
    run.epochs_ended = int(meta.get("epochs_ended", step // run.steps_per_epoch))
    run.last_metrics = dict(meta.get("metrics") or {})
    run.segments = list(meta.get("segments") or [])
    for impl in run.pm.hook.igan_restore_tensors.get_hookimpls():
        own = prefixed(tensors, f"plugin.{impl.plugin_name}")
        call_impl(impl, "igan_restore_tensors", run=run, tensors=own)


# ----------------------------------------------------------------------------------------------
# the loop


class _MetricsLog:
    """Appends JSON lines to metrics.jsonl (rank 0 only: other ranks get a log that writes nothing)."""

    def __init__(self, path: Path, active: bool = True) -> None:
        self.f = None
        self.path = path
        if active:
            with writing(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                self.f = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.f is not None:
            with writing(self.path):
                self.f.write(json.dumps(record) + "\n")
                self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            f, self.f = self.f, None
            try:
                f.close()
            except OSError:  # buffered bytes that no longer fit: the write that failed already said so
                pass


def _check_finite(values: dict[str, float], step: int, who: str = "", run: Run | None = None) -> None:
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise IganError(f"non-finite loss at step {step}{who}: {', '.join(f'{k}={values[k]}' for k in bad)}",
                        hint=_kept_hint(run) if run is not None else
                        "the last good checkpoint is kept; lower --lr or check the technique settings")


class OneRun:
    """How ``fit`` drives a single run: its step is ``train_step`` and the global RNG is the run's own.
    The other driver is ``igan.parallel.ParallelRuns`` (K runs in one process, ``--parallel``): a driver
    has ``runs``, ``step()`` (one step of every run, their logs), ``active(i)`` (a context in which run
    i's random stream is the global one), ``restored()``, ``optimizers()`` (the ones its step updates,
    for the learning-rate schedule) and ``save(i)``."""

    def __init__(self, run: Run) -> None:
        self.runs = [run]
        self._step: Any = None  # train_step, or its CUDA-graph form (chosen at the first step: igan.capture)

    def step(self) -> list[dict[str, torch.Tensor]]:
        if self._step is None:
            from igan.capture import for_run

            self._step = for_run(self.runs[0])
        return [self._step()]

    def active(self, i: int) -> contextlib.AbstractContextManager:  # noqa: ARG002
        return contextlib.nullcontext()

    def restored(self) -> None:
        """Called after the train-start hooks and any ``--resume``; nothing to do for one run."""

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.runs[0].opt_g, self.runs[0].opt_d]

    def save(self, i: int) -> None:
        save_run(self.runs[i])


def fit(run: Run, resume: Path | None = None, progress: bool = True, label: str = "") -> dict[str, Any]:
    """Train to ``run.total_steps``; returns a summary. Writes checkpoints, samples and metrics.
    ``label`` is added to the phase the progress line shows (e.g. ``seed 3 (2/5)``)."""
    return fit_runs(OneRun(run), [resume], progress, label)[0]


def fit_runs(trainer: Any, resumes: list[Path | None], progress: bool = True, label: str = "") -> list[dict[str, Any]]:
    """The loop, for one run or K runs stepped together (``--parallel``): each run keeps its own
    checkpoints, samples, metrics and plugin state; the hooks fire per run, with that run's RNG."""
    from igan.console import TrainProgress
    from igan.images import make_grid, save_png

    runs: list[Run] = trainer.runs
    for i, run in enumerate(runs):
        with trainer.active(i):
            run.pm.hook.igan_train_start(run=run)
            if resumes[i] is not None:
                restore_run(run, resumes[i])
    trainer.restored()
    first = runs[0]
    main = first.dist.is_main
    if main:  # only now: a refused resume must not touch the run directory
        from igan.fileio import make_dirs, write_text

        for run in runs:
            make_dirs(run.run_dir, "run directory")
            with writing(run.run_dir / "config.json"):
                write_text(run.run_dir / "config.json", json.dumps(json.loads(run.config.to_json()), indent=2) + "\n")
    total = first.total_steps
    spe = first.steps_per_epoch
    log_every = max(1, first.config.log_every)
    every = first.config.checkpoint_every
    metrics = [_MetricsLog(run.run_dir / "metrics.jsonl", active=main) for run in runs]
    acc: list[dict[str, torch.Tensor]] = [{} for _ in runs]
    n_acc = 0
    last_values: list[dict[str, float]] = [{} for _ in runs]
    for i, run in enumerate(runs):
        if run.step >= total:  # resumed at its end already: report the numbers it finished with
            last_values[i], metrics_then = _finished_results(run)
            run.last_metrics = run.last_metrics or metrics_then
            if main and i == 0:
                _say_finished(run)
    t0 = time.perf_counter()
    start_step = first.step
    for run in runs:
        run.segment_start = (run.step, t0)
    labels = [f" (seed {run.config.seed})" if len(runs) > 1 else "" for run in runs]

    # Ctrl-C and SIGTERM only raise a flag; the loop acts on it between steps, so the checkpoint it
    # writes is consistent (a step interrupted half-way would leave D updated but the step count not).
    stop: list[type[BaseException]] = []
    in_step = False

    def on_signal(signum, frame):  # noqa: ARG001
        from igan import interrupts

        if signum == signal.SIGINT:
            interrupts.note()  # the user's Ctrl-C, not a plugin's own KeyboardInterrupt
        if stop:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        stop.append(Terminated if signum == signal.SIGTERM else KeyboardInterrupt)

    def save_all() -> None:
        for i in range(len(runs)):
            trainer.save(i)

    previous = ({sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
                if _main_thread() else {})
    try:
        with TrainProgress(total, first.step, _phase(runs, label), enabled=progress and main,
                           steps_per_epoch=spe) as bar:
            while first.step < total:
                if stop:
                    raise stop[0]()
                if first.step % spe == 0 or first.step == start_step:  # the schedule moves once per epoch
                    _set_lr(trainer, first)
                in_step = True
                all_logs = trainer.step()
                for run in runs:
                    run.step += 1
                in_step = False
                for a, logs in zip(acc, all_logs):
                    for k, v in logs.items():
                        a[k] = a[k] + v if k in a else v
                n_acc += 1
                step = first.step
                end_of_epoch = step % spe == 0 or step == total
                if step % log_every == 0 or end_of_epoch:
                    for i, run in enumerate(runs):
                        # one host sync for all scalars of the interval (means over the interval)
                        keys = list(acc[i])
                        if keys:
                            stacked = run.dist.sum(torch.stack([acc[i][k] for k in keys]))  # mean over ranks too
                            vals = stacked.div_(n_acc * run.dist.world).tolist()
                        else:
                            vals = []
                        last_values[i] = dict(zip(keys, vals))
                        _check_finite(last_values[i], step, labels[i], run)
                        metrics[i].write({"step": step, "epoch": step / spe, **last_values[i]})
                        run.pm.hook.igan_log(run=run, step=step, values=last_values[i])
                    acc, n_acc = [{} for _ in runs], 0
                    bar.update(step, _shown(_mean_over_runs([run.last_metrics for run in runs]),
                                            _mean_over_runs(last_values)))
                epoch = math.ceil(step / spe)
                if end_of_epoch and epoch > first.epochs_ended:  # once per epoch, resumes included
                    any_found = False
                    for i, run in enumerate(runs):
                        run.epochs_ended = epoch
                        with trainer.active(i):
                            found: dict[str, float] = {}
                            for result in run.pm.hook.igan_epoch_end(run=run, epoch=epoch):
                                found.update(result or {})
                            if found:
                                any_found = True
                                run.last_metrics = found
                                metrics[i].write({"step": step, "epoch": step / spe, **found})
                                run.pm.hook.igan_log(run=run, step=step, values=found)
                            if main:
                                images = run.generate(run.fixed_z.shape[0], run.fixed_z)
                                grid = run.run_dir / "samples" / f"epoch_{epoch:04d}.png"
                                with writing(grid, _intact(run)):
                                    save_png(make_grid(images), grid, upscale=4 if max(images.shape[-2:]) < 64 else 1)
                    if any_found:  # the epoch's metrics on the progress line (and a plain line with them)
                        bar.update(step, _shown(_mean_over_runs([run.last_metrics for run in runs]),
                                                _mean_over_runs(last_values)))
                    save_all()
                elif end_of_epoch or (every and step % every == 0):
                    save_all()  # the end of training inside an epoch whose end already fired, or periodic
    except (KeyboardInterrupt, Terminated):
        if not in_step:  # a second Ctrl-C mid-step keeps the previous (consistent) checkpoint instead
            save_all()  # nothing lost: the interrupted run resumes from here
        _train_end_after_failure(trainer)
        raise
    except BaseException:
        _train_end_after_failure(trainer)
        raise
    finally:
        for m in metrics:
            m.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for i, run in enumerate(runs):
        with trainer.active(i):
            run.pm.hook.igan_train_end(run=run, completed=True)
    elapsed = time.perf_counter() - t0
    summaries = []
    for i, run in enumerate(runs):
        segments = _segments(run) if run.step > start_step else list(run.segments)
        seconds = sum(seg["seconds"] for seg in segments)
        summary = {"run_dir": str(run.run_dir),
                   "checkpoint": str(run.run_dir / "checkpoints" / "last.safetensors"),
                   "steps": run.step, "epochs": run.step / spe,
                   "seconds": round(seconds, 3),  # all segments: the first run and every resume
                   "segments": segments,
                   "steps_per_second": round((run.step - start_step) / max(elapsed, 1e-9), 2),  # this segment
                   "losses": last_values[i], "metrics": run.last_metrics}
        if main:
            from igan.fileio import write_text

            with writing(run.run_dir / "summary.json", "the checkpoint is intact"):
                write_text(run.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        summaries.append(summary)
    return summaries


def _set_lr(trainer: Any, run: Run) -> None:
    c = run.config
    lr = c.lr * lr_factor(run.step // run.steps_per_epoch, run.total_steps / run.steps_per_epoch, c.lr_decay_from,
                          c.lr_schedule, c.lr_warmup)
    for opt in trainer.optimizers():
        for group in opt.param_groups:
            group["lr"] = lr


def display_names(values: dict[str, float]) -> dict[str, float]:
    """The names the progress line shows: ``loss/`` dropped (``loss/D`` -> ``D``, ``loss/D/supervised`` ->
    ``D/supervised``) unless the short name would be another value's; every other name as logged, so two
    plugins' ``a/grad`` and ``b/grad`` never show as the same ``grad``."""
    short = {k: k.removeprefix("loss/") for k in values}
    names = list(short.values())
    clash = {n for n in names if names.count(n) > 1}
    return {(k if short[k] in clash else short[k]): v for k, v in values.items()}


def _say_finished(run: Run) -> None:
    """``--resume`` of a run already at its target: say so, and how to extend it."""
    from igan.console import warn

    c = run.config
    where = run.run_dir
    warn(f"{where} is already finished: it is at step {run.step} of {run.total_steps}; nothing to train",
         hint=f"to train further: igan {c.command} --resume {where} --steps N (N > {run.step}) or --epochs E "
              f"(E > {run.step / run.steps_per_epoch:g})")


def _finished_results(run: Run) -> tuple[dict[str, float], dict[str, float]]:
    """The losses and metrics a finished run recorded in its summary.json (empty if it has none)."""
    try:
        summary = json.loads((run.run_dir / "summary.json").read_text())
        return dict(summary.get("losses") or {}), dict(summary.get("metrics") or {})
    except (OSError, ValueError):
        return {}, {}


def _phase(runs: list[Run], label: str = "") -> str:
    """What the progress line says is being trained: ``train``, ``semi-supervised`` or
    ``supervised-only baseline``, with the seeds of a ``--parallel`` run or the caller's label."""
    config = runs[0].config
    if config.command == "semisup":
        phase = "supervised-only baseline" if config.opt("supervised_only") else "semi-supervised"
    else:
        phase = config.command
    if len(runs) > 1:
        phase += f" seeds {runs[0].config.seed}-{runs[-1].config.seed}"
    return f"{phase} {label}" if label else phase


def _shown(metrics: dict[str, float], losses: dict[str, float]) -> dict[str, float]:
    """The values of the progress line in the order they give way to a narrow terminal: the epoch
    metrics (the numbers a run is judged by), D's and G's losses, then the technique terms; names as
    ``display_names`` gives them."""
    main = {k: losses[k] for k in ("loss/D", "loss/G") if k in losses}
    rest = {k: v for k, v in losses.items() if k not in ("loss/D", "loss/G")}
    # the log has every value; the line leaves out the test error's count and size (test_error says it)
    # and the metrics' spreads
    shown = {k: v for k, v in metrics.items() if k not in ("test_errors", "test_size") and not k.endswith("_std")}
    return display_names({**shown, **main, **rest})


def _mean_over_runs(values: list[dict[str, float]]) -> dict[str, float]:
    """What the progress bar shows: a run's own values for one run, each key's mean over the runs for K."""
    keys = list(dict.fromkeys(key for d in values for key in d))  # in the order the hooks logged them
    return {key: statistics.fmean(d[key] for d in values if key in d) for key in keys}


def _train_end_after_failure(trainer: Any) -> None:
    """``igan_train_end(completed=False)`` so plugins can close what they opened. A plugin that fails
    here only warns: the error that stopped training is the one to report."""
    for run in trainer.runs:
        try:
            run.pm.hook.igan_train_end(run=run, completed=False)
        except Exception as exc:  # noqa: BLE001
            import warnings

            warnings.warn(f"igan_train_end failed after training stopped early: {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=2)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread() and os.name == "posix"
