"""igan-gen-ema: the average is the hand-computed one, it round-trips through checkpoints, the epoch
grids use it while the checkpoint keeps the trained weights, and the export feeds ``igan sample``.

Unit tests call the per-run object's hooks with a stand-in run (only ``run.generator`` is read); the
end-to-end tests drive the installed ``igan`` command (``conftest.igan_cli``) and spy on G's parameters
through a subclass of the plugin's own state object.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import igan
import igan_gen_ema
from igan_gen_ema import GenEma

from conftest import TINY

PREFIX = "plugin.gen_ema.run."


def fake_run(seed: int = 0):
    torch.manual_seed(seed)
    return SimpleNamespace(generator=nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))


def params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


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


def test_average_equals_the_hand_computed_one():
    run = fake_run()
    ema = GenEma(0.8)
    ema.igan_train_start(run=run)
    expected = fake_training(ema, run, steps=4)
    assert ema.updates == 4
    for avg, exp in zip(ema.ema, expected):
        torch.testing.assert_close(avg, exp.detach(), rtol=1e-6, atol=1e-6)


def test_epoch_end_swaps_the_average_in_and_the_checkpoint_hook_swaps_it_out():
    run = fake_run()
    ema = GenEma(0.5)
    ema.igan_train_start(run=run)
    fake_training(ema, run, steps=2)
    trained = params(run.generator)
    assert ema.igan_epoch_end(run=run, epoch=1) is None
    for p, avg in zip(run.generator.parameters(), ema.ema):  # what run.generate now draws from
        assert torch.equal(p, avg)
    ids = [id(p) for p in run.generator.parameters()]
    tensors = ema.igan_checkpoint_tensors(run=run)
    for p, raw in zip(run.generator.parameters(), trained):  # back, bit for bit, same tensors
        assert torch.equal(p, raw)
    assert [id(p) for p in run.generator.parameters()] == ids
    assert set(tensors) == {"updates"} | {f"ema.{name}" for name, _ in run.generator.named_parameters()}
    ema.igan_checkpoint_tensors(run=run)  # a checkpoint without an epoch end: no swap
    for p, raw in zip(run.generator.parameters(), trained):
        assert torch.equal(p, raw)


def test_a_training_step_with_the_average_still_swapped_in_is_an_error():
    run = fake_run()
    ema = GenEma(0.5)
    ema.igan_train_start(run=run)
    ema.igan_epoch_end(run=run, epoch=1)
    with pytest.raises(igan.IganError, match="still holds the averaged weights"):
        ema.igan_after_optimizer_step(step=SimpleNamespace(run=run), net="G")


def test_checkpoint_tensors_round_trip():
    run = fake_run()
    ema = GenEma(0.9)
    ema.igan_train_start(run=run)
    fake_training(ema, run, steps=3)
    saved = {k: v.clone() for k, v in ema.igan_checkpoint_tensors(run=run).items()}

    other_run = fake_run(seed=1)
    restored = GenEma(0.9)
    restored.igan_train_start(run=other_run)
    restored.igan_restore_tensors(run=other_run, tensors=saved)
    assert restored.updates == 3
    for a, b in zip(restored.ema, ema.ema):
        assert torch.equal(a, b)
    with pytest.raises(igan.IganError, match="moving average"):  # a checkpoint without the averages
        restored.igan_restore_tensors(run=other_run, tensors={"updates": saved["updates"]})


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_decay_must_be_strictly_between_0_and_1(decay):
    with pytest.raises(igan.UsageError, match="strictly between 0 and 1"):
        igan_gen_ema.igan_configure(config=igan.RunConfig(options={"g_ema": decay}), pm=None)


# ------------------------------------------------------------------------------------------------
# end to end, through the installed igan command


class Spy(GenEma):
    """Records G's parameters when training starts and after every G update (the real ones)."""

    instances: list["Spy"] = []

    def __init__(self, decay):
        super().__init__(decay)
        self.history: list[list[torch.Tensor]] = []
        self.at_epoch_end: list[list[torch.Tensor]] = []
        Spy.instances.append(self)

    @igan.hookimpl
    def igan_train_start(self, run):
        super().igan_train_start(run)
        self.history.append(params(run.generator))

    @igan.hookimpl
    def igan_after_optimizer_step(self, step, net):
        super().igan_after_optimizer_step(step, net)
        if net == "G":
            self.history.append(params(step.run.generator))

    @igan.hookimpl(tryfirst=True)
    def igan_epoch_end(self, run, epoch):
        super().igan_epoch_end(run, epoch)
        self.at_epoch_end.append(params(run.generator))


@pytest.fixture
def spy(monkeypatch):
    Spy.instances = []
    monkeypatch.setattr(igan_gen_ema, "GenEma", Spy)  # what igan_configure registers for the run
    return Spy.instances


def test_training_run_keeps_the_hand_computed_average_and_saves_trained_weights(igan_cli, spy, tmp_path):
    decay = 0.7
    code, _, err = igan_cli("train", "--steps", "2", "--g-steps", "2", *TINY, "--out", tmp_path / "run",
                            "--g-ema", str(decay))
    assert code == 0, err
    (ema,) = spy
    assert len(ema.history) == 1 + 4  # the initial weights, then 2 steps x 2 G updates
    expected = ema.history[0]
    for theta in ema.history[1:]:
        expected = [decay * e + (1 - decay) * t for e, t in zip(expected, theta)]

    tensors = load_file(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert int(tensors[PREFIX + "updates"]) == 4
    assert len(ema.names) == len(expected) > 0
    for name, exp, at_end in zip(ema.names, expected, ema.at_epoch_end[-1]):
        torch.testing.assert_close(tensors[PREFIX + "ema." + name], exp, rtol=1e-5, atol=1e-6)
        assert torch.equal(at_end, tensors[PREFIX + "ema." + name])  # the grid was drawn from the average
    for name, trained in zip(ema.names, ema.history[-1]):
        assert torch.equal(tensors["G." + name], trained), name  # the checkpoint's G is the trained one
    assert (tmp_path / "run" / "samples" / "epoch_0001.png").is_file()


def test_resume_continues_the_average_and_the_export_feeds_igan_sample(igan_cli, tmp_path):
    """3 steps at once == 2 steps + --resume to 3, bit for bit (average included); then the exported copy
    holds the average as G, `igan sample` reads it, and resuming from it is refused."""
    flags = [*TINY, "--g-ema", "0.9"]
    assert igan_cli("train", "--steps", "3", *flags, "--out", tmp_path / "once")[0] == 0
    assert igan_cli("train", "--steps", "2", *flags, "--out", tmp_path / "twice")[0] == 0
    ckpt = tmp_path / "twice" / "checkpoints" / "last.safetensors"
    code, _, err = igan_cli("train", "--steps", "3", *flags, "--out", tmp_path / "twice", "--resume", ckpt)
    assert code == 0, err
    once, original = load_file(tmp_path / "once" / "checkpoints" / "last.safetensors"), load_file(ckpt)
    keys = [k for k in once if k.startswith((PREFIX, "G."))]
    assert any(k.startswith(PREFIX + "ema.") for k in keys)
    for k in keys:
        assert torch.equal(once[k], original[k]), k

    code, out, err = igan_cli("g-ema-export", ckpt, "-o", tmp_path / "ema.safetensors")
    assert code == 0, err
    assert out.strip() == str(tmp_path / "ema.safetensors")
    exported = load_file(tmp_path / "ema.safetensors")
    names = [k[len(PREFIX + "ema."):] for k in original if k.startswith(PREFIX + "ema.")]
    for name in names:
        assert torch.equal(exported["G." + name], original[PREFIX + "ema." + name])
    assert not all(torch.equal(exported["G." + n], original["G." + n]) for n in names)

    code, _, err = igan_cli("sample", tmp_path / "ema.safetensors", "-n", "4", "-o", tmp_path / "grid.png")
    assert code == 0, err
    assert (tmp_path / "grid.png").is_file()

    code, out, err = igan_cli("train", "--steps", "4", *flags, "--out", tmp_path / "twice",
                              "--resume", tmp_path / "ema.safetensors")
    assert code == 2 and "g-ema-export" in err and "hint:" in err
    code, out, err = igan_cli("g-ema-export", ckpt, "-o", ckpt)
    assert code == 2 and "error:" in err


def test_command_line_errors(igan_cli, tmp_path):
    code, out, err = igan_cli("train", "--steps", "2", *TINY, "--out", tmp_path / "x", "--g-ema", "1")
    assert code == 2 and out == "" and "--g-ema must be a decay strictly between 0 and 1" in err
    code, out, err = igan_cli("g-ema-export", tmp_path / "missing.safetensors")
    assert code == 1 and out == "" and "checkpoint not found" in err
