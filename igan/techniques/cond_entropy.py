"""Conditional-entropy minimisation on unlabelled data for D (Dai et al. 2017, "Bad GAN"; Grandvalet &
Bengio 2005). Beyond the paper.

D's K-class prediction on the unlabelled batch should be confident: with a complement generator filling
the low-density gaps, the class boundaries belong there, and minimising the entropy of D's K-class
softmax on unlabelled data moves them away from the data. D's loss gets

    ent_weight * mean_x [ - sum_k p(k|x) log p(k|x) ],  p = softmax of the K class logits   (``igan.losses.conditional_entropy``)

on the same unlabelled pass the unsupervised GAN loss uses (``step.d_real``: no extra D pass). Default
weight 0.1, the reference's SVHN setting (``svhn_trainer.py``; its MNIST script does not use it).
Semi-supervised runs only: a plain GAN's D has one logit, whose "entropy" is 0.
"""

from __future__ import annotations

from igan import losses
from igan.plugins import hookimpl
from igan.techniques import require_enabled

DEFAULT_WEIGHT = 0.1
# A loss term only: checkpoints sample and evaluate without this plugin installed.
affects_inference = False
PANEL = "Conditional entropy (Bad GAN)"
SEMISUP = ("semisup",)


@hookimpl
def igan_addoption(parser):
    parser.add("cond_entropy", bool, panel=PANEL, commands=SEMISUP,
               help="add the entropy of D's K-class prediction on unlabelled data to D's loss")
    parser.add("ent_weight", float, DEFAULT_WEIGHT, min=0.0, panel=PANEL, commands=SEMISUP,
               help="weight of the conditional-entropy term (Bad GAN's SVHN setting)")


class ConditionalEntropy:
    parallel_safe = True  # a pure function of the step's logits (igan.parallel)
    capture_safe = True  # the same device work at every step (igan.capture)

    def __init__(self, weight: float) -> None:
        self.weight = weight

    @hookimpl
    def igan_extra_loss(self, step, net):
        if net != "D":
            return None
        return {"ent": self.weight * losses.conditional_entropy(step.d_real.logits)}


@hookimpl
def igan_configure(config, pm):
    require_enabled(config, "cond_entropy", "--cond-entropy", ent_weight=DEFAULT_WEIGHT)
    if config.opt("cond_entropy") and not config.opt("supervised_only"):
        pm.register(ConditionalEntropy(config.opt("ent_weight", DEFAULT_WEIGHT)), "cond_entropy.run")
