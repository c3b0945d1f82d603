"""The host's default hook implementations, registered like any plugin (but never blocked).

- the built-in datasets and model pairs (registries);
- the default GAN losses as ``trylast`` firstresult implementations, so any plugin overrides them the
  normal pluggy way: the standard discriminator loss and the non-saturating (or minimax) generator loss;
- the default label targets (1 for real, 0 for fake, 1 for the generator).
"""

from __future__ import annotations

from igan import losses
from igan.datasets.base import DatasetSpec
from igan.models import ModelDef, build_conv, build_dcgan, build_mlp
from igan.plugins import hookimpl

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz")


def _lazy(module: str, func: str):
    """Import a loader only when its dataset is used (keeps `igan --help` fast)."""

    def load(data_dir, download):
        import importlib

        return getattr(importlib.import_module(module), func)(data_dir, download)

    return load


@hookimpl
def igan_addoption(parser):
    parser.add("sync_bn", bool, panel="Distributed", run_only=True,
               help="under torchrun: G's batch-norm statistics over all processes (default: per process)")


@hookimpl
def igan_register_datasets(register):
    register(DatasetSpec("digits", _lazy("igan.datasets.digits", "load_digits"), "digits_mlp",
                         "embedded 8x8 handwritten digits (UCI optdigits, 1797 images; CC BY 4.0)"))
    register(DatasetSpec("mnist", _lazy("igan.datasets.mnist", "load_mnist"), "mnist_mlp",
                         "MNIST from the four IDX files", MNIST_FILES))
    register(DatasetSpec("cifar10", _lazy("igan.datasets.cifar10", "load_cifar10"), "cifar_conv",
                         "CIFAR-10, python version", ("cifar-10-python.tar.gz",)))
    register(DatasetSpec("svhn", _lazy("igan.datasets.svhn", "load_svhn"), "svhn_conv",
                         "SVHN cropped digits (train_32x32.mat, test_32x32.mat)",
                         ("train_32x32.mat", "test_32x32.mat")))


@hookimpl
def igan_register_models(register):
    # The paper's MNIST pair (paper-notes §2.3): G 100-500-500-784, D 784-1000-500-250-250-250-K.
    register(ModelDef("mnist_mlp", build_mlp, {},
                      {"batch_size": 100, "lr": 0.003, "epochs": 300},
                      "paper MNIST MLP pair, weight norm + Gaussian noise in D"))
    # A small pair for the embedded 8x8 digits: same structure, narrower, trains in seconds on a CPU.
    register(ModelDef("digits_mlp", build_mlp,
                      {"g_hidden": (128, 128), "d_hidden": (256, 128, 64), "z_dim": 32,
                       "input_noise": 0.2, "hidden_noise": 0.3},
                      {"batch_size": 50, "lr": 0.003, "epochs": 40},
                      "small MLP pair for the embedded digits"))
    # The paper's CIFAR-10 pair (§2.4: D widths 96/192) and SVHN pair (§2.5: 64/128).
    # G upsamples 4x4 -> 32x32 in three strided deconvolutions: 32x32 images only (any channel count).
    register(ModelDef("cifar_conv", build_conv, {"widths": (96, 192)},
                      {"batch_size": 100, "lr": 3e-4, "epochs": 1200, "lr_decay_from": 800},
                      "paper CIFAR-10 conv pair (9-layer WN D with dropout, 4-layer BN G)", image_sizes=((32, 32),)))
    register(ModelDef("svhn_conv", build_conv, {"widths": (64, 128)},
                      {"batch_size": 100, "lr": 3e-4, "epochs": 900, "lr_decay_from": 600},
                      "paper SVHN conv pair (D widths 64/128)", image_sizes=((32, 32),)))
    # DCGAN-style pairs for 64x64 and 128x128 images, after the paper's ImageNet experiment (§6.4;
    # paper-notes §2.7: Adam lr 4e-4, batch 64); chosen by image size for --dataset folder / npz.
    for size in (64, 128):
        register(ModelDef(f"dcgan{size}_conv", build_dcgan, {"image_size": size},
                          {"batch_size": 64, "lr": 4e-4, "epochs": 100},
                          f"DCGAN-style pair for {size}x{size} images (paper ImageNet setting: strided "
                          "transposed convs + BN in G, WN conv D)", image_sizes=((size, size),)))


@hookimpl(trylast=True)
def igan_label_targets(config):
    from igan.train import LabelTargets

    return LabelTargets()


# The default losses are pure functions of the step: --parallel may compute them for K models at once,
# and a CUDA graph may capture them (igan.capture).
parallel_safe = True
capture_safe = True


@hookimpl(trylast=True)
def igan_discriminator_loss(step):
    # Standard GAN loss on the real/fake logit logsumexp(logits) (= the logit itself when K = 1).
    return losses.discriminator_loss(losses.gan_logit(step.d_real.logits), losses.gan_logit(step.d_fake.logits),
                                     step.targets.real)


@hookimpl(trylast=True)
def igan_generator_loss(step):
    fake_logit = losses.gan_logit(step.d_fake.logits)
    if step.config.g_loss == "minimax":  # the saturating loss of the reference MBD scripts
        return losses.generator_loss_minimax(fake_logit)
    return losses.generator_loss_nonsaturating(fake_logit, step.targets.generator)


def _lazy_metric(module: str, func: str):
    """Import a metric only when it is computed (keeps `igan --help` fast)."""

    def metric(images, context):
        import importlib

        return getattr(importlib.import_module(module), func)(images, context)

    return metric


@hookimpl
def igan_register_metrics(register):
    register("is", _lazy_metric("igan.evaluate", "inception_score_metric"),
             "Inception Score (TF Inception-v3; paper protocol: 50,000 samples, 10 splits)")
    register("fid", _lazy_metric("igan.evaluate", "fid_metric"),
             "Frechet Inception Distance to the real training images (statistics cached)")
    register("classifier-score", _lazy_metric("igan.metrics.classifier", "classifier_score_metric"),
             "offline score with igan's own digit classifier (digits, mnist), real-data reference beside it")
