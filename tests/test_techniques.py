"""Integration tests of the built-in technique plugins (feature matching, minibatch discrimination,
historical averaging, one-sided label smoothing, virtual batch norm) through the real training step.

The layer and loss formulas have their own unit tests (test_layers.py, test_losses.py); here every
technique runs inside ``igan.train`` on the embedded digits dataset, and spy plugins (registered with
``get_plugin_manager(extra=...)``) look at the step from the hooks to check what the technique did.
Runs are tiny (``--steps 2 --batch-size 10``) so the whole file stays well under two minutes on 2 cores.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from igan.checkpoint import load_checkpoint
from igan.cli import main
from igan.cli.training import make_config
from igan.restore import restore_models
from igan.config import RunConfig
from igan.layers import (BatchNormNoScale, GaussianNoise, MinibatchDiscrimination, VBNGenerator,
                         VirtualBatchNorm, is_weight_normed)
from igan.models import DOut, sample_z
from igan.options import collect_options
from igan.plugins import get_plugin_manager, hookimpl
from igan.train import LabelTargets, build_run, configure, fit

TECHNIQUES = ("fm", "mbd", "ha", "ls", "vbn")
SUBSETS = [c for r in range(len(TECHNIQUES) + 1) for c in itertools.combinations(TECHNIQUES, r)]


# ----------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The runs are tiny: one intra-op thread is faster than two, above all on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cli_config(tmp_path: Path, command: str = "train", *, steps: int = 2, batch_size: int = 10,
               g_steps: int = 1, g_loss: str = "ns", seed: int = 0, **options) -> RunConfig:
    """A RunConfig built the way the CLI builds it: every plugin option at its declared default
    (what typer passes for an option not on the command line), then the given options."""
    parser = collect_options(get_plugin_manager())
    values = {**parser.defaults(command), "dataset": "digits", "steps": steps, "batch_size": batch_size,
              "g_steps": g_steps, "g_loss": g_loss, "seed": seed, "device": "cpu", "out": tmp_path,
              "data_dir": None, "download": False, "epochs": None, "lr": None, "resume": None,
              "log_every": 50, "checkpoint_every": None, "model": None}
    unknown = set(options) - set(parser.options)
    assert not unknown, f"not a plugin option: {unknown}"
    values.update(options)
    return make_config(command, values, parser)


def new_run(tmp_path: Path, *spies: object, command: str = "train", **kw):
    pm = get_plugin_manager(extra=[(f"spy{i}", s) for i, s in enumerate(spies)])
    config = cli_config(tmp_path, command, **kw)
    return build_run(config, pm, tmp_path)


def run_cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code


def gen_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def bce(logit: torch.Tensor, target: float) -> torch.Tensor:
    """Cross-entropy of sigmoid(logit) against target, written out with log and sigmoid (float64)."""
    d = torch.sigmoid(logit.double())
    return (-(target * torch.log(d) + (1 - target) * torch.log1p(-d))).mean()


# ----------------------------------------------------------------------------------------------
# every subset of the five techniques trains, checkpoints and samples


@pytest.mark.parametrize("subset", SUBSETS, ids=lambda s: "+".join(s) or "plain")
def test_every_technique_subset_trains_and_samples(tmp_path: Path, subset: tuple[str, ...]) -> None:
    run = new_run(tmp_path / "run", **{t: True for t in subset})
    summary = fit(run, progress=False)
    ckpt = Path(summary["checkpoint"])
    assert summary["steps"] == 2 and ckpt.exists()

    # The architecture the techniques asked for.
    assert isinstance(run.generator, VBNGenerator) == ("vbn" in subset)
    assert isinstance(run.discriminator.mbd, MinibatchDiscrimination) == ("mbd" in subset)
    assert (run.pm.get_plugin("historical_averaging.run") is not None) == ("ha" in subset)
    assert (run.pm.get_plugin("feature_matching.run") is not None) == ("fm" in subset)
    assert run.targets.real == (0.9 if "ls" in subset else 1.0)

    # `igan sample` rebuilds the model from the checkpoint's metadata alone.
    out = tmp_path / "x.npz"
    assert run_cli(["sample", ckpt, "-n", 8, "-o", out, "--seed", 3, "--device", "cpu"]) == 0
    images = np.load(out)["images"]
    assert images.shape == (8, 8, 8, 1) and images.dtype == np.uint8

    # ... and the samples are the trained generator's (same weights, same architecture, same ref batch).
    z = sample_z(8, run.models.z_dim, run.models.z_dist, "cpu", generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = run.dataset.to_uint8(run.generator(z)).permute(0, 2, 3, 1).numpy()
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1

    restored = restore_models(ckpt, "cpu")
    assert isinstance(restored.models.generator, VBNGenerator) == ("vbn" in subset)
    assert isinstance(restored.models.discriminator.mbd, MinibatchDiscrimination) == ("mbd" in subset)
    x = run.data(torch.arange(20))
    run.discriminator.eval()
    with torch.no_grad():
        assert torch.allclose(restored.models.discriminator(x).logits, run.discriminator(x).logits, atol=1e-5)


@pytest.mark.parametrize("flags", [
    [],
    ["--fm", "--mbd", "--ha", "--ls", "--vbn"],
    ["--mbd", "--vbn", "--no-wn", "--no-d-noise"],
], ids=["plain", "all", "mbd+vbn-no-wn-no-noise"])
def test_cli_train_then_sample(tmp_path: Path, flags: list[str]) -> None:
    out = tmp_path / "run"
    assert run_cli(["train", "--steps", 2, "--batch-size", 10, "--device", "cpu", "--out", out, *flags]) == 0
    ckpt = out / "checkpoints" / "last.safetensors"
    assert run_cli(["sample", ckpt, "-n", 8, "-o", tmp_path / "x.npz", "--device", "cpu"]) == 0
    assert np.load(tmp_path / "x.npz")["images"].shape == (8, 8, 8, 1)

    models = restore_models(ckpt, "cpu").models
    wn = "--no-wn" not in flags
    assert any(is_weight_normed(m) for m in models.discriminator.modules()) == wn
    assert any(is_weight_normed(m) for m in models.generator.modules()) == wn
    noise = "--no-d-noise" not in flags
    assert any(isinstance(m, GaussianNoise) for m in models.discriminator.modules()) == noise
    assert isinstance(models.generator, VBNGenerator) == ("--vbn" in flags)
    assert isinstance(models.discriminator.mbd, MinibatchDiscrimination) == ("--mbd" in flags)


# ----------------------------------------------------------------------------------------------
# historical averaging


class HistorySpy:
    """Keeps every parameter value each net has had (initial ones first) and, at each extra-loss call,
    the HA term computed by hand from that history; pairs it with the value the step logged."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.params: dict[str, list[torch.nn.Parameter]] = {}
        self.history: dict[str, list[list[torch.Tensor]]] = {}
        self.expected: dict[str, torch.Tensor] = {}
        self.pairs: list[tuple[str, float, float]] = []  # (net, by hand, logged)

    @hookimpl
    def igan_train_start(self, run):
        for net, module in (("G", run.generator), ("D", run.discriminator)):
            self.params[net] = gen_params(module)
            self.history[net] = [[p.detach().clone() for p in self.params[net]]]

    def mean(self, net: str) -> list[torch.Tensor]:
        return [torch.stack(values).double().mean(0) for values in zip(*self.history[net])]

    @hookimpl
    def igan_extra_loss(self, step, net):
        total = sum(((p.detach().double() - m) ** 2).sum() for p, m in zip(self.params[net], self.mean(net)))
        self.expected[net] = self.weight * total
        return None

    @hookimpl
    def igan_after_optimizer_step(self, step, net):
        self.pairs.append((net, float(self.expected[net]), float(step.logs[f"loss/{net}/ha"])))
        self.history[net].append([p.detach().clone() for p in self.params[net]])


def test_historical_averaging_mean_and_penalty(tmp_path: Path) -> None:
    spy = HistorySpy(weight=0.5)
    run = new_run(tmp_path, spy, steps=4, g_steps=2, ha=True, ha_weight=0.5)
    fit(run, progress=False)
    ha = run.pm.get_plugin("historical_averaging.run")
    assert ha is not None and ha.weight == 0.5

    for net, steps in (("D", 4), ("G", 8)):
        # initial parameters + one entry per optimizer step of that net
        assert len(spy.history[net]) == steps + 1 == ha.count[net]
        assert [id(p) for p in ha.params[net]] == [id(p) for p in spy.params[net]]
        for online, by_hand in zip(ha.means[net], spy.mean(net)):
            assert torch.allclose(online.double(), by_hand, rtol=1e-5, atol=1e-7)
        # the running mean really lags the parameters (not simply a copy of the last or first value)
        assert any(not torch.allclose(m, p) for m, p in zip(ha.means[net], spy.params[net]))
        assert any(not torch.allclose(m, p0) for m, p0 in zip(ha.means[net], spy.history[net][0]))

    # The extra loss equals weight * sum ||theta - mean||^2 at every update; zero only at the start.
    assert len(spy.pairs) == 4 + 8
    for net, by_hand, logged in spy.pairs:
        assert logged == pytest.approx(by_hand, rel=1e-4, abs=1e-9), net
    assert spy.pairs[0][1] == 0.0  # D's first update: theta is its own history
    assert sum(1 for _, by_hand, _ in spy.pairs if by_hand > 1e-8) >= 8

    # The running means and counts are checkpointed.
    tensors, _ = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors", torch.device("cpu"))
    assert int(tensors["plugin.historical_averaging.run.D.count"]) == 5
    assert int(tensors["plugin.historical_averaging.run.G.count"]) == 9
    assert torch.equal(tensors["plugin.historical_averaging.run.D.mean.0"], ha.means["D"][0])


# ----------------------------------------------------------------------------------------------
# one-sided label smoothing


class LossSpy:
    """Records what the losses saw (D-phase logits, G-phase logits and features, z) and what the
    step logged, at every optimizer update."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.current: dict = {}
        self.main: dict[str, float] = {}
        self.counts = {"D": 0, "G": 0}

    # Wrappers see the result of the firstresult loss hooks: the main loss of each update.
    @hookimpl(wrapper=True)
    def igan_discriminator_loss(self, step):
        loss = yield
        self.main["D"] = float(loss.detach())
        return loss

    @hookimpl(wrapper=True)
    def igan_generator_loss(self, step):
        loss = yield
        self.main["G"] = float(loss.detach())
        return loss

    @hookimpl
    def igan_extra_loss(self, step, net):
        self.current = {"net": net, "real_logits": step.d_real.logits.detach().clone(),
                        "fake_logits": step.d_fake.logits.detach().clone(), "z": step.z.clone(),
                        "real_features": (step.d_real_g or step.d_real).features.detach().clone(),
                        "fake_features": step.d_fake.features.detach().clone()}
        return None

    @hookimpl
    def igan_after_optimizer_step(self, step, net):
        self.counts[net] += 1
        assert self.current["net"] == net
        self.seen.append({**self.current, "loss": self.main[net],
                          "logs": {k: float(v) for k, v in step.logs.items()}})


@pytest.mark.parametrize("g_target", ["one", "half"])
def test_label_smoothing_targets_and_losses(tmp_path: Path, g_target: str) -> None:
    alpha = 0.8
    spy = LossSpy()
    run = new_run(tmp_path, spy, ls=True, ls_alpha=alpha, ls_g_target=g_target)
    expected_g = 1.0 if g_target == "one" else alpha / 2
    assert run.targets == LabelTargets(real=alpha, generator=expected_g)
    fit(run, progress=False)

    d_updates = [s for s in spy.seen if s["net"] == "D"]
    g_updates = [s for s in spy.seen if s["net"] == "G"]
    assert len(d_updates) == len(g_updates) == 2
    for s in d_updates:
        assert s["real_logits"].shape[1] == 1  # a plain GAN: the logit is D's only output
        real, fake = s["real_logits"][:, 0], s["fake_logits"][:, 0]
        by_hand = bce(real, alpha) + bce(fake, 0.0)  # real target alpha, fake target stays 0
        assert s["loss"] == pytest.approx(float(by_hand), rel=1e-5)
        unsmoothed = bce(real, 1.0) + bce(fake, 0.0)
        assert float(unsmoothed) != pytest.approx(float(by_hand), rel=1e-3)  # the check can tell
    for s in g_updates:
        by_hand = bce(s["fake_logits"][:, 0], expected_g)
        assert s["loss"] == pytest.approx(float(by_hand), rel=1e-5)


def test_no_label_smoothing_targets(tmp_path: Path) -> None:
    run = new_run(tmp_path)
    assert run.targets == LabelTargets(real=1.0, generator=1.0)


# ----------------------------------------------------------------------------------------------
# feature matching


class DetachSpy(LossSpy):
    """After D's update, swaps the real features G will be compared with for a leaf that requires
    grad: if feature matching let gradient reach the real side, the leaf would get a .grad."""

    def __init__(self) -> None:
        super().__init__()
        self.leaves: list[torch.Tensor] = []
        self.g_grads: list[bool] = []

    @hookimpl
    def igan_after_optimizer_step(self, step, net):
        super().igan_after_optimizer_step(step, net)
        if net == "D":
            leaf = step.d_real.features.detach().clone().requires_grad_(True)
            step.d_real = DOut(step.d_real.logits, leaf)
            self.leaves.append(leaf)
        else:
            self.g_grads.append(any(p.grad is not None and bool(p.grad.abs().sum() > 0)
                                    for p in step.run.generator.parameters()))


@pytest.mark.parametrize("norm", [None, "l1", "l2"])
def test_feature_matching_loss(tmp_path: Path, norm: str | None) -> None:
    spy = DetachSpy()
    run = new_run(tmp_path, spy, fm=True, fm_norm=norm)
    fm = run.pm.get_plugin("feature_matching.run")
    assert fm.norm == (norm or "l2")  # the MLP default follows the reference MNIST script
    fit(run, progress=False)

    g_updates = [s for s in spy.seen if s["net"] == "G"]
    assert len(g_updates) == 2
    for s in g_updates:
        diff = s["real_features"].double().mean(0) - s["fake_features"].double().mean(0)
        by_hand = diff.abs().mean() if norm == "l1" else diff.square().mean()
        other = diff.square().mean() if norm == "l1" else diff.abs().mean()
        assert s["loss"] == pytest.approx(float(by_hand), rel=1e-5)
        assert s["logs"]["fm"] == pytest.approx(float(by_hand), rel=1e-5)
        assert float(other) != pytest.approx(float(by_hand), rel=1e-3)
    assert len(spy.leaves) == 2 and all(leaf.grad is None for leaf in spy.leaves)  # real side detached
    assert spy.g_grads == [True, True]  # the generator does learn from it


def test_feature_matching_default_per_command(tmp_path: Path) -> None:
    """Off for `igan train`, on for `igan semisup` unless --no-fm (the loss behind Tables 1-2)."""

    def fm_registered(command: str, **options) -> bool:
        pm = get_plugin_manager(disable=["semisup"])  # the FM plugin's own decision, nothing else's
        config = cli_config(tmp_path, command, **options)
        config.model = "digits_mlp"
        configure(pm, config)
        return pm.get_plugin("feature_matching.run") is not None

    assert not fm_registered("train")
    assert fm_registered("train", fm=True)
    assert fm_registered("semisup")
    assert not fm_registered("semisup", fm=False)


# ----------------------------------------------------------------------------------------------
# minibatch discrimination


def test_minibatch_discrimination_layer_and_init(tmp_path: Path) -> None:
    run = new_run(tmp_path, mbd=True, mbd_kernels=40, mbd_kernel_dim=4)
    d = run.discriminator
    a = d.feature_dim
    assert isinstance(d.mbd, MinibatchDiscrimination)
    assert (d.mbd.in_features, d.mbd.num_kernels, d.mbd.kernel_dim) == (a, 40, 4)
    assert d.out.in_features == a + 40  # the head was rebuilt for [features, o]
    x = run.data(torch.arange(10))
    assert d(x).logits.shape == (10, 1)

    # build_run's data-dependent init saw the layer: scales and bias moved from (0, -1) ...
    assert not torch.all(d.mbd.log_weight_scale == 0)
    assert not torch.all(d.mbd.bias == -1)
    # ... so that on 500 training images (as the init batch) the features are centred and the
    # mean nearest-neighbour L1 distance is about 2 (reference MinibatchLayer init).
    idx = torch.randperm(run.dataset.x_train.shape[0], generator=torch.Generator().manual_seed(1))[:500]
    d.train()
    with torch.no_grad():
        f = d.pre_out(d.trunk(run.data(idx)))
        o = d.mbd(f)[:, a:]
        nn_dist = d.mbd.distances(f).min(dim=2).values.mean()
        uninit = MinibatchDiscrimination(a, 40, 4)
        o_uninit = uninit(f)[:, a:]
    assert o.mean(0).abs().mean() < 0.1 * o_uninit.mean(0).abs().mean()
    assert o.mean(0).abs().mean() < 0.25 * o.std(0).mean() + 1e-3
    assert 1.7 < float(nn_dist) < 2.3


# ----------------------------------------------------------------------------------------------
# virtual batch normalisation


def test_virtual_batchnorm_generator_checkpoint_and_independence(tmp_path: Path) -> None:
    run = new_run(tmp_path / "vbn", vbn=True, vbn_ref_size=8)
    g = run.generator
    assert isinstance(g, VBNGenerator)
    assert not any(isinstance(m, BatchNormNoScale) for m in g.modules())
    vbns = [m for m in g.modules() if isinstance(m, VirtualBatchNorm)]
    assert len(vbns) == 2 and all(m.n_ref == 8 for m in vbns)
    assert g.ref_z.shape == (8, run.models.z_dim)
    ref_before = g.ref_z.clone()
    fit(run, progress=False)
    assert torch.equal(g.ref_z, ref_before)  # fixed for the whole run

    ckpt = tmp_path / "vbn" / "checkpoints" / "last.safetensors"
    tensors, meta = load_checkpoint(ckpt, torch.device("cpu"))
    assert torch.equal(tensors["G.ref_z"], ref_before)
    restored = restore_models(ckpt, "cpu").models.generator
    assert isinstance(restored, VBNGenerator) and torch.equal(restored.ref_z, ref_before)

    # An example's output does not depend on the rest of its batch.
    z = run.sample_z(5)
    with torch.no_grad():
        for gen in (g, restored):
            assert torch.allclose(gen(z[0:1]), gen(z)[0:1], atol=1e-5)
        assert torch.allclose(restored(z), g(z), atol=1e-5)

    # Contrast: the plain batch-norm generator does depend on its batch (the check can fail).
    plain = new_run(tmp_path / "plain").generator
    with torch.no_grad():
        assert not torch.allclose(plain(z[0:1]), plain(z)[0:1], atol=1e-3)


def test_virtual_batchnorm_default_reference_size_is_batch_size(tmp_path: Path) -> None:
    run = new_run(tmp_path, vbn=True, batch_size=12)
    assert run.generator.ref_z.shape[0] == 12


# ----------------------------------------------------------------------------------------------
# bad combinations are usage errors


@pytest.mark.parametrize("argv, message", [
    (["--mbd-kernels", "50"], "--mbd-kernels given without --mbd"),
    (["--mbd-kernel-dim", "3"], "--mbd-kernel-dim given without --mbd"),
    (["--ha-weight", "1"], "--ha-weight given without --ha"),
    (["--ls-alpha", "0.8"], "--ls-alpha given without --ls"),
    (["--ls-g-target", "half"], "--ls-g-target given without --ls"),
    (["--vbn-ref-size", "8"], "--vbn-ref-size given without --vbn"),
    (["--fm-norm", "l1"], "--fm-norm given without feature matching"),
    (["--ls", "--ls-alpha", "1.5"], "--ls-alpha must be in (0, 1]"),
    (["--ls", "--ls-alpha", "0"], "--ls-alpha must be in (0, 1]"),
    (["--fm", "--fm-norm", "l3"], "Invalid value for '--fm-norm': 'l3' is not one of 'l2', 'l1'."),
    (["--g-loss", "foo"], "Invalid value for '--g-loss': 'foo' is not one of 'ns', 'minimax'."),
])
def test_bad_combinations_are_usage_errors(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    out = tmp_path / "run"
    code = run_cli(["train", "--steps", 2, "--batch-size", 10, "--device", "cpu", "--out", out, *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"error: {message}" in err
    assert "hint:" in err
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize("flag", ["--dropout", "--no-dropout"])
def test_switch_of_another_model_family_is_a_usage_error(tmp_path: Path, capsys, flag: str) -> None:
    """--dropout/--no-dropout belong to the conv discriminators; on the MLP pair they are a usage
    error naming the flag (exit 2), not a crash inside the model builder."""
    out = tmp_path / "run"
    code = run_cli(["train", "--steps", 1, "--batch-size", 10, "--device", "cpu", "--out", out, flag])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error:" in err and "dropout" in err and "TypeError" not in err


# ----------------------------------------------------------------------------------------------
# generator loss and steps


def test_minimax_loss_with_three_generator_steps(tmp_path: Path) -> None:
    spy = LossSpy()
    run = new_run(tmp_path, spy, g_loss="minimax", g_steps=3)
    fit(run, progress=False)
    assert spy.counts == {"D": 2, "G": 6}  # 3 G updates per D update

    g_updates = [s for s in spy.seen if s["net"] == "G"]
    for s in g_updates:
        d = torch.sigmoid(s["fake_logits"][:, 0].double())
        by_hand = torch.log1p(-d).mean()  # mean log(1 - D(G(z))): the saturating minimax loss
        assert s["loss"] == pytest.approx(float(by_hand), rel=1e-5)
    for first, *rest in (g_updates[0:3], g_updates[3:6]):  # a fresh z for every G update
        assert all(not torch.equal(first["z"], s["z"]) for s in rest)
        assert not torch.equal(rest[0]["z"], rest[1]["z"])


def test_cli_minimax_three_generator_steps(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_cli(["train", "--steps", 2, "--batch-size", 10, "--device", "cpu", "--out", out,
                    "--g-loss", "minimax", "--g-steps", 3]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["g_loss"], config["g_steps"]) == ("minimax", 3)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["loss/G"] < 0  # log(1 - D) < 0; the non-saturating loss would be > 0
