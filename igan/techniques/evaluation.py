"""Sample quality during training (``--eval-every N``): metrics at epoch ends, and the best checkpoint.

Every N epochs (and at the last one) the plugin draws ``--eval-n`` samples from fixed noise and scores
them with the metrics of ``igan evaluate`` (``--metric``, comma-separated; default: the offline
``classifier-score`` on digits and MNIST, ``is,fid`` on other datasets when the Inception weights are
found). The numbers are returned from ``igan_epoch_end``, so the loop writes them to
``metrics.jsonl`` and passes them to ``igan_log`` (TensorBoard) and the progress line, and ``igan
report`` plots them; each evaluation's cost is printed. Keys: ``eval/<metric>`` (the metric's mean),
``eval/<metric>_std``, and ``eval/classifier_fd`` (the classifier score's Fréchet distance).

The samples are the ones ``igan evaluate CKPT --metric M -n N --seed S`` draws from that epoch's
checkpoint (the same noise, chunks of 1000, the sampling generator), so the last value in the log is
the number ``igan evaluate`` gives for ``last.safetensors``. Evaluation uses its own random generator:
the run's random stream, and so ``--resume``, is untouched.

The best checkpoint: after each evaluation the value of ``--best-by`` (default ``classifier_fd`` for
the classifier score, else ``fid``, else the first metric; lower is better for distances and errors,
higher for scores) is compared with the best so far; when it improves, the epoch's checkpoint is copied
to ``checkpoints/best.safetensors`` once it is written (``igan_after_checkpoint``), atomically like
``last.safetensors``, with ``checkpoints/best.json`` saying which metric, value, epoch and step. The
best value is kept in the checkpoint, so a resumed run only replaces the copy with a better one.

Run-only options: they change no weights, may differ on ``--resume``, and play no part in ``sample``.
Never owns an optimizer: it only reads G's samples.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from igan.config import SEED_MAX
from igan.errors import UsageError
from igan.plugins import hookimpl

PANEL = "Evaluation"
CHUNK = 1000  # as igan.restore.Restored.generate: G's batch norm uses batch statistics
DEFAULT_N = 10_000
# Direction of the keys --best-by knows: True when higher is better.
HIGHER_IS_BETTER = {"classifier_score": True, "classifier_fd": False, "is": True, "fid": False}
OFFLINE = ("digits", "mnist")  # datasets with an offline classifier (igan.metrics.classifier.RECIPES)


@hookimpl
def igan_addoption(parser):
    parser.add("eval_every", int, 0, min=0, panel=PANEL, run_only=True,
               help="score samples every N epochs and at the last one (metrics.jsonl, TensorBoard, igan report), "
                    "keeping the best checkpoint in checkpoints/best.safetensors; 0: never")
    parser.add("eval_metric", str, None, flag="--metric", panel=PANEL, run_only=True,
               help="what --eval-every computes, comma-separated metrics of igan evaluate (default: "
                    "classifier-score on digits and mnist, else is,fid, which need the Inception weights)")
    parser.add("eval_n", int, DEFAULT_N, min=2, panel=PANEL, run_only=True,
               help="samples per evaluation (igan evaluate's -n; the paper's IS protocol uses 50,000)")
    parser.add("eval_seed", int, 0, min=0, max=SEED_MAX, panel=PANEL, run_only=True,
               help="noise seed of the evaluation samples (igan evaluate's --seed)")
    parser.add("best_by", str, None, panel=PANEL, run_only=True,
               help="the value that picks best.safetensors: classifier_fd, classifier_score, is, fid, or "
                    "KEY:min / KEY:max for a plugin's metric (default: classifier_fd, else fid, else the first)")


def default_metrics(dataset: str) -> list[str]:
    """What ``--eval-every`` computes without ``--metric``: the offline classifier score for the digit
    datasets; IS and FID elsewhere (``configure`` checks that the Inception weights are there)."""
    return ["classifier-score"] if dataset in OFFLINE else ["is", "fid"]


def metric_keys(metric: str) -> list[str]:
    """The logged keys of one metric's result, without the ``eval/`` prefix; the first is its mean."""
    base = metric.replace("-", "_")
    keys = [base, f"{base}_std"]
    if metric == "classifier-score":
        keys.append("classifier_fd")
    return keys


def best_rule(best_by: str | None, metrics: list[str]) -> tuple[str, bool]:
    """``(key, higher_is_better)`` of ``--best-by`` (refused when no metric logs the key)."""
    if best_by is None:
        keys = [k for m in metrics for k in metric_keys(m)]
        best_by = next((k for k in ("classifier_fd", "fid") if k in keys), metric_keys(metrics[0])[0])
    key, _, direction = best_by.removeprefix("eval/").partition(":")
    key = key.replace("-", "_")
    logged = [k for m in metrics for k in metric_keys(m) if not k.endswith("_std")]
    if key not in logged:
        raise UsageError(f"--best-by {best_by}: no --metric logs {key!r}",
                         hint=f"choose one of {', '.join(logged)}")
    if direction:
        if direction not in ("min", "max"):
            raise UsageError(f"--best-by {best_by}: the direction must be min or max, got {direction!r}",
                             hint=f"e.g. --best-by {key}:min (lower is better)")
        return key, direction == "max"
    if key not in HIGHER_IS_BETTER:
        raise UsageError(f"--best-by {key}: igan does not know whether higher or lower is better",
                         hint=f"say it: --best-by {key}:max or --best-by {key}:min")
    return key, HIGHER_IS_BETTER[key]


@hookimpl
def igan_configure(config, pm):
    every = config.opt("eval_every", 0) or 0
    if not every:
        given = [flag for name, flag in (("eval_metric", "--metric"), ("best_by", "--best-by"))
                 if config.opt(name) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} given without --eval-every",
                             hint="add --eval-every N (epochs between evaluations), or drop "
                                  f"{', '.join(given)}")
        return
    from igan.evaluate import ERROR_METRIC, metric_registry, needs_inception

    registry = metric_registry(pm)
    names = [m.strip() for m in (config.opt("eval_metric") or "").split(",") if m.strip()]
    names = names or default_metrics(config.dataset)
    for name in names:
        if name == ERROR_METRIC:
            raise UsageError("--metric error is the semi-supervised test error, which igan semisup measures at "
                             "every epoch end already (test_error)", hint="choose a sample-quality metric: "
                             + ", ".join(registry))
        if name not in registry:
            raise UsageError(f"--metric {name}: unknown metric", hint=f"choose from: {', '.join(registry)}")
    weights = None
    if any(needs_inception(registry[n]) for n in names):
        from igan.metrics.inception import _resolve_weights

        try:  # a missing file is found now, not after the first epoch
            weights = _resolve_weights(None, bool(config.download))
        except Exception as exc:
            why = getattr(exc, "message", str(exc))
            raise UsageError(f"--eval-every with {', '.join(names)} needs the Inception weights: {why}",
                             hint="put them where the error says (or pass --download), or use a metric that "
                                  "works offline: --metric classifier-score (digits, mnist)") from exc
    key, higher = best_rule(config.opt("best_by"), names)
    pm.register(Evaluator(every, names, int(config.opt("eval_n", DEFAULT_N)), int(config.opt("eval_seed", 0)),
                          key, higher, weights), "evaluation.run")


class Evaluator:
    """Per-run state: what to compute, the noise, and the best value so far."""

    def __init__(self, every: int, metrics: list[str], n: int, seed: int, best_key: str, higher: bool,
                 inception_weights: Path | None) -> None:
        self.every, self.metrics, self.n, self.seed = every, metrics, n, seed
        self.best_key, self.higher = best_key, higher
        self.inception_weights = inception_weights
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.pending: dict[str, Any] | None = None  # an improvement waiting for its checkpoint

    def due(self, run, epoch: int) -> bool:
        return epoch % self.every == 0 or run.step >= run.total_steps

    @torch.no_grad()
    def samples(self, run) -> torch.Tensor:
        """uint8 samples as ``igan evaluate``'s ``Restored.generate(n, seed)`` draws them."""
        from igan.models import sample_z

        gen = torch.Generator().manual_seed(self.seed)
        models = run.models
        out = []
        for i in range(0, self.n, CHUNK):
            z = sample_z(min(CHUNK, self.n - i), models.z_dim, models.z_dist, "cpu", generator=gen)
            out.append(run.generate(z.shape[0], z.to(run.device), chunk=CHUNK))
        return torch.cat(out)

    @hookimpl
    def igan_train_start(self, run):
        if run.dist.is_main:
            from igan.console import info

            direction = "higher" if self.higher else "lower"
            info(f"evaluating {', '.join(self.metrics)} every {self.every} epoch{'s' if self.every > 1 else ''} "
                 f"on {self.n} samples; best checkpoint by {self.best_key} ({direction} is better): "
                 f"{run.run_dir / 'checkpoints' / 'best.safetensors'}")

    @hookimpl
    def igan_epoch_end(self, run, epoch):
        if not run.dist.is_main or not self.due(run, epoch):
            return None  # rank 0 alone evaluates and writes (as it alone writes metrics.jsonl)

        # The run's random streams are left as they were, whatever a metric draws (its own networks'
        # initial weights, say): training, and --resume, must not depend on whether it evaluates.
        devices = [run.device] if run.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return self._evaluate(run, epoch)

    def _evaluate(self, run, epoch: int) -> dict[str, float]:
        from igan.console import info
        from igan.evaluate import make_context, metric_registry, score_images

        t0 = time.perf_counter()
        images = self.samples(run)
        registry = metric_registry(run.pm)
        context = make_context(splits=10, n=int(images.shape[0]), device=run.device, dataset=run.config.dataset,
                               data_dir=run.config.data_dir, download=bool(run.config.download),
                               inception_weights=self.inception_weights, retrain=False, seed=self.seed,
                               pm=run.pm, input=str(run.run_dir), input_kind="training", config=run.config,
                               dataset_obj=run.dataset)
        values: dict[str, float] = {}
        for name in self.metrics:
            mean, std, rest = score_images(registry[name], images, context)
            keys = metric_keys(name)
            values[f"eval/{keys[0]}"] = mean
            if std is not None:
                values[f"eval/{keys[1]}"] = std
            if name == "classifier-score" and rest.get("fd") is not None:
                values["eval/classifier_fd"] = float(rest["fd"])
        seconds = time.perf_counter() - t0
        value = values.get(f"eval/{self.best_key}")
        better = value is not None and math.isfinite(value) and (
            self.best is None or (value > self.best if self.higher else value < self.best))
        if better:
            self.best, self.best_epoch = value, epoch
            self.pending = {"metric": self.best_key, "value": value, "higher_is_better": self.higher,
                            "epoch": epoch, "step": run.step}
        shown = " ".join(f"{k.removeprefix('eval/')}={v:.4g}" for k, v in values.items())
        info(f"eval epoch {epoch}: {shown} ({seconds:.1f} s for {self.n} samples"
             f"{', new best' if better else ''})")
        return values

    @hookimpl
    def igan_after_checkpoint(self, run, path):
        if self.pending is None or self.pending["step"] != run.step:
            return
        from igan.checkpoint import copy_checkpoint

        best = path.parent / "best.safetensors"
        copy_checkpoint(path, best)
        _write_json(path.parent / "best.json", {**self.pending, "checkpoint": best.name})
        self.pending = None

    @hookimpl
    def igan_train_end(self, run, completed):
        if completed and run.dist.is_main and self.best is not None:
            from igan.console import info

            info(f"best {self.best_key}={self.best:.4g} at epoch {self.best_epoch}: "
                 f"{run.run_dir / 'checkpoints' / 'best.safetensors'}")

    @hookimpl
    def igan_checkpoint_tensors(self, run):
        if self.best is None:
            return {}
        return {"best": torch.tensor(self.best, dtype=torch.float64), "best_epoch": torch.tensor(self.best_epoch)}

    @hookimpl
    def igan_restore_tensors(self, run, tensors):
        if "best" in tensors:  # a run that evaluated before: only a better value replaces its copy
            self.best, self.best_epoch = float(tensors["best"]), int(tensors["best_epoch"])


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from igan.fileio import write_text

    write_text(path, json.dumps(data, indent=2) + "\n")  # atomically, as the checkpoints
