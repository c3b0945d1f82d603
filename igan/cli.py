"""The ``igan`` command line: train, semisup, sample, evaluate, plugins.

The plugin manager is built first, then the typer app from it, so plugin options become real typer
options (help panels included) before any command parses its arguments. stdout carries only data
(a run directory, a path, or JSON with ``--json``); everything for people goes to stderr. Exit codes:
0 success, 1 runtime error, 2 usage error, 130 Ctrl-C, 143 SIGTERM (both after saving a checkpoint).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import time
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from igan import __version__
from igan.config import MODEL_SWITCHES, SEED_MAX
from igan.errors import IganError, Terminated, UsageError

__all__ = ["main", "build_app"]

CORE_PANEL = "Training"


class Interrupted(IganError):
    """Ctrl-C during a command (the run saved a checkpoint first)."""

    exit_code = 130


class TerminatedError(IganError):
    """SIGTERM during a training command (the run saved a checkpoint first)."""

    exit_code = 143


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
        opt("lr_schedule", str, "linear", "--lr-schedule",
            help="shape of that decay: linear (the reference scripts') or cosine"),
        opt("lr_warmup", int, 0, "--lr-warmup", min=0, help="epochs of linear learning-rate warm-up at the start"),
        opt("seed", int, 0, "--seed", min=0, max=SEED_MAX, help="random seed (model init, noise, data order)"),
        opt("seeds", int, 1, "--seeds", min=1,
            help="train K runs: seeds --seed, --seed + 1, ... (semisup: label splits too), in folders seed<S>"),
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
        opt("g_loss", str, "ns", "--g-loss", help="generator loss: ns (non-saturating) or minimax"),
        opt("adam", str, "reference", "--adam",
            help="reference: Adam with eps inside the square root, as the paper's code; torch: torch.optim.Adam"),
        opt("disable_plugin", Optional[list[str]], None, "--disable-plugin", help="block a plugin by name"),
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
    ] + ([opt("recipe", Optional[str], None, "--recipe",
              help="a named set of defaults: reference (today's reference script, the default) or paper-v1 "
                   "(the MNIST script when the paper appeared); flags given explicitly still win")]
         if command == "semisup" else [])


CORE_KEYS = {"dataset", "data_dir", "download", "epochs", "steps", "batch_size", "lr", "lr_decay_from", "lr_schedule",
             "lr_warmup", "seed", "device", "out", "resume", "log_every", "checkpoint_every", "g_steps", "g_loss",
             "adam", "model", "fast_path", "recipe"}
MODEL_KEYS = set(MODEL_SWITCHES)
# parameters of the training commands that are not core settings (and so not in CORE_KEYS)
COMMAND_PARAMETERS = {"ctx", "seeds", "parallel", "as_json", "disable_plugin", "baseline"}
EXTRA_FLAGS = ("--baseline", "--no-baseline", "-h", "--help")  # semisup's own, and help


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


def _run_dir(config) -> Path:
    if config.out:
        return Path(config.out)
    if config.resume:  # resume into the run the checkpoint belongs to
        ckpt = Path(config.resume)
        return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{config.dataset}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def train_once(config, pm) -> dict[str, Any]:
    """Build, train and checkpoint one run; returns its summary. The run directory is locked for the life
    of the run (``igan.runlock``: a second run on the same folder is refused)."""
    from igan.distributed import setup
    from igan.runlock import RunLock
    from igan.train import build_run, fit

    dist, _ = setup(config.device)
    run_dir = _run_dir(config)
    if dist.enabled:  # every rank must use rank 0's run directory (its name holds a timestamp)
        import torch.distributed

        shared = [str(run_dir)]
        torch.distributed.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
    with RunLock(run_dir, active=dist.is_main):
        if dist.is_main and config.resume is None and (run_dir / "checkpoints" / "last.safetensors").exists():
            raise UsageError(f"{run_dir} already holds a run",
                             hint=f"use --resume {run_dir} to continue it, or another --out")
        run = build_run(config, pm, run_dir)
        return fit(run, resume=Path(config.resume) if config.resume else None)


def seeds_base(config, seeds: int) -> Path:
    """The folder of a ``--seeds K`` experiment: ``--out``, else the folder given to ``--resume``, else new."""
    if seeds > 1 and config.resume and not config.out:
        return Path(config.resume)
    return _run_dir(config)


def seed_configs(config, seeds: int, base: Path | None = None) -> list:
    """One configuration per seed: --seed + i, each in <base>/seed<S> (``base`` itself for one seed;
    default: ``seeds_base``). With several seeds, ``--resume`` names the experiment's folder and each
    seed continues from its own checkpoint there (a seed that has none yet starts)."""
    import copy

    if config.seed + seeds - 1 > SEED_MAX:
        raise UsageError(f"--seed {config.seed} with --seeds {seeds} goes past the largest seed, {SEED_MAX}",
                         hint=f"use --seed {SEED_MAX - seeds + 1} or lower")
    base = base or seeds_base(config, seeds)
    resume = Path(config.resume) if seeds > 1 and config.resume else None
    if resume is not None and not resume.is_dir():
        raise UsageError(f"with --seeds {seeds}, --resume takes the experiment's folder (holding seed<S>/), "
                         f"not {resume}", hint="e.g. --resume runs/mnist-seeds, the folder the first command printed")
    configs = []
    for i in range(seeds):
        cfg = copy.deepcopy(config)
        cfg.seed = config.seed + i
        cfg.out = str(base / f"seed{cfg.seed}") if seeds > 1 else str(base)
        if resume is not None:
            ckpt = resume / f"seed{cfg.seed}" / "checkpoints" / "last.safetensors"
            cfg.resume = str(ckpt) if ckpt.is_file() else None
        configs.append(cfg)
    if resume is not None and not any(c.resume for c in configs):
        raise UsageError(f"{resume} holds no seed<S>/checkpoints/last.safetensors for seeds "
                         f"{config.seed}-{config.seed + seeds - 1}", hint="check --resume, --seed and --seeds")
    return configs


def train_configs(configs: list, pms, parallel: bool = False) -> list[dict[str, Any]]:
    """Train each configuration: one after another, or all at once with ``parallel``."""
    if parallel and len(configs) > 1:
        return train_parallel(configs, pms)
    return [train_once(cfg, pms.new()) for cfg in configs]


def train_seeds(config, pms, seeds: int = 1, parallel: bool = False) -> dict[str, Any]:
    """``igan train``: one run, or ``--seeds K`` runs (summary: the runs and their folder)."""
    base = seeds_base(config, seeds)
    configs = seed_configs(config, seeds, base)
    summaries = train_configs(configs, pms, parallel)
    if seeds == 1:
        return summaries[0]
    from igan.fileio import write_text, writing

    result = {"run_dir": str(base), "runs": summaries}
    with writing(base / "seeds.json", "every seed's run and checkpoint is intact"):
        write_text(base / "seeds.json", json.dumps(result, indent=2) + "\n")
    return result


def train_parallel(configs: list, pms) -> list[dict[str, Any]]:
    """Build and train K runs at once in one process (``--parallel``, ``igan.parallel``)."""
    from igan.parallel import build_parallel
    from igan.train import fit_runs

    resumes = [Path(c.resume) if c.resume else None for c in configs]
    if any(resumes) and not all(resumes):
        missing = ", ".join(str(c.seed) for c in configs if not c.resume)
        raise UsageError(f"--parallel resumes all seeds together, but seeds {missing} have no checkpoint yet",
                         hint="drop --parallel to finish the started seeds and start the others one by one")
    import contextlib

    from igan.runlock import RunLock

    dirs = [_run_dir(c) for c in configs]
    with contextlib.ExitStack() as locks:
        for d in dirs:
            locks.enter_context(RunLock(d))
        for d, r in zip(dirs, resumes):
            if r is None and (d / "checkpoints" / "last.safetensors").exists():
                raise UsageError(f"{d} already holds a run",
                                 hint="use --resume with the experiment's folder, or another --out")
        trainer = build_parallel(configs, [pms.new() for _ in configs], dirs)
        return fit_runs(trainer, resumes)


def _training_command(command: str, pm_factory: Callable, parser, doc: str) -> Callable:
    def command_fn(ctx: typer.Context, **values: Any) -> None:
        config_file = values.pop("config_file")
        given = _given_parameters(ctx, values)
        if config_file is not None:
            from igan.configfile import apply_config_file

            if values.get("resume") is not None:
                raise UsageError("--config and --resume together: a resumed run restores its configuration from "
                                 "the checkpoint", hint="drop --config")
            values, given, extra = apply_config_file(config_file, command, values, given, ctx)
        else:
            extra = {}
        as_json = values.pop("as_json")
        seeds, parallel = values.pop("seeds"), values.pop("parallel")
        runner_options = {k: values.pop(k) for k in ("baseline",) if k in values}
        values.pop("disable_plugin", None)  # already applied when the plugin manager was built
        config = make_config(command, values, parser, [g for g in given if g in values])
        for key, value in extra.items():
            setattr(config, key, value)
        if config.resume is not None:
            from igan.resume import resume_config, template_checkpoint

            config = resume_config(config, template_checkpoint(config, seeds), parser, pm_factory.new(), seeds)
        elif config.out is None:
            config.out = str(_run_dir(config))  # named now, so an interrupted run can say where it is
        again = (f"igan {command} --resume {seeds_base(config, seeds)}" + (f" --seeds {seeds}" if seeds > 1 else "")
                 + (" --parallel" if parallel else ""))
        runner = pm_factory.runner(command)
        try:
            summary = runner(config, pm_factory, seeds=seeds, parallel=parallel, **runner_options)
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
        Optional[Path], typer.Option("--config", rich_help_panel=CORE_PANEL,
                                     help="read the settings from a file: a run's config.json, or TOML / YAML "
                                          "with the same keys; flags given here win")])
    params = [context, config_option] + _core_parameters(command) + [o.typer_parameter()
                                                                     for o in parser.for_command(command)]
    command_fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command_fn.__doc__ = doc
    command_fn.__name__ = command
    return command_fn


class PluginManagers:
    """Makes a fresh plugin manager per run (``--seeds K`` trains K runs, each with its own state)."""

    def __init__(self, disable: list[str]) -> None:
        self.disable = disable
        self.runners: dict[str, Callable] = {"train": train_seeds}

    def new(self, strict: bool = True):
        """A plugin manager for a run (``strict``: refuse plugins whose options clash) or, with
        ``strict=False``, for the help and for listing plugins, which must work with a broken one."""
        from igan.plugins import get_plugin_manager

        return get_plugin_manager(disable=self.disable, reserved=core_owned(), strict=strict)

    def runner(self, command: str) -> Callable:
        return self.runners[command]


def build_app(pms: PluginManagers | None = None) -> typer.Typer:
    from igan.options import collect_options

    pms = pms or PluginManagers([])
    pm = pms.new(strict=False)  # the app (help, `igan plugins`) is built even with a broken plugin
    parser = collect_options(pm)
    app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                      help=f"igan {__version__}: Improved Techniques for Training GANs, as plugins.",
                      context_settings={"help_option_names": ["-h", "--help"]})
    app.command("train", epilog="Example: igan train --dataset mnist --data-dir data/mnist --fm --mbd")(
        _training_command("train", pms, parser, "Train a GAN; each technique is a flag (see Techniques)."))

    from igan import commands

    commands.register_builtin(app, pms, parser, _training_command)
    for impl in pm.hook.igan_register_commands.get_hookimpls():
        try:
            impl.function(register=lambda name, fn: app.command(name)(fn))
        except Exception as exc:  # noqa: BLE001 - the other commands must keep working
            from igan.console import warn

            why = exc.message if isinstance(exc, IganError) else f"{type(exc).__name__}: {exc}"
            warn(f"plugin {impl.plugin_name!r} failed in igan_register_commands and its commands are left out: {why}",
                 hint=f"report it to the plugin's authors, or set IGAN_DISABLE_PLUGINS={impl.plugin_name}")
    return app


def _early_disable(argv: list[str]) -> list[str]:
    """``--disable-plugin`` must act before the app exists (plugins add options to it)."""
    names = []
    for i, arg in enumerate(argv):
        if arg == "--disable-plugin" and i + 1 < len(argv):
            names.append(argv[i + 1])
        elif arg.startswith("--disable-plugin="):
            names.append(arg.split("=", 1)[1])
    return names


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("IGAN_DEBUG") == "1"
    from igan import interrupts

    previous_sigint = interrupts.install()  # count Ctrl-Cs: a plugin's own KeyboardInterrupt is not one
    code = 0
    try:
        app = build_app(PluginManagers(_early_disable(argv)))
        result = app(args=argv, prog_name="igan", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # click's usage errors (unknown flag, bad value): exit 2
        if debug:
            raise
        message = exc.format_message()
        if message:  # typer's "no arguments: show help" carries no message
            _report(message, _usage_hint(exc))
        code = getattr(exc, "exit_code", 2)
    except IganError as exc:
        if debug:
            raise
        _report(exc.message, exc.hint)
        code = exc.exit_code
    except KeyboardInterrupt:
        _report("interrupted", "the last checkpoint was saved; continue with --resume")
        code = 130
    except Terminated:
        _report("terminated (SIGTERM)", "the last checkpoint was saved; continue with --resume")
        code = 143
    except Exception as exc:  # noqa: BLE001 - a bug: say so in one line unless debugging
        if debug:
            raise
        code = _report_unexpected(exc)
    finally:
        interrupts.restore(previous_sigint)
    sys.exit(code)


def _report(message: str, hint: str | None = None) -> None:
    """``error: ...`` + ``hint: ...`` on stderr. Never raises: it is the last thing between an error and
    the user (a broken console falls back to a plain print)."""
    try:
        from igan.console import error

        error(message, hint)
    except Exception:  # noqa: BLE001
        try:
            print(f"error: {message}", file=sys.stderr)
            if hint:
                print(f"hint: {hint}", file=sys.stderr)
        except Exception:  # noqa: BLE001 - stderr itself is gone: the exit code still tells
            pass


def _report_unexpected(exc: BaseException) -> int:
    """The last-resort handler: one line naming the plugin whose hook raised, or saying it is a bug. It
    cannot itself fail: anything going wrong while describing the error falls back to its type name."""
    try:
        message, hint = _failure_message(exc)
    except Exception:  # noqa: BLE001 - an exception whose str() raises, a plugin registry in pieces, ...
        message, hint = type(exc).__name__, ("this looks like a bug in igan; rerun with IGAN_DEBUG=1 for the "
                                             "traceback and report it")
    _report(message, hint)
    return 1


def _failure_message(exc: BaseException) -> tuple[str, str]:
    """An unexpected exception in one line: the plugin whose hook raised it when a hook was running
    (pluggy knows the implementation), else a bug in igan. ``igan.plugins`` is loaded already (the app
    is built from it), so this imports nothing new."""
    from igan.plugins import hook_failure

    what = f"{type(exc).__name__}: {exc}"
    failure = hook_failure(exc)
    if failure is None or failure.plugin == "core":
        return what, "this looks like a bug in igan; rerun with IGAN_DEBUG=1 for the traceback and report it"
    info = failure.info
    if info is not None and info.builtin:
        return (f"built-in plugin {failure.plugin} failed in {failure.hook}: {what}",
                f"this looks like a bug in igan's {failure.plugin} plugin; rerun with IGAN_DEBUG=1 for the "
                f"traceback and report it, or run without it (--disable-plugin {failure.plugin})")
    package = f"package {info.package} {info.version}" if info is not None else "its package"
    return (f"plugin {failure.plugin} failed in {failure.hook}: {what}",
            f"the error is in the plugin ({package}), not in igan: report it to the plugin's authors, or run "
            f"without it (--disable-plugin {failure.plugin}); IGAN_DEBUG=1 shows the traceback")


def _usage_hint(exc: Exception) -> str:
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "igan"
    return f"run `{path} --help` for the options"
