"""Throughput of igan's evaluation networks: images per second of the Inception network (IS/FID) and of
the offline classifier score, for a few batch sizes, on one device.

The Inception network is built with random weights (``InceptionV3TF()``): speed does not depend on the
weights, and no download is needed. Its input is uint8 images of ``--image-size`` (32 = CIFAR-10/SVHN),
resized to 299x299 inside the network as the TF graph does; it runs in float32 with autocast and TF32
off, as in ``igan evaluate``. The classifier score uses the MNIST-sized MLP (784-512-256-10) with random
weights; "score" times the whole metric (features and logits, IS formula, feature statistics and the
Fréchet distance against fixed reference statistics), "forward" only the network.

    python benchmarks/eval_speed.py --device cpu --n 8 --batch-sizes 1,4,8      # a quick CPU check
    python benchmarks/eval_speed.py --device cuda                               # defaults for a GPU

Prints a table and writes JSON (default ``benchmarks/results/eval_speed.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` runs (after one warm-up run), in seconds."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_inception(device: torch.device, batch_sizes: list[int], n: int, size: int, repeats: int) -> list[dict]:
    from igan.metrics import InceptionV3TF, inception_outputs

    model = InceptionV3TF().to(device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for bs in batch_sizes:
        images = torch.randint(0, 256, (max(n, bs), 3, size, size), dtype=torch.uint8, generator=gen)
        seconds = _timed(lambda: inception_outputs(model, images, batch_size=bs, device=device), device, repeats)
        rows.append({"what": "inception", "batch_size": bs, "n": images.shape[0], "seconds": seconds,
                     "images_per_s": images.shape[0] / seconds})
        print(f"inception  batch {bs:>5}  n {images.shape[0]:>6}  {images.shape[0] / seconds:>10.1f} images/s",
              flush=True)
    return rows


def bench_classifier(device: torch.device, batch_sizes: list[int], n: int, repeats: int) -> list[dict]:
    from igan.metrics import feature_statistics, frechet_distance, inception_score
    from igan.metrics.classifier import PixelMLP, classifier_outputs

    torch.manual_seed(0)
    model = PixelMLP((1, 28, 28), (512, 256), 10).to(device).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen)
    ref_feats, _ = classifier_outputs(model, torch.randint(0, 256, (2000, 1, 28, 28), dtype=torch.uint8,
                                                           generator=gen), device=device)
    ref_stats = feature_statistics(ref_feats)
    rows = []
    for bs in batch_sizes:
        seconds = _timed(lambda: classifier_outputs(model, images, batch_size=bs, device=device), device, repeats)
        rows.append({"what": "classifier forward", "batch_size": bs, "n": n, "seconds": seconds,
                     "images_per_s": n / seconds})
        print(f"classifier forward  batch {bs:>5}  n {n:>6}  {n / seconds:>12.1f} images/s", flush=True)

    def score() -> None:
        feats, logits = classifier_outputs(model, images, batch_size=max(batch_sizes), device=device)
        inception_score(logits, 10)
        frechet_distance(*feature_statistics(feats), *ref_stats)

    seconds = _timed(score, device, repeats)
    rows.append({"what": "classifier score (forward + IS + FD)", "batch_size": max(batch_sizes), "n": n,
                 "seconds": seconds, "images_per_s": n / seconds})
    print(f"classifier score    batch {max(batch_sizes):>5}  n {n:>6}  {n / seconds:>12.1f} images/s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--batch-sizes", default=None, help="Inception batch sizes, comma-separated "
                    "(default: 1,4,16 on CPU, 50,100,200,500 on CUDA)")
    ap.add_argument("--n", type=int, default=None, help="images per Inception measurement "
                    "(default: 16 on CPU, 2000 on CUDA; at least the batch size)")
    ap.add_argument("--image-size", type=int, default=32, help="side of the uint8 input images")
    ap.add_argument("--classifier-n", type=int, default=10_000, help="images per classifier measurement")
    ap.add_argument("--classifier-batch-sizes", default="500,5000", help="comma-separated")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per setting (the best is kept)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_speed.json")
    args = ap.parse_args(argv)

    from igan.train import resolve_device

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batch_sizes = [int(b) for b in (args.batch_sizes or ("50,100,200,500" if cuda else "1,4,16")).split(",")]
    n = args.n or (2000 if cuda else 16)
    print(f"device {device} ({torch.cuda.get_device_name(device) if cuda else platform.processor() or 'cpu'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads", flush=True)
    rows = bench_inception(device, batch_sizes, n, args.image_size, args.repeats)
    rows += bench_classifier(device, [int(b) for b in args.classifier_batch_sizes.split(",")], args.classifier_n,
                             args.repeats)

    print(f"\n{'what':<40} {'batch':>6} {'n':>7} {'images/s':>12}")
    for r in rows:
        print(f"{r['what']:<40} {r['batch_size']:>6} {r['n']:>7} {r['images_per_s']:>12.1f}")
    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
              "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "image_size": args.image_size,
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
