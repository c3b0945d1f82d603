"""Minibatch discrimination (paper §3.2): D sees how close each sample is to the rest of its batch.

The layer (``igan.layers.MinibatchDiscrimination``, B kernels of C dims, weight-normalised T with a
learnable per-kernel log scale, bias -1, data-dependent init on the first batch, as the reference
``MinibatchLayer``) goes into the discriminator's ``mbd`` slot, between the feature layer and the
output layer, which is rebuilt for the A + B wider input. Real and generated batches already go
through D in separate passes (``igan.train``), as the reference requires.
"""

from __future__ import annotations

from igan.layers import MinibatchDiscrimination
from igan.plugins import hookimpl
from igan.techniques import require_enabled


@hookimpl
def igan_addoption(parser):
    parser.add("mbd", bool, help="minibatch discrimination in D (§3.2)")
    parser.add("mbd_kernels", int, 100, min=1, help="number of kernels B (reference: 100)")
    parser.add("mbd_kernel_dim", int, 5, min=1, help="dimensions per kernel C (reference: 5)")


@hookimpl
def igan_configure(config, pm):
    require_enabled(config, "mbd", "--mbd", mbd_kernels=100, mbd_kernel_dim=5)


@hookimpl
def igan_modify_models(models, config):
    if config.opt("mbd"):
        d = models.discriminator
        b = config.opt("mbd_kernels", 100)
        d.set_minibatch_layer(MinibatchDiscrimination(d.feature_dim, b, config.opt("mbd_kernel_dim", 5)),
                              d.feature_dim + b)
