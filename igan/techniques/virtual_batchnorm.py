"""Virtual batch normalisation in G (paper §3.5; reference ImageNet ``VBN`` after its 2017 fix).

Every batch-norm layer of G becomes ``igan.layers.VirtualBatchNorm`` and G is wrapped in
``VBNGenerator``, which prepends a fixed reference noise batch to every forward pass: one concatenated
pass, so the reference batch costs one extra forward of ``--vbn-ref-size`` rows per G call. Each
example is normalised with its own statistics (weight 1/(n_ref+1)) mixed with the reference batch's
(n_ref/(n_ref+1)), so an example's output does not depend on the rest of its batch. The reference noise
is drawn once from the run's seed and saved in the checkpoint as a buffer.
"""

from __future__ import annotations

import torch

from igan.errors import UsageError
from igan.layers import VBNGenerator, VirtualBatchNorm, replace_batchnorm
from igan.models import sample_z
from igan.plugins import hookimpl
from igan.techniques import require_enabled


@hookimpl
def igan_addoption(parser):
    parser.add("vbn", bool, help="virtual batch normalisation in G instead of batch norm (§3.5)")
    parser.add("vbn_ref_size", int, None, min=1, help="reference batch size (default: the batch size)")


@hookimpl
def igan_configure(config, pm):
    require_enabled(config, "vbn", "--vbn", vbn_ref_size=None)
    if config.opt("vbn") and config.opt("vbn_ref_size") is None:  # record the size used (the batch size)
        config.options["vbn_ref_size"] = config.batch_size or 100


@hookimpl
def igan_modify_models(models, config):
    if not config.opt("vbn"):
        return
    if replace_batchnorm(models.generator, VirtualBatchNorm) == 0:
        raise UsageError(f"--vbn: the generator of model {config.model!r} has no batch norm to replace",
                         hint="use a model whose generator has batch norm (all built-in ones do)")
    n_ref = config.opt("vbn_ref_size") or config.batch_size or 100
    gen = torch.Generator().manual_seed(config.seed + 2)  # fixed once per run; restored from checkpoints
    ref_z = sample_z(n_ref, models.z_dim, models.z_dist, "cpu", generator=gen)
    models.generator = VBNGenerator(models.generator, ref_z)
