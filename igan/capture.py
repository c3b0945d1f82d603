"""Whole-step capture: one training step replayed as one CUDA graph (part of ``--fast-path`` on CUDA).

On a GPU the paper's small models make the step launch-bound: the MNIST step launches a few hundred
small kernels (three D passes, G, two backward passes, two Adam updates, the EMA of D), each taking
longer to launch than to run; a hand-written step measured 6.97 ms eager and 3.50 ms as a CUDA graph
on an H100. Here the whole step — D update, G update(s), the averages and the technique hooks — is
recorded once with ``torch.cuda.graph`` and replayed (the "whole-network capture" recipe of PyTorch's
CUDA notes). What varies from step to step is kept out of the graph or read by it from the device:

- the batch indices come from the host-seeded sampler: they are copied into static index tensors
  before each replay, and the graph gathers the images from the dataset held on the device;
- the learning rate is a device tensor of the optimizer's capturable mode
  (``igan.optim.ReferenceAdam.set_capturable``), written before a replay when the schedule moved it;
  the step count and the bias corrections are device tensors too;
- random numbers (z, the noise layers, dropout) come from the device generator, which a replay
  advances as the eager step would, so a captured step draws the eager step's numbers;
- the step's logged scalars are copied out of the graph's outputs after each replay.

Everything else is the ordinary step code (``igan.train.train_step``, or the batched ``--parallel``
step of ``igan.parallel``), run eagerly for ``WARMUP`` steps on a side stream (lazy initialisation,
``torch.compile``'s first calls), then captured.

**Selection.** Only on CUDA devices, with the fast path on, unless ``IGAN_CAPTURE=0``. It is refused
(eager step, one warning saying why; ``IGAN_CAPTURE=1`` makes a refusal an error) under torchrun, with
``--adam torch``, or when a plugin implementing a step hook (the loss hooks,
``igan_after_optimizer_step``) does not declare ``capture_safe = True``. A capture-safe plugin's step
hooks do the same device work at every step and nothing else: no host synchronisation (``.item()``,
``if tensor``), no Python state that changes from step to step (counters, lists), nothing read from
``step.it`` or ``run.step``, no new tensors kept across steps (update existing ones in place). Its
Python code runs once, when the step is captured; replays run only the kernels it launched then.

**Checked on first use.** The first captured step starts from a snapshot of everything the step changes
(weights, optimizer state, the plugins' checkpoint tensors, the device RNG); an eager step from the
same snapshot must give the same result within float tolerance. On a difference, or on any failure
while capturing, igan warns, keeps the eager step's result and runs eagerly from then on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from igan.errors import IganError, UsageError

__all__ = ["STEP_HOOKS", "WARMUP", "CapturedStep", "capture_mode", "capturing", "refusal", "for_run",
           "select"]

STEP_HOOKS = ("igan_discriminator_loss", "igan_generator_loss", "igan_extra_loss", "igan_after_optimizer_step")
WARMUP = 3  # eager steps before capturing (PyTorch's recipe warms up on a side stream first)


def capture_mode() -> str:
    """``auto`` (default), ``on`` (a refusal or failure is an error) or ``off``, from ``IGAN_CAPTURE``."""
    value = os.environ.get("IGAN_CAPTURE", "auto").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    if value in ("1", "on", "true", "yes"):
        return "on"
    return "auto"


def capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on the current stream (never on other devices)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def refusal(runs: list[Any], optimizers: Iterable[torch.optim.Optimizer]) -> str | None:
    """Why these runs' step cannot be captured faithfully, or ``None``."""
    from igan.optim import ReferenceAdam

    if runs and runs[0].dist.enabled:
        return "under torchrun (DDP's gradient all-reduce is not part of the captured step)"
    if any(getattr(run, "input_grads", ()) for run in runs):
        return ("a plugin asks for input gradients (needs_input_grad): its double backward runs eagerly, "
                "outside a captured graph")
    if any(not isinstance(opt, ReferenceAdam) for opt in optimizers):
        return "--adam torch: only the reference Adam has the capturable form igan uses"
    for run in runs:
        for name in STEP_HOOKS:
            for impl in getattr(run.pm.hook, name).get_hookimpls():
                if not getattr(impl.plugin, "capture_safe", False):
                    return (f"plugin {impl.plugin_name!r} implements {name} without declaring capture_safe = True "
                            "(its Python code would run once, at capture, not at every step)")
    return None


class CudaGraphs:
    """The CUDA side of ``CapturedStep`` (tests substitute a stand-in that runs on the CPU)."""

    def supports(self, device: torch.device) -> bool:
        return device.type == "cuda" and torch.cuda.is_available()

    def stream(self, device: torch.device) -> Any:
        return torch.cuda.Stream(device)

    @contextlib.contextmanager
    def side_stream(self, stream: Any) -> Any:
        """Run on ``stream``, then make the current stream wait for it."""
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream().wait_stream(stream)

    def hand_over(self, tensors: list[Tensor]) -> None:
        """Tensors made on the side stream and used on the current one must not be reused too early."""
        current = torch.cuda.current_stream()
        for t in tensors:
            t.record_stream(current)

    def capture(self, fn: Callable[[], Any], stream: Any) -> tuple[Any, Any]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            out = fn()
        return graph, out

    def replay(self, graph: Any) -> None:
        graph.replay()

    def rng_state(self, device: torch.device) -> Tensor:
        return torch.cuda.get_rng_state(device)

    def set_rng_state(self, state: Tensor, device: torch.device) -> None:
        torch.cuda.set_rng_state(state, device)


BACKEND: Any = CudaGraphs()


def select(device: torch.device, fast_path: bool) -> bool:
    """Whether the step should be captured here: a CUDA device, the fast path, ``IGAN_CAPTURE`` not 0."""
    return fast_path and capture_mode() != "off" and BACKEND.supports(device)


class CapturedStep:
    """One step as a replayed CUDA graph, with warm-up, the first-use check and the eager fallback.

    ``inputs()`` makes what the step takes from the host (batch indices, pre-drawn noise), outside the
    graph; ``body(inputs)`` is the step itself and returns its logs (tensors in lists/dicts); ``runs``
    and ``modules`` (what the step changes: the runs' models or the stacks holding their weights) and
    ``optimizers`` define the snapshot of the first-use check."""

    def __init__(self, inputs: Callable[[], Any], body: Callable[[Any], Any], *, runs: list[Any],
                 modules: list[torch.nn.Module], optimizers: list[torch.optim.Optimizer], device: torch.device,
                 name: str = "the training step", warmup: int = WARMUP) -> None:
        self.inputs, self.body, self.runs, self.modules = inputs, body, runs, modules
        self.optimizers, self.device, self.name, self.warmup = optimizers, device, name, warmup
        self.strict = capture_mode() == "on"
        self.backend = BACKEND
        self.eager = False  # refused or failed: plain eager steps from then on
        self.warm = 0
        self.graph: Any = None
        self.static_in: Any = None
        self.static_out: Any = None
        self.stream: Any = None
        reason = refusal(runs, optimizers)
        if reason is None:
            try:
                for opt in optimizers:
                    opt.set_capturable(True)
            except ValueError as exc:
                reason = str(exc)
        if reason is not None:
            self._give_up(f"{name} is not captured as a CUDA graph: {reason}", refused=True)

    # ---- the step -----------------------------------------------------------------------------
    def __call__(self) -> Any:
        x = self.inputs()
        if self.eager:
            return self.body(x)
        for opt in self.optimizers:
            opt.sync_lr()
        if self.stream is None:
            self.stream = self.backend.stream(self.device)
        if self.warm < self.warmup:
            self.warm += 1
            with self.backend.side_stream(self.stream):
                out = self.body(x)
            self.backend.hand_over(_tensors(out))
            return out
        if self.graph is None:
            return self._capture(x)
        _tree_copy(self.static_in, x)
        self.backend.replay(self.graph)
        return _tree_map(torch.clone, self.static_out)

    # ---- capturing and the first-use check ----------------------------------------------------
    def _capture(self, x: Any) -> Any:
        before = self._snapshot()
        expected = expected_out = None
        try:
            expected_out = _tree_map(torch.clone, self.body(x))  # the eager step from `before`
            expected = self._snapshot()
            self._restore(before)
            self.static_in = _tree_map(torch.clone, x)
            graph, static_out = self.backend.capture(lambda: self.body(self.static_in), self.stream)
            self.backend.replay(graph)  # the step itself, from `before` again
            out = _tree_map(torch.clone, static_out)
            diff = _difference(expected, self._snapshot()) or _difference({"logs": expected_out}, {"logs": out})
        except Exception as exc:  # noqa: BLE001 - any failure: keep training eagerly, nothing lost
            if expected is None:  # the eager step itself failed: a real error, not a capture problem
                self._restore(before)
                raise
            self._restore(expected)
            self._give_up(f"capturing {self.name} as a CUDA graph failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''})", cause=exc)
            return expected_out
        if diff is not None:
            self._restore(expected)
            self._give_up(f"the captured {self.name} differs from the eager one ({diff})")
            return expected_out
        self.graph, self.static_out = graph, static_out
        return out

    def _give_up(self, message: str, refused: bool = False, cause: BaseException | None = None) -> None:
        self.eager = True
        self.graph = self.static_in = self.static_out = None
        for opt in self.optimizers:
            if getattr(opt, "capturable", False):
                opt.set_capturable(False)
        if self.strict:
            error = UsageError if refused else IganError
            raise error(message, hint="unset IGAN_CAPTURE (or set it to 0) to run the step eagerly") from cause
        warnings.warn(f"igan: {message}; running it eagerly (IGAN_CAPTURE=0 skips the attempt)", RuntimeWarning,
                      stacklevel=3)

    def _snapshot(self) -> dict[str, Any]:
        """Copies of everything the step changes: weights and buffers, optimizer state, each run's
        plugin checkpoint tensors, and the device RNG."""
        from igan.train import hook_args

        live = _live(self.modules, self.optimizers)
        plugins = {}
        for r, run in enumerate(self.runs):
            for impl in run.pm.hook.igan_checkpoint_tensors.get_hookimpls():
                extra = impl.function(**hook_args(impl, run=run)) or {}
                plugins.update({f"{r}.{impl.plugin_name}.{k}": v.detach().clone() for k, v in extra.items()})
        return {"live": {k: v.detach().clone() for k, v in live.items()}, "plugins": plugins,
                "rng": self.backend.rng_state(self.device).clone()}

    def _restore(self, snap: dict[str, Any]) -> None:
        """Put a snapshot back in place (the graph holds the addresses of these very tensors)."""
        from igan.train import hook_args

        with torch.no_grad():
            for k, v in _live(self.modules, self.optimizers).items():
                v.copy_(snap["live"][k])
        for r, run in enumerate(self.runs):
            for impl in run.pm.hook.igan_restore_tensors.get_hookimpls():
                prefix = f"{r}.{impl.plugin_name}."
                own = {k[len(prefix):]: v.clone() for k, v in snap["plugins"].items() if k.startswith(prefix)}
                if own:
                    impl.function(**hook_args(impl, run=run, tensors=own))
        self.backend.set_rng_state(snap["rng"], self.device)


def for_run(run: Any) -> Callable[[], dict[str, Tensor]]:
    """What ``igan.train.OneRun`` calls for one step: ``train_step`` itself, or its captured form."""
    from igan.train import train_step

    if not select(run.device, run.fast_path) or (run.dist.enabled and capture_mode() != "on"):
        return lambda: train_step(run)  # (torchrun: not attempted, unless IGAN_CAPTURE=1 asks, to be refused)
    return CapturedStep(run.sampler.next, lambda batch: train_step(run, batch), runs=[run],
                        modules=[run.generator, run.discriminator], optimizers=[run.opt_g, run.opt_d],
                        device=run.device)


# ----------------------------------------------------------------------------------------------
# small helpers over nested step data (tensors, None, lists, tuples, named tuples, dicts, dataclasses)


def _tree_map(fn: Callable[[Tensor], Tensor], obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if obj is None or isinstance(obj, (int, float, bool, str)):
        return obj
    if isinstance(obj, dict):
        return {k: _tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # named tuple (DOut)
        return type(obj)(*(_tree_map(fn, v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tree_map(fn, v) for v in obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _tree_map(fn, getattr(obj, f.name))
                                           for f in dataclasses.fields(obj)})
    raise TypeError(f"cannot capture a step input or output of type {type(obj).__name__}")


def _tensors(obj: Any) -> list[Tensor]:
    found: list[Tensor] = []
    _tree_map(lambda t: found.append(t) or t, obj)
    return found


def _tree_copy(static: Any, new: Any) -> None:
    """Copy ``new`` into the static tensors of the same structure (the graph's inputs)."""
    a, b = _tensors(static), _tensors(new)
    if len(a) != len(b) or any(s.shape != n.shape for s, n in zip(a, b)):
        raise IganError("a captured step's inputs changed shape", hint="set IGAN_CAPTURE=0 to run eagerly")
    for s, n in zip(a, b):
        s.copy_(n)


def _live(modules: list[torch.nn.Module], optimizers: list[torch.optim.Optimizer]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for i, m in enumerate(modules):
        for k, v in m.state_dict(keep_vars=True).items():
            out[f"m{i}.{k}"] = v
    for j, opt in enumerate(optimizers):
        for n, p in enumerate(p for g in opt.param_groups for p in g["params"]):
            for key, v in opt.state.get(p, {}).items():
                if isinstance(v, Tensor):
                    out[f"opt{j}.{n}.{key}"] = v
    return out


def _difference(a: dict[str, Any], b: dict[str, Any], rtol: float = 1e-3, atol: float = 1e-5) -> str | None:
    """The first entry where two snapshots differ beyond float rounding, described; ``None`` if none."""
    for part in a:
        if part == "rng":
            if not torch.equal(a[part], b[part]):
                return "the random-number generator advanced differently"
            continue
        flat_a, flat_b = _flat(a[part]), _flat(b[part])
        if flat_a.keys() != flat_b.keys():
            return f"{part}: different entries"
        for key, x in flat_a.items():
            y = flat_b[key]
            if x.shape != y.shape:
                return f"{key}: shape {tuple(x.shape)} vs {tuple(y.shape)}"
            if x.is_floating_point():
                if not torch.allclose(x.float(), y.float(), rtol=rtol, atol=atol, equal_nan=True):
                    return f"{key}: max difference {(x.float() - y.float()).abs().max().item():.3g}"
            elif not torch.equal(x, y):
                return f"{key}: {x.flatten()[:4].tolist()} vs {y.flatten()[:4].tolist()}"
    return None


def _flat(obj: Any, prefix: str = "") -> dict[str, Tensor]:
    if isinstance(obj, Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k2: v2 for k, v in obj.items() for k2, v2 in _flat(v, f"{prefix}.{k}" if prefix else str(k)).items()}
    if isinstance(obj, (list, tuple)):
        return {k2: v2 for i, v in enumerate(obj) for k2, v2 in _flat(v, f"{prefix}.{i}").items()}
    return {}
