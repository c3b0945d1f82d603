"""``torch.compile`` where it works, eager where it does not.

igan compiles two kinds of things: its fused kernels (``igan.kernels``, always, unless disabled) and,
with ``--fast-path`` (the default on CUDA), the generator's and discriminator's forward passes. Both go
through ``MaybeCompiled``, which compiles on the first call and, if compilation fails (no C++ compiler
for the CPU backend, no triton for CUDA, an unsupported operator), warns once and runs eagerly from
then on. A failure surfaces while tracing or compiling, before anything has run, so falling back
changes no state.

``IGAN_COMPILE`` overrides this everywhere: ``auto`` (default) as above, ``1`` makes a compiler
failure an error, ``0`` never compiles (the test suite runs with it, see tests/conftest.py). Any other
value is a usage error, raised before a run is built (``igan.train.build_run`` and the commands that
load a checkpoint read it first), not silently taken as ``auto``.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

from igan.errors import UsageError

__all__ = ["MaybeCompiled", "compile_mode"]


def compile_mode() -> str:
    """``auto``, ``on`` or ``off`` from ``IGAN_COMPILE`` (unset or empty = auto)."""
    raw = os.environ.get("IGAN_COMPILE", "")
    value = raw.strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    if value in ("1", "on", "true", "yes"):
        return "on"
    if value in ("", "auto"):
        return "auto"
    raise UsageError(f"IGAN_COMPILE={raw!r} is not one of auto, 1 (on), 0 (off)",
                     hint="unset it for the default (auto: compile, eager if compiling fails)")


class MaybeCompiled:
    """Calls ``fn`` (a function or a module) through ``torch.compile`` when allowed, else eagerly."""

    def __init__(self, fn: Callable[..., object]) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)
        self._compiled: Callable[..., object] | None = None
        self._failed = False

    def __call__(self, *args, **kwargs):
        mode = compile_mode()
        if mode == "off" or self._failed:
            return self.fn(*args, **kwargs)
        if self._compiled is None:
            # dynamic=False: one specialised graph per input shape. A run sees two or three shapes
            # (init batch, training batch, evaluation batch); shape-generic code measured 2x slower
            # for the minibatch kernel.
            self._compiled = torch.compile(self.fn, dynamic=False)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as exc:  # no C++ compiler / triton, unsupported backend or operator, ...
            if mode == "on":
                raise
            self._failed = True
            warnings.warn(
                f"igan: torch.compile failed for {self.name} ({type(exc).__name__}: {str(exc)[:200]}); "
                "running it eagerly (set IGAN_COMPILE=0 to skip the attempt)",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.fn(*args, **kwargs)
