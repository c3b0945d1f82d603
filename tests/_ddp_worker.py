"""Run under `python -m torch.distributed.run --nproc_per_node 2` by tests/test_distributed.py.

Modes (argv[1]):
- grads: one D update's gradients under DDP (each rank a half batch) equal a single process's gradients
  on the whole batch; rank 0 writes "ok" to argv[2] or raises.
- r1: the same with the R1 test plugin's input-gradient penalty (tests/plugins/igan-r1) in the loss.
- identical: after a few training steps with --ha on a semi-supervised run, the historical averages and
  the evaluation EMA are bit-identical on every rank; rank 0 writes "ok" to argv[2].
"""

from __future__ import annotations

import copy
import gc
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from igan import losses
from igan.config import RunConfig
from igan.plugins import get_plugin_manager
from igan.train import build_run, train_step


def grads(out: Path, tmp: Path) -> None:
    config = RunConfig(dataset="digits", steps=1, batch_size=20, seed=3, device="cpu",
                       model_kwargs={"noise": False})
    run = build_run(config, get_plugin_manager(), tmp)
    rank, world = run.dist.rank, run.dist.world
    reference = copy.deepcopy(run.discriminator)  # identical on every rank (same seed, same init batch)
    gen = torch.Generator().manual_seed(7)
    x = run.dataset.to_float(run.dataset.x_train[:20])
    fake = torch.rand(20, *run.dataset.image_shape, generator=gen)
    per = 20 // world
    part = slice(rank * per, (rank + 1) * per)

    def d_loss(d, xr, xf):
        return losses.discriminator_loss(losses.gan_logit(d(xr).logits), losses.gan_logit(d(xf).logits))

    d_loss(run.d_exec, x[part], fake[part]).backward()  # DDP averages the gradients over ranks
    d_loss(reference, x, fake).backward()
    for (name, p), q in zip(run.discriminator.named_parameters(), reference.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    if rank == 0:
        out.write_text("ok")


def r1(out: Path, tmp: Path) -> None:
    """An input-gradient penalty through the host's mechanism (needs_input_grad: x_real created with
    requires_grad, the R1 test plugin differentiating d_real in its loss hook) under DDP: D's gradients
    over 2 half batches equal one process's on the whole batch."""
    sys.path.insert(0, str(Path(__file__).parent / "plugins" / "igan-r1"))
    import igan_r1

    from igan.train import discriminator_phase

    config = RunConfig(dataset="digits", steps=1, batch_size=20, seed=3, device="cpu",
                       model_kwargs={"noise": False}, options={"r1": 5.0})
    pm = get_plugin_manager(extra=[("r1", igan_r1)])
    run = build_run(config, pm, tmp)
    assert run.input_grads == ("x_real",) and run.dist.enabled
    pm.hook.igan_train_start(run=run)
    reference = copy.deepcopy(run.discriminator)
    gen = torch.Generator().manual_seed(7)
    x = run.dataset.to_float(run.dataset.x_train[:20])
    fake = torch.rand(20, *run.dataset.image_shape, generator=gen)
    per = 20 // run.dist.world
    part = slice(run.dist.rank * per, (run.dist.rank + 1) * per)
    z = torch.zeros(20, run.models.z_dim)
    loss, step = discriminator_phase(run, lambda _: fake[part], run.d_exec, z[part], x[part])
    assert "loss/D/r1" in step.logs and float(step.logs["loss/D/r1"]) > 0
    loss.backward()  # DDP averages the gradients over ranks
    loss_ref, _ = discriminator_phase(run, lambda _: fake, reference, z, x)
    loss_ref.backward()
    for (name, p), q in zip(run.discriminator.named_parameters(), reference.parameters()):
        if p.requires_grad:  # float32 sums in another order: agree to rounding of the largest entry
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * float(q.grad.abs().max()),
                                       msg=lambda m: f"{name}: {m}")
    if run.dist.rank == 0:
        out.write_text("ok")


def identical(out: Path, tmp: Path) -> None:
    config = RunConfig(command="semisup", dataset="digits", steps=4, batch_size=20, seed=1, device="cpu",
                       options={"ha": True, "labels": 50, "label_seed": 1, "ema_decay": 0.99})
    pm = get_plugin_manager()
    run = build_run(config, pm, tmp)
    pm.hook.igan_train_start(run=run)
    for _ in range(4):
        train_step(run)
    ha = pm.get_plugin("historical_averaging.run")
    ema = pm.get_plugin("semisup.run").avg
    tensors = [*ha.means["G"], *ha.means["D"], *ema.values(), *run.discriminator.parameters()]
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(run.dist.world)]
    dist.all_gather(gathered, flat)
    for other in gathered[1:]:
        assert torch.equal(gathered[0], other), "state differs between ranks"
    if run.dist.rank == 0:
        out.write_text("ok")


def syncbn(out: Path, tmp: Path) -> None:
    """With sync on, G's batch norm over two half batches equals one process's over the whole batch,
    forward and backward (the statistics' all-reduce is differentiable)."""
    from igan.distributed import setup
    from igan.layers import BatchNormNoScale

    d, _ = setup("cpu")
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, 4, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(8, 3, 4, 4, generator=gen, dtype=torch.float64)
    part = slice(d.rank * 4, (d.rank + 1) * 4)
    bn = BatchNormNoScale(3).double()
    bn.sync = True
    xs = x[part].clone().requires_grad_(True)
    (bn(xs) * w[part]).sum().backward()
    full = x.clone().requires_grad_(True)
    reference = BatchNormNoScale(3).double()
    ref_out = reference(full)
    (ref_out * w).sum().backward()
    torch.testing.assert_close(bn(xs), ref_out[part])
    torch.testing.assert_close(xs.grad, full.grad[part])
    bn.sync = False  # per-process statistics differ from the whole batch's
    assert not torch.allclose(bn(xs), ref_out[part])
    if d.rank == 0:
        out.write_text("ok")


if __name__ == "__main__":
    mode, out, tmp = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    {"grads": grads, "r1": r1, "identical": identical, "syncbn": syncbn}[mode](out, tmp)
    # Free the DDP wrappers (reference cycles keep runs alive) before the process group goes: a reducer
    # destroyed after its group aborts the process ("terminate called without an active exception").
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
