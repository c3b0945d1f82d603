"""Whole-step capture (igan.capture) as far as a CPU can check it: when it is selected, which plugins
may be captured and the messages of a refusal, the capturable form of the reference Adam, and the
plumbing of ``CapturedStep`` (warm-up, static inputs, outputs copied out, the first-use check, the
eager fallback) with a stand-in for the CUDA graph API that runs on the CPU. What only a GPU can
show (the graph really replays the step) is in tests/test_cuda.py."""

from __future__ import annotations

import contextlib
import json
import types

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY
from igan import capture
from igan.optim import ReferenceAdam


class FakeGraphs:
    """``igan.capture.CudaGraphs`` on the CPU. "Capturing" runs the step once (so the fake's first replay
    does nothing); each later replay runs it again and writes its outputs into the static outputs in
    place, as a CUDA graph does. ``fail``: capturing raises; ``corrupt``: the first replay runs the step
    once more (a captured step that computes something other than the eager one)."""

    def __init__(self, fail: bool = False, corrupt: bool = False) -> None:
        self.fail, self.corrupt = fail, corrupt
        self.captures = self.replays = self.warm_steps = 0

    def supports(self, device):
        return True

    def stream(self, device):
        return "side stream"

    @contextlib.contextmanager
    def side_stream(self, stream):
        self.warm_steps += 1
        yield

    def hand_over(self, tensors):
        pass

    def capture(self, fn, stream):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures += 1
        out = fn()
        return {"fn": fn, "out": out, "fresh": True}, out

    def replay(self, graph):
        self.replays += 1
        if graph["fresh"] and not self.corrupt:
            graph["fresh"] = False
            return
        new = capture._tensors(graph["fn"]())
        for static, value in zip(capture._tensors(graph["out"]), new):
            static.copy_(value)

    def rng_state(self, device):
        return torch.get_rng_state()

    def set_rng_state(self, state, device):
        torch.set_rng_state(state)


@pytest.fixture
def fake(monkeypatch):
    backend = FakeGraphs()
    monkeypatch.setattr(capture, "BACKEND", backend)
    return backend


def _semisup(run_cli, out, *flags, steps=8, env=None):
    code, stdout, err = run_cli(["semisup", "--dataset", "digits", "--steps", str(steps), *TINY, "--no-baseline",
                                 "--out", str(out), *flags], env=env)
    return code, stdout, err


def _assert_close_checkpoints(a_path, b_path):
    a, b = load_file(str(a_path)), load_file(str(b_path))
    assert set(a) == set(b)
    for key in a:
        if a[key].is_floating_point():
            # the capturable Adam forms its bias corrections on the device: last-bit differences only
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key


def _ckpt(path):
    return path / "checkpoints" / "last.safetensors"


# ----------------------------------------------------------------------------------------------
# selection and refusals


def test_capture_is_selected_only_on_cuda_with_the_fast_path(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("IGAN_CAPTURE", raising=False)
    assert capture.capture_mode() == "auto"
    assert not capture.select(cpu, True)  # a CPU never captures (no fake backend here)
    monkeypatch.setattr(capture.BACKEND, "supports", lambda device: device.type == "cuda")
    assert capture.select(cuda, True)
    assert not capture.select(cuda, False)  # --no-fast-path: eager
    for value, mode in (("0", "off"), ("off", "off"), ("1", "on"), ("on", "on"), ("auto", "auto")):
        monkeypatch.setenv("IGAN_CAPTURE", value)
        assert capture.capture_mode() == mode
    monkeypatch.setenv("IGAN_CAPTURE", "0")
    assert not capture.select(cuda, True)


def _build(tmp_path, command="semisup", **options):
    from igan.config import RunConfig
    from igan.options import collect_options
    from igan.plugins import get_plugin_manager
    from igan.train import build_run

    pm = get_plugin_manager()
    opts = collect_options(pm).defaults(command)
    adam = options.pop("adam", "reference")
    opts.update(options)
    config = RunConfig(command=command, dataset="digits", batch_size=10, steps=2, device="cpu", adam=adam,
                       options=opts)
    run = build_run(config, pm, tmp_path / "run")
    pm.hook.igan_train_start(run=run)
    return run


@pytest.mark.parametrize("command,options", [
    ("semisup", {}), ("semisup", {"mbd": True}), ("semisup", {"vbn": True}), ("train", {}),
    ("train", {"fm": True, "ls": True}), ("semisup", {"fm": False}),
    ("semisup", {"pull_away": True, "cond_entropy": True, "low_density": True})],
    ids=["fm", "mbd", "vbn", "gan", "fm-ls", "no-fm", "badgan"])
def test_the_papers_techniques_are_capture_safe(tmp_path, command, options):
    run = _build(tmp_path, command, **options)
    assert capture.refusal([run], [run.opt_g, run.opt_d]) is None


@pytest.mark.parametrize("options,needles", [
    ({"ha": True}, ["historical_averaging", "igan_extra_loss", "capture_safe"]),
    ({"adam": "torch"}, ["--adam torch"]),
    ({"low_density": True, "ld_start": 5}, ["low_density", "capture_safe"])], ids=["ha", "torch-adam", "ld-start"])
def test_refusals_name_the_reason(tmp_path, options, needles):
    run = _build(tmp_path, **options)
    reason = capture.refusal([run], [run.opt_g, run.opt_d])
    assert reason is not None
    for needle in needles:
        assert needle in reason


def test_input_gradient_runs_are_not_captured(tmp_path):
    run = _build(tmp_path)
    run.input_grads = ("x_real",)  # what a plugin's needs_input_grad sets (igan.train)
    assert "needs_input_grad" in capture.refusal([run], [run.opt_g, run.opt_d])


def test_a_third_party_plugin_without_the_declaration_is_refused(tmp_path):
    pytest.importorskip("igan_gen_ema")
    run = _build(tmp_path, "train", g_ema=0.99)
    reason = capture.refusal([run], [run.opt_g, run.opt_d])
    assert "gen_ema" in reason and "igan_after_optimizer_step" in reason


def _host_state(obj, depth=0):
    """What a plugin object holds on the host: plain values as they are, tensors and modules by identity."""
    if isinstance(obj, (torch.Tensor, torch.nn.Module)):
        return ("object", id(obj))
    if isinstance(obj, (int, float, str, bool, type(None))):
        return obj
    if depth > 3:
        return ("object", id(obj))
    if isinstance(obj, dict):
        return {k: _host_state(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_host_state(v, depth + 1) for v in obj]
    if isinstance(obj, types.ModuleType):  # a module-level plugin: its own data only
        return {k: _host_state(v, depth + 1) for k, v in vars(obj).items()
                if not (k.startswith("__") or callable(v) or isinstance(v, types.ModuleType))}
    if hasattr(obj, "__dict__") and not callable(obj):
        return {k: _host_state(v, depth + 1) for k, v in vars(obj).items()}
    return ("object", id(obj))


@pytest.mark.parametrize("command,options", [("semisup", {"mbd": True}), ("train", {"fm": True, "ls": True}),
                                             ("semisup", {"ha": True}),
                                             ("semisup", {"pull_away": True, "cond_entropy": True, "low_density": True})],
                         ids=["semisup-mbd", "train-fm-ls", "ha", "badgan"])
def test_capture_safe_plugins_keep_their_host_state_across_steps(tmp_path, single_thread, command, options):
    """What the declaration promises, checked on real steps: a capture-safe plugin's Python state
    (counters, lists, which tensors it holds) is the same after a step as before it, so running its
    hooks once, at capture, loses nothing. Historical averaging counts on the host, so it changes and
    does not declare itself capture-safe (the test would catch a wrong declaration)."""
    from igan.train import train_step

    run = _build(tmp_path, command, **options)
    train_step(run)
    plugins = [p for p in run.pm.get_plugins() if any(
        impl.plugin is p for name in capture.STEP_HOOKS for impl in getattr(run.pm.hook, name).get_hookimpls())]
    before = {run.pm.get_name(p): _host_state(p) for p in plugins}
    for _ in range(2):
        train_step(run)
    after = {run.pm.get_name(p): _host_state(p) for p in plugins}
    for p in plugins:
        name = run.pm.get_name(p)
        if getattr(p, "capture_safe", False):
            assert after[name] == before[name], name
        else:
            assert after[name] != before[name], name  # why it is not declared capture-safe


# ----------------------------------------------------------------------------------------------
# the capturable reference Adam


def _params(seed=0):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(20, 7)), torch.nn.Parameter(torch.randn(7))]


def test_capturable_adam_is_the_reference_update(single_thread):
    ps, qs = _params(), _params()
    eager, capt = ReferenceAdam(ps, lr=3e-3, betas=(0.5, 0.999)), ReferenceAdam(qs, lr=3e-3, betas=(0.5, 0.999))
    capt.set_capturable(True)
    gen = torch.Generator().manual_seed(1)
    for it in range(12):
        if it == 5:  # the schedule moves the learning rate between steps
            for opt in (eager, capt):
                opt.param_groups[0]["lr"] = 1e-3
        for p, q in zip(ps, qs):
            g = torch.randn(p.shape, generator=gen) * 10.0 ** -(it % 6)  # also gradients far below sqrt(eps)
            p.grad, q.grad = g.clone(), g.clone()
        eager.step()
        capt.step()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(q, p, rtol=2e-6, atol=1e-7)
    assert capt.state[qs[0]]["step"].item() == eager.state[ps[0]]["step"].item() == 12
    # checkpoints look the same in both modes: no group setting, the step count as a float32 scalar
    assert capt.state_dict()["param_groups"] == eager.state_dict()["param_groups"]
    capt.set_capturable(False)
    assert capt.state[qs[0]]["step"].device.type == "cpu" and capt._lr == []


def test_capturable_adam_refuses_step_counts_that_differ_within_a_group():
    ps = _params()
    opt = ReferenceAdam(ps, lr=1e-3)
    ps[0].grad = torch.ones_like(ps[0])
    opt.step()  # only the first tensor has a state (count 1); give the second a count of 2
    ps[0].grad, ps[1].grad = None, torch.ones_like(ps[1])
    opt.step()
    opt.step()
    with pytest.raises(ValueError, match="different step counts"):
        opt.set_capturable(True)


def test_loaded_step_counts_live_on_the_host_for_the_eager_update():
    """A checkpoint loaded onto a GPU brings its step counts there; the eager update reads them on the
    host at every step, so they are moved back (here: a float64 count comes back as float32 on the CPU)."""
    ps = _params()
    opt = ReferenceAdam(ps, lr=1e-3)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    state = opt.state_dict()
    for entry in state["state"].values():
        entry["step"] = entry["step"].double()
    fresh = ReferenceAdam(_params(), lr=1e-3)
    fresh.load_state_dict(state)
    for st in fresh.state.values():
        assert st["step"].dtype == torch.float32 and st["step"].device.type == "cpu"


# ----------------------------------------------------------------------------------------------
# CapturedStep's plumbing, with the CPU stand-in for CUDA graphs


@pytest.mark.parametrize("parallel", [False, True], ids=["single", "batched-parallel"])
def test_a_captured_run_equals_the_eager_run(run_cli, tmp_path, single_thread, fake, monkeypatch, recwarn, parallel):
    # --log-every 4: the loop sums the logged losses over 4 steps, so they must be copies, not the
    # graph's outputs (which the next replay overwrites)
    flags = ["--fast-path", "--mbd", "--log-every", "4"] + (["--seeds", "2", "--parallel"] if parallel else [])
    if parallel:
        monkeypatch.setenv("IGAN_PARALLEL", "batched")
    code, _, err = _semisup(run_cli, tmp_path / "eager", *flags, env={"IGAN_CAPTURE": "0"})
    assert code == 0, err
    assert fake.captures == 0
    code, _, err = _semisup(run_cli, tmp_path / "captured", *flags, env={"IGAN_CAPTURE": "1"})
    assert code == 0, err
    assert not [w for w in recwarn if "igan:" in str(w.message)]
    # 8 steps: 3 warm-up steps, the captured first step (checked against an eager step), 4 replays
    assert (fake.warm_steps, fake.captures, fake.replays) == (capture.WARMUP, 1, 8 - capture.WARMUP)
    for sub in (["seed0", "seed1"] if parallel else [""]):
        a, b = tmp_path / "eager" / sub, tmp_path / "captured" / sub
        _assert_close_checkpoints(_ckpt(a), _ckpt(b))
        lines = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
        ref = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
        assert len(lines) == len(ref) == 3  # 2 logging points and the epoch metrics
        for r, s in zip(lines, ref):  # per-step losses: the outputs are copied out of the graph each step
            assert r.keys() == s.keys()
            for k in r:
                assert r[k] == pytest.approx(s[k], rel=1e-4, abs=1e-5), k


def test_a_failed_capture_falls_back_to_eager_steps(run_cli, tmp_path, single_thread, monkeypatch):
    monkeypatch.setattr(capture, "BACKEND", FakeGraphs(fail=True))
    code, _, err = _semisup(run_cli, tmp_path / "eager", "--fast-path", env={"IGAN_CAPTURE": "0"})
    assert code == 0, err
    with pytest.warns(RuntimeWarning, match="capturing the training step as a CUDA graph failed"):
        code, _, err = _semisup(run_cli, tmp_path / "fallback", "--fast-path", env={"IGAN_CAPTURE": "auto"})
    assert code == 0, err
    _assert_close_checkpoints(_ckpt(tmp_path / "eager"), _ckpt(tmp_path / "fallback"))


def test_a_failed_capture_is_an_error_when_capture_is_forced(run_cli, tmp_path, single_thread, monkeypatch):
    monkeypatch.setattr(capture, "BACKEND", FakeGraphs(fail=True))
    code, out, err = _semisup(run_cli, tmp_path / "r", "--fast-path", env={"IGAN_CAPTURE": "1"})
    assert code == 1 and out == ""
    assert "capturing the training step as a CUDA graph failed" in err and "IGAN_CAPTURE" in err
    assert "Traceback" not in err


def test_a_captured_step_that_differs_from_the_eager_one_is_dropped(run_cli, tmp_path, single_thread, monkeypatch):
    """The first-use check: the captured step's result is compared with an eager step from the same
    state; on a difference the eager result is kept and training goes on eagerly."""
    fake = FakeGraphs(corrupt=True)
    monkeypatch.setattr(capture, "BACKEND", fake)
    code, _, err = _semisup(run_cli, tmp_path / "eager", "--fast-path", env={"IGAN_CAPTURE": "0"})
    assert code == 0, err
    with pytest.warns(RuntimeWarning, match="differs from the eager one"):
        code, _, err = _semisup(run_cli, tmp_path / "checked", "--fast-path", env={"IGAN_CAPTURE": "auto"})
    assert code == 0, err
    assert fake.captures == 1 and fake.replays == 1  # never replayed again
    _assert_close_checkpoints(_ckpt(tmp_path / "eager"), _ckpt(tmp_path / "checked"))


def test_a_refused_plugin_runs_eagerly_with_a_warning(run_cli, tmp_path, single_thread, fake):
    with pytest.warns(RuntimeWarning, match="historical_averaging.*capture_safe"):
        code, _, err = _semisup(run_cli, tmp_path / "r", "--fast-path", "--ha", steps=5,
                                env={"IGAN_CAPTURE": "auto"})
    assert code == 0, err
    assert fake.captures == 0 and fake.replays == 0


def test_a_refused_plugin_is_a_usage_error_when_capture_is_forced(run_cli, tmp_path, fake):
    code, out, err = _semisup(run_cli, tmp_path / "r", "--fast-path", "--ha", steps=2, env={"IGAN_CAPTURE": "1"})
    assert code == 2 and out == ""
    assert "historical_averaging" in err and "hint:" in err and "Traceback" not in err


def test_without_the_fast_path_nothing_is_captured(run_cli, tmp_path, single_thread, fake):
    code, _, err = _semisup(run_cli, tmp_path / "r", "--no-fast-path", steps=5, env={"IGAN_CAPTURE": "1"})
    assert code == 0, err
    assert fake.warm_steps == fake.captures == 0
