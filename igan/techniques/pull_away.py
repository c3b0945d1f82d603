"""The pull-away term on G's features (Zhao, Mathieu & LeCun 2017), as Bad GAN uses it (Dai et al. 2017).

Beyond the paper. Bad GAN's generator should cover the data's complement, so its samples must not
collapse; its reference code (``svhn_trainer.py``) adds ``pt_weight * PT`` to G's feature-matching loss,
where PT is the mean squared cosine similarity between distinct pairs of the generated batch's D
features (the feature-matching layer, ``DOut.features``):

    PT = 1/(N(N-1)) sum_{i != j} (f_i . f_j / (|f_i| |f_j|))^2          (``igan.losses.pull_away_term``)

Default weight 0.8, the reference's SVHN setting (its MNIST script does not use PT). Works in
``igan train`` too (EBGAN's use).
"""

from __future__ import annotations

from igan import losses
from igan.plugins import hookimpl
from igan.techniques import require_enabled

DEFAULT_WEIGHT = 0.8
# A loss term only: checkpoints sample and evaluate without this plugin installed.
affects_inference = False
PANEL = "Pull-away term (Bad GAN)"


@hookimpl
def igan_addoption(parser):
    parser.add("pull_away", bool, panel=PANEL,
               help="add the pull-away term (mean squared cosine similarity of G's D features) to G's loss")
    parser.add("pt_weight", float, DEFAULT_WEIGHT, min=0.0, panel=PANEL,
               help="weight of the pull-away term (Bad GAN's SVHN setting)")


class PullAway:
    parallel_safe = True  # a pure function of the step's features (igan.parallel)
    capture_safe = True  # the same device work at every step (igan.capture)

    def __init__(self, weight: float) -> None:
        self.weight = weight

    @hookimpl
    def igan_extra_loss(self, step, net):
        if net != "G":
            return None
        return {"pt": self.weight * losses.pull_away_term(step.d_fake.features)}


@hookimpl
def igan_configure(config, pm):
    require_enabled(config, "pull_away", "--pull-away", pt_weight=DEFAULT_WEIGHT)
    if config.opt("pull_away"):
        pm.register(PullAway(config.opt("pt_weight", DEFAULT_WEIGHT)), "pull_away.run")
