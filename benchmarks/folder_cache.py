"""Speed of the ``--dataset folder`` cache: building it (images decoded per second, by decoding threads),
loading it when the folder is unchanged, and updating it after a few files changed.

The images are generated once: ``--n`` JPEGs of ``--file-size`` px (default 10,000 of 64x64, quality 90),
smooth random colour fields (8x8 noise upscaled bicubically, plus a little pixel noise), in ten class
folders, so they decode like photos rather than like incompressible noise. Every build starts from an
empty cache folder; "cached load" is the whole ``load_folder`` call on an unchanged folder (scan and
stat every file, compare with the manifest, read the array, split), the median of ``--repeats`` runs.

    python benchmarks/folder_cache.py                          # 10,000 64x64 JPEGs, 1 and 2 threads
    python benchmarks/folder_cache.py --n 500 --repeats 1      # a quick check

Each row gives the wall time and the CPU time of the process (all its threads): on a machine shared with
other jobs the wall time grows with the load, the CPU time much less; the load average is recorded too.

Prints a table and writes JSON (default ``benchmarks/results/folder_cache.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def generate(root: Path, n: int, size: int, seed: int = 0) -> float:
    """``n`` JPEGs in ten class folders below ``root`` (skipped when they exist); returns seconds taken."""
    from PIL import Image

    marker = root / f".generated-{n}-{size}"
    if marker.exists():
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        arr = np.asarray(small).astype(np.int16) + rng.integers(-8, 9, (size, size, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    marker.write_text("")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--file-size", type=int, default=64, help="pixels of the generated JPEGs")
    parser.add_argument("--image-size", type=int, default=64, help="--image-size the folder is loaded at")
    parser.add_argument("--workers", default="1,2", help="decoding threads to time, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where the JPEGs go (default: a folder in the system temp dir, kept for reruns)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/folder_cache.json"))
    args = parser.parse_args()

    import torch

    from igan.datasets.folder import load_folder
    from igan.datasets.memory import format_bytes

    load_before = os.getloadavg()
    root = args.data_dir or Path(tempfile.gettempdir()) / f"igan-bench-jpegs-{args.n}-{args.file_size}"
    gen_s = generate(root, args.n, args.file_size)
    files_bytes = sum(p.stat().st_size for p in root.rglob("*.jpg"))
    rows = []
    work = Path(tempfile.mkdtemp(prefix="igan-bench-cache-"))
    try:
        for workers in [int(w) for w in args.workers.split(",")]:
            cache = work / f"w{workers}"
            builds, cpus = [], []
            for _ in range(args.repeats):
                shutil.rmtree(cache, ignore_errors=True)
                t0, c0 = time.perf_counter(), time.process_time()
                ds = load_folder(root, image_size=args.image_size, cache_dir=cache, workers=workers, progress=False)
                builds.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            build, cpu = statistics.median(builds), statistics.median(cpus)
            rows.append({"what": "build", "workers": workers, "seconds": build, "cpu_seconds": cpu,
                         "images_per_s": args.n / build, "runs": builds, "cpu_runs": cpus})
            print(f"build   {workers} thread(s)  {build:8.2f} s (cpu {cpu:6.2f} s)  {args.n / build:9.0f} images/s",
                  flush=True)
        loads, cpus = [], []
        for _ in range(max(args.repeats, 3)):
            t0, c0 = time.perf_counter(), time.process_time()
            ds = load_folder(root, image_size=args.image_size, cache_dir=cache, progress=False)
            loads.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        load, cpu = statistics.median(loads), statistics.median(cpus)
        rows.append({"what": "cached load", "seconds": load, "cpu_seconds": cpu, "images_per_s": args.n / load,
                     "runs": loads, "cpu_runs": cpus})
        print(f"cached load          {load:8.3f} s (cpu {cpu:6.3f} s)  {args.n / load:9.0f} images/s", flush=True)
        # ten files touched: only they are decoded again
        for p in sorted(root.rglob("*.jpg"))[:10]:
            os.utime(p)
        t0, c0 = time.perf_counter(), time.process_time()
        load_folder(root, image_size=args.image_size, cache_dir=cache, progress=False)
        update, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append({"what": "update (10 files touched)", "seconds": update, "cpu_seconds": cpu})
        print(f"update, 10 touched   {update:8.3f} s (cpu {cpu:6.3f} s)", flush=True)
        cache_bytes = sum(p.stat().st_size for p in cache.rglob("images-*.npy"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {"benchmark": "folder_cache", "n": args.n, "file_size": args.file_size, "image_size": args.image_size,
              "jpeg_bytes": files_bytes, "cache_bytes": cache_bytes, "dataset_shape": list(ds.image_shape),
              "generate_seconds": gen_s, "rows": rows, "load_average": {"before": load_before, "after": os.getloadavg()},
              "machine": {
                  "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                  "torch": torch.__version__, "pillow": __import__("PIL").__version__,
                  "numpy": np.__version__}, "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    print()
    print("| what | threads | wall s | CPU s | images/s (wall) | images per CPU-s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ips = f"{r['images_per_s']:.0f}" if "images_per_s" in r else "–"
        per_cpu = f"{args.n / r['cpu_seconds']:.0f}" if "images_per_s" in r and r["cpu_seconds"] > 0 else "–"
        print(f"| {r['what']} | {r.get('workers', '–')} | {r['seconds']:.3f} | {r['cpu_seconds']:.3f} | {ips} | "
              f"{per_cpu} |")
    print(f"\n{args.n} JPEGs, {format_bytes(files_bytes)} on disk; cache {format_bytes(cache_bytes)}; load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
