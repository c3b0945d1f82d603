"""Cross-check igan's Inception network and Inception Score against torch-fidelity, with RANDOM weights.

The real ``pt_inception-2015-12-05-6726825d.pth`` is not needed: both implementations load the *same*
random state dict (torch-fidelity's extractor has the same key layout), see the *same* uint8 images, and
the script compares

* ``pool`` (2048-d, torch-fidelity's ``'2048'``) and ``logits_unbiased`` (1008-d) feature by feature;
* the Inception Score (mean, std) of igan's ``inception_score`` on igan's logits against torch-fidelity's
  ``isc_features_to_metric`` on torch-fidelity's logits (same splits, no shuffle, and again with
  torch-fidelity's default shuffle seed 2020).

It exits with status 1 if the relative IS-mean difference exceeds ``--rtol`` (default 1e-3).

Random weights make a weak test unless the numbers are non-trivial, so:

* batch-norm running statistics are perturbed (``running_mean ~ 0.1*N(0,1)``, ``running_var ~ U(0.5, 2)``)
  and BN affine parameters get random values, so every BN is a real affine map (eps 0.001 matters);
* the images are structured (per-image random 4x4 colour patterns upsampled, plus noise), not i.i.d.
  noise, so the network's outputs differ between images;
* the ``fc`` weight is rescaled, from a first pass of igan's network, so that ``logits_unbiased`` vary
  across images by about ``--logit-spread`` (default 3): otherwise the softmaxes of all images are
  nearly equal and IS is ~1 whatever the implementation does.

torch-fidelity is imported WITHOUT torchvision (not installable beside this torch): the package's
``__init__`` (which imports the CLIP/VGG extractors and ``utils``, hence torchvision and tqdm) is
bypassed by registering a bare ``torch_fidelity`` package object whose ``__path__`` is the installed
package directory; ``feature_extractor_inceptionv3`` then imports only torch and torch-fidelity's own
small helper modules. ``metric_isc`` imports ``torch_fidelity.utils`` (torchvision, tqdm) for its
data-loading entry points only; a stub ``torch_fidelity.utils`` module with placeholder names is put in
``sys.modules`` so that ``isc_features_to_metric`` (which uses none of them) can be imported unchanged.
No torch-fidelity code that computes anything is replaced.

Usage (torch-fidelity installed with ``pip install --no-deps torch-fidelity``)::

    python benchmarks/crosscheck_torch_fidelity.py [--n-per-size 10] [--splits 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import torch


def import_torch_fidelity_without_torchvision():
    """(FeatureExtractorInceptionV3, isc_features_to_metric, version) without running the package __init__."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torch-fidelity is not installed: pip install --no-deps torch-fidelity")
    pkg_dir = list(spec.submodule_search_locations)[0]
    if "torch_fidelity" not in sys.modules:
        pkg = types.ModuleType("torch_fidelity")
        pkg.__path__ = [pkg_dir]
        pkg.__file__ = os.path.join(pkg_dir, "__init__.py")
        sys.modules["torch_fidelity"] = pkg
    if "torch_fidelity.utils" not in sys.modules:
        try:
            import torchvision  # noqa: F401  (if present, the real utils can be used)
            import tqdm  # noqa: F401
        except ImportError:
            stub = types.ModuleType("torch_fidelity.utils")
            stub.__doc__ = "stub: only isc_features_to_metric is used, which needs none of these"

            def _unavailable(*_a, **_k):
                raise RuntimeError("torch_fidelity.utils is stubbed in this cross-check")

            for name in ("extract_featuresdict_from_input_id_cached", "create_feature_extractor",
                         "resolve_feature_extractor", "resolve_feature_layer_for_metric"):
                setattr(stub, name, _unavailable)
            sys.modules["torch_fidelity.utils"] = stub
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_isc import isc_features_to_metric
    version = "?"
    try:
        from torch_fidelity.version import __version__ as version
    except Exception:
        pass
    return FeatureExtractorInceptionV3, isc_features_to_metric, version


def random_state_dict(seed: int) -> dict[str, torch.Tensor]:
    from igan.metrics.inception import InceptionV3TF

    torch.manual_seed(seed)
    net = InceptionV3TF()
    g = torch.Generator().manual_seed(seed + 1)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            # He init: PyTorch's default conv init shrinks the signal ~sqrt(3)x per layer, so after the
            # ~45 layers the image content is ~1e-9 of the BN-bias part and every image gets the same pool.
            w = torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5
            m.weight.copy_(w)
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
            m.weight.copy_(0.8 + 0.4 * torch.rand(c, generator=g))
            m.bias.copy_(0.1 * torch.randn(c, generator=g))
            m.num_batches_tracked.fill_(0)
    net.fc.bias.copy_(torch.randn(1008, generator=g))  # must NOT enter logits_unbiased
    return {k: v.clone() for k, v in net.state_dict().items()}


def make_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Structured uint8 NCHW images: random 4x4 colour patterns, nearest-upsampled, with noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 255
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")
    noise_amp = 10 + 60 * torch.rand(n, 1, 1, 1, generator=g)
    x = x + noise_amp * torch.randn(n, 3, size, size, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-per-size", type=int, default=10, help="images per resolution (32 and 64)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--splits", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--logit-spread", type=float, default=3.0)
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--weights-out", default=None, help="where to save the random weights "
                    "(default: a temporary file, deleted afterwards)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from igan.metrics.inception import InceptionV3TF, inception_outputs, load_inception
    from igan.metrics.scores import inception_score

    FE, isc_features_to_metric, tf_version = import_torch_fidelity_without_torchvision()
    print(f"torch {torch.__version__}, torch-fidelity {tf_version}, threads {torch.get_num_threads()}")

    sd = random_state_dict(args.seed)
    image_sets = [make_images(args.n_per_size, s, args.seed + 100 + s) for s in args.sizes]
    n_total = sum(x.shape[0] for x in image_sets)

    # Calibration pass (pool does not depend on fc): rescale fc.weight so logits vary across images.
    t0 = time.perf_counter()
    calib = InceptionV3TF()
    calib.load_state_dict(sd)
    pool0 = torch.cat([calib(x).pool.double() for x in image_sets])
    mu = pool0.mean(0)
    centred = pool0 - mu
    # Remove each fc row's component along the mean pool vector: otherwise a shared per-class offset
    # (max |logit| >> spread) makes every image pick the same class and IS stays near 1.
    w = sd["fc.weight"].double()
    w = w - torch.outer(w @ mu, mu) / (mu @ mu)
    sd["fc.weight"] = w.float()
    spread = float((centred @ w.t()).std())
    if not (spread > 0 and torch.isfinite(pool0).all()):
        print(f"degenerate random network (logit spread {spread}, pool finite "
              f"{bool(torch.isfinite(pool0).all())})")
        return 2
    sd["fc.weight"] = (sd["fc.weight"].double() * (args.logit_spread / spread)).float()
    print(f"calibration pass: {time.perf_counter() - t0:.1f} s; pool |max| {float(pool0.abs().max()):.4g}, "
          f"fc.weight scaled by {args.logit_spread / spread:.4g}")

    tmpdir = None
    if args.weights_out:
        path = Path(args.weights_out)
    else:
        tmpdir = tempfile.TemporaryDirectory()
        path = Path(tmpdir.name) / "random_inception.pth"
    torch.save(sd, path)

    # igan: the public path (load_inception from a file, inception_outputs).
    t0 = time.perf_counter()
    model = load_inception(path=path)
    ig = [inception_outputs(model, x, batch_size=args.n_per_size) for x in image_sets]
    ig_pool = torch.cat([p for p, _ in ig])
    ig_logits = torch.cat([lg for _, lg in ig])
    t_ig = time.perf_counter() - t0

    # torch-fidelity: its extractor loading the same file (strict load_state_dict).
    t0 = time.perf_counter()
    fe = FE("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path))
    tf_pool_l, tf_logits_l = [], []
    with torch.no_grad():
        for x in image_sets:
            p, lg = fe(x)
            tf_pool_l.append(p.double())
            tf_logits_l.append(lg.double())
    tf_pool = torch.cat(tf_pool_l)
    tf_logits = torch.cat(tf_logits_l)
    t_tf = time.perf_counter() - t0
    if tmpdir is not None:
        tmpdir.cleanup()

    ig_keys = set(InceptionV3TF().state_dict())
    tf_keys = set(fe.state_dict())
    print(f"state-dict keys: igan {len(ig_keys)}, torch-fidelity {len(tf_keys)}, identical: "
          f"{ig_keys == tf_keys}")
    print(f"images: {n_total} ({args.n_per_size} each at {args.sizes}); forward time igan {t_ig:.1f} s, "
          f"torch-fidelity {t_tf:.1f} s")
    print(f"logits_unbiased: std of centred (across images) "
          f"{float((ig_logits - ig_logits.mean(0)).std()):.3f}, max |.| {float(ig_logits.abs().max()):.3f}; "
          f"pool: max |.| {float(ig_pool.abs().max()):.4g}, relative spread across images "
          f"{float((ig_pool - ig_pool.mean(0)).std() / ig_pool.std()):.3g}")
    print()

    rows = []
    rows.append(("pool (2048) max abs diff", float((ig_pool - tf_pool).abs().max())))
    rows.append(("pool (2048) max rel diff (vs max|.|)", rel(ig_pool, tf_pool)))
    rows.append(("logits_unbiased max abs diff", float((ig_logits - tf_logits).abs().max())))
    rows.append(("logits_unbiased max rel diff (vs max|.|)", rel(ig_logits, tf_logits)))

    results = []
    configs = [("no shuffle", None, False), ("shuffle seed 2020", 2020, True)]
    for label, seed, shuffle in configs:
        ig_mean, ig_std = inception_score(ig_logits, splits=args.splits, shuffle_seed=seed)
        tf = isc_features_to_metric(tf_logits.float(), splits=args.splits, shuffle=shuffle,
                                    rng_seed=2020)
        tf_mean, tf_std = tf["inception_score_mean"], tf["inception_score_std"]
        # Same formula on the same logits: isolates the IS code from the network.
        tf_on_ig = isc_features_to_metric(ig_logits, splits=args.splits, shuffle=shuffle, rng_seed=2020)
        results.append((label, ig_mean, ig_std, tf_mean, tf_std, tf_on_ig["inception_score_mean"],
                        tf_on_ig["inception_score_std"]))

    w = max(len(r[0]) for r in rows)
    for name, v in rows:
        print(f"{name:<{w}}  {v:.3e}")
    print()
    print(f"{'IS, splits=' + str(args.splits):<20} {'igan':>22} {'torch-fidelity':>22} {'rel diff':>10}  "
          f"{'tf-IS on igan logits rel diff':>30}")
    worst = 0.0
    worst_m1 = 0.0
    for label, igm, igs, tfm, tfs, tfm2, tfs2 in results:
        rmean = abs(igm - tfm) / abs(tfm)
        rstd = abs(igs - tfs) / max(abs(tfs), 1e-300)
        worst = rmean if rmean != rmean else max(worst, rmean)  # NaN sticks (and fails)
        worst_m1 = max(worst_m1, abs(igm - tfm) / abs(tfm - 1.0))
        print(f"{label + ' mean':<20} {igm:>22.15g} {tfm:>22.15g} {rmean:>10.2e}  "
              f"{abs(igm - tfm2) / abs(tfm2):>30.2e}")
        print(f"{label + ' std':<20} {igs:>22.15g} {tfs:>22.15g} {rstd:>10.2e}  "
              f"{abs(igs - tfs2) / max(abs(tfs2), 1e-300):>30.2e}")
    print()
    print(f"worst |IS_igan - IS_tf| / (IS_tf - 1): {worst_m1:.2e}")
    ok = worst <= args.rtol  # False for NaN
    print(f"{'PASS' if ok else 'FAIL'}: worst relative IS-mean difference {worst:.2e} "
          f"({'<=' if ok else '>'} rtol {args.rtol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
