"""The hook contract: which hooks fire, in which order, with which arguments, and what their results do.

The order asserted here is the one documented in ``igan/hookspecs.py`` and ``igan/train.py`` (and
``docs/hooks.md``). Every hook spec is covered by the spy test or by a ``test_hook_<name>`` test; the
last test checks that, and that ``docs/hooks.md`` has a heading for every hook.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
import torch
import typer

import igan.plugins
from igan import hookimpl, hookspecs
from igan.checkpoint import load_checkpoint
from igan.config import RunConfig
from igan.errors import IganError
from igan.plugins import get_plugin_manager
from igan.train import build_run, fit, train_step

from conftest import TINY, flags_in, help_panels

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]

# The step and loop hooks the spy implements, in the order they first fire.
SPY_HOOKS = [
    "igan_configure", "igan_modify_models", "igan_train_start", "igan_label_targets",
    "igan_discriminator_loss", "igan_extra_loss", "igan_after_optimizer_step", "igan_generator_loss",
    "igan_log", "igan_epoch_end", "igan_sampling_generator", "igan_checkpoint_tensors", "igan_after_checkpoint",
    "igan_train_end",
]


def make_run(run_dir: Path, *plugins: tuple[str, object], steps: int = 2, **config):
    pm = get_plugin_manager(extra=list(plugins))
    settings = {"dataset": "digits", "batch_size": 10, "device": "cpu", "log_every": 1, **config}
    cfg = RunConfig(steps=steps, **settings)
    return build_run(cfg, pm, run_dir)


class Spy:
    """Records every step/loop hook call; returns None everywhere, so the defaults do the work."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.seen: dict[str, object] = {}

    @hookimpl
    def igan_configure(self, config, pm):
        self.seen["pm"] = pm
        self.seen["config"] = config
        self.calls.append(("igan_configure",))

    @hookimpl
    def igan_modify_models(self, models, config):
        self.seen["models"] = models
        self.calls.append(("igan_modify_models",))

    @hookimpl
    def igan_train_start(self, run):
        self.seen["run"] = run
        self.calls.append(("igan_train_start",))

    @hookimpl
    def igan_label_targets(self, config):
        self.calls.append(("igan_label_targets",))

    @hookimpl
    def igan_discriminator_loss(self, step):
        self.calls.append(("igan_discriminator_loss", step.it))

    @hookimpl
    def igan_generator_loss(self, step):
        self.calls.append(("igan_generator_loss", step.it))

    @hookimpl
    def igan_extra_loss(self, step, net):
        assert step.net == net
        self.calls.append(("igan_extra_loss", net, step.it))

    @hookimpl
    def igan_after_optimizer_step(self, step, net):
        self.seen.setdefault("grad_enabled", set()).add(torch.is_grad_enabled())
        self.calls.append(("igan_after_optimizer_step", net, step.it))

    @hookimpl
    def igan_log(self, run, step, values):
        assert all(isinstance(v, float) for v in values.values())  # host floats, not tensors
        self.calls.append(("igan_log", step, tuple(sorted(values))))

    @hookimpl
    def igan_epoch_end(self, run, epoch):
        self.calls.append(("igan_epoch_end", epoch, run.step))
        return {"spy_score": 0.25}

    @hookimpl
    def igan_sampling_generator(self, run):
        self.calls.append(("igan_sampling_generator", run.step))

    @hookimpl
    def igan_checkpoint_tensors(self, run):
        self.calls.append(("igan_checkpoint_tensors", run.step))

    @hookimpl
    def igan_after_checkpoint(self, run, path):
        assert path.is_file()  # on disk already
        self.calls.append(("igan_after_checkpoint", run.step, path.name))

    @hookimpl
    def igan_train_end(self, run):
        self.calls.append(("igan_train_end", run.step))


def expected_step(it: int, g_steps: int = 1) -> list[tuple]:
    def update(net: str, main_loss: str) -> list[tuple]:
        return [(main_loss, it), ("igan_extra_loss", net, it), ("igan_after_optimizer_step", net, it)]

    return update("D", "igan_discriminator_loss") + g_steps * update("G", "igan_generator_loss")


def test_spy_records_documented_hook_order(tmp_path):
    spy = Spy()
    run = make_run(tmp_path / "run", ("spy", spy), steps=2)
    fit(run, progress=False)

    losses = ("loss/D", "loss/G")
    expected = [("igan_configure",), ("igan_modify_models",), ("igan_label_targets",), ("igan_train_start",)]
    expected += expected_step(0) + [("igan_log", 1, losses)]  # --log-every 1
    expected += expected_step(1) + [("igan_log", 2, losses)]
    # the epoch ends with the last step: its metrics are logged, the grid is drawn, then the checkpoint
    # is written
    expected += [("igan_epoch_end", 1, 2), ("igan_log", 2, ("spy_score",)), ("igan_sampling_generator", 2),
                 ("igan_checkpoint_tensors", 2), ("igan_after_checkpoint", 2, "last.safetensors"),
                 ("igan_train_end", 2)]
    assert spy.calls == expected
    # the spy implements exactly the hooks listed in SPY_HOOKS, all of them real specs
    implemented = sorted(c.name for c in run.pm.get_hookcallers(spy))
    assert implemented == sorted(SPY_HOOKS)
    assert set(SPY_HOOKS) <= set(hookspecs.all_hook_names())
    # arguments are the run's own objects
    assert spy.seen["pm"] is run.pm
    assert spy.seen["config"] is run.config
    assert spy.seen["models"] is run.models
    assert spy.seen["run"] is run
    # igan_after_optimizer_step fires under torch.no_grad()
    assert spy.seen["grad_enabled"] == {False}
    # what igan_epoch_end returns goes to metrics.jsonl
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # metric records carry the same fractional epoch (step / steps per epoch) as the loss records
    assert {"step": 2, "epoch": 2 / run.steps_per_epoch, "spy_score": 0.25} in records


def test_spy_generator_hooks_repeat_g_steps_times(tmp_path):
    spy = Spy()
    run = make_run(tmp_path / "run", ("spy", spy), steps=1, g_steps=2)
    fit(run, progress=False)
    step_calls = [c for c in spy.calls if c[0] in ("igan_discriminator_loss", "igan_generator_loss",
                                                    "igan_extra_loss", "igan_after_optimizer_step")]
    assert step_calls == expected_step(0, g_steps=2)


class ZeroLoss:
    """Overrides one player's main loss with 0 * logits: gradients exist but are all zero."""

    def __init__(self, net: str) -> None:
        self.net = net
        self.calls = 0

    @hookimpl
    def igan_discriminator_loss(self, step):
        if self.net != "D":
            return None
        self.calls += 1
        return 0.0 * (step.d_real.logits.sum() + step.d_fake.logits.sum())

    @hookimpl
    def igan_generator_loss(self, step):
        if self.net != "G":
            return None
        self.calls += 1
        return 0.0 * step.d_fake.logits.sum()


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("net", ["D", "G"])
def test_firstresult_loss_override_is_what_the_step_uses(tmp_path, net):
    # control: with the default losses one step changes both players
    run = make_run(tmp_path / "plain", steps=1)
    g0, d0 = _state(run.generator), _state(run.discriminator)
    train_step(run)
    assert not _same(g0, _state(run.generator))
    assert not _same(d0, _state(run.discriminator))

    # with a plugin's zero loss for `net`, that player's weights do not move; the other's still do
    plugin = ZeroLoss(net)
    run = make_run(tmp_path / "override", ("zero", plugin), steps=1)
    g0, d0 = _state(run.generator), _state(run.discriminator)
    logs = train_step(run)
    assert plugin.calls == 1
    assert float(logs[f"loss/{net}"]) == 0.0
    assert _same(d0, _state(run.discriminator)) == (net == "D")
    assert _same(g0, _state(run.generator)) == (net == "G")


class Typo:
    @hookimpl
    def igan_generator_los(self, step):  # misspelt on purpose
        return None


def test_misspelt_hook_is_an_error_naming_plugin_and_function():
    with pytest.raises(IganError) as info:
        get_plugin_manager(extra=[("typo_plugin", Typo())])
    message = str(info.value)
    assert "typo_plugin" in message
    assert "igan_generator_los" in message
    assert info.value.hint


def test_misspelt_hook_registered_during_configure_is_refused(tmp_path):
    class Registers:
        @hookimpl
        def igan_configure(self, config, pm):
            pm.register(Typo(), "registers.run")

    with pytest.raises(IganError) as info:
        make_run(tmp_path / "run", ("registers", Registers()), steps=1)
    assert "registers.run" in str(info.value)
    assert "igan_generator_los" in str(info.value)


# ------------------------------------------------------------------------------------------------
# hooks outside the training step


def _with_extra_plugins(monkeypatch, *plugins: tuple[str, object]) -> None:
    """Make every plugin manager the CLI builds include ``plugins`` (as if they were installed)."""
    real = igan.plugins.get_plugin_manager

    def patched(**kwargs):
        return real(**{**kwargs, "extra": [*kwargs.get("extra", ()), *plugins]})

    monkeypatch.setattr(igan.plugins, "get_plugin_manager", patched)


class OptionPlugin:
    def __init__(self) -> None:
        self.configured: list[dict] = []

    @hookimpl
    def igan_addoption(self, parser):
        parser.add("spy_level", int, 3, min=0, help="how closely the spy watches")

    @hookimpl
    def igan_configure(self, config, pm):
        self.configured.append(dict(config.options))


def test_hook_igan_addoption(tmp_path, monkeypatch, run_cli):
    from igan.options import collect_options

    parser = collect_options(get_plugin_manager(extra=[("spy", OptionPlugin())]))
    spec = parser.options["spy_level"]
    assert spec.plugin == "spy"
    assert spec.resolved_panel() == "Plugin: spy"
    assert parser.options["mbd"].resolved_panel() == "Techniques"
    assert parser.defaults("train")["spy_level"] == 3

    plugin = OptionPlugin()
    _with_extra_plugins(monkeypatch, ("spy", plugin))
    code, out, err = run_cli(["train", "--help"])
    assert code == 0, err
    panels = help_panels(out)
    assert "--spy-level" in flags_in(panels["Plugin: spy"])
    assert "--spy-level" not in flags_in(panels["Techniques"])

    code, out, err = run_cli(["train", "--steps", "1", *TINY, "--out", tmp_path / "run", "--spy-level", "7"])
    assert code == 0, err
    assert plugin.configured and all(opts["spy_level"] == 7 for opts in plugin.configured)


def test_hook_igan_register_datasets(tmp_path):
    from igan.datasets import DatasetSpec, dataset_registry
    from igan.datasets.digits import load_digits

    loaded: list[tuple] = []

    def load_small(data_dir, download):
        loaded.append((data_dir, download))
        full = load_digits(None, False)
        return replace(full, name="small_digits", x_train=full.x_train[:100], y_train=full.y_train[:100])

    class Datasets:
        @hookimpl
        def igan_register_datasets(self, register):
            register(DatasetSpec("small_digits", load_small, "digits_mlp", "100 digits"))

    run = make_run(tmp_path / "run", ("datasets", Datasets()), steps=1, dataset="small_digits",
                   data_dir=str(tmp_path / "data"))
    assert loaded == [(tmp_path / "data", False)]
    assert run.dataset.x_train.shape[0] == 100
    assert run.steps_per_epoch == 10
    train_step(run)

    class Duplicate:
        @hookimpl
        def igan_register_datasets(self, register):
            register(DatasetSpec("digits", load_small, "digits_mlp", "a second digits"))

    with pytest.raises(IganError, match="digits"):
        dataset_registry(get_plugin_manager(extra=[("dup", Duplicate())]))


def test_hook_igan_register_models(tmp_path):
    from igan.models import ModelDef, build_mlp
    from igan.train import model_registry

    class Models:
        @hookimpl
        def igan_register_models(self, register):
            register(ModelDef("tiny_mlp", build_mlp, {"g_hidden": (16,), "d_hidden": (24,), "z_dim": 4},
                              {"batch_size": 10, "lr": 0.001, "epochs": 1}, "a tiny pair"))

    run = make_run(tmp_path / "run", ("models", Models()), steps=1, model="tiny_mlp", batch_size=None)
    assert run.model_def.name == "tiny_mlp"
    assert run.models.z_dim == 4
    assert run.config.batch_size == 10 and run.config.lr == 0.001  # the entry's training defaults
    train_step(run)

    class Duplicate:
        @hookimpl
        def igan_register_models(self, register):
            register(ModelDef("digits_mlp", build_mlp))

    with pytest.raises(IganError, match="digits_mlp"):
        model_registry(get_plugin_manager(extra=[("dup", Duplicate())]))


def test_hook_igan_register_metrics(monkeypatch, run_cli):
    # The spec: metrics registered here are offered by `igan evaluate` (its help lists them).
    calls = []

    class Metrics:
        @hookimpl
        def igan_register_metrics(self, register):
            calls.append(register)
            register("spy_metric", lambda images, context: {"mean": 0.0}, "a metric of the spy")

    _with_extra_plugins(monkeypatch, ("metrics", Metrics()))
    code, out, err = run_cli(["evaluate", "--help"])
    assert code == 0, f"`igan evaluate` is missing: nothing calls igan_register_metrics\n{err}"
    assert calls, "igan_register_metrics was never called"
    assert "spy_metric" in out


def test_hook_igan_register_commands(monkeypatch, run_cli):
    class Commands:
        @hookimpl
        def igan_register_commands(self, register):
            def hello(name: Annotated[str, typer.Option("--name", help="who to greet")] = "world") -> None:
                """Greet someone."""
                print(f"hello {name}")

            register("hello", hello)

    _with_extra_plugins(monkeypatch, ("commands", Commands()))
    code, out, err = run_cli(["hello", "--name", "gan"])
    assert (code, out) == (0, "hello gan\n"), err
    code, out, err = run_cli(["--help"])
    assert code == 0 and re.search(r"\bhello\b", out)


class Counter:
    """A stateful plugin: counts D updates, saves the count, restores it on resume."""

    def __init__(self) -> None:
        self.n = 0
        self.events: list = []

    @hookimpl
    def igan_train_start(self, run):
        self.events.append("train_start")

    @hookimpl
    def igan_after_optimizer_step(self, step, net):
        if net == "D":
            if not self.events or self.events[-1] != "step":
                self.events.append("step")
            self.n += 1

    @hookimpl
    def igan_checkpoint_tensors(self, run):
        return {"n": torch.tensor(self.n)}

    @hookimpl
    def igan_restore_tensors(self, run, tensors):
        self.events.append(("restore", {k: int(v) for k, v in tensors.items()}))
        self.n = int(tensors["n"])


def test_hook_igan_restore_tensors(tmp_path):
    first = Counter()
    run = make_run(tmp_path / "run", ("counter", first), steps=2)
    fit(run, progress=False)
    ckpt = tmp_path / "run" / "checkpoints" / "last.safetensors"
    tensors, _ = load_checkpoint(ckpt)
    assert int(tensors["plugin.counter.n"]) == 2  # checkpoint_tensors names are prefixed with the plugin

    second = Counter()
    run = make_run(tmp_path / "run", ("counter", second), steps=3)
    fit(run, resume=ckpt, progress=False)
    # restored after train_start and before the first step, with the names unprefixed
    assert second.events == ["train_start", ("restore", {"n": 2}), "step"]
    assert second.n == 3
    tensors, _ = load_checkpoint(ckpt)
    assert int(tensors["plugin.counter.n"]) == 3


class Constant(torch.nn.Module):
    """A "generator" whose every output pixel is ``value``: [N, *image_shape]."""

    def __init__(self, image_shape, value: float) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.value = value

    def forward(self, z):
        return torch.full((z.shape[0], *self.image_shape), self.value, device=z.device)


def test_hook_igan_sampling_generator(tmp_path):
    from PIL import Image

    from igan.images import make_grid

    class Sampler:
        """Returns a constant generator for training-time samples."""

        def __init__(self) -> None:
            self.module: Constant | None = None
            self.calls: list[int] = []

        @hookimpl
        def igan_train_start(self, run):
            lo, hi = run.dataset.value_range
            self.module = Constant(run.dataset.image_shape, lo + 0.25 * (hi - lo))

        @hookimpl
        def igan_sampling_generator(self, run):
            self.calls.append(run.step)
            return self.module

    class Abstains:  # registered later, so asked first: None lets the next implementation decide
        def __init__(self) -> None:
            self.calls = 0

        @hookimpl
        def igan_sampling_generator(self, run):
            self.calls += 1

    sampler, abstains = Sampler(), Abstains()
    run = make_run(tmp_path / "run", ("sampler", sampler), ("abstains", abstains), steps=2)
    g0 = _state(run.generator)
    fit(run, progress=False)
    assert sampler.calls == [2] and abstains.calls == 1  # once, for the epoch-end grid
    assert not _same(g0, _state(run.generator))  # G itself trained as usual

    fixed = run.fixed_z.shape[0]
    with torch.no_grad():
        constant = run.dataset.to_uint8(sampler.module(run.fixed_z)).cpu()
        from_g = run.dataset.to_uint8(run.generator(run.fixed_z)).cpu()
    expected = make_grid(constant)[..., 0]
    png = np.asarray(Image.open(tmp_path / "run" / "samples" / "epoch_0001.png"))
    factor = png.shape[0] // expected.shape[0]  # small images are upscaled
    assert png.shape == (expected.shape[0] * factor, expected.shape[1] * factor)
    assert np.array_equal(png[::factor, ::factor], expected)
    assert len(np.unique(expected)) == 2  # the constant pixels, and the black padding
    assert not np.array_equal(png[::factor, ::factor], make_grid(from_g)[..., 0])
    # Run.generate, also outside the epoch end, draws from the module too
    assert torch.equal(run.generate(fixed, run.fixed_z), constant)
    assert sampler.calls == [2, 2]

    # without an implementation that returns a module, Run.generate draws from G
    plain = make_run(tmp_path / "plain", ("abstains", Abstains()), steps=1)
    with torch.no_grad():
        assert torch.equal(plain.generate(fixed, plain.fixed_z),
                           plain.dataset.to_uint8(plain.generator(plain.fixed_z)).cpu())


def test_hook_igan_prepare_inference(tmp_path):
    from igan.restore import restore_models

    class Stamp:
        """Saves a tensor with every checkpoint; at inference, replaces G by a constant generator."""

        def __init__(self) -> None:
            self.received: list[dict] = []

        @hookimpl
        def igan_checkpoint_tensors(self, run):
            return {"value": torch.tensor(0.5), "marker.0": torch.arange(3.0)}

        @hookimpl
        def igan_prepare_inference(self, models, config, tensors):
            # the checkpoint's weights are already loaded
            saved = {k[len("G."):]: v for k, v in load_checkpoint(ckpt)[0].items() if k.startswith("G.")}
            self.received.append({"tensors": dict(tensors), "config": config,
                                  "loaded": _same(_state(models.generator), saved)})
            models.generator = Constant(models.generator.image_shape, float(tensors["value"]))

    class Other:  # saves nothing: gets an empty dict, never another plugin's tensors
        def __init__(self) -> None:
            self.received: list[dict] = []

        @hookimpl
        def igan_prepare_inference(self, tensors):
            self.received.append(dict(tensors))

    stamp, other = Stamp(), Other()
    run = make_run(tmp_path / "run", ("stamp", stamp), ("other", other), steps=1)
    fit(run, progress=False)
    assert stamp.received == [] and other.received == []  # training and checkpoints do not fire it
    ckpt = tmp_path / "run" / "checkpoints" / "last.safetensors"
    tensors, _ = load_checkpoint(ckpt)
    assert float(tensors["plugin.stamp.value"]) == 0.5

    pm = get_plugin_manager(extra=[("stamp", stamp), ("other", other)])
    restored = restore_models(ckpt, "cpu", pm=pm)
    (got,) = stamp.received
    assert got["tensors"].keys() == {"value", "marker.0"}  # exactly its own tensors, prefix removed
    assert torch.equal(got["tensors"]["marker.0"], torch.arange(3.0))
    assert got["config"] is restored.config and got["config"].dataset == "digits"
    assert got["loaded"]
    assert other.received == [{}]
    # what the hook assigned is what `igan sample` / `igan evaluate` draw from
    assert isinstance(restored.models.generator, Constant)
    images = torch.cat(list(restored.generate(4, seed=0)))
    assert torch.equal(images, restored.to_uint8(torch.full((4, *run.dataset.image_shape), 0.5)))


def test_worked_plugin_of_hooks_md_runs(tmp_path, monkeypatch):
    """The mini plugin of docs/hooks.md works as the page says: off by default, a logged D term when on."""
    import importlib

    docs = (REPO / "docs" / "hooks.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- worked-plugin: (\w+)\.py -->\s*```python\n(.*?)```", docs, flags=re.S)
    assert m, "docs/hooks.md has no worked plugin block"
    module_name, code = m.group(1), m.group(2)
    (tmp_path / f"{module_name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module_name, raising=False)
    plugin = importlib.import_module(module_name)
    try:
        from igan.options import collect_options

        parser = collect_options(get_plugin_manager(extra=[("drift", plugin)]))
        assert parser.options["drift"].resolved_panel() == "Plugin: drift"

        run = make_run(tmp_path / "off", ("drift", plugin), steps=1, options={"drift": 0.0})
        assert "loss/D/drift" not in train_step(run)

        run = make_run(tmp_path / "on", ("drift", plugin), steps=1, options={"drift": 0.5})
        logs = train_step(run)
        assert float(logs["loss/D/drift"]) > 0
        assert "loss/G/drift" not in logs
    finally:
        sys.modules.pop(module_name, None)


def test_hook_igan_density_model(tmp_path):
    """A plugin's density model replaces the built-in one: the low-density term uses its log_prob, its
    threshold is the --ld-quantile of log p over the training images, and a model without state() is
    not saved (it is asked for again on resume)."""

    class Quadratic:
        """log p(x) = -sum (x - 0.5)^2: high for G's first samples (sigmoid outputs near 0.5)."""

        def log_prob(self, x):
            return -(x.flatten(1) - 0.5).square().sum(1)

    class Provider:
        def __init__(self) -> None:
            self.calls = 0

        @hookimpl
        def igan_density_model(self, run):
            self.calls += 1
            return Quadratic()

    provider = Provider()
    run = make_run(tmp_path, ("density", provider), steps=3, command="semisup",
                   options={"low_density": True, "ld_weight": 0.5, "ld_quantile": 0.5})
    fit(run, progress=False)
    assert provider.calls == 1
    plugin = run.pm.get_plugin("low_density.run")
    x = run.dataset.to_float(run.dataset.x_train)
    want = torch.quantile(Quadratic().log_prob(x).double(), 0.5).float()
    assert plugin.threshold.item() == pytest.approx(want.item(), rel=1e-6)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    ld = [r["loss/G/ld"] for r in records if "loss/G/ld" in r]
    assert ld and ld[0] > 0
    tensors, _ = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    assert "plugin.low_density.run.threshold" in tensors
    assert not any(k.startswith("plugin.low_density.run.model.") for k in tensors)


# ------------------------------------------------------------------------------------------------
# every hook is documented and tested


def test_every_hook_is_documented_and_tested():
    names = hookspecs.all_hook_names()
    assert len(names) >= 17 and all(n.startswith("igan_") for n in names)
    docs = (REPO / "docs" / "hooks.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (igan_\w+)\s*$", docs, flags=re.M))
    assert not set(names) - headings, f"hooks without a heading in docs/hooks.md: {set(names) - headings}"
    assert not headings - set(names), f"docs/hooks.md documents unknown hooks: {headings - set(names)}"
    source = Path(__file__).read_text(encoding="utf-8")
    untested = [n for n in names if n not in SPY_HOOKS and f"def test_hook_{n}(" not in source]
    assert not untested, f"hooks without a test: {untested}"


class EndRecorder:
    """Records igan_train_end's `completed`; optionally fails in a hook or in train_end itself."""

    def __init__(self, fail_at_step: int | None = None, fail_in_end: bool = False) -> None:
        self.ends: list[tuple[bool, int]] = []
        self.fail_at_step = fail_at_step
        self.fail_in_end = fail_in_end

    @hookimpl
    def igan_log(self, run, step, values):
        if step == self.fail_at_step:
            raise RuntimeError("plugin failed mid-training")

    @hookimpl
    def igan_train_end(self, run, completed):
        self.ends.append((completed, run.step))
        if self.fail_in_end:
            raise OSError("could not close the logger")


def test_train_end_reports_completion(tmp_path) -> None:
    rec = EndRecorder()
    fit(make_run(tmp_path, ("rec", rec), steps=2), progress=False)
    assert rec.ends == [(True, 2)]


def test_train_end_fires_when_training_stops_early(tmp_path) -> None:
    rec = EndRecorder(fail_at_step=2)
    with pytest.raises(RuntimeError, match="plugin failed mid-training"):
        fit(make_run(tmp_path, ("rec", rec), steps=4), progress=False)
    assert rec.ends == [(False, 2)]


def test_train_end_failure_after_an_early_stop_does_not_hide_the_error(tmp_path) -> None:
    rec = EndRecorder(fail_at_step=1, fail_in_end=True)
    with pytest.warns(RuntimeWarning, match="could not close the logger"):
        with pytest.raises(RuntimeError, match="plugin failed mid-training"):
            fit(make_run(tmp_path, ("rec", rec), steps=3), progress=False)
    assert rec.ends == [(False, 1)]


def test_train_end_after_ctrl_c_sees_the_saved_step(tmp_path) -> None:
    import os
    import signal

    class CtrlC(EndRecorder):
        @hookimpl
        def igan_log(self, run, step, values):
            if step == 2:  # the user presses Ctrl-C (a real SIGINT; a plugin's own KeyboardInterrupt is a fault)
                os.kill(os.getpid(), signal.SIGINT)

    rec = CtrlC()
    run = make_run(tmp_path, ("rec", rec), steps=5)
    with pytest.raises(KeyboardInterrupt):
        fit(run, progress=False)
    assert rec.ends == [(False, 2)]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")[1]["step"] == 2
