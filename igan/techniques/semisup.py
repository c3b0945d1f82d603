"""Semi-supervised learning with the K+1-class discriminator (paper §5; reference train_*_feature_matching.py).

D outputs K class logits; the (K+1)-th "generated" logit is fixed at 0, so D(x) = Z/(Z+1) with
Z = sum_k exp(l_k) (paper-notes §1.1). The discriminator loss is

    L = L_supervised + w * L_unsupervised
    L_supervised   = cross-entropy of the K logits on a labelled batch
    L_unsupervised = 0.5 E_unl[softplus(-lse(l))] + 0.5 E_fake[softplus(lse(l))]

with labelled, unlabelled and generated batches in separate D passes (``igan.train``). Feature matching
is the default generator loss (``igan.techniques.feature_matching``). The labelled subset is
class-balanced and chosen by ``--label-seed`` exactly as the reference (``RandomState(seed_data)``).

Test error is measured with an exponential moving average of D's parameters (decay 0.9999 as the
reference), with D's noise/dropout off. The reference starts the average at zeros, which biases it
towards zero for the first ~10k steps (paper-notes §6.1). igan keeps the zero start (so the average
covers the whole history with the reference's weights) and removes the bias as Adam does: evaluation
uses avg / (1 - decay^t). Two alternatives were tried and rejected: starting the average from the
initial weights makes a run of a few thousand steps evaluate weights that are still mostly the
initial ones (0.9999^1000 = 0.90 of them); warming the decay up as min(decay, (1+t)/(10+t)) removes that
but shortens the averaging window to ~t/10 steps, and measured worse on MNIST (15.9 % vs the reference
curve's 12.6 % test error at epoch 10).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from igan import losses
from igan.config import SEED_MAX
from igan.errors import UsageError
from igan.plugins import hookimpl

# The paper's label counts per dataset (Tables 1-2, Fig. 5); digits: 5 per class, a quick demo.
DEFAULT_LABELS = {"digits": 50, "mnist": 100, "cifar10": 4000, "svhn": 1000}
SEMISUP = ("semisup",)


@hookimpl
def igan_addoption(parser):
    panel = "Semi-supervised"
    parser.add("labels", int, None, min=1, commands=SEMISUP, panel=panel,
               help="number of labelled examples, class-balanced (default: 100 mnist, 4000 cifar10, "
                    "1000 svhn, 50 digits, else 10 per class)")
    parser.add("label_seed", int, 1, min=0, max=SEED_MAX, commands=SEMISUP, panel=panel,
               help="seed of the labelled split (the reference's seed_data)")
    parser.add("unlabeled_weight", float, 1.0, min=0.0, commands=SEMISUP, panel=panel,
               help="weight w of the unsupervised loss")
    parser.add("ema_decay", float, 0.9999, min=0.0, max=1.0, commands=SEMISUP, panel=panel,
               help="decay of the moving average of D's parameters used for evaluation")
    parser.add("supervised_only", bool, commands=SEMISUP, panel=panel,
               help="baseline: train the same classifier on the labelled examples alone")


def labels_for(config) -> int:
    """--labels, else the paper's count for the dataset, else 10 per class (a folder or .npz of K classes)."""
    return config.opt("labels") or DEFAULT_LABELS.get(config.dataset) or 10 * (config.num_classes or 10)


@hookimpl
def igan_configure(config, pm):
    if config.command != "semisup":
        return
    k = config.num_classes or 10
    n = labels_for(config)
    if n % k:
        raise UsageError(f"--labels {n} is not divisible by the {k} classes",
                         hint=f"the labelled set is class-balanced: use a multiple of {k}, e.g. {k * max(1, n // k)}")
    config.options["labels"] = n  # the resolved count (the dataset's default when not given), as recorded
    if config.opt("supervised_only"):
        config.g_steps = 0  # the baseline never trains G
    pm.register(SemiSupervised(config), "semisup.run")


@hookimpl
def igan_modify_models(models, config):
    if config.command == "semisup":
        models.discriminator.set_num_logits(config.num_classes or 10)


@torch.no_grad()
def test_errors(discriminator: nn.Module, x: torch.Tensor, y: torch.Tensor, to_float, batch_size: int = 100) -> int:
    """Number of misclassified test images (argmax of the K logits), in batches of ``batch_size``.

    Batches of 100 as the reference: a minibatch layer makes predictions depend on batch composition.
    """
    was_training = discriminator.training
    discriminator.eval()
    wrong = torch.zeros((), dtype=torch.long, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        logits = discriminator(to_float(x[i:i + batch_size])).logits
        wrong += (logits.argmax(1) != y[i:i + batch_size]).sum()
    discriminator.train(was_training)
    return int(wrong)


class SemiSupervised:
    parallel_safe = True  # its loss reads only the step and fixed settings; the EMA is per run (igan.parallel)
    capture_safe = True  # device work only, the same at every step (the update count too: igan.capture)

    def __init__(self, config) -> None:
        self.labels = labels_for(config)
        self.label_seed = config.opt("label_seed", 1)
        self.weight = config.opt("unlabeled_weight", 1.0)
        self.decay = config.opt("ema_decay", 0.9999)
        self.supervised_only = bool(config.opt("supervised_only"))
        self.ema: nn.Module | None = None  # evaluation copy of D, holding the bias-corrected average
        self.sources: dict[str, torch.Tensor] = {}  # D's state (shares storage with its parameters)
        self.avg: dict[str, torch.Tensor] = {}  # zero-initialised moving averages, as the reference
        # D updates so far, counted on the device so that a captured step (igan.capture) counts each
        # replay; read on the host only when the average is used (epoch ends, checkpoints)
        self.count = torch.zeros((), dtype=torch.long)

    @hookimpl
    def igan_train_start(self, run):
        from igan.datasets.sampling import balanced_labeled_subset

        ds = run.dataset
        if ds.x_test is None:
            raise UsageError(f"dataset {ds.name!r} has no test split to measure the error on",
                             hint="use a dataset with a test split")
        if self.labels > ds.x_train.shape[0]:
            raise UsageError(f"--labels {self.labels} is more than the {ds.x_train.shape[0]} training examples",
                             hint="ask for fewer labels")
        idx = balanced_labeled_subset(ds.y_train, self.labels // ds.num_classes, self.label_seed, ds.num_classes)
        run.sampler.use_labeled(idx)
        run.sampler.use_generator_real()  # FM compares with an independent real batch (reference)
        self.ema = copy.deepcopy(run.discriminator).eval().requires_grad_(False)
        self.sources = run.discriminator.state_dict()
        self.avg = {k: torch.zeros_like(v) for k, v in self.sources.items() if v.is_floating_point()}
        self.count = torch.zeros((), dtype=torch.long, device=run.device)

    @property
    def updates(self) -> int:
        return int(self.count)

    @hookimpl
    def igan_discriminator_loss(self, step):
        sup = losses.supervised_loss(step.d_lab.logits, step.y_lab)
        step.log("loss/D/supervised", sup)
        if self.supervised_only:
            return sup
        unsup = losses.unsupervised_discriminator_loss(step.d_real.logits, step.d_fake.logits)
        step.log("loss/D/unsupervised", unsup)
        return sup + self.weight * unsup

    @hookimpl
    def igan_after_optimizer_step(self, step, net):
        if net == "D":  # avg += (1 - decay) * (theta - avg)
            self.count += 1
            for name, avg in self.avg.items():
                avg.lerp_(self.sources[name], 1.0 - self.decay)

    def refresh(self) -> nn.Module:
        """Put the bias-corrected average avg / (1 - decay^t) into the evaluation copy of D."""
        updates = self.updates
        if updates:
            correction = 1.0 - self.decay ** updates
            state = {k: self.avg[k] / correction if k in self.avg else v for k, v in self.sources.items()}
        else:
            state = self.sources
        self.ema.load_state_dict(state)
        return self.ema

    @hookimpl
    def igan_epoch_end(self, run, epoch):
        ds = run.dataset
        n = ds.x_test.shape[0]
        per = -(-n // run.dist.world)  # each process scores its own part of the test set; counts are summed
        lo, hi = run.dist.rank * per, min(n, (run.dist.rank + 1) * per)
        wrong = torch.tensor(test_errors(self.refresh(), ds.x_test[lo:hi], ds.y_test[lo:hi], ds.to_float))
        wrong = int(run.dist.sum(wrong.to(run.device)))
        return {"test_errors": wrong, "test_error": wrong / n, "test_size": n}

    @hookimpl
    def igan_checkpoint_tensors(self, run):
        # avg.* resumes the average exactly; ema.* is the corrected average that `igan evaluate` uses
        return {"updates": self.count.clone(), **{f"avg.{k}": v for k, v in self.avg.items()},
                **{f"ema.{k}": v for k, v in self.refresh().state_dict().items()}}

    @hookimpl
    def igan_restore_tensors(self, run, tensors):
        self.count.copy_(tensors["updates"])
        for name, avg in self.avg.items():
            avg.copy_(tensors[f"avg.{name}"])
