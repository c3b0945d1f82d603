"""Where runs go and how several are trained: the run directory, ``--seeds K`` and ``--parallel``.

Shared by ``igan train`` and ``igan semisup``; imports no command module.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from igan.config import SEED_MAX
from igan.errors import UsageError

__all__ = ["train_once", "seeds_base", "seed_configs", "train_configs", "train_parallel"]


def _run_dir(config) -> Path:
    if config.out:
        return Path(config.out)
    if config.resume:  # resume into the run the checkpoint belongs to
        ckpt = Path(config.resume)
        return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{config.dataset}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def train_once(config, pm, label: str = "") -> dict[str, Any]:
    """Build, train and checkpoint one run; returns its summary (``label``: shown in its progress line).
    The run directory is locked for the life of the run (``igan.runlock``: a second run on the same
    folder is refused)."""
    from igan.distributed import setup
    from igan.runlock import RunLock
    from igan.train import build_run, fit

    dist, _ = setup(config.device)
    run_dir = _run_dir(config)
    if dist.enabled:  # every rank must use rank 0's run directory (its name holds a timestamp)
        import torch.distributed

        shared = [str(run_dir)]
        torch.distributed.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
    with RunLock(run_dir, active=dist.is_main):
        if dist.is_main and config.resume is None and (run_dir / "checkpoints" / "last.safetensors").exists():
            raise UsageError(f"{run_dir} already holds a run",
                             hint=f"use --resume {run_dir} to continue it, or another --out")
        run = build_run(config, pm, run_dir)
        return fit(run, resume=Path(config.resume) if config.resume else None, label=label)


def seeds_base(config, seeds: int) -> Path:
    """The folder of a ``--seeds K`` experiment: ``--out``, else the folder given to ``--resume``, else new."""
    if seeds > 1 and config.resume and not config.out:
        return Path(config.resume)
    return _run_dir(config)


def seed_configs(config, seeds: int, base: Path | None = None) -> list:
    """One configuration per seed: --seed + i, each in <base>/seed<S> (``base`` itself for one seed;
    default: ``seeds_base``). With several seeds, ``--resume`` names the experiment's folder and each
    seed continues from its own checkpoint there (a seed that has none yet starts)."""
    import copy

    if config.seed + seeds - 1 > SEED_MAX:
        raise UsageError(f"--seed {config.seed} with --seeds {seeds} goes past the largest seed, {SEED_MAX}",
                         hint=f"use --seed {SEED_MAX - seeds + 1} or lower")
    base = base or seeds_base(config, seeds)
    resume = Path(config.resume) if seeds > 1 and config.resume else None
    if resume is not None and not resume.is_dir():
        raise UsageError(f"with --seeds {seeds}, --resume takes the experiment's folder (holding seed<S>/), "
                         f"not {resume}", hint="e.g. --resume runs/mnist-seeds, the folder the first command printed")
    configs = []
    for i in range(seeds):
        cfg = copy.deepcopy(config)
        cfg.seed = config.seed + i
        cfg.out = str(base / f"seed{cfg.seed}") if seeds > 1 else str(base)
        if resume is not None:
            ckpt = resume / f"seed{cfg.seed}" / "checkpoints" / "last.safetensors"
            cfg.resume = str(ckpt) if ckpt.is_file() else None
        configs.append(cfg)
    if resume is not None and not any(c.resume for c in configs):
        raise UsageError(f"{resume} holds no seed<S>/checkpoints/last.safetensors for seeds "
                         f"{config.seed}-{config.seed + seeds - 1}", hint="check --resume, --seed and --seeds")
    return configs


def train_configs(configs: list, pms, parallel: bool = False) -> list[dict[str, Any]]:
    """Train each configuration: one after another, or all at once with ``parallel``."""
    if parallel and len(configs) > 1:
        return train_parallel(configs, pms)
    k = len(configs)
    return [train_once(cfg, pms.new(), f"seed {cfg.seed} ({i + 1}/{k})" if k > 1 else "")
            for i, cfg in enumerate(configs)]


def train_parallel(configs: list, pms) -> list[dict[str, Any]]:
    """Build and train K runs at once in one process (``--parallel``, ``igan.parallel``)."""
    from igan.parallel import build_parallel
    from igan.train import fit_runs

    resumes = [Path(c.resume) if c.resume else None for c in configs]
    if any(resumes) and not all(resumes):
        missing = ", ".join(str(c.seed) for c in configs if not c.resume)
        raise UsageError(f"--parallel resumes all seeds together, but seeds {missing} have no checkpoint yet",
                         hint="drop --parallel to finish the started seeds and start the others one by one")
    from igan.runlock import RunLock

    dirs = [_run_dir(c) for c in configs]
    with contextlib.ExitStack() as locks:
        for d in dirs:
            locks.enter_context(RunLock(d))
        for d, r in zip(dirs, resumes):
            if r is None and (d / "checkpoints" / "last.safetensors").exists():
                raise UsageError(f"{d} already holds a run",
                                 hint="use --resume with the experiment's folder, or another --out")
        trainer = build_parallel(configs, [pms.new() for _ in configs], dirs)
        return fit_runs(trainer, resumes)
