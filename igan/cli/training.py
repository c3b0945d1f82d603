"""The options and the command function that ``igan train`` and ``igan semisup`` share.

The core options are typer options in the Training and Model panels; the plugins' options (from
``igan_addoption``) follow in their own panels. ``make_config`` turns the parsed values into the run's
``RunConfig``; ``_given_parameters`` records which of them the user typed.
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional

import typer

from igan.cli.common import Interrupted, TerminatedError
from igan.config import MODEL_SWITCHES, SEED_MAX
from igan.errors import Terminated, UsageError
from igan.recipes import RECIPES
from igan.schedules import SCHEDULES

__all__ = ["make_config", "CORE_KEYS", "MODEL_KEYS", "core_owned"]

CORE_PANEL = "Training"
MODEL_PANEL = "Model"


def _core_parameters(command: str) -> list[inspect.Parameter]:
    """The options every training command has (typer options in the Training and Model panels)."""
    P = inspect.Parameter

    def opt(name: str, annotation: Any, default: Any, *flags: str, panel: str = CORE_PANEL, **kw: Any) -> P:
        return P(name, P.KEYWORD_ONLY, default=default,
                 annotation=Annotated[annotation, typer.Option(*flags, rich_help_panel=panel, **kw)])

    return [
        opt("dataset", str, "digits", "--dataset",
            help="digits (embedded), mnist, cifar10, svhn, folder (your images), npz, or a plugin's"),
        opt("data_dir", Optional[Path], None, "--data-dir", help="folder holding the dataset's files"),
        opt("download", bool, False, "--download", help="fetch missing dataset files (checksums verified)"),
        opt("epochs", Optional[int], None, "--epochs", min=1, help="epochs (default: the model's)"),
        opt("steps", Optional[int], None, "--steps", min=1, help="total steps; overrides --epochs"),
        opt("batch_size", Optional[int], None, "--batch-size", min=1, help="batch size (default: the model's)"),
        opt("lr", Optional[float], None, "--lr", min=0.0, help="Adam learning rate (default: the model's)"),
        opt("lr_decay_from", Optional[int], None, "--lr-decay-from", min=0,
            help="epoch from which the learning rate falls to 0 at the last epoch, as the reference "
                 "CIFAR/SVHN scripts (default: the model's, 800 cifar_conv, 600 svhn_conv; 0: constant)"),
        opt("lr_schedule", Literal[SCHEDULES], "linear", "--lr-schedule",
            help="shape of that decay: linear (the reference scripts') or cosine"),
        opt("lr_warmup", int, 0, "--lr-warmup", min=0, help="epochs of linear learning-rate warm-up at the start"),
        opt("seed", int, 0, "--seed", min=0, max=SEED_MAX, help="random seed (model init, noise, data order)"),
        opt("seeds", int, 1, "--seeds", min=1,
            help="train K runs: seeds --seed, --seed + 1, ..." + (
                " and labelled splits --label-seed, --label-seed + 1, ..." if command == "semisup" else "")
            + ", in folders seed<S>"),
        opt("parallel", bool, False, "--parallel",
            help="train the --seeds runs at once in one process: one batched step on GPUs, interleaved on CPUs "
                 "(IGAN_PARALLEL); each equals its single-seed run"),
        opt("device", str, "auto", "--device", help="auto, cpu, cuda or cuda:N"),
        opt("fast_path", Optional[bool], None, "--fast-path/--no-fast-path",
            help="torch.compile G and D, TF32 matmuls (default: on for CUDA; off on CPU, where it measured slower)"),
        opt("out", Optional[Path], None, "--out", help="run directory (default: runs/<dataset>-<time>)"),
        opt("resume", Optional[Path], None, "--resume", help="continue from this checkpoint exactly"),
        opt("as_json", bool, False, "--json", help="print a JSON summary on stdout"),
        opt("log_every", int, 50, "--log-every", min=1, help="steps between log lines / metric records"),
        opt("checkpoint_every", Optional[int], None, "--checkpoint-every", min=1,
            help="steps between checkpoints (default: each epoch)"),
        opt("g_steps", int, 1, "--g-steps", min=1, help="generator updates per discriminator update"),
        opt("g_loss", Literal["ns", "minimax"], "ns", "--g-loss",
            help="generator loss: ns (non-saturating, -log D(G(z))) or minimax (log(1 - D(G(z))))"),
        opt("adam", Literal["reference", "torch"], "reference", "--adam",
            help="reference: Adam with eps inside the square root, as the paper's code; torch: torch.optim.Adam"),
        opt("disable_plugin", Optional[list[str]], None, "--disable-plugin", metavar="NAME",
            help="block a plugin by name (repeatable; names: igan plugins)"),
        opt("model", Optional[str], None, "--model", panel=MODEL_PANEL,
            help="model pair (default: the dataset's): digits_mlp, mnist_mlp, cifar_conv, svhn_conv, "
                 "dcgan64_conv, dcgan128_conv"),
        opt("wn", Optional[bool], None, "--wn/--no-wn", panel=MODEL_PANEL,
            help="weight normalisation with data-dependent init (default on, as the reference nets)"),
        opt("noise", Optional[bool], None, "--d-noise/--no-d-noise", panel=MODEL_PANEL,
            help="Gaussian noise layers in the MLP discriminator (0.3 input, 0.5 hidden)"),
        opt("dropout", Optional[bool], None, "--dropout/--no-dropout", panel=MODEL_PANEL,
            help="dropout in the conv discriminator (0.2 input, 0.5 per block)"),
        opt("g_out_data_init", Optional[bool], None, "--g-out-data-init/--no-g-out-data-init", panel=MODEL_PANEL,
            help="MLP G's weight-normed output layer gets data-dependent init (reference before 14 June 2016; "
                 "default off, as today's reference)"),
    ] + ([opt("recipe", Optional[Literal[tuple(RECIPES)]], None, "--recipe",
              help="a named set of defaults: reference (today's reference script, the default) or paper-v1 "
                   "(the MNIST script when the paper appeared); flags given explicitly still win")]
         if command == "semisup" else [])


CORE_KEYS = {"dataset", "data_dir", "download", "epochs", "steps", "batch_size", "lr", "lr_decay_from", "lr_schedule",
             "lr_warmup", "seed", "device", "out", "resume", "log_every", "checkpoint_every", "g_steps", "g_loss",
             "adam", "model", "fast_path", "recipe"}
MODEL_KEYS = set(MODEL_SWITCHES)
# parameters of the training commands that are not core settings (and so not in CORE_KEYS)
COMMAND_PARAMETERS = {"ctx", "config_file", "seeds", "parallel", "as_json", "disable_plugin", "baseline"}
EXTRA_FLAGS = ("--config", "--baseline", "--no-baseline", "-h", "--help")  # --config, semisup's own, and help


@functools.cache
def core_owned() -> dict[str, str]:
    """Option names and flags that belong to igan itself: a plugin may not declare them (``igan.options``)."""
    owned = {name: "igan" for name in CORE_KEYS | MODEL_KEYS | COMMAND_PARAMETERS}
    owned.update({flag: "igan" for flag in EXTRA_FLAGS})
    for param in _core_parameters("semisup"):
        info = typing.get_args(param.annotation)[1]
        owned[param.name] = "igan"
        decls = ([info.default] if isinstance(info.default, str) else []) + list(info.param_decls or ())
        for decl in decls:
            owned.update({flag: "igan" for flag in decl.split("/") if flag})
    return owned


def make_config(command: str, values: dict[str, Any], parser,
                given: list[str] | None = None) -> "RunConfig":  # noqa: F821
    """The run's configuration from the parsed values; ``given`` names the ones typed on the command line."""
    from igan.config import RunConfig
    from igan.train import check_settings

    parser.validate_choices(values)
    core = {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items() if k in CORE_KEYS}
    model_kwargs = {k: v for k, v in values.items() if k in MODEL_KEYS and v is not None}
    options = {k: v for k, v in values.items() if k in parser.options}
    config = RunConfig(command=command, model_kwargs=model_kwargs, options=options, **core,
                       given=sorted(given or []))
    check_settings(config)  # --lr inf and the like, before anything is loaded or built
    return config


def _given_parameters(ctx: typer.Context | None, values: dict[str, Any]) -> list[str]:
    """The parameters of the running command that the user typed (or set through an environment
    variable), as opposed to their defaults: the context records each value's source."""
    if ctx is None:
        return []
    sources = {name: ctx.get_parameter_source(name) for name in values}
    return [name for name, src in sources.items() if src is not None and src.name in ("COMMANDLINE", "ENVIRONMENT")]


def _training_command(command: str, pm_factory, parser, doc: str, runner: Callable,
                      extra: list[inspect.Parameter] = ()) -> Callable:
    """The typer function of a training command: the core options, the plugins' options for
    ``command`` and ``extra`` ones (passed to ``runner`` by name), then
    ``runner(config, pm_factory, seeds=K, parallel=P, **extra)`` and its summary on stdout."""
    def command_fn(ctx: typer.Context, **values: Any) -> None:
        from igan.cli.runs import seeds_base, _run_dir

        config_file = values.pop("config_file")
        given = _given_parameters(ctx, values)
        if config_file is not None:
            from igan.configfile import apply_config_file

            if values.get("resume") is not None:
                raise UsageError("--config and --resume together: a resumed run restores its configuration from "
                                 "the checkpoint", hint="drop --config")
            values, given, from_file = apply_config_file(config_file, command, values, given, ctx)
        else:
            from_file = {}
        as_json = values.pop("as_json")
        seeds, parallel = values.pop("seeds"), values.pop("parallel")
        values.pop("disable_plugin", None)  # already applied when the plugin manager was built
        extras = {p.name: values.pop(p.name) for p in extra}
        config = make_config(command, values, parser, [g for g in given if g in values])
        for key, value in from_file.items():
            setattr(config, key, value)
        if config.resume is not None:
            from igan.resume import resume_config, template_checkpoint

            config = resume_config(config, template_checkpoint(config, seeds), parser, pm_factory.new(), seeds)
        elif config.out is None:
            config.out = str(_run_dir(config))  # named now, so an interrupted run can say where it is
        again = (f"igan {command} --resume {seeds_base(config, seeds)}" + (f" --seeds {seeds}" if seeds > 1 else "")
                 + (" --parallel" if parallel else ""))
        try:
            summary = runner(config, pm_factory, seeds=seeds, parallel=parallel, **extras)
        except KeyboardInterrupt:  # typer would turn it into a bare exit 130
            raise Interrupted("interrupted",
                              hint=f"the last checkpoint was saved; continue with: {again}") from None
        except Terminated:
            raise TerminatedError("terminated (SIGTERM)",
                                  hint=f"the last checkpoint was saved; continue with: {again}") from None
        from igan.distributed import job

        if not job().is_main:  # one answer per job: rank 0's
            return
        if as_json:
            print(json.dumps(summary))
        else:
            print(summary.get("run_dir", ""))

    P = inspect.Parameter
    context = P("ctx", P.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    config_option = P("config_file", P.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[Path], typer.Option("--config", rich_help_panel=CORE_PANEL, metavar="FILE",
                                     help="read the settings from a file: a run's config.json, or TOML / YAML "
                                          "with the same keys; flags given here win")])
    params = ([context, config_option] + _core_parameters(command) + [o.typer_parameter(command) for o in parser.for_command(command)]
              + list(extra))
    command_fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command_fn.__doc__ = doc
    command_fn.__name__ = command
    return command_fn
