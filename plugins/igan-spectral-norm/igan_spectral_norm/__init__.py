"""Spectral normalization of the discriminator (Miyato et al., ICLR 2018) as an igan plugin.

``--sn`` divides every weight matrix W of D's linear and convolutional layers by an estimate of its
largest singular value sigma(W), so each layer is (about) 1-Lipschitz. The estimate is PyTorch's own
``torch.nn.utils.parametrizations.spectral_norm``: power iteration with persistent vectors ``_u``/``_v``
(buffers, so they are saved in the checkpoint with D's weights and re-loaded by ``igan sample`` and
``--resume``), ``--sn-power-iterations`` steps per training-mode forward pass of D, none in eval mode.
Conv kernels are reshaped to a matrix [out, in * kh * kw] as in the paper (not the exact operator norm).

Weight normalisation. igan's models weight-normalise D by default (``--wn``): W = g v / ||v||, with g
set by a data-dependent init. Spectral normalization replaces that reparametrisation rather than
stacking on it: both fix the scale of W (WN per output unit, SN for the whole matrix), so with both
the WN scales g would only matter relative to each other, and the data-dependent init (which assumes
W = g v / ||v|| when it computes g) would set them from the wrong formula. Refusing the default would
make ``--sn`` unusable without ``--no-wn``, which also strips weight norm from G; applying SN only to
layers without weight norm would make ``--sn`` a no-op on every built-in model. So:

- default (no ``--wn``/``--no-wn`` given): every weight-normed layer of D is rebuilt as a plain layer
  (same shape, weight = its current effective weight, same bias) and spectral-normalised; G keeps its
  weight norm;
- ``--no-wn``: no layer is weight-normed; every D layer is spectral-normalised;
- an explicit ``--wn`` together with ``--sn`` is refused (a usage error), because it asks for weight
  norm in D that ``--sn`` would remove.

Minibatch discrimination's kernel tensor T (``--mbd``) is not a linear layer's weight and has its own
normalisation (reference ``MinibatchLayer``); it is left as is. The hook runs ``trylast``, after the
built-in techniques have rebuilt D's head (``--mbd``, the semi-supervised K-logit head), so the final
head is normalised too.
"""

from __future__ import annotations

from importlib import metadata

import igan

__all__ = ["apply_spectral_norm"]

try:
    __version__ = metadata.version("igan-spectral-norm")
except metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"


@igan.hookimpl
def igan_addoption(parser):
    parser.add("sn", bool, help="spectral normalization of D's linear and conv layers (Miyato et al. 2018); "
                                "replaces D's weight norm, G keeps it")
    parser.add("sn_power_iterations", int, 1, min=1,
               help="power-iteration steps per training forward pass of D (the paper: 1)")


@igan.hookimpl
def igan_configure(config, pm):
    if not config.opt("sn"):
        if config.opt("sn_power_iterations", 1) != 1:
            raise igan.UsageError("--sn-power-iterations given without --sn",
                                  hint="add --sn, or drop --sn-power-iterations")
        return
    if config.model_kwargs.get("wn") is True:
        raise igan.UsageError("--sn replaces weight normalisation in D, but --wn asks to keep it",
                              hint="drop --wn (G keeps its weight norm, D gets spectral norm), "
                                   "or pass --no-wn")


@igan.hookimpl(trylast=True)
def igan_modify_models(models, config):
    if config.opt("sn"):
        apply_spectral_norm(models.discriminator, config.opt("sn_power_iterations", 1))


def _sn_layer_types():
    from torch import nn

    return (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
            nn.ConvTranspose3d)


def _plain_copy(layer):
    """A new layer of the same type and shape, without parametrizations, holding ``layer``'s current
    effective weight (for a weight-normed layer: g v / ||v||) and bias."""
    import torch
    from torch import nn

    weight = layer.weight.detach()
    bias = layer.bias is not None
    kw = dict(bias=bias, device=weight.device, dtype=weight.dtype)
    # The class of a parametrized layer is one PyTorch made on the fly: build from the plain torch class.
    cls = next(c for c in _sn_layer_types() if isinstance(layer, c))
    if cls is nn.Linear:
        new = nn.Linear(layer.in_features, layer.out_features, **kw)
    elif cls in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                  padding=layer.padding, output_padding=layer.output_padding, groups=layer.groups,
                  dilation=layer.dilation, padding_mode=layer.padding_mode, **kw)
    else:
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                  padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                  padding_mode=layer.padding_mode, **kw)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias:
            new.bias.copy_(layer.bias)
    new.train(layer.training)
    return new


def apply_spectral_norm(module, n_power_iterations: int = 1) -> int:
    """Spectral-normalise every linear/conv layer inside ``module`` (weight-normed ones are first rebuilt
    as plain layers, see the module docstring); returns the number of layers normalised."""
    from torch.nn.utils.parametrizations import spectral_norm

    layer_types = _sn_layer_types()
    targets = [name for name, m in module.named_modules() if name and isinstance(m, layer_types)]
    for name in targets:
        parent, _, child = name.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        layer = getattr(owner, child)
        if igan.layers.is_weight_normed(layer):
            layer = _plain_copy(layer)
        setattr(owner, child, spectral_norm(layer, n_power_iterations=n_power_iterations))
    return len(targets)
