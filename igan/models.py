"""The paper's generator/discriminator pairs and the model registry.

Every discriminator has the same named slots, so techniques can change the architecture without
knowing the network (paper-notes §1.4, §2.3-2.5)::

    x -> trunk -> features f  (the feature-matching layer: the last hidden layer / the pooled features)
      -> pre_out (noise or identity) -> mbd (minibatch discrimination, identity by default)
      -> out (linear head, K logits)

and returns ``DOut(logits, features)``. K = 1 for a plain GAN; K = number of classes for the
semi-supervised K+1 discriminator, whose fake logit is fixed at 0 (paper §5), so in both cases the
"real vs fake" logit is ``logsumexp(logits)`` (``igan.losses.gan_logit``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from igan.layers import BatchNormNoScale, GaussianNoise, data_dependent_init, weight_norm

__all__ = ["DOut", "Discriminator", "Generator", "Models", "ModelDef", "build_mlp", "build_conv", "build_dcgan",
           "initialize_from_data", "sample_z"]


class DOut(NamedTuple):
    logits: torch.Tensor  # [N, K]
    features: torch.Tensor  # [N, F], the layer feature matching compares


class Discriminator(nn.Module):
    def __init__(self, trunk: nn.Module, feature_dim: int, num_logits: int,
                 make_out: Callable[[int, int], nn.Module], pre_out: nn.Module | None = None) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.num_logits = num_logits
        self._make_out = make_out  # builds a head of the same style (weight-normed or not)
        self.trunk = trunk
        self.pre_out = pre_out if pre_out is not None else nn.Identity()
        self.mbd: nn.Module = nn.Identity()
        self.head_in = feature_dim  # width of the head's input (grows with a minibatch layer)
        self.out = make_out(feature_dim, num_logits)

    def set_minibatch_layer(self, layer: nn.Module, out_features: int) -> None:
        """Insert a minibatch layer before the head; the head is rebuilt for its wider input."""
        self.mbd = layer
        self.head_in = out_features
        self.out = self._make_out(out_features, self.num_logits)

    def set_num_logits(self, k: int) -> None:
        """Rebuild the head with K logits (the semi-supervised K+1 discriminator, fake logit fixed at 0)."""
        self.num_logits = k
        self.out = self._make_out(self.head_in, k)

    def forward(self, x: torch.Tensor) -> DOut:
        f = self.trunk(x)
        return DOut(self.out(self.mbd(self.pre_out(f))), f)


class Generator(nn.Module):
    def __init__(self, net: nn.Module, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.net = net

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(z.shape[0], *self.image_shape)


@dataclass
class Models:
    """A generator/discriminator pair plus the noise it expects."""

    generator: nn.Module
    discriminator: Discriminator
    z_dim: int
    z_dist: str = "uniform"  # "uniform" is U(0,1) as every Theano script (paper-notes §2.2); or "normal"


def sample_z(n: int, z_dim: int, dist: str, device: torch.device | str,
             generator: torch.Generator | None = None) -> torch.Tensor:
    if dist == "uniform":
        return torch.rand(n, z_dim, device=device, generator=generator)
    return torch.randn(n, z_dim, device=device, generator=generator)


@dataclass(frozen=True)
class ModelDef:
    """A registry entry: a builder and the training defaults that go with it (the paper's settings)."""

    name: str
    builder: Callable[..., Models]
    kwargs: dict[str, Any] = field(default_factory=dict)  # fixed architecture arguments
    defaults: dict[str, Any] = field(default_factory=dict)  # batch_size, lr, epochs, lr_decay_from ...
    description: str = ""
    image_sizes: tuple[tuple[int, int], ...] | None = None  # the (H, W) it takes; None: any size

    def accepts(self, image_shape: tuple[int, ...]) -> bool:
        """Whether the pair can be built for images of ``image_shape`` ([C, H, W])."""
        return self.image_sizes is None or tuple(image_shape[-2:]) in {tuple(s) for s in self.image_sizes}

    def sizes_text(self) -> str:
        """``"32x32"``, ``"28x28 or 32x32"``, or ``"any size"``."""
        if self.image_sizes is None:
            return "any size"
        return " or ".join(f"{h}x{w}" for h, w in self.image_sizes)

    def build(self, image_shape: tuple[int, int, int], num_logits: int, **overrides: Any) -> Models:
        import inspect

        from igan.errors import UsageError

        given = {k: v for k, v in overrides.items() if v is not None}
        accepted = inspect.signature(self.builder).parameters
        unknown = [k for k in given if k not in accepted and k != "value_range"]
        if unknown:
            raise UsageError(f"model {self.name} has no {', '.join(unknown)} switch",
                             hint="--d-noise applies to the MLP models, --dropout to the conv models; "
                                  "drop the switch or choose another --model")
        return self.builder(image_shape, num_logits, **{**self.kwargs, **given})


# ----------------------------------------------------------------------------------------------
# helpers


def _linear(fin: int, fout: int, *, wn: bool, init_scale: float = 1.0, train_g: bool = False,
            bias: bool = True, std: float = 0.05) -> nn.Module:
    # With weight norm and Adam the initial scale of v sets the effective learning rate of the weight
    # directions (each element moves by about lr per step), so the reference's init matters: N(0, 0.1)
    # for the MNIST DenseLayer's theta, N(0, 0.05) for the conv nets' dense layers (paper-notes §1.8).
    layer = nn.Linear(fin, fout, bias=bias)
    nn.init.normal_(layer.weight, std=std)
    if bias:
        nn.init.zeros_(layer.bias)
    return weight_norm(layer, init_scale=init_scale, train_g=train_g) if wn else layer


def _glorot_linear(fin: int, fout: int, bias: bool) -> nn.Linear:
    """Lasagne's default DenseLayer init (Glorot uniform, zero bias), used by the reference MNIST G."""
    layer = nn.Linear(fin, fout, bias=bias)
    nn.init.xavier_uniform_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def _conv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 1, *, wn: bool) -> nn.Module:
    layer = nn.Conv2d(cin, cout, k, stride, pad)
    nn.init.normal_(layer.weight, std=0.05)  # reference init N(0, 0.05) (paper-notes §2.4)
    nn.init.zeros_(layer.bias)
    return weight_norm(layer, train_g=False) if wn else layer  # hidden g fixed after init (reference)


def _output_activation(value_range: tuple[float, float]) -> nn.Module:
    """Sigmoid for data in [0, 1] (MNIST, digits), tanh for data in about [-1, 1] (CIFAR, SVHN)."""
    return nn.Sigmoid() if value_range[0] >= 0 else nn.Tanh()


# ----------------------------------------------------------------------------------------------
# the MLP pair (paper §6.1, reference train_mnist_feature_matching.py; paper-notes §2.3)


def build_mlp(image_shape: tuple[int, int, int], num_logits: int, *, g_hidden: tuple[int, ...] = (500, 500),
              d_hidden: tuple[int, ...] = (1000, 500, 250, 250, 250), z_dim: int = 100,
              z_dist: str = "uniform", wn: bool = True, noise: bool = True, input_noise: float = 0.3,
              hidden_noise: float = 0.5, value_range: tuple[float, float] = (0.0, 1.0),
              g_out_data_init: bool = False) -> Models:
    n_pixels = math.prod(image_shape)

    # G: z -> [Linear -> BN without scale -> softplus] x len(g_hidden) -> weight-normed Linear -> sigmoid.
    g_layers: list[nn.Module] = []
    fin = z_dim
    for width in g_hidden:
        g_layers += [_glorot_linear(fin, width, bias=False), BatchNormNoScale(width), nn.Softplus()]
        fin = width
    # The reference output layer (since 14 June 2016, 30d4beb) is l2-normalised with a trainable scale and
    # no data-dependent init. ``g_out_data_init``: the earlier version (2b81a18, the paper-v1 recipe),
    # weight norm with data-dependent init, one std pooled over the layer (``weight_norm(pooled_init)``).
    out: nn.Module = _glorot_linear(fin, n_pixels, bias=True)
    if wn:
        out = weight_norm(out, init_scale=1.0 if g_out_data_init else None, train_g=True, pooled_init=True)
        with torch.no_grad():  # the reference scale starts at 1: unit-norm rows
            out.parametrizations.weight.original0.fill_(1.0)
    elif g_out_data_init:
        from igan.errors import UsageError

        raise UsageError("--g-out-data-init needs weight norm (it initialises G's weight-normed output layer)",
                         hint="drop --no-wn or --g-out-data-init")
    g_layers += [out, _output_activation(value_range)]
    generator = Generator(nn.Sequential(*g_layers), image_shape)

    # D: noise 0.3 on the input, ReLU hidden layers each followed by noise 0.5; the last hidden layer's
    # output (before its noise) is the feature-matching layer.
    noise_in = GaussianNoise(input_noise) if noise else nn.Identity()
    d_layers: list[nn.Module] = [nn.Flatten(), noise_in]
    fin = n_pixels
    for i, width in enumerate(d_hidden):
        d_layers += [_linear(fin, width, wn=wn, std=0.1), nn.ReLU()]
        if i < len(d_hidden) - 1 and noise:
            d_layers.append(GaussianNoise(hidden_noise))
        fin = width

    def make_out(fin_: int, k: int) -> nn.Module:  # hidden g frozen, output g trainable (reference)
        return _linear(fin_, k, wn=wn, train_g=True, std=0.1)

    discriminator = Discriminator(nn.Sequential(*d_layers), fin, num_logits, make_out,
                                  pre_out=GaussianNoise(hidden_noise) if noise else None)
    return Models(generator, discriminator, z_dim, z_dist)


# ----------------------------------------------------------------------------------------------
# the conv pair (paper §6.2-6.3, reference train_cifar_feature_matching.py; paper-notes §2.4-2.5)


def build_conv(image_shape: tuple[int, int, int], num_logits: int, *, widths: tuple[int, int] = (96, 192),
               z_dim: int = 100, z_dist: str = "uniform", wn: bool = True, dropout: bool = True,
               value_range: tuple[float, float] = (-1.0, 1.0), g_base: int = 512) -> Models:
    c, h, w = image_shape
    if (h, w) != (32, 32):
        raise ValueError(f"the conv models expect 32x32 images, got {h}x{w}")

    # G: z -> 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32xC; BN without scale + ReLU, tanh output with
    # weight norm (trainable g, init scale 0.1). ConvTranspose(k5, s2, p2, op1) = Theano 'half' deconv.
    def deconv(cin: int, cout: int) -> nn.ConvTranspose2d:
        layer = nn.ConvTranspose2d(cin, cout, 5, 2, padding=2, output_padding=1)
        nn.init.normal_(layer.weight, std=0.05)
        return layer

    fc = nn.Linear(z_dim, 4 * 4 * g_base, bias=False)
    nn.init.normal_(fc.weight, std=0.05)
    d1, d2 = deconv(g_base, g_base // 2), deconv(g_base // 2, g_base // 4)
    d1.bias, d2.bias = None, None  # BN's shift replaces the bias
    last = deconv(g_base // 4, c)
    if wn:
        last = weight_norm(last, init_scale=0.1, train_g=True)
    generator = Generator(nn.Sequential(
        fc, BatchNormNoScale(4 * 4 * g_base), nn.ReLU(), nn.Unflatten(1, (g_base, 4, 4)),
        d1, BatchNormNoScale(g_base // 2), nn.ReLU(),
        d2, BatchNormNoScale(g_base // 4), nn.ReLU(),
        last, _output_activation(value_range)), image_shape)

    # D: 9 conv layers with lReLU 0.2, dropout 0.2 on the input and 0.5 after each stride-2 block,
    # global average pooling -> features (192-d CIFAR, 128-d SVHN) -> weight-normed dense head.
    a, b = widths
    act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
    drop = lambda p: nn.Dropout(p) if dropout else nn.Identity()  # noqa: E731
    trunk = nn.Sequential(
        drop(0.2),
        _conv(c, a, 3, wn=wn), act(), _conv(a, a, 3, wn=wn), act(), _conv(a, a, 3, 2, wn=wn), act(),
        drop(0.5),
        _conv(a, b, 3, wn=wn), act(), _conv(b, b, 3, wn=wn), act(), _conv(b, b, 3, 2, wn=wn), act(),
        drop(0.5),
        _conv(b, b, 3, pad=0, wn=wn), act(), _conv(b, b, 1, pad=0, wn=wn), act(),
        _conv(b, b, 1, pad=0, wn=wn), act(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def make_out(fin_: int, k: int) -> nn.Module:
        return _linear(fin_, k, wn=wn, init_scale=0.1, train_g=True)

    return Models(generator, Discriminator(trunk, b, num_logits, make_out), z_dim, z_dist)


# ----------------------------------------------------------------------------------------------
# the DCGAN-style pair for 64x64 and 128x128 images (paper §6.4, the ImageNet 128x128 experiment;
# reference imagenet/generator.py and discriminator.py; paper-notes §2.7)


def build_dcgan(image_shape: tuple[int, int, int], num_logits: int, *, z_dim: int = 100, z_dist: str = "uniform",
                g_base: int = 512, g_min: int = 64, d_base: int = 64, d_max: int = 512, features: int = 512,
                wn: bool = True, noise: bool = True, dropout: bool = False, image_size: int | None = None,
                value_range: tuple[float, float] = (-1.0, 1.0)) -> Models:
    """G: z -> dense 4x4 x g_base -> [5x5 stride-2 transposed conv, batch norm (no scale), ReLU] halving the
    width down to ``g_min`` until half the image size -> 5x5 stride-2 transposed conv to C channels,
    weight-normed (trainable g, init scale 0.1), tanh. For 128 px the widths are 512, 256, 128, 64, 64, as
    the reference ImageNet G (gf_dim 64); ``--vbn`` replaces every batch norm (§3.5).

    D: Gaussian noise N(0, 0.1^2) on the input (``noise``, the reference ImageNet D) -> [3x3 stride-2
    conv, lReLU 0.2] doubling the width from ``d_base`` up to ``d_max`` until 4x4 -> dense ``features``,
    lReLU (the feature layer f, as the reference's dense h7) -> [minibatch slot] -> weight-normed head.
    Every layer of D is weight-normed with data-dependent init (``wn``, as the paper's CIFAR D) in place
    of the reference's batch norm, which would mix the separate real/fake/labelled passes. ``dropout``
    adds dropout 0.2 on the input and 0.5 before the dense layer. ``image_size`` (fixed by the registered
    pairs) refuses data of another size."""
    c, h, w = image_shape
    if image_size is not None and (h, w) != (image_size, image_size):
        from igan.errors import UsageError

        raise UsageError(f"this DCGAN pair is for {image_size}x{image_size} images, the data are {h}x{w}",
                         hint="leave out --model to get the pair that fits the image size (dcgan64_conv, "
                              "dcgan128_conv, cifar_conv for 32)")
    steps = int(round(math.log2(h / 4))) if h >= 8 else 0
    if h != w or steps < 1 or 4 * 2 ** steps != h:
        raise ValueError(f"the DCGAN models expect square images of 8, 16, 32, 64, 128... pixels, got {h}x{w}")

    def deconv(cin: int, cout: int, bias: bool) -> nn.ConvTranspose2d:
        layer = nn.ConvTranspose2d(cin, cout, 5, 2, padding=2, output_padding=1, bias=bias)
        nn.init.normal_(layer.weight, std=0.05)
        if bias:
            nn.init.zeros_(layer.bias)
        return layer

    fc = nn.Linear(z_dim, 4 * 4 * g_base, bias=False)  # BN's shift replaces every hidden bias
    nn.init.normal_(fc.weight, std=0.05)
    g_layers: list[nn.Module] = [fc, nn.Unflatten(1, (g_base, 4, 4)), BatchNormNoScale(g_base), nn.ReLU()]
    width = g_base
    for _ in range(steps - 1):
        out = max(width // 2, g_min)
        g_layers += [deconv(width, out, bias=False), BatchNormNoScale(out), nn.ReLU()]
        width = out
    last = deconv(width, c, bias=True)
    if wn:
        last = weight_norm(last, init_scale=0.1, train_g=True)
    g_layers += [last, _output_activation(value_range)]
    generator = Generator(nn.Sequential(*g_layers), image_shape)

    act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
    d_layers: list[nn.Module] = [GaussianNoise(0.1) if noise else nn.Identity(),
                                 nn.Dropout(0.2) if dropout else nn.Identity()]
    width, cin = d_base, c
    for _ in range(steps):
        d_layers += [_conv(cin, width, 3, 2, 1, wn=wn), act()]
        cin, width = width, min(width * 2, d_max)
    d_layers += [nn.Flatten(), nn.Dropout(0.5) if dropout else nn.Identity(),
                 _linear(cin * 4 * 4, features, wn=wn), act()]

    def make_out(fin_: int, k: int) -> nn.Module:
        return _linear(fin_, k, wn=wn, init_scale=0.1, train_g=True)

    return Models(generator, Discriminator(nn.Sequential(*d_layers), features, num_logits, make_out), z_dim, z_dist)


# ----------------------------------------------------------------------------------------------
# data-dependent initialisation (paper-notes §1.8, §6.11)


@torch.no_grad()
def initialize_from_data(models: Models, x: torch.Tensor, z: torch.Tensor) -> int:
    """One init pass, as the reference ``init_param``: weight-normed layers get g and b from the batch
    statistics of their pre-activations, and layers with ``init_from_batch`` (the minibatch layer) see
    their input once. D runs in training mode (noise/dropout active), as in the reference."""
    handles = [m.register_forward_pre_hook(lambda mod, args: mod.init_from_batch(args[0]))
               for m in models.discriminator.modules() if hasattr(m, "init_from_batch")]
    try:
        n = data_dependent_init(models.discriminator, x)
    finally:
        for h in handles:
            h.remove()
    return n + data_dependent_init(models.generator, z)
