"""The plugin contract, hardened (docs/writing-plugins.md, docs/hooks.md, docs/cli.md).

The test plugin package ``tests/plugins/igan-r1`` (not shipped) adds the R1 gradient penalty through the
host's ``needs_input_grad`` mechanism, keeps per-run state in checkpoints, and declares that it does not
affect inference. It is made visible to igan as if it were pip-installed (a ``.dist-info`` with its entry
point), without installing anything.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import uuid
from importlib import metadata
from pathlib import Path

import pytest
import torch

import igan
import igan.plugins
from igan.checkpoint import load_checkpoint

from conftest import TINY, assert_clean_error

pytestmark = pytest.mark.usefixtures("single_thread")

R1_PACKAGE = Path(__file__).parent / "plugins" / "igan-r1"
CKPT = ("checkpoints", "last.safetensors")
ALL_FIVE = ["--fm", "--mbd", "--ha", "--ls", "--vbn"]


def _ckpt(run: Path) -> Path:
    return run.joinpath(*CKPT)


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """``installed(ep_name, module, dist, version, folder=None)``: make a plugin visible to igan as a
    pip-installed distribution would (an entry point in the ``igan`` group), importing from ``folder``."""
    real = metadata.entry_points
    added: list[metadata.EntryPoint] = []
    monkeypatch.setattr(igan.plugins, "_warned", set())

    def entry_points(**params):
        found = real(**params)
        return [*found, *added] if params.get("group") == "igan" else found

    monkeypatch.setattr(metadata, "entry_points", entry_points)

    def install(ep_name: str, module: str, dist: str, version: str = "0.1.0", folder: Path | None = None) -> None:
        if folder is not None:
            monkeypatch.syspath_prepend(str(folder))
        info = tmp_path / "dists" / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[igan]\n{ep_name} = {module}\n")
        added.extend(metadata.PathDistribution(info).entry_points.select(group="igan", name=ep_name))

    def uninstall(ep_name: str) -> None:
        added[:] = [ep for ep in added if ep.name != ep_name]

    install.uninstall = uninstall
    return install


@pytest.fixture
def r1(installed):
    installed("r1", "igan_r1", "igan-r1", folder=R1_PACKAGE)


@pytest.fixture
def source_plugin(installed, tmp_path):
    """``source_plugin(ep_name, source, dist=...)``: a plugin module written in the test."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    modules = []

    def install(ep_name: str, source: str, dist: str = "fake-dist") -> str:
        module = f"{ep_name}_{uuid.uuid4().hex[:8]}"
        (src / f"{module}.py").write_text(textwrap.dedent(source))
        installed(ep_name, module, dist, folder=src)
        modules.append(module)
        return module

    yield install
    for module in modules:
        sys.modules.pop(module, None)


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _assert_same_state(a: Path, b: Path) -> None:
    ta, ma = load_checkpoint(a)
    tb, mb = load_checkpoint(b)
    assert ma["step"] == mb["step"] and ta.keys() == tb.keys()
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"state differs: {differ[:5]}"


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- the done-when: R1 through the new mechanism, with all five techniques ------------------------

def test_r1_with_all_five_techniques_resumes_from_the_checkpoint_alone_bit_exactly(r1, train_cli, run_cli, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_cli(a, "--r1", "2.0", *ALL_FIVE, steps=6)[0] == 0
    code, _, err = train_cli(b, "--r1", "2.0", *ALL_FIVE, steps=3)
    assert code == 0, err
    # no technique flag again: the checkpoint restores the configuration (R1 included)
    code, out, err = run_cli(["train", "--resume", b, "--steps", "6", "--log-every", "1"])
    assert code == 0, err
    assert out == f"{b}\n"
    _assert_same_state(_ckpt(a), _ckpt(b))
    tensors, meta = load_checkpoint(_ckpt(b))
    assert float(tensors["plugin.r1.run.grad_sq_average"]) > 0
    assert meta["plugin_records"]["r1"]["package"] == "igan-r1"
    assert meta["plugin_records"]["r1"]["objects"] == ["r1.run"]
    losses = [r for r in _records(b) if "loss/D" in r]
    assert losses == [r for r in _records(a) if "loss/D" in r]
    assert all(r["loss/D/r1"] > 0 and "r1/grad_sq" in r for r in losses)
    assert json.loads((b / "config.json").read_text())["options"]["r1"] == 2.0


@pytest.mark.parametrize("how", ["flag", "env", "uninstalled"])
def test_resume_refuses_when_the_plugin_is_missing_and_writes_nothing(how, installed, train_cli, run_cli, tmp_path):
    run = tmp_path / "run"
    installed("r1", "igan_r1", "igan-r1", folder=R1_PACKAGE)
    assert train_cli(run, "--r1", "1.0", steps=2)[0] == 0
    before = _snapshot(run)
    args = ["train", "--resume", run, "--steps", "4"]
    if how == "flag":
        code, out, err = run_cli([*args, "--disable-plugin", "r1"])
        assert_clean_error(code, out, err, 1, "plugin 'r1' (igan-r1 0.1.0)", "disabled here", "r1=1.0",
                           "plugin.r1.run", "stop disabling r1", "nothing was written")
    elif how == "env":
        code, out, err = run_cli(args, env={"IGAN_DISABLE_PLUGINS": "r1"})
        assert_clean_error(code, out, err, 1, "plugin 'r1'", "disabled here", "stop disabling r1")
    else:
        installed.uninstall("r1")
        code, out, err = run_cli(args)
        assert_clean_error(code, out, err, 1, "plugin 'r1' (igan-r1 0.1.0)", "not installed here",
                           "pip install igan-r1")
    assert _snapshot(run) == before  # nothing written: checkpoint, config.json, metrics, samples


def test_resume_refuses_a_disabled_builtin_technique(train_cli, run_cli, tmp_path):
    run = tmp_path / "run"
    assert train_cli(run, "--ha", steps=2)[0] == 0
    before = _snapshot(run)
    code, out, err = run_cli(["train", "--resume", run, "--steps", "4", "--disable-plugin", "historical_averaging"])
    assert_clean_error(code, out, err, 1, "plugin 'historical_averaging' (igan 0.1.0)", "disabled here", "ha=True")
    assert _snapshot(run) == before


def test_a_missing_plugin_that_was_not_used_does_not_block_a_resume(r1, train_cli, run_cli, tmp_path):
    run = tmp_path / "run"
    assert train_cli(run, steps=2)[0] == 0  # r1 installed, not switched on
    assert "r1" in json.loads((run / "config.json").read_text())["options"]
    code, out, err = run_cli(["train", "--resume", run, "--steps", "3", "--disable-plugin", "r1"])
    assert code == 0, err
    assert "r1" not in json.loads((run / "config.json").read_text())["options"]


# ---- inference without training-only plugins ------------------------------------------------------

def test_a_checkpoint_of_a_training_only_plugin_samples_and_evaluates_without_it(r1, train_cli, run_cli, tmp_path):
    run = tmp_path / "run"
    assert train_cli(run, "--r1", "1.0", "--ha", steps=2)[0] == 0
    env = {"IGAN_DISABLE_PLUGINS": "r1,historical_averaging"}  # both declare affects_inference = False
    code, out, err = run_cli(["sample", run, "-n", "4", "-o", tmp_path / "g.png"], env=env)
    assert code == 0, err
    assert (tmp_path / "g.png").is_file()


def test_a_missing_plugin_that_changes_the_model_refuses_sample_clearly(train_cli, run_cli, tmp_path):
    run = tmp_path / "run"
    assert train_cli(run, "--mbd", steps=2)[0] == 0
    code, out, err = run_cli(["sample", run, "-o", tmp_path / "g.png"],
                             env={"IGAN_DISABLE_PLUGINS": "minibatch_discrimination"})
    assert_clean_error(code, out, err, 1, "changes the model", "plugin 'minibatch_discrimination'", "disabled here")
    assert not (tmp_path / "g.png").exists()


# ---- flags on resume: restored, compared as resolved values, some may change ---------------------

def test_flags_given_on_resume_must_agree_with_the_checkpoint(train_cli, run_cli, tmp_path):
    run = tmp_path / "run"
    assert train_cli(run, "--fm", steps=2)[0] == 0
    before = _snapshot(run)
    for flags, needle in ((["--g-steps", "2"], "--g-steps 2 (the checkpoint: --g-steps 1)"),
                          (["--adam", "torch"], "--adam torch (the checkpoint: --adam reference)"),
                          (["--no-fm"], "--no-fm (the checkpoint: --fm)")):
        code, out, err = run_cli(["train", "--resume", run, "--steps", "4", *flags])
        assert_clean_error(code, out, err, 2, "differ", needle)
        assert _snapshot(run) == before
    # the same values, however spelt (--wn is the default), and the settings that may change
    code, out, err = run_cli(["train", "--resume", run, "--steps", "4", "--wn", "--fm", "--batch-size", "10",
                              "--log-every", "2", "--device", "cpu", "--lr", "0.001"])
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 4 and config["log_every"] == 2 and config["options"]["fm"] is True
    assert config["lr"] == 0.001  # a lower rate after a non-finite loss: the documented recovery


def test_a_target_below_the_checkpoint_step_is_refused(train_cli, run_cli, tmp_path):
    run = tmp_path / "run"
    assert train_cli(run, steps=4)[0] == 0
    before = _snapshot(run)
    code, out, err = run_cli(["train", "--resume", run, "--steps", "2"])
    assert_clean_error(code, out, err, 2, "at step 4", "--steps 2")
    assert _snapshot(run) == before


def test_resuming_a_finished_run_says_so_and_how_to_extend_it(train_cli, run_cli, tmp_path):
    run = tmp_path / "run"
    assert train_cli(run, steps=2)[0] == 0
    code, out, err = run_cli(["train", "--resume", run, "--json"])  # the run's own target: done
    assert code == 0, err
    assert json.loads(out)["steps"] == 2
    assert "already finished" in err and f"igan train --resume {run} --steps N" in err


def test_resume_accepts_a_run_directory_and_sample_evaluate_report_too(trained_run, run_cli, tmp_path):
    code, out, err = run_cli(["sample", trained_run, "-n", "4", "-o", tmp_path / "g.png"])
    assert code == 0, err
    code, out, err = run_cli(["evaluate", trained_run, "--metric", "classifier-score", "-n", "20", "--json"])
    assert code == 0, err
    assert json.loads(out)["input_kind"] == "checkpoint"
    code, out, err = run_cli(["sample", tmp_path, "-o", tmp_path / "h.png"])
    assert_clean_error(code, out, err, 1, "no checkpoints/last.safetensors")


def test_resume_accepts_a_checkpoint_file_in_report(trained_run, run_cli, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = run_cli(["report", _ckpt(trained_run), "-o", tmp_path / "r.html"])
    assert code == 0, err


def test_ctrl_c_prints_the_command_that_continues(train_cli, run_cli, tmp_path, monkeypatch):
    from igan.optim import ReferenceAdam

    real_step = ReferenceAdam.step
    calls = []

    def step_with_ctrl_c(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, *args, **kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ReferenceAdam, "step", step_with_ctrl_c)
    code, out, err = run_cli(["train", "--steps", "50", *TINY])  # no --out: the name is chosen first
    monkeypatch.setattr(ReferenceAdam, "step", real_step)
    assert code == 130, err
    hint = next(line for line in err.splitlines() if line.startswith("hint:"))
    command = hint.split("continue with: ", 1)[1]
    assert command.startswith("igan train --resume runs/digits-")
    run = Path(command.split()[-1])
    assert _ckpt(run).is_file()
    code, out, err = run_cli(command.split()[1:] + ["--steps", "4"])
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    # after a resume, the summary's seconds cover every segment
    first = summary["segments"][0]["steps"][1]
    assert [s["steps"] for s in summary["segments"]] == [[0, first], [first, 4]]
    assert summary["seconds"] == pytest.approx(sum(s["seconds"] for s in summary["segments"]), abs=0.01)


# ---- --config FILE -----------------------------------------------------------------------------

def test_config_json_of_a_run_re_runs_it_exactly(train_cli, run_cli, tmp_path):
    a = tmp_path / "a"
    assert train_cli(a, "--fm", "--mbd", "--ha", "--lr", "0.002", steps=2)[0] == 0
    code, out, err = run_cli(["train", "--config", a / "config.json", "--out", tmp_path / "b"])
    assert code == 0, err
    _assert_same_state(_ckpt(a), _ckpt(tmp_path / "b"))
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, tmp_path / "b"))
    assert {k: v for k, v in ca.items() if k not in ("out", "given")} == \
        {k: v for k, v in cb.items() if k not in ("out", "given")}


def test_a_toml_config_with_flags_that_win(run_cli, tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('steps = 2\nbatch-size = 10\ndevice = "cpu"\nfm = true\nha_weight = 0.05\nha = true\n'
                   '[model_kwargs]\nwn = true\n')
    code, out, err = run_cli(["train", "--config", cfg, "--steps", "3", "--out", tmp_path / "run"])
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["steps"] == 3 and config["batch_size"] == 10  # the flag wins; the file gives the rest
    assert config["options"]["fm"] is True and config["options"]["ha_weight"] == 0.05
    assert {"fm", "ha", "ha_weight", "steps", "batch_size", "wn"} <= set(config["given"])


@pytest.mark.parametrize("text, name, needles, code_", [
    ("stpes = 2\n", "bad.toml", ["unknown key 'stpes'", "steps"], 2),
    ("steps = 0\n", "bad.toml", ["steps = 0"], 2),
    ("fm_norm = 'l3'\n", "bad.toml", ["fm_norm = 'l3'", "'l3' is not one of 'l2', 'l1'"], 2),
    ("steps: 2\n", "exp.yaml", ["pyyaml"], 2),
    ("steps = \n", "broken.toml", ["not valid toml"], 2),
    ('{"command": "semisup"}', "config.json", ["igan semisup"], 2),
])
def test_config_file_errors_name_the_key(run_cli, tmp_path, text, name, needles, code_):
    if name.endswith(".yaml"):
        try:
            import yaml  # noqa: F401
            pytest.skip("PyYAML is installed: YAML is read")
        except ImportError:
            pass
    cfg = tmp_path / name
    cfg.write_text(text)
    code, out, err = run_cli(["train", "--config", cfg, *TINY, "--out", tmp_path / "run"])
    assert_clean_error(code, out, err, code_, *needles)
    assert not (tmp_path / "run").exists()


def test_config_json_skips_options_of_absent_plugins_its_run_did_not_set(installed, train_cli, run_cli, tmp_path):
    installed("r1", "igan_r1", "igan-r1", folder=R1_PACKAGE)
    assert train_cli(tmp_path / "plain", steps=2)[0] == 0  # r1 installed, unused: config.json records r1 = null
    assert train_cli(tmp_path / "used", "--r1", "1", steps=2)[0] == 0
    installed.uninstall("r1")
    code, out, err = run_cli(["train", "--config", tmp_path / "plain" / "config.json", "--out", tmp_path / "again"])
    assert code == 0, err
    code, out, err = run_cli(["train", "--config", tmp_path / "used" / "config.json", "--out", tmp_path / "no"])
    assert_clean_error(code, out, err, 2, "unknown key 'r1'")


def test_semisup_reads_a_config_file_too(run_cli, tmp_path):
    cfg = tmp_path / "semi.toml"
    cfg.write_text('steps = 2\nbatch_size = 10\ndevice = "cpu"\nlabels = 20\nbaseline = false\n')
    code, out, err = run_cli(["semisup", "--config", cfg, "--out", tmp_path / "run", "--json"])
    assert code == 0, err
    assert json.loads(out)["labels"] == 20
    assert not (tmp_path / "run" / "supervised-only").exists()  # baseline = false came from the file


# ---- "given" vs default, roles, and what the step gives a plugin --------------------------------

def test_an_option_typed_at_its_default_without_its_flag_is_refused(r1, train_cli, tmp_path):
    code, out, err = train_cli(tmp_path / "a", "--ha-weight", "0.01")  # 0.01 is the default
    assert_clean_error(code, out, err, 2, "--ha-weight given without --ha")
    code, out, err = train_cli(tmp_path / "b", "--r1-every", "1")
    assert_clean_error(code, out, err, 2, "--r1-every given without --r1")


SPY = '''
import igan

SEEN = []


class Seen:
    @igan.hookimpl
    def igan_train_start(self, run):
        SEEN.append((run.config.role, run.role, run.parallel and (run.parallel.index, run.parallel.size,
                                                                   run.parallel.mode)))


@igan.hookimpl
def igan_configure(config, pm):
    pm.register(Seen(), "spy.run")
'''


def test_hooks_know_the_role_of_the_run(source_plugin, run_cli, tmp_path):
    module = source_plugin("spy", SPY)
    code, _, err = run_cli(["semisup", "--steps", "2", *TINY, "--baseline", "--out", tmp_path / "s"])
    assert code == 0, err
    assert sys.modules[module].SEEN == [("gan", "gan", None), ("baseline", "baseline", None)]
    sys.modules[module].SEEN.clear()
    code, _, err = run_cli(["train", "--steps", "2", *TINY, "--seeds", "2", "--parallel", "--out", tmp_path / "p"],
                           env={"IGAN_PARALLEL": "interleaved"})
    assert code == 0, err
    assert sys.modules[module].SEEN == [("gan", "gan", (0, 2, "interleaved")), ("gan", "gan", (1, 2, "interleaved"))]


def test_r1_penalty_by_hand_with_the_step_helper():
    """igan.testing.make_step: a hook unit-tested alone. With D(x) = x . w the input gradient is w for every
    sample, so the penalty is (gamma / 2) ||w||^2."""
    sys.path.insert(0, str(R1_PACKAGE))
    try:
        import igan_r1
    finally:
        sys.path.remove(str(R1_PACKAGE))
    w = torch.tensor([[1.0], [-2.0], [0.5]])
    step = igan.testing.make_step(x_real=torch.rand(4, 3), discriminator=lambda x: x @ w, input_grads=("x_real",))
    assert step.x_real.requires_grad and step.d_real.logits.shape == (4, 1)
    terms = igan_r1.R1(gamma=2.0, every=1).igan_extra_loss(step=step, net="D")
    assert float(terms["r1"].detach()) == pytest.approx(0.5 * 2.0 * (1 + 4 + 0.25))
    assert float(step.logs["r1/grad_sq"]) == pytest.approx(5.25)
    terms["r1"].backward()  # differentiable: D would learn from it


def test_fast_path_keeps_the_d_phase_eager_when_a_plugin_needs_input_gradients(r1, tmp_path):
    from igan.compiling import MaybeCompiled
    from igan.config import RunConfig
    from igan.plugins import get_plugin_manager
    from igan.train import build_run

    config = RunConfig(dataset="digits", batch_size=10, device="cpu", steps=1, fast_path=True,
                       options={"r1": 1.0})
    run = build_run(config, get_plugin_manager(), tmp_path)
    assert run.input_grads == ("x_real",)
    assert not isinstance(run.d_exec, MaybeCompiled) and isinstance(run.g_exec, MaybeCompiled)
    plain = build_run(RunConfig(dataset="digits", batch_size=10, device="cpu", steps=1, fast_path=True),
                      get_plugin_manager(), tmp_path)
    assert plain.input_grads == () and isinstance(plain.d_exec, MaybeCompiled)


def test_parallel_batched_mode_refuses_input_gradients_clearly(r1, run_cli, tmp_path):
    code, out, err = run_cli(["train", "--steps", "2", *TINY, "--seeds", "2", "--parallel", "--r1", "1",
                              "--out", tmp_path / "p"], env={"IGAN_PARALLEL": "batched"})
    assert_clean_error(code, out, err, 2, "batched mode", "r1", "IGAN_PARALLEL=interleaved")


# ---- errors in a plugin's hook name the plugin ----------------------------------------------------

FAILING = '''
import igan


class State:
    @igan.hookimpl(specname="igan_extra_loss")
    def penalty(self, step, net):
        raise RuntimeError("penalty exploded")


@igan.hookimpl
def igan_configure(config, pm):
    pm.register(State(), "failing.run")
'''


def test_an_error_in_a_plugins_hook_names_the_plugin_and_its_package(source_plugin, train_cli, tmp_path):
    source_plugin("failing", FAILING, dist="igan-failing")
    code, out, err = train_cli(tmp_path / "run")
    assert_clean_error(code, out, err, 1, "plugin failing failed in igan_extra_loss: RuntimeError: penalty exploded",
                       "igan-failing", "--disable-plugin failing")
    assert "bug in igan" not in err


# ---- igan plugins, progress names, epoch ends ----------------------------------------------------

def test_igan_plugins_shows_the_hooks_of_per_run_objects(r1, run_cli):
    code, out, err = run_cli(["plugins", "--json"])
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert "igan_extra_loss" in rows["historical_averaging"]["run_hooks"]["HistoricalAveraging"]
    assert set(rows["r1"]["run_hooks"]["R1"]) >= {"igan_extra_loss", "igan_restore_tensors"}
    assert rows["r1"]["affects_inference"] is False and rows["minibatch_discrimination"]["affects_inference"]
    code, out, err = run_cli(["plugins"])
    assert code == 0 and "per run (R1)" in err and "extra_loss" in err


def test_progress_names_keep_their_plugin_prefix(r1, train_cli, tmp_path):
    from igan.train import display_names

    assert display_names({"loss/D": 1, "loss/G": 2, "a/grad": 3, "b/grad": 4, "loss/D/ha": 5}) == \
        {"D": 1, "G": 2, "a/grad": 3, "b/grad": 4, "D/ha": 5}
    assert display_names({"loss/D": 1, "D": 2}) == {"loss/D": 1, "D": 2}  # no clash with a plugin's "D"
    code, out, err = train_cli(tmp_path / "run", "--r1", "1")
    assert code == 0, err
    assert "r1/grad_sq=" in err and " grad_sq=" not in err


EPOCHS = '''
import igan

ENDS = []


@igan.hookimpl
def igan_epoch_end(run, epoch):
    ENDS.append((epoch, run.step))
'''


def test_epoch_end_fires_once_per_epoch_across_resumes(source_plugin, run_cli, tmp_path):
    module = source_plugin("ends", EPOCHS)
    run = tmp_path / "run"
    args = ["--batch-size", "500", "--device", "cpu", "--log-every", "1"]  # 1500 digits: 3 steps an epoch
    assert run_cli(["train", "--steps", "2", *args, "--out", run])[0] == 0  # a partial epoch 1 ends at step 2
    assert run_cli(["train", "--resume", run, "--steps", "3"])[0] == 0  # epoch 1 completes: already ended
    assert run_cli(["train", "--resume", run, "--steps", "6"])[0] == 0  # epoch 2
    assert sys.modules[module].ENDS == [(1, 2), (2, 6)]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
