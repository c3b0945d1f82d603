"""igan: the techniques of "Improved Techniques for Training GANs" (Salimans et al., NeurIPS 2016) as
composable pluggy plugins on PyTorch.

The public API for plugin authors is what this module exports (see docs/writing-plugins.md); it is
kept stable across minor versions. Everything else (modules not re-exported here, names with a
leading underscore) is internal and may change.

- ``hookimpl``: marks hook implementations (``@igan.hookimpl``); the hooks are in ``docs/hooks.md``.
- ``IganError``, ``UsageError``: errors shown to users as ``error:`` + ``hint:`` (exit 1 / exit 2).
- What hooks receive: ``RunConfig``, ``Step``, ``Run``, ``LabelTargets``, ``Models``, ``DOut``,
  ``Discriminator``, ``Generator``; what registries take: ``ModelDef``, ``DatasetSpec``, ``ImageDataset``.
- ``losses`` and ``layers``: the paper's loss functions and layers, for reuse.
- ``testing``: ``make_step``, to unit-test a hook without a training run.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from igan.errors import IganError, UsageError  # noqa: E402
from igan.plugins import hookimpl  # noqa: E402

# Imported on first use, so `import igan` (and `igan --help`) stays light.
_LAZY = {
    "RunConfig": "igan.config", "Step": "igan.train", "Run": "igan.train", "LabelTargets": "igan.train",
    "Models": "igan.models", "DOut": "igan.models", "Discriminator": "igan.models",
    "Generator": "igan.models", "ModelDef": "igan.models", "DatasetSpec": "igan.datasets.base",
    "ImageDataset": "igan.datasets.base", "losses": "igan.losses", "layers": "igan.layers",
    "testing": "igan.testing",
}

__all__ = ["__version__", "hookimpl", "IganError", "UsageError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if module.__name__.endswith(name) else getattr(module, name)
    raise AttributeError(f"module 'igan' has no attribute {name!r}")
