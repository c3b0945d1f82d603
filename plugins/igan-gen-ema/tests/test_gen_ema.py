"""igan-gen-ema: the average is the hand-computed one, it lives in a separate copy of G (buffers
copied, G never touched), it round-trips through checkpoints, the epoch grids are drawn from it, and
``igan sample`` uses it.

Unit tests call the per-run object's hooks with a stand-in run (only ``run.generator`` is read) whose
generator is wrapped like VBN's (``igan.layers.VBNGenerator`` with its ``ref_z`` buffer); the
end-to-end tests drive the installed ``igan`` command (``conftest.igan_cli``) and spy on the run
through a subclass of the plugin's own state object.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import igan
import igan_gen_ema
from igan.layers import VBNGenerator, VirtualBatchNorm
from igan_gen_ema import GenEma

from conftest import TINY

PREFIX = "plugin.gen_ema.run."


def make_generator(seed: int = 0) -> nn.Module:
    """A small generator wrapped like --vbn's: a reference-noise buffer and parametrized weights."""
    torch.manual_seed(seed)
    weight_normed = nn.utils.parametrizations.weight_norm(nn.Linear(3, 4))
    net = nn.Sequential(weight_normed, VirtualBatchNorm(4), nn.Tanh(), nn.Linear(4, 2))
    return VBNGenerator(net, torch.rand(5, 3))


def fake_run(seed: int = 0):
    return SimpleNamespace(generator=make_generator(seed))


def params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fake_training(ema: GenEma, run, steps: int) -> list[torch.Tensor]:
    """``steps`` fake G updates (random parameter changes), each followed by the hook; D updates in
    between must not count. Returns the hand-computed average."""
    expected = params(run.generator)
    step = SimpleNamespace(run=run)
    for _ in range(steps):
        ema.igan_after_optimizer_step(step=step, net="D")
        with torch.no_grad():
            for p in run.generator.parameters():
                p.add_(torch.randn_like(p))
        ema.igan_after_optimizer_step(step=step, net="G")
        expected = [ema.decay * e + (1 - ema.decay) * p for e, p in zip(expected, run.generator.parameters())]
    return expected


def test_average_equals_the_hand_computed_one_and_g_is_untouched():
    run = fake_run()
    ema = GenEma(0.8)
    ema.igan_train_start(run=run)
    assert ema.module is not run.generator
    assert all(not p.requires_grad for p in ema.module.parameters())
    expected = fake_training(ema, run, steps=4)
    trained = params(run.generator)
    assert ema.updates == 4
    for avg, exp in zip(ema.module.parameters(), expected):
        torch.testing.assert_close(avg, exp.detach(), rtol=1e-6, atol=1e-6)
    # sampling and saving use the copy: G keeps its trained weights, no swapping
    assert ema.igan_sampling_generator(run=SimpleNamespace()) is ema.module
    ema.igan_checkpoint_tensors(run=None)
    for p, raw in zip(run.generator.parameters(), trained):
        assert torch.equal(p, raw)


def test_the_averaged_generator_copies_gs_buffers_and_mode():
    run = fake_run()
    ema = GenEma(0.5)
    assert ema.igan_sampling_generator(run=run) is None  # before training starts: G itself is used
    ema.igan_train_start(run=run)
    fake_training(ema, run, steps=2)
    with torch.no_grad():
        run.generator.ref_z.add_(1.0)  # a buffer that changes is copied, not averaged
    run.generator.eval()
    module = ema.igan_sampling_generator(run=run)
    assert torch.equal(module.ref_z, run.generator.ref_z) and not module.training
    z = torch.rand(3, 3)
    with torch.no_grad():
        by_hand = copy.deepcopy(run.generator)
        for p, avg in zip(by_hand.parameters(), module.parameters()):
            p.copy_(avg)
        torch.testing.assert_close(module(z), by_hand(z), rtol=0, atol=0)
        assert not torch.equal(module(z), run.generator(z))


def test_checkpoint_tensors_round_trip():
    run = fake_run()
    ema = GenEma(0.9)
    ema.igan_train_start(run=run)
    fake_training(ema, run, steps=3)
    saved = {k: v.clone() for k, v in ema.igan_checkpoint_tensors(run=run).items()}
    # the averaged generator's state dict under ema.: the same names as G's, buffers included
    assert set(saved) == {"updates"} | {f"ema.{name}" for name in run.generator.state_dict()}
    assert "ema.ref_z" in saved

    other_run = fake_run(seed=1)
    restored = GenEma(0.9)
    restored.igan_train_start(run=other_run)
    restored.igan_restore_tensors(run=other_run, tensors=saved)
    assert restored.updates == 3
    for a, b in zip(restored.module.parameters(), ema.module.parameters()):
        assert torch.equal(a, b)
    # restoring continues the same average
    torch.manual_seed(7)
    fake_training(ema, run, steps=1)
    with torch.no_grad():
        for p, q in zip(other_run.generator.parameters(), run.generator.parameters()):
            p.copy_(q)
    restored.igan_after_optimizer_step(step=SimpleNamespace(run=other_run), net="G")
    for a, b in zip(restored.module.parameters(), ema.module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(igan.IganError, match="moving average"):  # a checkpoint without the averages
        restored.igan_restore_tensors(run=other_run, tensors={"updates": saved["updates"]})


def test_prepare_inference_copies_the_average_into_the_loaded_generator():
    run = fake_run()
    ema = GenEma(0.5)
    ema.igan_train_start(run=run)
    fake_training(ema, run, steps=2)
    saved = {k: v.clone() for k, v in ema.igan_checkpoint_tensors(run=run).items()}

    models = SimpleNamespace(generator=make_generator(seed=3), discriminator=None)
    loaded = GenEma(0.5)  # what igan_configure registers when `igan sample` rebuilds a --g-ema run
    loaded.igan_prepare_inference(models=models, config=None, tensors=saved)
    got, want = state(models.generator), state(ema.module)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k

    with pytest.raises(igan.IganError, match="moving average") as info:
        loaded.igan_prepare_inference(models=models, config=None, tensors={})
    assert info.value.hint
    bad = {**saved, "ema.generator.3.weight": torch.zeros(2, 5)}
    with pytest.raises(igan.IganError, match="another shape"):
        loaded.igan_prepare_inference(models=models, config=None, tensors=bad)


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_decay_must_be_strictly_between_0_and_1(decay):
    with pytest.raises(igan.UsageError, match="strictly between 0 and 1"):
        igan_gen_ema.igan_configure(config=igan.RunConfig(options={"g_ema": decay}), pm=None)


# ------------------------------------------------------------------------------------------------
# end to end, through the installed igan command


class Spy(GenEma):
    """Records G's parameters when training starts and after every G update, and what the epoch grid
    is drawn from."""

    instances: list["Spy"] = []

    def __init__(self, decay):
        super().__init__(decay)
        self.history: list[list[torch.Tensor]] = []
        self.sampled: list[dict] = []
        self.run = None
        Spy.instances.append(self)

    @igan.hookimpl
    def igan_train_start(self, run):
        super().igan_train_start(run)
        self.run = run
        self.history.append(params(run.generator))

    @igan.hookimpl
    def igan_after_optimizer_step(self, step, net):
        super().igan_after_optimizer_step(step, net)
        if net == "G":
            self.history.append(params(step.run.generator))

    @igan.hookimpl
    def igan_sampling_generator(self, run):
        module = super().igan_sampling_generator(run)
        z = run.fixed_z
        with torch.no_grad():
            self.sampled.append({
                "module": module, "weights": params(module),
                "averaged": run.dataset.to_uint8(module(z)).cpu(),
                "trained": run.dataset.to_uint8(run.generator(z)).cpu()})
        return module


@pytest.fixture
def spy(monkeypatch):
    Spy.instances = []
    monkeypatch.setattr(igan_gen_ema, "GenEma", Spy)  # what igan_configure registers for the run
    return Spy.instances


def grid(images: torch.Tensor, pad: int = 1) -> np.ndarray:
    """uint8 [N, 1, H, W] laid out as igan's sample grids: about square, ``pad`` pixels between."""
    n, _, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        out[y:y + h, x:x + w] = images[i, 0]
    return out


def read_grid(path, like: np.ndarray) -> np.ndarray:
    png = np.asarray(Image.open(path))
    factor = png.shape[0] // like.shape[0]  # small images are upscaled (nearest neighbour)
    return png[::factor, ::factor]


def test_training_keeps_the_hand_computed_average_and_draws_the_grid_from_it(igan_cli, spy, tmp_path):
    decay = 0.7
    code, _, err = igan_cli("train", "--steps", "2", "--g-steps", "2", *TINY, "--out", tmp_path / "run",
                            "--g-ema", str(decay))
    assert code == 0, err
    ema = spy[0]
    assert len(ema.history) == 1 + 4  # the initial weights, then 2 steps x 2 G updates
    expected = ema.history[0]
    for theta in ema.history[1:]:
        expected = [decay * e + (1 - decay) * t for e, t in zip(expected, theta)]

    tensors = load_file(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert int(tensors[PREFIX + "updates"]) == 4
    names = [name for name, _ in ema.run.generator.named_parameters()]
    assert len(names) == len(expected) > 0
    assert {k for k in tensors if k.startswith(PREFIX + "ema.")} == {PREFIX + "ema." + k[2:] for k in tensors
                                                                     if k.startswith("G.")}
    for name, exp in zip(names, expected):
        torch.testing.assert_close(tensors[PREFIX + "ema." + name], exp, rtol=1e-5, atol=1e-6)
    for name, trained in zip(names, ema.history[-1]):
        assert torch.equal(tensors["G." + name], trained), name  # the checkpoint's G is the trained one

    # the epoch grid: drawn from the averaged copy (as saved), not from G, and G was never swapped
    (drawn,) = ema.sampled
    assert drawn["module"] is ema.module and drawn["module"] is not ema.run.generator
    for name, w in zip(names, drawn["weights"]):
        assert torch.equal(w, tensors[PREFIX + "ema." + name]), name
    saved = read_grid(tmp_path / "run" / "samples" / "epoch_0001.png", grid(drawn["averaged"]))
    assert np.array_equal(saved, grid(drawn["averaged"]))
    assert not np.array_equal(saved, grid(drawn["trained"]))


def test_igan_sample_uses_the_average(igan_cli, spy, tmp_path):
    """`igan sample` on a --g-ema checkpoint (with --vbn: G is wrapped and has a buffer) gives the images
    of the checkpoint's averaged weights, generated here by hand, not those of the trained G."""
    code, _, err = igan_cli("train", "--steps", "3", *TINY, "--vbn", "--out", tmp_path / "run",
                            "--g-ema", "0.5")
    assert code == 0, err
    ckpt = tmp_path / "run" / "checkpoints" / "last.safetensors"
    code, out, err = igan_cli("sample", ckpt, "-n", "16", "--seed", "3", "--device", "cpu",
                              "-o", tmp_path / "s.npz")
    assert code == 0, err
    sampled = torch.from_numpy(np.load(tmp_path / "s.npz")["images"]).permute(0, 3, 1, 2)

    run = spy[0].run
    tensors = load_file(ckpt)
    assert torch.equal(tensors[PREFIX + "ema.ref_z"], tensors["G.ref_z"])

    def by_hand(prefix: str) -> torch.Tensor:
        g = copy.deepcopy(run.generator).cpu()
        g.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        # igan sample's noise: seeded generator, the model's z distribution, on the CPU
        gen = torch.Generator().manual_seed(3)
        shape = (16, run.models.z_dim)
        draw = torch.rand if run.models.z_dist == "uniform" else torch.randn
        z = draw(shape, generator=gen)
        with torch.no_grad():
            return run.dataset.to_uint8(g(z)).cpu()

    assert torch.equal(sampled, by_hand(PREFIX + "ema."))
    assert not torch.equal(sampled, by_hand("G."))


def test_resume_continues_the_average_exactly(igan_cli, tmp_path):
    """3 steps at once == 2 steps + --resume to 3, bit for bit (trained weights and average)."""
    flags = [*TINY, "--g-ema", "0.9"]
    assert igan_cli("train", "--steps", "3", *flags, "--out", tmp_path / "once")[0] == 0
    assert igan_cli("train", "--steps", "2", *flags, "--out", tmp_path / "twice")[0] == 0
    ckpt = tmp_path / "twice" / "checkpoints" / "last.safetensors"
    code, _, err = igan_cli("train", "--steps", "3", *flags, "--out", tmp_path / "twice", "--resume", ckpt)
    assert code == 0, err
    once, resumed = load_file(tmp_path / "once" / "checkpoints" / "last.safetensors"), load_file(ckpt)
    keys = [k for k in once if k.startswith((PREFIX, "G.", "D."))]
    assert any(k.startswith(PREFIX + "ema.") for k in keys)
    for k in keys:
        assert torch.equal(once[k], resumed[k]), k
    assert int(resumed[PREFIX + "updates"]) == 3
    names = [k[len("G."):] for k in resumed if k.startswith("G.")]
    assert not all(torch.equal(resumed["G." + n], resumed[PREFIX + "ema." + n]) for n in names)


def test_command_line_errors(igan_cli, tmp_path):
    code, out, err = igan_cli("train", "--steps", "2", *TINY, "--out", tmp_path / "x", "--g-ema", "1")
    assert code == 2 and out == "" and "--g-ema must be a decay strictly between 0 and 1" in err
    code, out, err = igan_cli("g-ema-export", tmp_path / "missing.safetensors")
    assert code == 2  # the workaround command is gone: igan_prepare_inference makes it unnecessary
