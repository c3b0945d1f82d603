"""Every hook igan calls. A hookspec's docstring is its contract; ``docs/hooks.md`` mirrors it.

Hooks are called with keyword arguments only, so an implementation may accept fewer arguments than
the spec lists (pluggy passes only the names it asks for). All names carry the ``igan_`` prefix;
the plugin manager refuses an ``igan_*`` function that matches no spec (a misspelt hook).

Order within one training step (``igan.train.train_step`` is the only caller of the step hooks)::

    igan_discriminator_loss -> igan_extra_loss(net="D") -> [D optimizer step]
        -> igan_after_optimizer_step(net="D")
    repeat g_steps times:
        igan_generator_loss -> igan_extra_loss(net="G") -> [G optimizer step]
            -> igan_after_optimizer_step(net="G")

and around the loop (``igan.train.fit``)::

    igan_configure -> igan_modify_models -> [data-dependent init] -> igan_label_targets
        -> igan_train_start -> (steps ...; igan_log at logging points)
        -> igan_epoch_end at each epoch end (then igan_log; the sample grid from
           igan_sampling_generator's module or G; the checkpoint) -> igan_train_end

``sample``/``evaluate`` rebuild a checkpoint's models: igan_configure -> igan_modify_models ->
[weights loaded] -> igan_prepare_inference.

``igan_checkpoint_tensors`` fires whenever a checkpoint is written (``igan_after_checkpoint`` once it
is on disk), ``igan_restore_tensors`` when one is loaded (after ``igan_train_start``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # imported for annotations only: keeps `import igan.hookspecs` light
    from pathlib import Path

    import torch

    from igan.config import RunConfig
    from igan.models import Models
    from igan.options import OptionParser
    from igan.train import LabelTargets, Run, Step

hookspec = pluggy.HookspecMarker("igan")


# --------------------------------------------------------------------------------------------
# Start-up: options, validation, registries


@hookspec
def igan_addoption(parser: OptionParser) -> None:
    """Add command-line options with ``parser.add(name, type, default, help=..., ...)``.

    Fires once when the CLI is built, before any command runs. Options of built-in plugins are shown in
    the "Techniques" panel of ``igan train --help`` (unless they name another panel); options of a
    third-party plugin get a panel of their own, titled with the plugin's name. An option's value is
    read back as ``config.options[name]``; ``config.is_given(name)`` tells a typed value from the
    default. ``min``/``max`` are inclusive. Return nothing.
    """


@hookspec
def igan_configure(config: RunConfig, pm: pluggy.PluginManager) -> None:
    """Validate the resolved options and set up per-run state.

    Fires once per run after the options are parsed, before any model exists (on ``--resume`` with
    the checkpoint's configuration). Raise ``igan.UsageError(message, hint)`` for an impossible
    combination (the CLI exits with code 2). A technique that is switched on registers a stateful
    object here with ``pm.register(obj, "<plugin>.run")``; that object's hooks then fire for this run
    only. Write resolved defaults back into ``config.options`` so checkpoints record what was used;
    ``config.role`` tells a GAN run from semisup's supervised-only baseline. Return nothing.
    """


@hookspec
def igan_register_datasets(register: Callable[..., None]) -> None:
    """Add datasets: call ``register(DatasetSpec(...))`` once per dataset.

    Fires when the dataset registry is needed. A name registered twice is an error naming the dataset.
    ``loader(data_dir, download)`` returns the ``ImageDataset``; a loader with a ``config`` parameter also
    receives the run's ``RunConfig`` (None outside a run). ``default_model`` is a model name or a function
    of the loaded dataset returning one.
    """


@hookspec
def igan_register_models(register: Callable[..., None]) -> None:
    """Add model pairs: call ``register(ModelDef(name, builder, kwargs, defaults, description))``.

    ``builder(image_shape, num_logits, **kwargs) -> Models`` builds a generator and a discriminator;
    ``defaults`` holds training defaults (batch_size, lr, epochs). The model name and the architecture
    switches are stored in the checkpoint so ``sample`` and ``evaluate`` rebuild the exact model. A
    name registered twice is an error.
    """


@hookspec
def igan_register_metrics(register: Callable[..., None]) -> None:
    """Add sample-quality metrics for ``igan evaluate``: ``register(name, fn, help)``.

    ``fn(images_uint8: Tensor, context: dict) -> dict`` returns at least ``mean`` (and ``std`` where
    defined).
    """


@hookspec
def igan_register_commands(register: Callable[..., None]) -> None:
    """Add CLI subcommands: ``register(name, function)`` with a typer-style annotated function.

    Only typer's public API is used; plugins never receive click objects.
    """


# --------------------------------------------------------------------------------------------
# Model construction


@hookspec
def igan_modify_models(models: Models, config: RunConfig) -> None:
    """Change the generator or discriminator before training, sampling or evaluation.

    Fires after the model pair is built (also when a checkpoint is loaded for ``sample`` or
    ``evaluate``, so architecture changes are rebuilt from the checkpoint's config), before weights are
    loaded or initialised. Edit ``models.generator`` / ``models.discriminator`` in place or assign new
    modules to those attributes (e.g. replace the discriminator's ``mbd`` slot). Return nothing.
    """


# --------------------------------------------------------------------------------------------
# Training


@hookspec
def igan_train_start(run: Run) -> None:
    """One-time set-up before the first step (models, optimizers and data exist).

    Fires once per ``fit`` call, after data-dependent initialisation and before a checkpoint is restored.
    """


@hookspec(firstresult=True)
def igan_label_targets(config: RunConfig) -> LabelTargets | None:
    """Return the label targets (real, fake, generator) for the default GAN losses.

    firstresult: the first non-None result wins. The built-in default returns real 1, generator 1 (fake
    targets are always 0); one-sided label smoothing returns (alpha, generator target). Fires once per
    run, when the run is built (after the models exist, before ``igan_train_start``).
    """


@hookspec(firstresult=True)
def igan_discriminator_loss(step: Step) -> torch.Tensor | None:
    """Return the discriminator's main loss (a scalar tensor) for this step.

    firstresult: the built-in default (``trylast``) is the standard GAN loss on
    ``step.d_real``/``step.d_fake``; the semi-supervised plugin returns the K+1 loss instead. Fires once
    per step, before ``igan_extra_loss(net="D")``.
    """


@hookspec(firstresult=True)
def igan_generator_loss(step: Step) -> torch.Tensor | None:
    """Return the generator's main loss (a scalar tensor).

    firstresult: the built-in default (``trylast``) is the non-saturating loss (or the minimax loss with
    ``--g-loss minimax``); feature matching returns its loss instead. ``step.d_fake`` has been recomputed
    with gradients flowing to G. Fires once per generator update (``--g-steps`` times per step).
    """


@hookspec
def igan_extra_loss(step: Step, net: str) -> dict[str, torch.Tensor] | None:
    """Return named extra loss terms to add to network ``net`` ("D" or "G"), or None.

    Fires once per optimizer update of that network, right after its main loss. Every term is added to
    the loss and logged under ``loss/<net>/<name>``. A penalty on D's input gradient declares
    ``needs_input_grad`` and differentiates ``step.d_real`` w.r.t. ``step.x_real`` (no second D pass);
    an extra D pass goes through ``step.discriminator``. ``step.log`` may be called here.
    """


@hookspec
def igan_after_optimizer_step(step: Step, net: str) -> None:
    """Bookkeeping after the optimizer of ``net`` ("D" or "G") has updated its parameters.

    Fires right after each ``optimizer.step()``, under ``torch.no_grad()``. Return nothing.
    """


@hookspec
def igan_epoch_end(run: Run, epoch: int) -> dict[str, float] | None:
    """Evaluate at the end of an epoch; return metrics to log (e.g. ``{"test_error": 0.01}``) or None.

    Fires once per epoch: after its last step, or at the end of training when training ends inside it.
    Never twice for one epoch, across resumes too (a run resumed inside an epoch whose end already
    fired fires next for the following epoch). Not on Ctrl-C, SIGTERM or errors. Metrics go to
    ``metrics.jsonl`` and the progress display.
    """


@hookspec
def igan_log(run: Run, step: int, values: dict[str, float]) -> None:
    """Receive logged scalars (host floats) as they are written to ``metrics.jsonl``.

    Fires at every logging point (``--log-every`` steps and each epoch end: loss means over the interval,
    keys like ``loss/D``, ``loss/G/ha``) and after ``igan_epoch_end`` with the metrics it returned. For
    loggers such as TensorBoard; must not change the run. Return nothing.
    """


@hookspec
def igan_train_end(run: Run, completed: bool) -> None:
    """Clean-up when training stops. ``completed`` is True after the last step (the final checkpoint
    is written); False when training stopped early on an error, Ctrl-C or SIGTERM (the last checkpoint
    is the last good one; ``run.step`` tells how far it got). Return nothing."""


@hookspec(firstresult=True)
def igan_sampling_generator(run: Run) -> torch.nn.Module | None:
    """Return the generator to draw samples from during training (e.g. a moving average of G), or None.

    firstresult: the first non-None module is used for the fixed-noise grids at each epoch end and for
    ``Run.generate``; by default (None) the trained generator is used. The module must take z like G.
    """


# --------------------------------------------------------------------------------------------
# Checkpoints


@hookspec
def igan_checkpoint_tensors(run: Run) -> dict[str, torch.Tensor] | None:
    """Return extra named tensors to save in the checkpoint (e.g. historical-average sums).

    The host prefixes each name with the plugin's name, so names only need to be unique per plugin.
    """


@hookspec
def igan_after_checkpoint(run: Run, path: Path) -> None:
    """A checkpoint of ``run`` has just been written, atomically, at ``path`` (``checkpoints/last.safetensors``).

    Fires on the process that writes checkpoints (rank 0), after each one: at every epoch end (after
    ``igan_epoch_end``), every ``--checkpoint-every`` steps, at the end and on Ctrl-C / SIGTERM. For
    keeping copies (the evaluation plugin keeps ``checkpoints/best.safetensors`` this way); must not
    change the run. Return nothing.
    """


@hookspec
def igan_prepare_inference(models: Models, config: RunConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Adjust a model pair loaded from a checkpoint for ``igan sample`` / ``igan evaluate``.

    Fires after the checkpoint's G and D weights are loaded, with this plugin's own checkpoint tensors
    (what it returned from ``igan_checkpoint_tensors``, names without the prefix; empty if none). A
    generator-EMA plugin copies its averaged weights into ``models.generator`` here. Return nothing.
    """


@hookspec
def igan_restore_tensors(run: Run, tensors: dict[str, torch.Tensor]) -> None:
    """Restore state from a checkpoint: ``tensors`` holds what this plugin returned from
    ``igan_checkpoint_tensors`` (names without the prefix). Fires after ``igan_train_start``.
    """


@hookspec(firstresult=True)
def igan_density_model(run: Run):
    """Return a density model of the training data for the low-density term (``--low-density``), or None.

    firstresult: the first non-None result wins; without one, ``igan.techniques.low_density`` fits its
    own small model (``igan.density``: a Gaussian mixture in the top principal components). The object
    needs ``log_prob(x) -> [N]`` (log p of a batch of images in G's output space, differentiable in x),
    and ``state() -> dict[str, Tensor]`` if it should be saved in checkpoints instead of rebuilt on
    resume. Fires once per run, in the low-density plugin's ``igan_train_start``.
    """


def all_hook_names() -> list[str]:
    """The names of every hook specification, in file order (used by docs tests and ``igan plugins``)."""
    return [name for name, obj in globals().items() if name.startswith("igan_") and callable(obj)]


__all__ = ["hookspec", "all_hook_names"] + all_hook_names()
