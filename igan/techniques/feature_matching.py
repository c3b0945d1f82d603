"""Feature matching (paper §3.1): G matches the batch-mean features of an intermediate D layer.

loss_G = d(mean_batch f(x_real), mean_batch f(G(z))), f = ``DOut.features`` (the model's feature layer:
the last hidden layer of the MLP pairs, the global-average-pooled features of the conv pairs).
The paper writes a squared L2 norm; the reference code uses the mean squared difference on MNIST and
the mean *absolute* difference on CIFAR-10/SVHN (paper-notes §1.2). ``--fm-norm`` picks either; the
default follows the reference for the model family (l2 for MLPs, l1 for the conv nets), because those
are the settings behind the paper's numbers. Real features are detached: only G learns from this loss.
"""

from __future__ import annotations

from igan import losses
from igan.errors import UsageError
from igan.plugins import hookimpl

# A G loss only: `igan sample`/`evaluate` rebuild the same models without this plugin.
affects_inference = False


def enabled(config) -> bool:
    """On with --fm; semi-supervised runs use it unless --no-fm (it is the loss behind Tables 1-2)."""
    fm = config.opt("fm")
    return bool(fm) if fm is not None else config.command == "semisup"


def default_norm(model: str | None) -> str:
    return "l1" if model and model.endswith("_conv") else "l2"


@hookimpl
def igan_addoption(parser):
    parser.add("fm", bool, None, flag="--fm/--no-fm", help="feature matching G loss (§3.1) (default: off)",
               help_for={"semisup": "feature matching G loss (§3.1), the generator loss behind the paper's "
                                    "Tables 1-2 (default: on; --no-fm for the plain G loss)"})
    parser.add("fm_norm", str, None, choices=("l2", "l1"),
               help="l2: mean squared (MNIST reference); l1: mean absolute (CIFAR/SVHN reference) "
                    "(default: l2 for MLPs, l1 for conv nets)")


class FeatureMatching:
    parallel_safe = True  # the loss is a pure function of the step (igan.parallel)
    capture_safe = True  # ... and does the same device work at every step (igan.capture)

    def __init__(self, norm: str) -> None:
        self.norm = norm

    @hookimpl
    def igan_generator_loss(self, step):
        loss = losses.feature_matching_loss(step.d_real_g.features, step.d_fake.features, self.norm)
        step.log("fm", loss)
        return loss


@hookimpl
def igan_configure(config, pm):
    if (config.opt("fm_norm") is not None or config.is_given("fm_norm")) and not enabled(config):
        raise UsageError("--fm-norm given without feature matching", hint="add --fm, or drop --fm-norm")
    # Record the resolved values (checkpoints and config.json then say what was used, and a resume
    # compares `--fm` with a semisup run's default-on as equal).
    config.options["fm"] = enabled(config)
    if enabled(config):
        config.options["fm_norm"] = config.opt("fm_norm") or default_norm(config.model)
        pm.register(FeatureMatching(config.options["fm_norm"]), "feature_matching.run")

