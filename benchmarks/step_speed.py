"""How fast is igan's training step compared with the same step written by hand in plain PyTorch?

Two workloads, both on the paper's MNIST MLP pair (G 100-500-500-784 with batch norm without scale,
softplus and a weight-normed sigmoid output; D 784-1000-500-250-250-250-K with weight-normed linear
layers, ReLU and Gaussian noise 0.3 on the input / 0.5 after each hidden layer), batch 100:

- ``semisup``: the semi-supervised MNIST step of the paper (paper-notes §1.1-1.2, §2.3). D update on
  100 labelled + 100 unlabelled + 100 generated images in separate D passes, K+1 loss (cross-entropy +
  0.5 softplus forms), then the EMA of D's parameters; then one feature-matching G update (mean squared
  difference of the batch-mean features of D's last hidden layer, real features from an independent
  unlabelled batch under no_grad), D's parameters frozen during G's backward.
- ``plain``: the plain GAN step (K = 1 logit, standard D loss, non-saturating G loss).
- ``cifar``: the semi-supervised CIFAR-10 step on the paper's conv pair (``cifar_conv``: 9-layer
  weight-normed D with dropout, 4-layer G with batch norm; K+1 loss, EMA of D, feature matching with the
  mean absolute difference), on synthetic CIFAR-shaped data (``bench_cifar``). Its hand-written side
  runs copies of igan's modules (plain torch layers plus igan's batch norm without scale and weight
  norm) in its own step function, so it measures what igan's step adds around the same networks.

igan's side is ``igan.train.train_step`` on a run made by ``igan.train.build_run`` (data-dependent init,
plugins, hooks: exactly what ``igan train`` / ``igan semisup`` run). Data is synthetic MNIST-shaped uint8
([6000, 1, 28, 28] random pixels and labels, plus a 1000-image test split) registered as dataset
``bench_mnist`` by a small extra plugin, so no files are needed. ``--fast-path on|off|auto`` sets igan's
``--fast-path`` for the timed side (``torch.compile``'d G and D; ``auto`` is igan's default, on for CUDA
only); the hand-written side always runs eagerly, so on CUDA the table compares igan's fast path with an
eager baseline unless ``--fast-path off`` is given. ``--capture on`` captures igan's step as a CUDA graph
(``igan.capture``, CUDA with the fast path only) and ``--hand-capture`` the hand-written step the same way
(``igan.capture.CapturedStep``), for the like-for-like comparison with a graphed baseline.

The hand-written side (``HandG``, ``HandD``, ``hand_step``) is the same maths and architecture in plain
PyTorch: weight-normed layers through ``torch.nn.utils.parametrizations.weight_norm`` (W = g v / ||v||
per output unit; ``--hand-wn inline`` writes the formula out instead, which autograd runs markedly
slower than torch's fused ``_weight_norm`` kernel), two ``torch.optim.Adam`` (beta1 0.5), batches drawn
by index from the uint8 training set held on the device, the step in one function. Its weights are
copied from igan's initialised models, so both start from the same point.

Before timing, an equivalence check runs each workload for ``--check-steps`` steps on both sides from
the same weights, the same z (same global seed before each step) and the same batch indices (igan's
sampler is recorded and replayed to the hand-written step), with D's noise off (model_kwargs
noise=False) and on (the hand-written D draws its noise in the same order as igan), in float32 and in
float64. It reports the first-step losses of both sides, the largest relative loss difference, the
largest first-step gradient difference (relative to the largest gradient) and the largest parameter
and EMA differences after the steps.

Timing: a warm-up, then ``--rounds`` rounds; in each round igan and the hand-written step each run
``--steps`` consecutive steps (A/B order alternating from round to round, same process), and the
per-round mean ms/step is recorded. The table gives the median over rounds of each side, the ratio
of the medians and the "paired" ratio (median over rounds of igan/hand in the same round, which a
shared, noisy machine disturbs less); the CPU target (igan/hand <= 1.05) is judged on the paired ratio.
On CUDA the device is synchronised before each clock reading. ``--max-seconds`` caps the timed rounds
so a default run stays under about 4 minutes even on a loaded machine.

``--profile`` additionally profiles both sides (torch.profiler, top operators by self CPU time) and
times igan's hook calls (pluggy hook-call monitoring), to locate any overhead.

    python benchmarks/step_speed.py                     # CPU, 1 thread, --steps 10 --rounds 30
    python benchmarks/step_speed.py --profile           # + torch.profiler tables and igan's hook times
    python benchmarks/step_speed.py --hand-wn-cache     # baseline variant: weight norm cached per phase
    python benchmarks/step_speed.py --fast-path on         # igan's side torch.compile'd (default on CUDA only)
    python benchmarks/step_speed.py --device cuda --threads 0
    python benchmarks/step_speed.py --device cuda --threads 0 --fast-path off
    python benchmarks/step_speed.py --device cuda --threads 0 --capture on --hand-capture --workloads semisup,cifar
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from igan.config import RunConfig
from igan.optim import ReferenceAdam
from igan.options import collect_options
from igan.plugins import get_plugin_manager
from _synthetic import BenchData  # noqa: E402  (benchmarks/ is on sys.path)
from igan.train import OneRun, Run, build_run, train_step

N_TRAIN, N_TEST = 6000, 1000
TARGET_RATIO = 1.05  # igan / hand-written on CPU
WORKLOADS = {"semisup": "semisup", "plain": "train", "cifar": "semisup"}  # workload -> igan command
PAIRS = {"semisup": ("bench_mnist", "mnist_mlp", 0.003), "plain": ("bench_mnist", "mnist_mlp", 0.003),
         "cifar": ("bench_cifar", "cifar_conv", 3e-4)}  # workload -> dataset, model, lr


# ----------------------------------------------------------------------------------------------
# igan's side (synthetic data from benchmarks/_synthetic.py, registered through an extra plugin)

FAST_PATH = {"auto": None, "on": True, "off": False}


def make_igan_run(workload: str, device: str, run_dir: Path, noise: bool = True, seed: int = 0,
                  dtype: torch.dtype = torch.float32, fast_path: bool | None = False, batch_size: int = 100) -> Run:
    """igan's run as ``igan semisup`` / ``igan train`` builds it. ``dtype=torch.float64`` (equivalence check
    only) converts the initialised models and the batches to double precision; z follows the default dtype."""
    command = WORKLOADS[workload]
    pm = get_plugin_manager(extra=[("bench_data", BenchData(N_TRAIN, N_TEST))])
    dataset, model, lr = PAIRS[workload]
    config = RunConfig(command=command, dataset=dataset, model=model, batch_size=batch_size,
                       steps=10**9, device=device, seed=seed, lr=lr,
                       model_kwargs={} if noise or model != "mnist_mlp" else {"noise": False}, fast_path=fast_path,
                       options=collect_options(pm).defaults(command))
    run = build_run(config, pm, run_dir)
    if dtype != torch.float32:
        run.generator.to(dtype)  # in place: the optimizers keep the same Parameter objects
        run.discriminator.to(dtype)
        ds = run.dataset
        run.data = lambda idx: ds.x_train[idx].to(dtype) * ds.scale + ds.shift
    pm.hook.igan_train_start(run=run)  # fit() does this: labelled subset, FM real stream, EMA state
    return run


# ----------------------------------------------------------------------------------------------
# the hand-written step


class WNLinear(nn.Module):
    """Weight-normed linear layer written out: W = g v / ||v|| (norm per output unit)."""

    def __init__(self, fin: int, fout: int, train_g: bool) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.randn(fout, fin) * 0.05)
        self.g = nn.Parameter(torch.ones(fout, 1), requires_grad=train_g)
        self.b = nn.Parameter(torch.zeros(fout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.v * (self.g / self.v.norm(dim=1, keepdim=True)), self.b)

    def vgb(self) -> list[torch.Tensor]:
        return [self.v, self.g, self.b]


class PWNLinear(nn.Linear):
    """Weight-normed linear layer through torch's parametrization (fused ``_weight_norm`` kernel)."""

    def __init__(self, fin: int, fout: int, train_g: bool) -> None:
        super().__init__(fin, fout)
        weight_norm(self, dim=0)  # registers parametrizations.weight.original0 (g), original1 (v)
        self.parametrizations.weight.original0.requires_grad_(train_g)

    def vgb(self) -> list[torch.Tensor]:
        p = self.parametrizations.weight
        return [p.original1, p.original0, self.bias]


WN_LAYERS = {"parametrize": PWNLinear, "inline": WNLinear}


class HandG(nn.Module):
    """z(100) -> [Linear -> BN without scale -> softplus] x 2 -> weight-normed Linear -> sigmoid."""

    def __init__(self, z_dim: int = 100, hidden: tuple[int, ...] = (500, 500), n_out: int = 784,
                 eps: float = 1e-6, wn: str = "parametrize") -> None:
        super().__init__()
        dims = (z_dim, *hidden)
        self.fcs = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims, dims[1:]))
        self.bn_b = nn.ParameterList(nn.Parameter(torch.zeros(b)) for b in hidden)
        self.out = WN_LAYERS[wn](dims[-1], n_out, train_g=True)
        self.eps = eps

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for fc, b in zip(self.fcs, self.bn_b):
            h = fc(h)
            mean, var = h.mean(0, keepdim=True), h.var(0, unbiased=False, keepdim=True)
            h = F.softplus((h - mean) / torch.sqrt(var + self.eps) + b)
        return torch.sigmoid(self.out(h)).view(-1, 1, 28, 28)


class HandD(nn.Module):
    """784 -> noise 0.3 -> [WN Linear -> ReLU -> noise 0.5] x 5 (features before the last noise) -> WN Linear K."""

    def __init__(self, k: int, hidden: tuple[int, ...] = (1000, 500, 250, 250, 250), n_in: int = 784,
                 noise: bool = True, wn: str = "parametrize") -> None:
        super().__init__()
        dims = (n_in, *hidden)
        self.hidden = nn.ModuleList(WN_LAYERS[wn](a, b, train_g=False) for a, b in zip(dims, dims[1:]))
        self.out = WN_LAYERS[wn](dims[-1], k, train_g=True)
        self.noise = noise

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def noisy(h, sigma):
            return h + sigma * torch.randn_like(h) if self.noise else h

        h = noisy(x.flatten(1), 0.3)
        for i, layer in enumerate(self.hidden):
            h = F.relu(layer(h))
            if i < len(self.hidden) - 1:
                h = noisy(h, 0.5)
        return self.out(noisy(h, 0.5)), h  # (logits, features of the last hidden layer)


class HandSampler:
    """Batches by index: per-epoch permutations of the training set (partial batch dropped), the labelled
    set tiled by fresh permutations, and an independent permutation for the feature-matching real batch."""

    def __init__(self, n: int, batch: int, device, seed: int, labeled: torch.Tensor | None = None,
                 fm_real: bool = False) -> None:
        self.n, self.batch, self.device = n, batch, device
        self.gen = torch.Generator().manual_seed(seed)
        self.labeled = labeled
        self.perm = {"unl": torch.empty(0, dtype=torch.long, device=device),
                     "lab": torch.empty(0, dtype=torch.long, device=device),
                     "fm": torch.empty(0, dtype=torch.long, device=device)}
        self.fm_real = fm_real

    def _take(self, key: str) -> torch.Tensor:
        p = self.perm[key]
        if key == "lab":
            while p.numel() < self.batch:
                p = torch.cat([p, self.labeled[torch.randperm(self.labeled.numel(), generator=self.gen)
                                               .to(self.device)]])
        elif p.numel() < self.batch:
            p = torch.randperm(self.n, generator=self.gen).to(self.device)
        self.perm[key] = p[self.batch:]
        return p[:self.batch]

    def next(self):
        return (self._take("unl"), self._take("lab") if self.labeled is not None else None,
                self._take("fm") if self.fm_real else None)


class Hand:
    """Everything the hand-written step needs: models, optimizers, data on the device, EMA buffers."""

    def __init__(self, run: Run, workload: str, wn: str = "parametrize", dtype=torch.float32,
                 cache_wn: bool = False) -> None:
        dev, k = run.device, run.discriminator.num_logits
        noise = not isinstance(run.discriminator.pre_out, nn.Identity)
        self.workload = workload
        self.G = HandG(wn=wn).to(dev, dtype)
        self.D = HandD(k, noise=noise, wn=wn).to(dev, dtype)
        self.dtype = dtype
        self.cache_wn = cache_wn and wn == "parametrize"
        copy_weights(run, self)  # same starting point as igan (its data-dependent init)
        self.x = run.dataset.x_train  # uint8 on the device
        self.y = run.dataset.y_train
        self.scale = run.dataset.scale
        self.batch = run.config.batch_size
        self.z_dim = 100
        self.d_train = [p for p in self.D.parameters() if p.requires_grad]
        adam = dict(lr=run.config.lr, betas=(0.5, 0.999))
        # the same update rule as igan's default (the reference code's Adam, eps inside the sqrt)
        self.opt_g = ReferenceAdam([p for p in self.G.parameters() if p.requires_grad], **adam)
        self.opt_d = ReferenceAdam(self.d_train, **adam)
        self.ema_decay = 0.9999
        self.d_all = [t for m in [*self.D.hidden, self.D.out] for t in m.vgb()]  # what the EMA averages
        self.ema = [torch.zeros_like(p) for p in self.d_all]
        labeled = None
        if workload == "semisup":
            labeled = run.sampler.labeled.pool  # the same class-balanced labelled subset as igan's
        self.sampler = HandSampler(self.x.shape[0], self.batch, dev, seed=1, labeled=labeled,
                                   fm_real=workload == "semisup")
        self.device = dev

    def data(self, idx: torch.Tensor) -> torch.Tensor:
        return self.x[idx].to(self.dtype) * self.scale


def hand_step(h: Hand, batch=None) -> dict[str, torch.Tensor]:
    """One D update then one G update, as a researcher writes it in one function.

    With ``h.cache_wn`` (``--hand-wn-cache``, a variant, not the baseline) D's weight-normed weights are
    computed once per phase (``parametrize.cached()``) instead of once per D pass."""
    G, D = h.G, h.D
    phase = parametrize.cached if h.cache_wn else contextlib.nullcontext
    unl, lab, fm_real = batch if batch is not None else h.sampler.next()
    z = torch.rand(h.batch, h.z_dim, device=h.device)
    with torch.no_grad():
        fake = G(z)
    with phase():
        logits_unl, _ = D(h.data(unl))
        logits_fake, _ = D(fake)
        if h.workload == "semisup":
            logits_lab, _ = D(h.data(lab))
    if h.workload == "semisup":
        loss_lab = F.cross_entropy(logits_lab, h.y[lab])
        lse_unl, lse_fake = logits_unl.logsumexp(1), logits_fake.logsumexp(1)
        loss_unl = 0.5 * F.softplus(-lse_unl).mean() + 0.5 * F.softplus(lse_fake).mean()
        loss_d = loss_lab + 1.0 * loss_unl
    else:
        loss_d = F.softplus(-logits_unl[:, 0]).mean() + F.softplus(logits_fake[:, 0]).mean()
    h.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    h.opt_d.step()
    if h.workload == "semisup":  # EMA of D's parameters, for evaluation (paper-notes §1.5)
        with torch.no_grad():
            for avg, p in zip(h.ema, h.d_all):
                avg.lerp_(p, 1.0 - h.ema_decay)

    for p in h.d_train:  # no weight gradients for D in G's backward
        p.requires_grad_(False)
    with phase():
        fake = G(torch.rand(h.batch, h.z_dim, device=h.device))  # fresh z for G's update, as igan
        if h.workload == "semisup":
            with torch.no_grad():
                _, feat_real = D(h.data(fm_real))
            _, feat_fake = D(fake)
            loss_g = (feat_real.mean(0) - feat_fake.mean(0)).square().mean()
        else:
            logits_g, _ = D(fake)
            loss_g = F.softplus(-logits_g[:, 0]).mean()
    h.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    h.opt_g.step()
    for p in h.d_train:
        p.requires_grad_(True)
    return {"loss/D": loss_d.detach(), "loss/G": loss_g.detach()}


@torch.no_grad()
def copy_weights(run: Run, h: Hand) -> None:
    """igan's initialised weights -> the hand-written modules (parametrization original0 = g, original1 = v)."""
    ig, idd = run.generator, run.discriminator
    g_lin = [m for m in ig.net if isinstance(m, nn.Linear)]
    g_bn = [m for m in ig.net if type(m).__name__ == "BatchNormNoScale"]
    for mine, theirs in zip(h.G.fcs, g_lin[:-1]):
        mine.weight.copy_(theirs.weight)
    for mine, theirs in zip(h.G.bn_b, g_bn):
        mine.copy_(theirs.bias)
    _copy_wn(h.G.out, g_lin[-1])
    d_lin = [m for m in idd.trunk if isinstance(m, nn.Linear)]
    for mine, theirs in zip(h.D.hidden, d_lin):
        _copy_wn(mine, theirs)
    _copy_wn(h.D.out, idd.out)


def _copy_wn(mine: nn.Module, theirs: nn.Linear) -> None:
    par = theirs.parametrizations.weight
    for dst, src in zip(mine.vgb(), [par.original1, par.original0, theirs.bias]):
        dst.copy_(src.reshape(dst.shape))


class HandConv:
    """The hand-written CIFAR-10 semi-supervised step's state: copies of igan's initialised G and D (the
    same networks and weights), two reference Adams, the EMA of D, a sampler like ``HandSampler``."""

    def __init__(self, run: Run) -> None:
        import copy

        self.workload = "cifar"
        self.G, self.D = copy.deepcopy(run.generator), copy.deepcopy(run.discriminator)
        self.d_train = [p for p in self.D.parameters() if p.requires_grad]
        adam = dict(lr=run.config.lr, betas=(0.5, 0.999))
        self.opt_g = ReferenceAdam([p for p in self.G.parameters() if p.requires_grad], **adam)
        self.opt_d = ReferenceAdam(self.d_train, **adam)
        self.ema_decay = 0.9999
        self.d_all = [p for p in self.D.parameters()]
        self.ema = [torch.zeros_like(p) for p in self.d_all]
        self.x, self.y = run.dataset.x_train, run.dataset.y_train
        self.scale, self.shift = run.dataset.scale, run.dataset.shift
        self.batch, self.z_dim, self.device = run.config.batch_size, run.models.z_dim, run.device
        self.sampler = HandSampler(self.x.shape[0], self.batch, run.device, seed=1, labeled=run.sampler.labeled.pool,
                                   fm_real=True)

    def data(self, idx: torch.Tensor) -> torch.Tensor:
        return self.x[idx].float() * self.scale + self.shift


def hand_conv_step(h: HandConv, batch=None) -> dict[str, torch.Tensor]:
    """One D update (labelled, unlabelled, generated passes; K+1 loss), the EMA, one FM (l1) G update."""
    unl, lab, fm_real = batch if batch is not None else h.sampler.next()
    z = torch.rand(h.batch, h.z_dim, device=h.device)
    with torch.no_grad():
        fake = h.G(z)
    logits_unl, logits_fake, logits_lab = h.D(h.data(unl)).logits, h.D(fake).logits, h.D(h.data(lab)).logits
    lse_unl, lse_fake = logits_unl.logsumexp(1), logits_fake.logsumexp(1)
    loss_d = (F.cross_entropy(logits_lab, h.y[lab]) + 0.5 * F.softplus(-lse_unl).mean()
              + 0.5 * F.softplus(lse_fake).mean())
    h.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    h.opt_d.step()
    with torch.no_grad():
        for avg, p in zip(h.ema, h.d_all):
            avg.lerp_(p, 1.0 - h.ema_decay)
    for p in h.d_train:
        p.requires_grad_(False)
    fake = h.G(torch.rand(h.batch, h.z_dim, device=h.device))
    with torch.no_grad():
        feat_real = h.D(h.data(fm_real)).features
    loss_g = (feat_real.mean(0) - h.D(fake).features.mean(0)).abs().mean()
    h.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    h.opt_g.step()
    for p in h.d_train:
        p.requires_grad_(True)
    return {"loss/D": loss_d.detach(), "loss/G": loss_g.detach()}


def check_conv_losses(run: Run, h: HandConv) -> dict:
    """igan's and the hand-written CIFAR step from the same weights, seed and batch: first-step losses."""
    batch = run.sampler.next()
    torch.manual_seed(100)
    mine = train_step(run, batch)
    torch.manual_seed(100)
    theirs = hand_conv_step(h, (batch.unlabeled, batch.labeled, batch.generator_real))
    return {k: [float(mine[k]), float(theirs[k])] for k in ("loss/D", "loss/G")}


# ----------------------------------------------------------------------------------------------
# equivalence


def igan_params(run: Run) -> list[torch.Tensor]:
    """igan's parameters in the hand-written modules' order."""
    ig, idd = run.generator, run.discriminator
    g_lin = [m for m in ig.net if isinstance(m, nn.Linear)]
    g_bn = [m for m in ig.net if type(m).__name__ == "BatchNormNoScale"]

    def wn(m):
        p = m.parametrizations.weight
        return [p.original1, p.original0, m.bias]  # v, g, b

    out = [m.weight for m in g_lin[:-1]] + [m.bias for m in g_bn] + wn(g_lin[-1])
    for m in [m for m in idd.trunk if isinstance(m, nn.Linear)] + [idd.out]:
        out += wn(m)
    return out


def hand_params(h: Hand) -> list[torch.Tensor]:
    return [m.weight for m in h.G.fcs] + list(h.G.bn_b) + h.G.out.vgb() + h.d_all


def check_equivalence(workload: str, device: str, noise: bool, steps: int, tmp: Path, wn: str,
                      dtype: torch.dtype = torch.float32, cache_wn: bool = False) -> dict:
    """Run igan and the hand-written step side by side from the same weights, z and batch indices."""
    run = make_igan_run(workload, device, tmp / f"eq_{workload}_{noise}_{dtype}", noise=noise, dtype=dtype)
    h = Hand(run, workload, wn=wn, dtype=dtype, cache_wn=cache_wn)
    start = max((a - b.reshape(a.shape)).abs().max().item()
                for a, b in zip(hand_params(h), igan_params(run)))
    recorded = []
    original_next = run.sampler.next

    def recording_next():
        b = original_next()
        recorded.append((b.unlabeled, b.labeled, b.generator_real))
        return b

    run.sampler.next = recording_next  # replay igan's batch indices to the hand-written step
    loss_diff: dict[str, float] = defaultdict(float)
    first: dict[str, list[float]] = {}
    grads: dict[str, list[torch.Tensor]] = {}
    for key, opt in (("igan_D", run.opt_d), ("igan_G", run.opt_g), ("hand_D", h.opt_d), ("hand_G", h.opt_g)):
        _capture_grads(opt, grads, key)
    before = torch.get_default_dtype()
    for i in range(steps):
        torch.set_default_dtype(dtype)  # z = torch.rand(...) on both sides
        try:
            torch.manual_seed(100 + i)
            logs = train_step(run)
            run.step += 1
            torch.manual_seed(100 + i)
            mine = hand_step(h, recorded[-1])
        finally:
            torch.set_default_dtype(before)
        for key in ("loss/D", "loss/G"):
            a, b = float(logs[key]), float(mine[key])
            loss_diff[key] = max(loss_diff[key], abs(a - b) / max(abs(a), 1e-12))
            if i == 0:
                first[key] = [a, b]
    param_diff = max((a - b.reshape(a.shape)).abs().max().item()
                     for a, b in zip(hand_params(h), igan_params(run)))
    ema_diff = None
    semi = [p for p in run.pm.get_plugins() if type(p).__name__ == "SemiSupervised"]
    if semi:  # igan's avg is keyed by D's state-dict names; map them onto the hand-written order
        avg = semi[0].avg
        d_lin = [n for n, m in run.discriminator.named_modules() if isinstance(m, nn.Linear)]
        names = []
        for n in d_lin:
            names += [f"{n}.parametrizations.weight.original1", f"{n}.parametrizations.weight.original0", f"{n}.bias"]
        ema_diff = max((avg[n] - e.reshape(avg[n].shape)).abs().max().item() for n, e in zip(names, h.ema))

    def by_param(opts, grad_lists):
        params = [p for opt in opts for grp in opt.param_groups for p in grp["params"]]
        return dict(zip(map(id, params), [g for gl in grad_lists for g in gl]))

    g_igan = by_param([run.opt_d, run.opt_g], [grads["igan_D"], grads["igan_G"]])
    g_hand = by_param([h.opt_d, h.opt_g], [grads["hand_D"], grads["hand_G"]])
    n_g = len(hand_params(h)) - len(h.d_all)  # hand_params: G's tensors first, then D's
    grad_diff = {}
    for net, sl in (("G", slice(0, n_g)), ("D", slice(n_g, None))):
        diffs, scale = [], []
        for mine, theirs in zip(hand_params(h)[sl], igan_params(run)[sl]):
            if id(mine) in g_hand:  # trainable on both sides
                gm, gt = g_hand[id(mine)], g_igan[id(theirs)]
                diffs.append((gt - gm.reshape(gt.shape)).abs().max().item())
                scale.append(gm.abs().max().item())
        grad_diff[net] = max(diffs) / max(max(scale), 1e-300)
    return {"workload": workload, "noise": noise, "dtype": str(dtype).replace("torch.", ""), "steps": steps,
            "hand_weight_norm": wn, "hand_wn_cache": cache_wn, "start_param_max_abs_diff": start,
            "first_step_losses_igan_hand": first, "max_rel_loss_diff": dict(loss_diff),
            "first_step_grad_max_diff_rel_to_max_grad": grad_diff,
            "param_max_abs_diff_after": param_diff, "ema_max_abs_diff_after": ema_diff}


def _capture_grads(opt: torch.optim.Optimizer, store: dict, key: str) -> None:
    step = opt.step

    def capturing_step(*a, **k):
        if key not in store:
            store[key] = [p.grad.detach().clone() for grp in opt.param_groups for p in grp["params"]]
        return step(*a, **k)

    opt.step = capturing_step


# ----------------------------------------------------------------------------------------------
# timing


def timed(fn, steps: int, sync) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) / steps


def igan_stepper(run: Run):
    """igan's step as the training loop calls it (``OneRun``: captured as a CUDA graph where
    ``igan.capture`` selects it)."""
    trainer = OneRun(run)

    def step():
        trainer.step()
        run.step += 1
    step.trainer = trainer
    return step


class _Buffers(nn.Module):
    """Holds tensors (the hand-written EMA) as buffers, so a capture's first-use snapshot includes them."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        super().__init__()
        for i, t in enumerate(tensors):
            self.register_buffer(f"t{i}", t)


def hand_stepper(h, capture: bool):
    step = hand_conv_step if h.workload == "cifar" else hand_step
    if not capture:
        return lambda: step(h), None
    from igan.capture import CapturedStep

    captured = CapturedStep(h.sampler.next, lambda b: step(h, b), runs=[], modules=[h.G, h.D, _Buffers(h.ema)],
                            optimizers=[h.opt_g, h.opt_d], device=h.device, name="the hand-written step")
    return captured, captured


def _captured(obj) -> bool:
    from igan.capture import CapturedStep

    return isinstance(obj, CapturedStep) and not obj.eager and obj.graph is not None


def bench_workload(workload: str, args, tmp: Path, budget: float) -> dict:
    run = make_igan_run(workload, args.device, tmp / workload, fast_path=FAST_PATH[args.fast_path],
                        batch_size=args.batch_size)
    h = HandConv(run) if workload == "cifar" else Hand(run, workload, wn=args.hand_wn, cache_wn=args.hand_wn_cache)
    first_losses = check_conv_losses(run, h) if workload == "cifar" else None
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    hand_fn, hand_captured = hand_stepper(h, args.hand_capture)
    sides = {"igan": igan_stepper(run), "hand": hand_fn}
    from igan.capture import WARMUP

    for fn in sides.values():  # warm-up (a captured side warms up, then captures, in here)
        timed(fn, max(args.warmup, WARMUP + 2) if args.capture != "off" or args.hand_capture else args.warmup, sync)
    samples: dict[str, list[float]] = {"igan": [], "hand": []}
    t0 = time.perf_counter()
    for r in range(args.rounds):
        if budget and r >= 3 and time.perf_counter() - t0 > budget:
            print(f"  {workload}: time budget spent, stopping after {r} rounds", file=sys.stderr)
            break
        order = ["igan", "hand"] if r % 2 == 0 else ["hand", "igan"]
        for name in order:
            samples[name].append(1000.0 * timed(sides[name], args.steps, sync))
        print(f"  {workload} round {r + 1}/{args.rounds}: igan {samples['igan'][-1]:.2f} ms, "
              f"hand {samples['hand'][-1]:.2f} ms", file=sys.stderr, flush=True)
    mi, mh = statistics.median(samples["igan"]), statistics.median(samples["hand"])
    paired = statistics.median(a / b for a, b in zip(samples["igan"], samples["hand"]))
    target = TARGET_RATIO if run.device.type == "cpu" else None
    row = {"workload": workload, "model": run.config.model, "batch_size": run.config.batch_size,
           "igan_ms_per_step": round(mi, 3), "hand_ms_per_step": round(mh, 3),
           "ratio": round(mi / mh, 3), "paired_ratio": round(paired, 3), "target_ratio": target,
           "meets_target": None if target is None else paired <= target, "rounds_done": len(samples["igan"]),
           "igan_fast_path": run.fast_path, "igan_captured": _captured(sides["igan"].trainer._step),
           "hand_captured": _captured(hand_captured),
           "igan_ms_rounds": [round(v, 3) for v in samples["igan"]],
           "hand_ms_rounds": [round(v, 3) for v in samples["hand"]]}
    if first_losses is not None:
        row["first_step_losses_igan_hand"] = first_losses
    if args.profile and workload != "cifar":
        row["profile"] = profile_workload(run, h, args, sync)
    return row


# ----------------------------------------------------------------------------------------------
# profiling


def profile_workload(run: Run, h: Hand, args, sync) -> dict:
    from torch.profiler import ProfilerActivity, profile

    out = {}
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.device.type == "cuda" else [])
    n = args.profile_steps
    for name, fn in (("igan", igan_stepper(run)), ("hand", lambda: hand_step(h))):
        fn()
        with profile(activities=acts) as prof:
            for _ in range(n):
                fn()
            sync()
        ka = prof.key_averages()
        total_self = sum(e.self_cpu_time_total for e in ka)
        ops = sorted(ka, key=lambda e: e.self_cpu_time_total, reverse=True)[:args.profile_top]
        out[name] = {"total_self_cpu_ms_per_step": round(total_self / 1000 / n, 3),
                     "ops_per_step": round(sum(e.count for e in ka) / n, 1),
                     "top": [{"op": e.key, "calls_per_step": round(e.count / n, 2),
                              "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1000 / n, 3)} for e in ops]}
        print(f"\n[{run.config.command}] {name}: {out[name]['total_self_cpu_ms_per_step']:.2f} ms self CPU/step, "
              f"{out[name]['ops_per_step']:.0f} profiled op calls/step", file=sys.stderr)
        for e in out[name]["top"]:
            print(f"   {e['op']:<44} {e['calls_per_step']:>7.1f} calls {e['self_cpu_ms_per_step']:>8.3f} ms",
                  file=sys.stderr)
        counts = defaultdict(int)
        for e in ka:
            counts[e.key] += e.count
        out[name]["_counts"] = counts
    # operators igan calls more often than the hand-written step (per step)
    ci, ch = out["igan"].pop("_counts"), out["hand"].pop("_counts")
    extra = {k: round((ci.get(k, 0) - ch.get(k, 0)) / n, 1) for k in set(ci) | set(ch)}
    out["extra_calls_igan_minus_hand"] = dict(sorted(((k, v) for k, v in extra.items() if v),
                                                     key=lambda kv: -abs(kv[1]))[:25])
    print("  op calls per step, igan minus hand: " + ", ".join(
        f"{k} {v:+g}" for k, v in out["extra_calls_igan_minus_hand"].items()), file=sys.stderr)

    # time spent inside each igan hook call (pluggy monitoring), and in the step as a whole
    spent: dict[str, list[float]] = defaultdict(list)
    starts: list[float] = []

    def before(hook_name, impls, kwargs):
        sync()
        starts.append(time.perf_counter())

    def after(outcome, hook_name, impls, kwargs):
        sync()
        spent[hook_name].append(time.perf_counter() - starts.pop())

    undo = run.pm.add_hookcall_monitoring(before, after)
    try:
        t = timed(igan_stepper(run), n, sync)
    finally:
        undo()
    out["igan_hook_ms_per_step"] = {k: round(1000 * sum(v) / n, 3) for k, v in spent.items()}
    out["igan_step_ms_while_monitoring"] = round(1000 * t, 3)
    print("  igan hook time per step (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                       out["igan_hook_ms_per_step"].items()), file=sys.stderr)
    return out


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="steps per side per round (default 10)")
    p.add_argument("--rounds", type=int, default=30, help="timed rounds per workload (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up steps per side (default 5)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads(N) first (default 1: on a shared, busy 2-core machine 2 threads "
                        "with OpenMP's default wait policy measured about 2 s per step, 60-90 ms with "
                        "OMP_WAIT_POLICY=PASSIVE; 0 leaves PyTorch's default)")
    p.add_argument("--max-seconds", type=float, default=180.0,
                   help="time budget of the timed rounds, split evenly over the workloads; rounds stop early "
                        "(after at least 3) when a workload's share is spent (default 180; 0: no limit)")
    p.add_argument("--workloads", default="semisup,plain", help="comma-separated: semisup, plain, cifar")
    p.add_argument("--batch-size", type=int, default=100, help="batch size (default 100, the paper's)")
    p.add_argument("--capture", choices=("auto", "on", "off"), default="auto",
                   help="IGAN_CAPTURE for igan's side: capture the whole step as a CUDA graph (auto = igan's "
                        "default: on CUDA with the fast path; on: a refusal or failure is an error)")
    p.add_argument("--hand-capture", action="store_true",
                   help="capture the hand-written step as a CUDA graph too (igan.capture.CapturedStep)")
    p.add_argument("--hand-wn", choices=tuple(WN_LAYERS), default="parametrize",
                   help="weight norm of the hand-written models: torch's parametrization (default; the fused "
                        "_weight_norm kernel, as igan) or the formula g v / ||v|| written inline")
    p.add_argument("--hand-wn-cache", action="store_true",
                   help="variant: the hand-written step computes D's weight-normed weights once per phase "
                        "(torch.nn.utils.parametrize.cached()) instead of once per D pass")
    p.add_argument("--fast-path", choices=tuple(FAST_PATH), default="auto",
                   help="igan's --fast-path for the timed igan side (torch.compile'd G and D; auto = igan's "
                        "default: on for CUDA, off on CPU); the equivalence check always runs eagerly")
    p.add_argument("--check-steps", type=int, default=3, help="steps of the equivalence check (0: skip it)")
    p.add_argument("--profile", action="store_true", help="also profile both sides and time igan's hooks")
    p.add_argument("--profile-steps", type=int, default=20)
    p.add_argument("--profile-top", type=int, default=15)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/step_speed.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["IGAN_CAPTURE"] = {"auto": "auto", "on": "1", "off": "0"}[args.capture]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r} (choose from {', '.join(WORKLOADS)})")

    load_before = os.getloadavg()
    t_start = time.perf_counter()
    checks, rows = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.check_steps:
            for w in [w for w in workloads if w != "cifar"]:  # cifar: first-step losses only (bench_workload)
                for dtype, noise in ((torch.float32, False), (torch.float32, True), (torch.float64, False),
                                     (torch.float64, True)):
                    c = check_equivalence(w, args.device, noise, args.check_steps, tmp, args.hand_wn, dtype,
                                          args.hand_wn_cache)
                    checks.append(c)
                    print(f"equivalence {w} {c['dtype']} noise {'on ' if noise else 'off'}: first-step losses "
                          + ", ".join(f"{k} {a:.6g}/{b:.6g}" for k, (a, b) in c["first_step_losses_igan_hand"].items())
                          + "; max rel loss diff " + ", ".join(f"{v:.1e}" for v in c["max_rel_loss_diff"].values())
                          + "; step-1 grad diff/max " + ", ".join(
                              f"{k} {v:.1e}" for k, v in c["first_step_grad_max_diff_rel_to_max_grad"].items())
                          + f"; params after {c['steps']} steps {c['param_max_abs_diff_after']:.1e}"
                          + (f", EMA {c['ema_max_abs_diff_after']:.1e}" if c["ema_max_abs_diff_after"] is not None
                             else ""), file=sys.stderr)
        for w in workloads:
            rows.append(bench_workload(w, args, tmp, args.max_seconds / len(workloads)))

    cpu = torch.device(args.device).type == "cpu"
    header = (f"{'workload':<9} {'igan ms/step':>12} {'hand ms/step':>12} {'ratio':>6} {'paired':>7} "
              f"{'target':>7}  ok")
    lines = [header, "-" * len(header)]
    for r in rows:
        target = f"<={r['target_ratio']:.2f}" if r["target_ratio"] else "-"
        ok = "" if r["meets_target"] is None else ("yes" if r["meets_target"] else "NO")
        lines.append(f"{r['workload']:<9} {r['igan_ms_per_step']:>12.2f} {r['hand_ms_per_step']:>12.2f} "
                     f"{r['ratio']:>5.3f} {r['paired_ratio']:>6.3f}x {target:>7}  {ok}")
    print("\n".join(lines))
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} before / {os.getloadavg()[0]:.1f} after, "
          f"{time.perf_counter() - t_start:.0f} s" + ("" if cpu else " (no ratio target off CPU)"), file=sys.stderr)

    argv_shown = argv if argv is not None else sys.argv[1:]
    result = {
        "benchmark": "step_speed",
        "command": " ".join(["python benchmarks/step_speed.py", *map(shlex.quote, argv_shown)]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__, "device": args.device,
        "device_name": torch.cuda.get_device_name(torch.device(args.device)) if not cpu else platform.processor(),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "KMP_BLOCKTIME") if k in os.environ}, "platform": platform.platform(),
        "python": platform.python_version(), "models": {w: PAIRS[w][1] for w in workloads},
        "batch_size": args.batch_size, "capture": args.capture, "hand_capture": args.hand_capture,
        "dataset": f"synthetic uint8 [{N_TRAIN}, C, H, W] + {N_TEST} test",
        "hand_weight_norm": args.hand_wn, "hand_wn_cache": args.hand_wn_cache, "igan_fast_path": args.fast_path,
        "steps_per_round": args.steps, "rounds": args.rounds, "warmup_steps": args.warmup,
        "loadavg_1_5_15_before": [round(v, 2) for v in load_before],
        "loadavg_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(time.perf_counter() - t_start, 1),
        "equivalence": checks, "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
