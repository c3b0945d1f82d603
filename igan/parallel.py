"""Vectorised seeds: K independent runs trained in one process as one batched computation (``--parallel``).

GAN results are reported as mean ± std over seeds (the paper: 10), and the paper's models are small, so
one run leaves an accelerator mostly idle. Here the K runs' parameters are stacked along a new leading
dimension and each phase of the step runs once for all K, under ``torch.func.vmap``:

- the step's maths is ``igan.train``'s own ``discriminator_phase``/``generator_phase`` (and so the same
  loss hooks in the same order), called through ``torch.func.functional_call`` on a copy of the model
  without parametrizations, with weight-normed weights computed once per phase for all K;
- every run keeps what makes it a separate run: its seed, label split and batch sampler, its random
  stream (noise is drawn outside vmap with the run's RNG, in the order its single-seed run draws it, and
  replayed through ``igan.layers.NoiseTape``), its optimizer state (one optimizer over the stacked
  parameters is elementwise, hence per model), its plugins, metrics, samples and checkpoints;
- each run's modules hold views of the stacked parameters, so evaluation, sampling and the per-run hooks
  (the EMA of D, epoch-end metrics, checkpoints) work on them unchanged.

So each model's trajectory equals its single-seed run up to float rounding (tests/test_parallel.py).
Loss hooks run once for all K models, with the first run's plugin instances, so they must be pure
functions of the step's tensors and the configuration: a plugin says so with ``parallel_safe = True``.
Layers without vmap support (dropout, whose random draws cannot be replayed per seed) are refused with
a one-line error.

That is the ``batched`` mode, the default on accelerators. On a CPU, which is compute-bound, batching
saves nothing and measured 9-19 % slower per seed than sequential runs, so the default there is
``interleaved``: each run's own ``train_step`` in turn with its own random stream (same results, any
technique, sequential speed, one process and one progress bar). ``IGAN_PARALLEL=batched|interleaved``
overrides the choice.

On CUDA with the fast path the batched step is captured as one CUDA graph (``igan.capture``): what it
takes from the host (each run's batch indices, z and noise, drawn from the run's own stream, D phase
first, then each G update, as its single-seed run draws them) is made by ``_inputs`` outside the
graph, and ``_compute`` is the rest. Since all of a step's noise is drawn first, an
``igan_after_optimizer_step`` hook that drew random numbers would shift the later draws of its run;
none of the capture-safe ones draws any.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.utils import parametrize

from igan.errors import IganError, UsageError
from igan.layers import _WEIGHT_NORM_TYPE, NoiseTape
from igan.models import DOut
from igan.train import (ParallelMember, Run, Step, build_run, discriminator_phase, generator_phase, resolve_device,
                        save_run, train_step)

__all__ = ["ParallelRuns", "LOSS_HOOKS", "build_parallel", "check_parallel_safe", "parallel_mode", "plain_copy"]

LOSS_HOOKS = ("igan_discriminator_loss", "igan_generator_loss", "igan_extra_loss")
_STEP_FIELDS = ("x_real", "z", "fake", "d_real", "d_fake", "x_lab", "y_lab", "d_lab", "d_real_g")


def check_parallel_safe(run: Run) -> None:
    """Refuse what vectorised seeds cannot run faithfully (one-line errors, exit code 2)."""
    for name in LOSS_HOOKS:
        for impl in getattr(run.pm.hook, name).get_hookimpls():
            if not getattr(impl.plugin, "parallel_safe", False):
                raise UsageError(f"--parallel cannot run {impl.plugin_name!r}: its {name} may keep per-run state, "
                                 "and --parallel computes all seeds' losses in one call",
                                 hint="drop --parallel (the seeds then run one after another), or the technique; "
                                      "a plugin whose losses are pure functions of the step sets parallel_safe = True")
    if getattr(run, "input_grads", ()):
        askers = sorted(name for name, p in run.pm.list_name_plugin() if getattr(p, "needs_input_grad", ()))
        raise UsageError(f"--parallel's batched mode cannot differentiate D with respect to its inputs "
                         f"({', '.join(askers)} asks for gradients of {', '.join(run.input_grads)})",
                         hint="IGAN_PARALLEL=interleaved trains the seeds in one process with any technique "
                              "(the CPU default), or drop --parallel")
    for net, module in (("G", run.generator), ("D", run.discriminator)):
        for m in module.modules():
            if isinstance(m, nn.Dropout) and m.p > 0:
                raise UsageError(f"--parallel cannot replay the dropout of {net} ({m}) per seed",
                                 hint="use a model without dropout (--no-dropout) or drop --parallel")
            if parametrize.is_parametrized(m):
                for plist in m.parametrizations.values():
                    if not all(type(p) is _WEIGHT_NORM_TYPE for p in plist):
                        raise UsageError(f"--parallel supports weight norm only; {net} has {type(plist[0]).__name__}",
                                         hint="drop --parallel, or the plugin that adds this parametrization")


def plain_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every parametrization replaced by a plain parameter of the same name,
    so ``functional_call`` can be handed the (batched) parametrized weights directly.

    ``parametrize.remove_parametrizations`` cannot be used on a deep copy: it deletes the property from
    the parametrized class, which the copy shares with the original. Instead the copy's modules get their
    original class back (parametrize makes a subclass of it)."""
    clone = copy.deepcopy(module)
    for m in clone.modules():
        if parametrize.is_parametrized(m):
            values = {name: getattr(m, name).detach() for name in m.parametrizations}
            del m._modules["parametrizations"]
            m.__class__ = type(m).__bases__[0]
            for name, value in values.items():
                m.register_parameter(name, nn.Parameter(value.clone(), requires_grad=False))
    return clone.requires_grad_(False)


class _Stack:
    """The K copies of one network (G or D): stacked leaf parameters [K, ...] that the runs' modules view."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.plain = plain_copy(modules[0])
        self.per_model = [dict(m.named_parameters()) for m in modules]
        self.params: dict[str, Tensor] = {}
        for name, first in self.per_model[0].items():
            own = [params[name] for params in self.per_model]
            stacked = torch.stack([p.detach() for p in own]).requires_grad_(first.requires_grad)
            for k, p in enumerate(own):
                p.data = stacked.detach()[k]  # the run's parameter now lives in the stack (same storage)
            self.params[name] = stacked
        buffers = [dict(m.named_buffers()) for m in modules]
        self.buffers = {name: torch.stack([b[name] for b in buffers]) for name in buffers[0]}
        # weight-normed layers: (prefix, dim) so the stacked weights can be formed once per phase
        self.weight_norms = [(prefix, m.parametrizations.weight[0].dim)
                             for prefix, m in modules[0].named_modules()
                             if parametrize.is_parametrized(m, "weight")]

    @property
    def trainable(self) -> list[Tensor]:
        return [p for p in self.params.values() if p.requires_grad]

    def weights(self) -> dict[str, Tensor]:
        """The plain copy's parameters for all K models: W = g v / ||v|| for the weight-normed layers."""
        out = {name: p for name, p in self.params.items() if ".parametrizations." not in name}
        for prefix, dim in self.weight_norms:
            dot = f"{prefix}." if prefix else ""
            g, v = (self.params[f"{dot}parametrizations.weight.original{i}"] for i in (0, 1))
            key = f"{dot}weight"
            if dim == 0:  # one fused call for all K: rows of [K * out, ...] are normalised independently
                k, o = v.shape[:2]
                out[key] = torch._weight_norm(v.reshape(k * o, *v.shape[2:]), g.reshape(k * o, *g.shape[2:]),
                                              0).view(v.shape)
            else:  # e.g. transposed convolutions (dim 1): per model, through vmap
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # vmap's "no batching rule" performance note
                    out[key] = vmap(lambda v_, g_: torch._weight_norm(v_, g_, dim))(v, g)  # noqa: B023
        return {**out, **self.buffers}

    def call(self, weights: dict[str, Tensor]) -> Callable[[Tensor], Any]:
        return lambda x: functional_call(self.plain, weights, (x,))


def parallel_mode(device: torch.device) -> str:
    """``batched`` or ``interleaved``, from ``IGAN_PARALLEL`` (``auto``, the default: batched on
    accelerators, where one small model leaves the device idle; interleaved on CPUs, which are
    compute-bound and where the batched step measured 9-19 % slower per seed, docs/performance.md)."""
    value = os.environ.get("IGAN_PARALLEL", "auto").strip().lower()
    if value in ("batched", "interleaved"):
        return value
    if value != "auto":
        raise UsageError(f"IGAN_PARALLEL must be auto, batched or interleaved, got {value!r}",
                         hint="unset it for the default (batched on GPUs, interleaved on CPUs)")
    return "interleaved" if device.type == "cpu" else "batched"


class ParallelRuns:
    """Drives K runs (built by ``igan.train.build_run``, one per seed) in one process for
    ``igan.train.fit_runs``. ``rng_states[i]`` is run i's RNG state right after it was built.

    ``batched``: one vmapped step for all K (below). ``interleaved``: each run's own ``train_step`` in
    turn, with its own random stream: the same results, no stacking, the speed of sequential runs."""

    def __init__(self, runs: list[Run], rng_states: list[tuple[Tensor, Tensor | None]],
                 mode: str = "batched") -> None:
        self.runs = runs
        self.mode = mode
        first = runs[0]
        self.device = first.device
        self.rng = list(rng_states)
        if mode == "interleaved":
            return
        for run in runs:
            check_parallel_safe(run)
        self.g = _Stack([r.generator for r in runs])
        self.d = _Stack([r.discriminator for r in runs])
        from igan.optim import make_optimizer

        c = first.config
        self.opt_g = make_optimizer(c.adam, self.g.trainable, c.lr, (c.beta1, c.beta2))
        self.opt_d = make_optimizer(c.adam, self.d.trainable, c.lr, (c.beta1, c.beta2))
        self.noise_shapes = self._record_noise_shapes()
        self.n = c.batch_size
        self._captured: Callable[[], list[dict[str, Tensor]]] | None = None

    # ---- what fit_runs calls -------------------------------------------------------------------
    @contextlib.contextmanager
    def active(self, i: int) -> Iterator[None]:
        """Make run i's random stream the global one (and keep where it got to)."""
        cuda = self.device.type == "cuda"
        torch.set_rng_state(self.rng[i][0])
        if cuda:
            torch.cuda.set_rng_state(self.rng[i][1], self.device)
        try:
            yield
        finally:
            self.rng[i] = (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None)

    def restored(self) -> None:
        """After ``--resume``: the runs must be at the same step, and (batched) the optimizer states each
        run restored become the stacked optimizers' state."""
        steps = {run.step for run in self.runs}
        if len(steps) > 1:
            raise UsageError(f"--parallel resumes seeds at the same step only; their checkpoints are at steps "
                             f"{', '.join(str(r.step) for r in self.runs)}",
                             hint="drop --parallel to finish them one by one")
        if self.mode != "batched":
            return
        for stack, opt, per_run in ((self.g, self.opt_g, [r.opt_g for r in self.runs]),
                                    (self.d, self.opt_d, [r.opt_d for r in self.runs])):
            for name, p in stack.params.items():
                states = [o.state.get(stack.per_model[k][name]) for k, o in enumerate(per_run)]
                if states[0]:
                    opt.state[p] = {key: torch.stack([st[key] for st in states]) if v.shape == p.shape[1:]
                                    else v.clone() for key, v in states[0].items()}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        if self.mode == "batched":
            return [self.opt_g, self.opt_d]
        return [opt for run in self.runs for opt in (run.opt_g, run.opt_d)]

    def save(self, i: int) -> None:
        """Run i's checkpoint, exactly as its single-seed run writes it (its optimizer state is a slice)."""
        if self.mode == "batched":
            run = self.runs[i]
            for stack, opt, own in ((self.g, self.opt_g, run.opt_g), (self.d, self.opt_d, run.opt_d)):
                for name, p in stack.params.items():
                    if p in opt.state:
                        own.state[stack.per_model[i][name]] = {
                            key: (v[i] if v.shape == p.shape else v.clone()) for key, v in opt.state[p].items()}
        with self.active(i):
            save_run(self.runs[i])

    def step(self) -> list[dict[str, Tensor]]:
        if self.mode == "interleaved":
            logs = []
            for i, run in enumerate(self.runs):
                with self.active(i):
                    logs.append(train_step(run))
            return logs
        if self._captured is None:  # the batched step itself, or its CUDA-graph form (igan.capture)
            from igan.capture import CapturedStep, select

            first = self.runs[0]
            self._captured = (CapturedStep(self._inputs, self._compute, runs=self.runs, modules=[
                m for r in self.runs for m in (r.generator, r.discriminator)], optimizers=[self.opt_g, self.opt_d],
                device=self.device, name="the batched --parallel step")
                if select(self.device, first.fast_path) else (lambda: self._compute(self._inputs())))
        return self._captured()

    def _inputs(self) -> dict[str, Any]:
        """What the batched step takes from the host: each run's batch, z and noise, drawn from the run's
        own random stream in the order its single-seed run draws them (D phase, then each G update)."""
        runs, n = self.runs, self.n
        batches = [r.sampler.next() for r in runs]
        labeled = batches[0].labeled is not None
        draws = [self._draw([("G", n), ("D", n), ("D", n)] + ([("D", n)] if labeled else []))]
        for j in range(runs[0].config.g_steps):
            real_g = j == 0 and batches[0].generator_real is not None
            draws.append(self._draw([("G", n)] + ([("D", n)] if real_g else []) + [("D", n)]))
        return {"batches": batches, "draws": draws}

    def _compute(self, inputs: dict[str, Any]) -> list[dict[str, Tensor]]:
        """The batched step for ``_inputs()``: pure device work (``igan.capture`` can record it)."""
        runs, batches = self.runs, inputs["batches"]
        first = runs[0]
        labeled = batches[0].labeled is not None

        # ---- discriminator: z, then the noise of G's pass and D's real, generated, labelled passes
        z, noise = inputs["draws"][0]
        x_real = torch.stack([r.data(b.unlabeled) for r, b in zip(runs, batches)])
        x_lab = torch.stack([r.data(b.labeled) for r, b in zip(runs, batches)]) if labeled else None
        y_lab = torch.stack([r.dataset.y_train[b.labeled] for r, b in zip(runs, batches)]) if labeled else None
        with torch.no_grad():
            gw = self.g.weights()
        dw = self.d.weights()

        def d_fn(gw, dw, z, x_real, x_lab, y_lab, noise):
            with NoiseTape(noise):
                loss, step = discriminator_phase(first, self.g.call(gw), self.d.call(dw), z, x_real, x_lab, y_lab)
            return loss, step.logs, _fields(step)

        loss_d, logs, fields = self._vmap(d_fn, gw, dw, z, x_real, x_lab, y_lab, noise)
        own = self._update(self.opt_d, loss_d, fields, logs, "D")  # what each run's after-step hooks logged

        # ---- generator: D frozen (its weights formed without gradients), fresh z for every update
        with torch.no_grad():
            dw = self.d.weights()
        fields = {k: _detach(v) for k, v in fields.items()}
        for j in range(first.config.g_steps):
            real_g = j == 0 and batches[0].generator_real is not None
            z, noise = inputs["draws"][1 + j]
            x_real_g = (torch.stack([r.data(b.generator_real) for r, b in zip(runs, batches)])
                        if real_g else None)
            gw = self.g.weights()

            def g_fn(gw, dw, fields, z, x_real_g, noise, first_update=j == 0):
                with NoiseTape(noise):
                    step = Step(run=first, it=first.step, **fields)
                    loss = generator_phase(step, self.g.call(gw), self.d.call(dw), z, x_real_g, first_update)
                return loss, step.logs, _fields(step)

            loss_g, g_logs, fields = self._vmap(g_fn, gw, dw, fields, z, x_real_g, noise)
            for mine, theirs in zip(own, self._update(self.opt_g, loss_g, fields, g_logs, "G")):
                mine.update(theirs)
            logs.update(g_logs)
            fields = {k: _detach(v) for k, v in fields.items()}
        return [{**{name: v[k] for name, v in logs.items()}, **own[k]} for k in range(len(runs))]

    # ---- helpers -------------------------------------------------------------------------------
    def _draw(self, passes: list[tuple[str, int]]) -> tuple[Tensor, list[Tensor]]:
        """Each run's z and then its noise for ``passes`` (net, batch size), in its own stream's order."""
        zs, noises = [], []
        for i, run in enumerate(self.runs):
            with self.active(i):
                zs.append(run.sample_z(self.n))
                noises.append([torch.randn(m, *shape, device=self.device)
                               for net, m in passes for shape in self.noise_shapes[net]])
        return torch.stack(zs), [torch.stack(t) for t in zip(*noises)]

    def _vmap(self, fn: Callable, *args: Any) -> Any:
        try:
            in_dims = tuple(None if a is None else 0 for a in args)  # e.g. no labelled batch in igan train
            return vmap(fn, in_dims=in_dims, randomness="error")(*args)
        except RuntimeError as exc:
            if "vmap" not in str(exc) and "random" not in str(exc) and "Batched" not in str(exc):
                raise
            raise IganError(f"--parallel cannot batch this model: {str(exc).splitlines()[0]}",
                            hint="drop --parallel (the seeds then run one after another)") from exc

    def _update(self, opt: torch.optim.Optimizer, loss: Tensor, fields: dict[str, Any],
                logs: dict[str, Tensor], net: str) -> list[dict[str, Tensor]]:
        """One update of all K models (their losses are independent, so the sum's gradient is each one's
        own), then each run's after-step hook on its own slice of the step; returns what they logged."""
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        logs[f"loss/{net}"] = loss.detach()
        logged = []
        from igan.capture import capturing

        # a graph being captured cannot switch RNG states; capture-safe hooks draw no random numbers here
        active = (lambda i: contextlib.nullcontext()) if capturing(self.device) else self.active
        with torch.no_grad():
            for i, run in enumerate(self.runs):
                step = Step(run=run, it=run.step, net=net, **{k: _index(v, i) for k, v in fields.items()})
                with active(i):
                    run.pm.hook.igan_after_optimizer_step(step=step, net=net)
                logged.append(step.logs)
        return logged

    def _record_noise_shapes(self) -> dict[str, list[tuple[int, ...]]]:
        """The per-example shapes G's and D's noise layers draw in one forward pass, in call order."""
        first = self.runs[0]
        shapes = {}
        with torch.no_grad():
            for net, module, x in (("G", first.generator, torch.zeros(1, first.models.z_dim, device=self.device)),
                                   ("D", first.discriminator, first.data(torch.zeros(1, dtype=torch.long,
                                                                                      device=self.device)))):
                with NoiseTape() as tape:
                    module(x)
                shapes[net] = tape.shapes
        return shapes


def _fields(step: Step) -> dict[str, Any]:
    return {k: getattr(step, k) for k in _STEP_FIELDS if getattr(step, k) is not None}


def _detach(v: Any) -> Any:
    return DOut(*(t.detach() for t in v)) if isinstance(v, DOut) else v.detach()


def _index(v: Any, i: int) -> Any:
    return DOut(*(t[i] for t in v)) if isinstance(v, DOut) else v[i]


def build_parallel(configs: list[Any], pms: list[Any], run_dirs: list[Any], mode: str | None = None) -> ParallelRuns:
    """Build one run per configuration (as ``igan train`` would, each seeding the global RNG with its
    seed) and remember each run's RNG state where its single-seed run would start training. ``mode``:
    ``batched`` or ``interleaved`` (default: ``parallel_mode`` of the device)."""
    from igan.distributed import setup

    dist, device_name = setup(configs[0].device)
    if dist.enabled:
        raise UsageError("--parallel is not supported under torchrun", hint="run the seeds in one process")
    mode = mode or parallel_mode(resolve_device(device_name))  # a bad IGAN_PARALLEL fails before any work
    runs, states = [], []
    for config, pm, run_dir in zip(configs, pms, run_dirs):
        run = build_run(config, pm, run_dir)
        runs.append(run)
        states.append((torch.get_rng_state(),
                       torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None))
    if len({(r.config.model, r.config.batch_size, r.total_steps) for r in runs}) != 1:
        raise UsageError("--parallel needs the same model, batch size and length for every seed",
                         hint="drop --parallel")
    for i, run in enumerate(runs):
        run.parallel = ParallelMember(i, len(runs), mode)
    return ParallelRuns(runs, states, mode)

