"""igan: the techniques of "Improved Techniques for Training GANs" (Salimans et al., NeurIPS 2016) as
composable pluggy plugins on PyTorch.

The public API for plugin authors is what this module exports (see docs/writing-plugins.md):
``hookimpl`` to mark hook implementations, the error types, and the objects hooks receive.
Everything else is internal and may change.
"""

from __future__ import annotations

__version__ = "0.1.0"

from igan.errors import IganError, UsageError  # noqa: E402
from igan.plugins import hookimpl  # noqa: E402

__all__ = ["__version__", "hookimpl", "IganError", "UsageError"]
