"""What the checkpoint digest costs: a CIFAR-size checkpoint (the cifar_conv pair with Adam state) saved
and loaded with and without the SHA-256 of its tensors, next to the write itself.

The digest (``igan.checkpoint.tensor_digest``) hashes every tensor's bytes once at save time and once
at load time; the write (safetensors serialisation, fsync, rename) and the read are timed the same way.

    python benchmarks/checkpoint_digest.py [--rounds 5] [--dir /tmp] [--out benchmarks/results/checkpoint_digest.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def cifar_state() -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a cifar_conv checkpoint after one optimizer step (so the Adam moments exist)."""
    from igan.checkpoint import flatten_optimizer
    from igan.models import build_conv
    from igan.optim import make_optimizer

    torch.manual_seed(0)
    models = build_conv((3, 32, 32), 1, widths=(96, 192))
    tensors: dict[str, torch.Tensor] = {}
    groups = {}
    for net, module in (("G", models.generator), ("D", models.discriminator)):
        params = [p for p in module.parameters() if p.requires_grad]
        opt = make_optimizer("reference", params, 3e-4, (0.5, 0.999))
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        tensors.update({f"{net}.{k}": v for k, v in module.state_dict().items()})
        flat, groups[net] = flatten_optimizer(opt, f"opt_{net}")
        tensors.update(flat)
    tensors["rng.torch"] = torch.get_rng_state()
    return tensors, {"config": {"dataset": "cifar10"}, "opt_groups": groups, "step": 1}


def main() -> None:
    from safetensors.torch import save_file

    from igan.checkpoint import load_checkpoint, save_checkpoint, tensor_digest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="folder to write in (default: the system temp folder)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    tensors, meta = cifar_state()
    n_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    plain = {k: v.contiguous().clone() for k, v in tensors.items()}
    raw = {k: json.dumps(v) for k, v in meta.items()}
    times: dict[str, list[float]] = {"digest": [], "save_without_digest": [], "save": [], "load": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "last.safetensors"
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            tensor_digest(plain, raw)
            times["digest"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()  # the write alone: what saving cost before the digest
            save_file(plain, str(Path(tmp) / "plain.safetensors"), metadata=raw)
            with open(Path(tmp) / "plain.safetensors", "rb") as f:
                os.fsync(f.fileno())
            times["save_without_digest"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            save_checkpoint(path, tensors, meta)  # digest + atomic write (temp file, fsync, rename)
            times["save"].append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            load_checkpoint(path)  # read + verify the digest + check the metadata
            times["load"].append(time.perf_counter() - t0)
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {"checkpoint_bytes": n_bytes, "tensors": len(tensors), "rounds": args.rounds,
              "median_seconds": {k: round(v, 4) for k, v in median.items()},
              "digest_share_of_save": round(median["digest"] / median["save"], 3),
              "digest_vs_plain_write": round(median["digest"] / median["save_without_digest"], 3),
              "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
              "torch": torch.__version__, "platform": platform.platform()}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
