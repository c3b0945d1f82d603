"""The complement ("bad") generator's low-density term (Dai et al. 2017, "Bad GAN"). Beyond the paper.

Bad GAN argues that feature matching helps semi-supervised learning when G is a *bad* generator: one
whose samples fill the low-density gaps between the classes, so D learns to put its decision boundaries
there. Its MNIST script (``mnist_trainer.py``) adds to G's feature-matching loss

    ld_weight * sum_i max(0, log p(G(z_i)) - eps) / #{i : log p(G(z_i)) > eps}      (``igan.losses.low_density_penalty``)

with log p from a density model of the data and eps the 10th percentile of log p over real images:
generated samples in the data's high-density regions are penalised.

How igan differs from the paper, exactly:

- the density model: the paper's is a PixelCNN++ trained beforehand on the training images; igan's
  default (``igan.density``) is a Gaussian mixture in the top principal components of the unlabelled
  training images plus an isotropic residual, fitted at the start of the run in seconds (deterministic,
  the same for every seed, saved in the checkpoint). It is a far weaker model of images. Another model
  plugs in through the ``igan_density_model`` hook (docs/hooks.md), e.g. a PixelCNN of one's own;
- eps: the reference takes the 10th percentile over the *test* images ("dev" set); igan takes it over
  the unlabelled training images, so the test set is not looked at (``--ld-quantile``);
- schedule: the reference applies the term with probability 0.1 per step after step 9,000, to save
  PixelCNN passes; igan's model is cheap, so the term is applied on every G update after ``--ld-start``
  steps (default 0), on the G update's own generated batch (no extra G pass);
- weight: the reference's 1e-4 belongs to PixelCNN log-likelihoods in nats; the scale of this model's
  log-densities differs, so the default weight (``--ld-weight``) was chosen on the embedded digits
  (docs/reproduction.md).
"""

from __future__ import annotations

import torch

from igan import losses
from igan.plugins import hookimpl
from igan.techniques import require_enabled

# A loss term only: checkpoints sample and evaluate without this plugin installed.
affects_inference = False
PANEL = "Low-density generator (Bad GAN)"
SEMISUP = ("semisup",)
DEFAULTS = {"ld_weight": 1e-3, "ld_quantile": 0.1, "ld_start": 0, "ld_dims": 50, "ld_components": 50}


@hookimpl
def igan_addoption(parser):
    parser.add("low_density", bool, panel=PANEL, commands=SEMISUP,
               help="penalise generated samples where a density model of the data is high (Bad GAN's "
                    "complement generator)")
    parser.add("ld_weight", float, DEFAULTS["ld_weight"], min=0.0, panel=PANEL, commands=SEMISUP,
               help="weight of the low-density term")
    parser.add("ld_quantile", float, DEFAULTS["ld_quantile"], min=0.0, max=1.0, panel=PANEL, commands=SEMISUP,
               help="threshold eps: this quantile of log p over the unlabelled training images")
    parser.add("ld_start", int, DEFAULTS["ld_start"], min=0, panel=PANEL, commands=SEMISUP,
               help="first step the term applies at (the reference: 9000)")
    parser.add("ld_dims", int, DEFAULTS["ld_dims"], min=1, panel=PANEL, commands=SEMISUP,
               help="principal components of the built-in density model")
    parser.add("ld_components", int, DEFAULTS["ld_components"], min=1, panel=PANEL, commands=SEMISUP,
               help="mixture components of the built-in density model")


@hookimpl
def igan_configure(config, pm):
    require_enabled(config, "low_density", "--low-density", **DEFAULTS)
    if config.opt("low_density") and not config.opt("supervised_only"):
        pm.register(LowDensity({k: config.opt(k, v) for k, v in DEFAULTS.items()}), "low_density.run")


def _threshold(model, x: torch.Tensor, quantile: float, chunk: int = 1000) -> torch.Tensor:
    with torch.no_grad():
        logp = torch.cat([model.log_prob(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
    return torch.quantile(logp.double().cpu(), quantile).to(torch.float32)


class LowDensity:
    # The term is a pure function of the step's generated batch, the step number and the density model;
    # the built-in model is fitted from the data alone (fixed seed), so every seed's model is the same.
    parallel_safe = True

    @property
    def capture_safe(self) -> bool:
        """A captured step replays the same work every step, so the host-side test ``step.it < start``
        would be frozen at capture time: safe only when the term applies from the first step."""
        return self.start == 0

    def __init__(self, settings: dict) -> None:
        self.weight = settings["ld_weight"]
        self.quantile = settings["ld_quantile"]
        self.start = settings["ld_start"]
        self.dims = settings["ld_dims"]
        self.components = settings["ld_components"]
        self.model = None
        self.threshold: torch.Tensor | None = None
        self.own_model = False  # True when the model is igan.density's (its tensors go into checkpoints)

    @hookimpl
    def igan_train_start(self, run):
        from igan.density import fit_density

        x = run.dataset.to_float(run.dataset.x_train)
        self.model = run.pm.hook.igan_density_model(run=run)
        if self.model is None:
            self.model = fit_density(x, self.dims, self.components).to(run.device)
            self.own_model = True
        self.threshold = _threshold(self.model, x, self.quantile).to(run.device)

    @hookimpl
    def igan_extra_loss(self, step, net):
        if net != "G" or step.it < self.start:
            return None
        logp = self.model.log_prob(step.fake)
        step.log("ld/log_p", logp.mean())
        return {"ld": self.weight * losses.low_density_penalty(logp, self.threshold)}

    @hookimpl
    def igan_checkpoint_tensors(self, run):
        state = self.model.state() if hasattr(self.model, "state") else {}
        return {"threshold": self.threshold, **{f"model.{k}": v for k, v in state.items()}}

    @hookimpl
    def igan_restore_tensors(self, run, tensors):
        from igan.density import DensityModel
        from igan.checkpoint import prefixed

        self.threshold = tensors["threshold"].to(run.device)
        if self.own_model:  # the saved model, so a resumed run uses exactly what it trained with
            self.model = DensityModel.from_state(prefixed(tensors, "model")).to(run.device)
