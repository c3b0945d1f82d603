"""Dataset registry: the built-in sets plus whatever plugins add through ``igan_register_datasets``."""

from __future__ import annotations

from pathlib import Path

from igan.datasets.base import DatasetSpec, ImageDataset
from igan.errors import IganError, UsageError

__all__ = ["DatasetSpec", "ImageDataset", "dataset_registry", "load_dataset"]


def dataset_registry(pm) -> dict[str, DatasetSpec]:
    specs: dict[str, DatasetSpec] = {}

    def register(spec: DatasetSpec) -> None:
        if spec.name in specs:
            raise IganError(f"dataset {spec.name!r} is registered twice",
                            hint="two plugins provide the same dataset name; disable one")
        specs[spec.name] = spec

    pm.hook.igan_register_datasets(register=register)
    return specs


def load_dataset(pm, name: str, data_dir: str | None, download: bool,
                 config=None) -> tuple[ImageDataset, DatasetSpec]:
    """Load dataset ``name``; ``config`` (the run's ``RunConfig``) goes to loaders that take it."""
    specs = dataset_registry(pm)
    if name not in specs:
        raise UsageError(f"unknown dataset {name!r}", hint=f"choose one of: {', '.join(sorted(specs))}")
    spec = specs[name]
    extra = {"config": config} if _takes_config(spec.loader) else {}
    return spec.loader(Path(data_dir) if data_dir else None, download, **extra), spec


def _takes_config(loader) -> bool:
    import inspect

    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):  # a builtin or C callable: the plain (data_dir, download) form
        return False
    return "config" in params
