"""What only a GPU can show, marked ``cuda`` (skipped without a CUDA device; CI and the development
machines have none, ``benchmarks/device_check.py`` runs these on a GPU machine):

- the fast path's steps equal eager steps (``torch.compile`` at float32 matmul precision: float
  rounding; with TF32: the first step's losses within TF32's precision; D without its noise layers,
  whose random numbers compiled code draws in its own way);
- the whole step captured as a CUDA graph equals the eager step, for one run and for the batched
  ``--parallel`` step, and a captured run resumes exactly as it trains straight through;
- checkpoints written on CUDA load on the CPU and back;
- ``--parallel`` batched on CUDA equals the single-seed runs;
- no host synchronisation inside the step (``torch.cuda.set_sync_debug_mode("error")``).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from igan import capture

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("single_thread")]

CUDA = ["--batch-size", "10", "--device", "cuda", "--log-every", "4"]


def _semisup(run_cli, out, *flags, steps=8, env=None):
    code, stdout, err = run_cli(["semisup", "--dataset", "digits", "--steps", str(steps), *CUDA, "--no-baseline",
                                 "--out", str(out), *flags], env=env)
    assert code == 0, err
    return stdout


def _ckpt(run_dir):
    return run_dir / "checkpoints" / "last.safetensors"


def _assert_close(a_path, b_path, rtol=1e-4, atol=1e-5):
    a, b = load_file(str(a_path)), load_file(str(b_path))
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key


def _assert_close_metrics(a_dir, b_dir, rel=1e-4):
    a = [json.loads(x) for x in (a_dir / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (b_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(a) == len(b) > 1
    for r, s in zip(a, b):
        assert r.keys() == s.keys()
        for k in r:
            assert r[k] == pytest.approx(s[k], rel=rel, abs=1e-5), k


class CountingGraphs(capture.CudaGraphs):
    """The real CUDA backend, counting captures and replays (so a test knows the graph really ran)."""

    def __init__(self):
        self.captures = self.replays = 0

    def capture(self, fn, stream):
        self.captures += 1
        return super().capture(fn, stream)

    def replay(self, graph):
        self.replays += 1
        super().replay(graph)


@pytest.fixture
def graphs(monkeypatch):
    backend = CountingGraphs()
    monkeypatch.setattr(capture, "BACKEND", backend)
    return backend


# ----------------------------------------------------------------------------------------------
# the fast path


def _steps(fast: bool, steps: int, tmp_path, highest: bool):
    from igan.config import RunConfig
    from igan.options import collect_options
    from igan.plugins import get_plugin_manager
    from igan.train import build_run, train_step

    pm = get_plugin_manager()
    # no noise layers: compiled code draws its own random numbers (inductor's), so noisy steps differ
    config = RunConfig(command="semisup", dataset="digits", batch_size=10, steps=steps, device="cuda", seed=0,
                       fast_path=fast, model_kwargs={"noise": False}, options=collect_options(pm).defaults("semisup"))
    run = build_run(config, pm, tmp_path / f"fast{fast}")
    if highest:
        torch.set_float32_matmul_precision("highest")  # the fast path asked for TF32; compare at float32
    pm.hook.igan_train_start(run=run)
    losses = []
    for i in range(steps):
        torch.manual_seed(100 + i)  # the same z and noise on both sides
        losses.append({k: float(v) for k, v in train_step(run).items()})
        run.step += 1
    return losses, [p.detach().cpu() for p in [*run.generator.parameters(), *run.discriminator.parameters()]]


def test_fast_path_steps_equal_eager_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("IGAN_COMPILE", "1")  # compile for real, and fail rather than fall back
    try:
        eager, eager_params = _steps(False, 3, tmp_path, highest=True)
        fast, fast_params = _steps(True, 3, tmp_path, highest=True)
        for a, b in zip(eager, fast):
            for k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), k
        for a, b in zip(eager_params, fast_params):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        tf32, _ = _steps(True, 1, tmp_path, highest=False)  # TF32 matmuls: 10-bit mantissas
        for k in eager[0]:
            assert tf32[0][k] == pytest.approx(eager[0][k], rel=2e-2, abs=1e-3), k
    finally:
        torch.set_float32_matmul_precision("highest")


# ----------------------------------------------------------------------------------------------
# whole-step capture


@pytest.mark.parametrize("flags", [[], ["--mbd"], ["--vbn"]], ids=["fm", "mbd", "vbn"])
def test_captured_step_equals_the_eager_step(run_cli, tmp_path, graphs, flags):
    _semisup(run_cli, tmp_path / "eager", "--fast-path", *flags, env={"IGAN_CAPTURE": "0"})
    assert graphs.replays == 0
    _semisup(run_cli, tmp_path / "captured", "--fast-path", *flags, env={"IGAN_CAPTURE": "1"})
    assert graphs.captures == 1 and graphs.replays == 8 - capture.WARMUP
    _assert_close(_ckpt(tmp_path / "eager"), _ckpt(tmp_path / "captured"))
    _assert_close_metrics(tmp_path / "eager", tmp_path / "captured")


def test_captured_plain_gan_with_a_learning_rate_schedule(run_cli, tmp_path, graphs):
    """igan train with the learning rate moving every epoch (the graph reads it from the device)."""
    runs = {}
    for mode in ("0", "1"):
        out = tmp_path / f"capture{mode}"
        code, _, err = run_cli(["train", "--dataset", "digits", "--epochs", "3", "--batch-size", "300", "--device",
                                "cuda", "--fast-path", "--lr-decay-from", "1", "--out", str(out)],
                               env={"IGAN_CAPTURE": mode})
        assert code == 0, err
        runs[mode] = out
    assert graphs.captures == 1 and graphs.replays > 0
    _assert_close(_ckpt(runs["0"]), _ckpt(runs["1"]))


def test_captured_batched_parallel_step_equals_the_uncaptured_one(run_cli, tmp_path, graphs, monkeypatch):
    monkeypatch.setenv("IGAN_PARALLEL", "batched")
    _semisup(run_cli, tmp_path / "eager", "--fast-path", "--seeds", "3", "--parallel", env={"IGAN_CAPTURE": "0"})
    _semisup(run_cli, tmp_path / "captured", "--fast-path", "--seeds", "3", "--parallel", env={"IGAN_CAPTURE": "1"})
    assert graphs.captures == 1 and graphs.replays == 8 - capture.WARMUP
    for seed in range(3):
        a, b = tmp_path / "eager" / f"seed{seed}", tmp_path / "captured" / f"seed{seed}"
        _assert_close(_ckpt(a), _ckpt(b))
        _assert_close_metrics(a, b)


def test_a_captured_run_resumes_as_it_trains_straight_through(run_cli, tmp_path, graphs):
    env = {"IGAN_CAPTURE": "1"}
    _semisup(run_cli, tmp_path / "straight", "--fast-path", steps=12, env=env)
    _semisup(run_cli, tmp_path / "part", "--fast-path", steps=6, env=env)
    code, _, err = run_cli(["semisup", "--dataset", "digits", "--steps", "12", *CUDA, "--no-baseline", "--fast-path",
                            "--resume", str(_ckpt(tmp_path / "part"))], env=env)
    assert code == 0, err
    _assert_close(_ckpt(tmp_path / "straight"), _ckpt(tmp_path / "part"))


# ----------------------------------------------------------------------------------------------
# checkpoints across devices, --parallel, host synchronisation


def test_cuda_checkpoints_load_on_the_cpu_and_back(run_cli, tmp_path):
    from igan.checkpoint import load_checkpoint
    from igan.restore import restore_models

    _semisup(run_cli, tmp_path / "gpu", steps=3)
    ckpt = _ckpt(tmp_path / "gpu")
    tensors, _ = load_checkpoint(ckpt, "cpu")
    restored = restore_models(ckpt, "cpu")
    for name, value in restored.models.discriminator.state_dict().items():
        assert value.device.type == "cpu"
        torch.testing.assert_close(value, tensors[f"D.{name}"], rtol=0, atol=0)
    code, _, err = run_cli(["sample", str(ckpt), "-n", "16", "--device", "cpu", "-o", str(tmp_path / "s.png")])
    assert code == 0, err
    code, _, err = run_cli(["semisup", "--dataset", "digits", "--steps", "5", "--batch-size", "10", "--device", "cpu",
                            "--no-baseline", "--resume", str(ckpt), "--out", str(tmp_path / "cpu")])
    assert code == 0, err
    back = _ckpt(tmp_path / "cpu")
    assert load_checkpoint(back)[1]["step"] == 5
    code, _, err = run_cli(["semisup", "--dataset", "digits", "--steps", "7", *CUDA, "--no-baseline", "--resume",
                            str(back), "--out", str(tmp_path / "gpu2")])
    assert code == 0, err
    assert load_checkpoint(_ckpt(tmp_path / "gpu2"))[1]["step"] == 7


def test_batched_parallel_on_cuda_equals_single_runs(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("IGAN_PARALLEL", "batched")
    _semisup(run_cli, tmp_path / "par", "--no-fast-path", "--seeds", "2", "--parallel")
    for seed in (0, 1):
        _semisup(run_cli, tmp_path / f"single{seed}", "--no-fast-path", "--seed", str(seed), "--label-seed",
                 str(seed + 1))
        _assert_close(_ckpt(tmp_path / "par" / f"seed{seed}"), _ckpt(tmp_path / f"single{seed}"))
        _assert_close_metrics(tmp_path / "par" / f"seed{seed}", tmp_path / f"single{seed}")


@pytest.mark.parametrize("how", ["eager", "captured", "batched-parallel", "captured-batched-parallel"])
def test_no_host_synchronisation_inside_the_step(tmp_path, monkeypatch, how):
    """A step that waits for the GPU stalls the launch queue; sync debug mode "error" raises at any
    synchronising call (.item(), a blocking copy, ...). 12 steps cross labelled-set reshuffles (the
    labelled stream of 50 digits reshuffles every 5 steps) and, captured, the warm-up and the replays."""
    from igan.config import RunConfig
    from igan.options import collect_options
    from igan.parallel import build_parallel
    from igan.plugins import get_plugin_manager
    from igan.train import OneRun

    captured = how.startswith("captured")
    monkeypatch.setenv("IGAN_CAPTURE", "1" if captured else "0")
    pms = [get_plugin_manager() for _ in range(2)]
    configs = [RunConfig(command="semisup", dataset="digits", batch_size=10, steps=100, device="cuda", seed=s,
                         fast_path=captured, options={**collect_options(pm).defaults("semisup"), "label_seed": s + 1})
               for s, pm in enumerate(pms)]
    if how.endswith("parallel"):
        trainer = build_parallel(configs, pms, [tmp_path / f"r{s}" for s in range(2)], mode="batched")
    else:
        from igan.train import build_run

        trainer = OneRun(build_run(configs[0], pms[0], tmp_path / "r0"))
    for i, run in enumerate(trainer.runs):
        with trainer.active(i):
            run.pm.hook.igan_train_start(run=run)
    trainer.restored()
    steps = capture.WARMUP + 1 if captured else 1  # warm-up and the checked first capture may synchronise
    for _ in range(steps):
        trainer.step()
        for run in trainer.runs:
            run.step += 1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(12):
            trainer.step()
            for run in trainer.runs:
                run.step += 1
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
