"""Named recipes: sets of defaults that reproduce one version of a reference script (``--recipe``).

The MNIST script of openai/improved-gan, ``train_mnist_feature_matching.py``, changed after the paper's
first version appeared (arXiv v1: 10 June 2016), so the paper's 93 ± 6.5 errors may come from other
settings than today's script (docs/reproduction.md has the whole history, commit by commit):

- ``reference`` (the default): today's script, unchanged since 0fa06b5 ("param averaging everywhere",
  14 June 2016, afternoon). lr 0.003 constant for 300 epochs; test error of the 0.9999 moving average
  of D's parameters; G's output layer l2-normalised with a trained scale, no data-dependent init. These
  are the models' own defaults, so this recipe changes nothing.
- ``paper-v1``: the script as it stood when the paper's first version appeared (2b81a18, 9 June 2016;
  4c858bb of 12 June trains the same schedule). lr 0.001, constant to epoch 200 and then linearly to 0 at
  epoch 300 (``lr = 0.001 * min(3 - epoch/100, 1)``); test error of D's own weights (no average);
  G's output layer weight-normed with data-dependent init (one std pooled over the layer) and a
  trained scale.

A recipe is a set of defaults: a setting given explicitly on the command line still wins. It is
recorded in config.json (``recipe``) and shown by ``igan report``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from igan.errors import UsageError

__all__ = ["Recipe", "RECIPES", "apply_recipe"]


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str  # the reference commit it follows
    description: str
    core: dict[str, Any] = field(default_factory=dict)  # RunConfig fields
    options: dict[str, Any] = field(default_factory=dict)  # plugin options
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # architecture switches
    decay_fraction: float | None = None  # lr decay from this fraction of the epochs (when not given)
    models: tuple[str, ...] | None = None  # the model pairs it applies to (None: any)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("reference", "openai/improved-gan 0fa06b5 (14 June 2016) = master",
           "today's reference script: the models' own defaults"),
    Recipe("paper-v1", "openai/improved-gan 2b81a18 (9 June 2016)",
           "the MNIST script when the paper appeared: lr 0.001 decaying linearly over the last third, "
           "raw D evaluated, G output with data-dependent weight-norm init",
           core={"lr": 0.001, "lr_schedule": "linear"}, options={"ema_decay": 0.0},
           model_kwargs={"g_out_data_init": True}, decay_fraction=2 / 3,
           models=("mnist_mlp", "digits_mlp")),
)}


def apply_recipe(config, model_def) -> None:
    """Fill in the recipe's settings that were not given explicitly (``config.given``), before the
    model's own defaults. For ``paper-v1`` the decay starts at 2/3 of the epochs: epoch 200 of MNIST's
    300, as the script (and epoch 26 of the digits' 40)."""
    name = config.recipe
    if name is None:
        return
    recipe = RECIPES.get(name)
    if recipe is None:
        raise UsageError(f"unknown recipe {name!r}", hint=f"choose one of: {', '.join(RECIPES)}")
    if recipe.models is not None and model_def.name not in recipe.models:
        raise UsageError(f"recipe {name} is for the MLP pairs ({', '.join(recipe.models)}), not {model_def.name}",
                         hint="drop --recipe, or use --model mnist_mlp")
    for key, value in recipe.core.items():
        if not config.is_given(key):
            setattr(config, key, value)
    for key, value in recipe.options.items():
        if not config.is_given(key):
            config.options[key] = value
    for key, value in recipe.model_kwargs.items():
        if not config.is_given(key):
            config.model_kwargs[key] = value
    if recipe.decay_fraction is not None and not config.is_given("lr_decay_from"):
        epochs = config.epochs or model_def.defaults.get("epochs", 10)
        if config.steps is None:  # with --steps the schedule follows the model's defaults
            config.lr_decay_from = int(epochs * recipe.decay_fraction)
