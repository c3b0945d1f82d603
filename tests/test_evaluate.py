"""`igan evaluate`: inputs (checkpoint, .npz, PNG folder), the metric registry, the offline classifier
score, the semi-supervised test error, Inception plumbing and the errors a user can make.

Everything runs on the embedded digits set on the CPU; the Inception network is used with random
weights on a handful of 8x8 images (it is slow on a CPU), and FID's plumbing is checked with a small
stand-in feature extractor (a 2048-d Fréchet distance alone takes seconds to minutes on a busy CPU).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import igan.plugins
from igan.plugins import hookimpl
from conftest import TINY, assert_clean_error


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own user cache (classifiers, FID statistics) and no Inception weights."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("IGAN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a small shared CPU: threads only wait for each other
    yield
    torch.set_num_threads(threads)


def _main(args) -> int:
    from igan.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    raise AssertionError("igan.cli.main returned without calling sys.exit")


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory) -> Path:
    """A 2-step plain digits run (in-process): its last checkpoint."""
    out = tmp_path_factory.mktemp("evaluate") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _main(["train", "--steps", "2", *TINY, "--out", out]) == 0
    finally:
        torch.set_num_threads(threads)
    return out / "checkpoints" / "last.safetensors"


def _json(code: int, out: str, err: str) -> dict:
    assert code == 0, err
    assert out.count("\n") == 1, out  # exactly one JSON object on stdout
    return json.loads(out)


def _digits_uint8(split: str = "test") -> torch.Tensor:
    from igan.datasets.digits import load_digits
    from igan.metrics.classifier import dataset_uint8

    ds = load_digits()
    return dataset_uint8(ds, ds.x_test if split == "test" else ds.x_train)


def _write_npz(path: Path, images_nchw: torch.Tensor) -> Path:
    np.savez(path, images=images_nchw.permute(0, 2, 3, 1).numpy())
    return path


def _classifier_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "igan" / "classifiers").glob("*.safetensors"))


# --------------------------------------------------------------------------------------------------
# The classifier score, end to end through the three kinds of input


def test_classifier_score_checkpoint_npz_and_folder_agree(digits_ckpt, tmp_path, run_cli):
    args = ["--metric", "classifier-score", "--splits", "2", "--device", "cpu", "--json"]
    res = _json(*run_cli(["evaluate", digits_ckpt, "--n", "200", *args]))
    assert res["metric"] == "classifier-score" and res["n"] == 200 and res["splits"] == 2
    assert 1.0 <= res["mean"] <= 10.0 and res["std"] >= 0.0 and res["fd"] >= 0.0
    ref = res["reference"]
    assert ref["n"] == 297 and ref["mean"] > 5 and ref["fd"] >= 0  # real test images vs real training images
    assert res["classifier"]["trained"] is True and 0.85 < res["classifier"]["test_accuracy"] <= 1.0
    [cached] = _classifier_files(tmp_path)
    assert Path(res["classifier"]["path"]) == cached and cached.name.startswith("digits-")
    stamp = cached.stat().st_mtime_ns

    # The same 200 images written by `igan sample`, read back from an .npz and from a folder of PNGs.
    npz, folder = tmp_path / "x.npz", tmp_path / "pngs"
    assert run_cli(["sample", digits_ckpt, "-n", "200", "-o", npz, "--device", "cpu"])[0] == 0
    assert run_cli(["sample", digits_ckpt, "-n", "200", "-o", f"{folder}/", "--device", "cpu"])[0] == 0
    for source in (npz, folder):
        again = _json(*run_cli(["evaluate", source, "--dataset", "digits", *args]))
        assert again["input_kind"] == ("npz" if source == npz else "folder")
        assert again["n"] == 200
        for key in ("mean", "std", "fd"):
            assert again[key] == pytest.approx(res[key], rel=1e-12, abs=1e-12), key
        assert again["reference"] == res["reference"]
        assert again["classifier"]["trained"] is False  # read from the cache, not retrained
    assert _classifier_files(tmp_path) == [cached] and cached.stat().st_mtime_ns == stamp

    # --retrain trains again (same seed and data: the same classifier, so the same score).
    retrained = _json(*run_cli(["evaluate", npz, "--dataset", "digits", "--retrain", *args]))
    assert retrained["classifier"]["trained"] is True
    assert retrained["mean"] == pytest.approx(res["mean"], rel=1e-9)


def test_classifier_score_computes_the_real_reference_once(tmp_path, monkeypatch):
    """--eval-every scores a run many times: the real images' features are computed at the first call only,
    and the numbers are those of a fresh computation."""
    import igan.metrics.classifier as clf_mod
    from igan.datasets.digits import load_digits

    ds = load_digits()
    clf = clf_mod.load_classifier(ds)
    train, test = _digits_uint8("train"), _digits_uint8("test")
    samples = test.flip(0)[:100]
    monkeypatch.setattr(clf_mod, "_REFERENCES", {})
    seen = []
    real = clf_mod.classifier_outputs
    monkeypatch.setattr(clf_mod, "classifier_outputs", lambda m, x, **kw: (seen.append(x.shape[0]), real(m, x, **kw))[1])
    first = clf_mod.classifier_score(clf, samples, train, test, 5)
    assert seen == [100, 297, 1500]
    second = clf_mod.classifier_score(clf, samples, train, test, 5)
    assert seen == [100, 297, 1500, 100]  # the samples only
    assert second == first
    # what the uncached formula gives
    feats, _ = real(clf.model, samples)
    test_feats, _ = real(clf.model, test)
    assert first["fd"] == clf_mod._fd(feats, test_feats)
    monkeypatch.setattr(clf_mod, "_REFERENCES", {})
    assert clf_mod.classifier_score(clf, samples, train, test, 5) == first


def test_classifier_score_of_real_and_constant_images(tmp_path, run_cli):
    # Real test digits: confident and balanced predictions, a score near the class count (10), and a
    # Fréchet distance of zero to the test set (they are the test set).
    real = _write_npz(tmp_path / "real.npz", _digits_uint8("test"))
    res = _json(*run_cli(["evaluate", real, "--metric", "classifier-score", "--dataset", "digits",
                          "--splits", "2", "--device", "cpu", "--json"]))
    assert res["n"] == 297
    assert 5.0 < res["mean"] <= 10.0
    assert res["fd"] == pytest.approx(0.0, abs=1e-6)
    assert res["reference"]["fd"] < 50.0  # test vs train: the same distribution

    # Constant images all get one prediction: p(y|x) = p(y), KL 0, score exp(0) = 1, whatever the class.
    for value in (0, 255):
        const = _write_npz(tmp_path / f"const{value}.npz", torch.full((40, 1, 8, 8), value, dtype=torch.uint8))
        res = _json(*run_cli(["evaluate", const, "--metric", "classifier-score", "--dataset", "digits",
                              "--splits", "4", "--device", "cpu", "--json"]))
        assert res["mean"] == pytest.approx(1.0, abs=1e-9) and res["std"] == pytest.approx(0.0, abs=1e-9)
        assert res["fd"] > res["reference"]["fd"]


def test_classifier_score_errors(tmp_path, run_cli):
    images = _write_npz(tmp_path / "x.npz", torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    code, out, err = run_cli(["evaluate", images, "--metric", "classifier-score", "--splits", "2"])
    assert_clean_error(code, out, err, 2, "dataset")
    code, out, err = run_cli(["evaluate", images, "--metric", "classifier-score", "--dataset", "cifar10",
                              "--splits", "2"])
    assert_clean_error(code, out, err, 1, "classifier", "cifar10")
    assert "--metric is" in err
    rgb = _write_npz(tmp_path / "rgb.npz", torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    code, out, err = run_cli(["evaluate", rgb, "--metric", "classifier-score", "--dataset", "digits",
                              "--splits", "2", "--device", "cpu"])
    assert_clean_error(code, out, err, 1, "shape")


# --------------------------------------------------------------------------------------------------
# Without --metric: the metric that works for the input, offline


def test_default_metric_of_a_digits_checkpoint_is_the_offline_classifier_score(digits_ckpt, run_cli):
    code, out, err = run_cli(["evaluate", digits_ckpt, "--device", "cpu", "--json"])
    res = _json(code, out, err)
    assert res["metric"] == "classifier-score" and res["n"] == 10_000  # its own sample count, not IS's 50,000
    assert "generating 10000 samples" in err and "50000" not in err
    assert "metric: classifier-score" in err  # says which metric it chose, and how to choose another
    assert "--metric" in err
    explicit = _json(*run_cli(["evaluate", digits_ckpt, "--metric", "classifier-score", "--device", "cpu", "--json"]))
    assert explicit["mean"] == res["mean"] and explicit["fd"] == res["fd"]


def test_default_metric_of_a_semisup_checkpoint_is_its_test_error(tmp_path, run_cli):
    code, out, err = run_cli(["semisup", "--steps", "2", *TINY, "--no-baseline", "--out", tmp_path / "ss"])
    assert code == 0, err
    res = _json(*run_cli(["evaluate", tmp_path / "ss" / "checkpoints" / "last.safetensors", "--device", "cpu",
                          "--json"]))
    assert res["metric"] == "error" and res["n"] == 297 and "test_errors" in res


def test_default_metric_of_files_follows_the_dataset(tmp_path, run_cli):
    from igan.evaluate import default_metric

    images = _write_npz(tmp_path / "x.npz", _digits_uint8("test")[:20])
    res = _json(*run_cli(["evaluate", images, "--dataset", "digits", "--splits", "2", "--json"]))
    assert res["metric"] == "classifier-score"
    assert default_metric(None, "mnist") == "classifier-score"
    assert default_metric(None, "cifar10") == default_metric(None, None) == "is"
    # an image file of an unknown dataset: the Inception Score, whose missing weights are reported
    code, out, err = run_cli(["evaluate", images, "--splits", "2"])
    assert_clean_error(code, out, err, 1, "Inception weights", "--inception-weights")


def test_missing_inception_weights_are_found_before_any_sample_is_generated(digits_ckpt, run_cli):
    code, out, err = run_cli(["evaluate", digits_ckpt, "--metric", "is", "--device", "cpu"])
    assert_clean_error(code, out, err, 1, "Inception weights", "--inception-weights PATH")
    assert "generating" not in err  # not 50,000 samples first
    assert "the path argument" not in err


# --------------------------------------------------------------------------------------------------
# The semi-supervised test error


def test_error_of_semisup_checkpoint_uses_the_ema(tmp_path, run_cli, digits_ckpt):
    from igan.checkpoint import prefixed
    from igan.restore import restore_models
    from igan.datasets.digits import load_digits
    from igan.techniques.semisup import test_errors

    code, out, err = run_cli(["semisup", "--steps", "30", *TINY, "--no-baseline", "--out", tmp_path / "ss",
                              "--json"])
    assert code == 0, err
    trained = json.loads(out)
    ckpt = tmp_path / "ss" / "checkpoints" / "last.safetensors"
    res = _json(*run_cli(["evaluate", ckpt, "--metric", "error", "--device", "cpu", "--json"]))

    # Recompute it: D rebuilt from the checkpoint, its EMA weights loaded, the digits test split.
    restored = restore_models(ckpt, "cpu")
    ema_state = prefixed(restored.tensors, "plugin.semisup.run.ema")
    assert ema_state, "a semisup checkpoint holds the EMA of D"
    ema = copy.deepcopy(restored.models.discriminator)
    ema.load_state_dict(ema_state)
    ds = load_digits()
    wrong = test_errors(ema, ds.x_test, ds.y_test, ds.to_float)
    assert res["metric"] == "error" and res["ema"] is True
    assert res["test_errors"] == wrong == trained["test_errors"]  # and what training reported
    assert res["n"] == 297 and res["test_error"] == pytest.approx(wrong / 297) and res["mean"] == res["test_error"]
    assert res["std"] is None

    # An unsupervised run has no class logits.
    code, out, err = run_cli(["evaluate", digits_ckpt, "--metric", "error", "--device", "cpu"])
    assert_clean_error(code, out, err, 1, "semisup")
    # and files have no discriminator at all
    images = _write_npz(tmp_path / "x.npz", torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    code, out, err = run_cli(["evaluate", images, "--metric", "error"])
    assert_clean_error(code, out, err, 2, "checkpoint", "not an .npz of images")
    code, out, err = run_cli(["evaluate", tmp_path, "--metric", "error"])
    assert_clean_error(code, out, err, 2, "not a folder of images")


# --------------------------------------------------------------------------------------------------
# Inception: the IS with random weights, missing weights, FID plumbing


def test_inception_score_with_random_weights(tmp_path, run_cli):
    from igan.metrics import InceptionV3TF

    weights = tmp_path / "random-inception.pth"
    torch.save(InceptionV3TF().state_dict(), weights)
    images = _write_npz(tmp_path / "x.npz", _digits_uint8("test")[:6])  # grey: repeated to RGB
    res = _json(*run_cli(["evaluate", images, "--metric", "is", "--n", "4", "--splits", "2",
                          "--inception-weights", weights, "--device", "cpu", "--json"]))
    assert res["metric"] == "is" and res["n"] == 4 and res["splits"] == 2
    assert math.isfinite(res["mean"]) and res["mean"] >= 1.0 and math.isfinite(res["std"])


def test_missing_inception_weights(tmp_path, run_cli):
    images = _write_npz(tmp_path / "x.npz", torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    code, out, err = run_cli(["evaluate", images, "--metric", "is", "--splits", "2", "--device", "cpu"])
    assert_clean_error(code, out, err, 1, "IGAN_INCEPTION_WEIGHTS")
    code, out, err = run_cli(["evaluate", images, "--metric", "is", "--splits", "2", "--device", "cpu",
                              "--inception-weights", tmp_path / "nowhere.pth"])
    assert_clean_error(code, out, err, 1, "nowhere.pth")


def test_fid_plumbing_and_statistics_cache(tmp_path, run_cli, monkeypatch):
    """FID with a stand-in feature extractor: the real statistics are computed once and cached."""
    import igan.evaluate as ev
    from igan.metrics import feature_statistics, frechet_distance

    calls = []
    proj = torch.randn(64, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def fake_features(model, images, device, what):
        calls.append((what, images.shape[0]))
        assert images.dtype == torch.uint8 and images.shape[1] == 3  # grey repeated to RGB
        return images[:, 0].flatten(1).double() @ proj, None

    monkeypatch.setattr(ev, "_load_inception", lambda context: object())
    monkeypatch.setattr(ev, "_inception_pool_logits", fake_features)
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"stand-in")  # only its path and size key the cache here
    samples = _digits_uint8("train")[:50]
    images = _write_npz(tmp_path / "x.npz", samples)
    args = ["evaluate", images, "--metric", "fid", "--dataset", "digits", "--inception-weights", weights,
            "--device", "cpu", "--json"]
    res = _json(*run_cli(args))
    assert res["metric"] == "fid" and res["n"] == 50 and res["n_real"] == 50 and res["std"] is None
    assert [c[0] for c in calls] == ["samples", "real train", "real test"]
    assert res["reference"]["n"] == 50 and res["reference"]["mean"] >= 0
    cache = Path(res["stats_cache"])
    assert cache.is_file() and cache.parent.name == "fid-stats" and cache.name.startswith("digits-50-")

    # The number is FID's formula on these features against a fixed random subset of the training set.
    train = _digits_uint8("train")
    idx = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(0))[:50]
    feats = lambda x: x[:, 0].flatten(1).double() @ proj  # noqa: E731
    expected = frechet_distance(*feature_statistics(feats(samples)), *feature_statistics(feats(train[idx])))
    assert res["mean"] == pytest.approx(expected, rel=1e-9)

    calls.clear()
    again = _json(*run_cli(args))
    assert calls == [("samples", 50)]  # both real statistics came from the cache
    assert again["mean"] == pytest.approx(res["mean"], rel=1e-12)

    code, out, err = run_cli(["evaluate", images, "--metric", "fid", "--inception-weights", weights])
    assert_clean_error(code, out, err, 2, "dataset")


# --------------------------------------------------------------------------------------------------
# The metric registry


class MeanPixel:
    @hookimpl
    def igan_register_metrics(self, register):
        register("mean-pixel", lambda images, context: {"mean": float(images.float().mean()), "std": None,
                                                         "splits_seen": context["splits"]}, "mean pixel value")


def test_plugin_metric(tmp_path, run_cli, monkeypatch):
    real = igan.plugins.get_plugin_manager
    monkeypatch.setattr(igan.plugins, "get_plugin_manager",
                        lambda **kw: real(**{**kw, "extra": [*kw.get("extra", ()), ("meanpix", MeanPixel())]}))
    data = torch.arange(4 * 8 * 8, dtype=torch.int64).remainder(256).to(torch.uint8).view(4, 1, 8, 8)
    images = _write_npz(tmp_path / "x.npz", data)
    res = _json(*run_cli(["evaluate", images, "--metric", "mean-pixel", "--splits", "2", "--json"]))
    assert res["metric"] == "mean-pixel" and res["mean"] == pytest.approx(float(data.float().mean()))
    assert res["std"] is None and res["n"] == 4 and res["splits_seen"] == 2
    code, out, err = run_cli(["evaluate", "--help"])
    assert code == 0 and "mean-pixel" in out and "classifier-score" in out


# --------------------------------------------------------------------------------------------------
# Bad inputs


def test_bad_inputs(tmp_path, run_cli):
    np.savez(tmp_path / "noimages.npz", pixels=np.zeros((4, 8, 8, 1), np.uint8))
    np.savez(tmp_path / "float.npz", images=np.zeros((4, 8, 8, 1), np.float32))
    np.savez(tmp_path / "nchw.npz", images=np.zeros((4, 1, 8, 8), np.uint8))
    np.savez(tmp_path / "flat.npz", images=np.zeros((4, 64), np.uint8))
    (tmp_path / "empty").mkdir()
    good = _write_npz(tmp_path / "good.npz", torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    (tmp_path / "notes.txt").write_text("hello")
    cases = [
        (["noimages.npz"], 1, "images"),
        (["float.npz"], 1, "float32"),
        (["nchw.npz"], 1, "shape"),
        (["flat.npz"], 1, "shape"),
        (["empty"], 1, "png"),
        (["missing.npz"], 1, "not found"),
        (["notes.txt"], 2, "notes.txt"),
        (["good.npz", "--metric", "nonsense"], 2, "unknown metric"),
        (["good.npz", "--n", "3", "--splits", "5"], 2, "splits"),
        (["good.npz", "--splits", "5"], 2, "splits"),  # 4 images in 5 splits
        (["good.npz", "--n", "10", "--splits", "2"], 2, "holds"),
    ]
    for args, code_expected, needle in cases:
        code, out, err = run_cli(["evaluate", tmp_path / args[0], *args[1:], "--metric", "classifier-score",
                                  "--dataset", "digits", "--device", "cpu"] if "--metric" not in args else
                                 ["evaluate", tmp_path / args[0], *args[1:], "--device", "cpu"])
        assert_clean_error(code, out, err, code_expected, needle)
    code, out, err = run_cli(["evaluate", good, "--n", "0"])
    assert code == 2 and out == "" and "error:" in err


# ---- the ensemble of a --seeds K folder (Table 1's second row) ----------------------------------------


def test_ensemble_errors_by_hand():
    """Model A is right on examples 0, 1; model B on 0, 2; their mean probabilities are right on 0 and 2
    (B is the more confident one on example 2) and wrong on 1."""
    from igan.ensemble import ensemble_errors

    y = torch.tensor([0, 1, 1])
    a = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    b = torch.tensor([[0.8, 0.2], [0.9, 0.1], [0.1, 0.9]])
    each, together = ensemble_errors([a, b], y)
    assert each == [1, 1] and together == 1
    assert ensemble_errors([a], y) == ([1], 1)


def test_evaluate_a_seeds_folder_gives_per_seed_and_ensemble_errors(run_cli, tmp_path, single_thread):
    from igan.restore import restore_models
    from igan.datasets.digits import load_digits
    from igan.ensemble import test_probabilities
    from igan.restore import evaluation_discriminator

    code, _, err = run_cli(["semisup", "--steps", "20", "--batch-size", "50", "--device", "cpu", "--no-baseline",
                            "--seeds", "3", "--out", tmp_path / "exp"])
    assert code == 0, err
    code, out, table = run_cli(["evaluate", tmp_path / "exp", "--metric", "error", "--json"])
    assert code == 0, table
    result = json.loads(out)
    assert result["input_kind"] == "seeds" and result["seeds"] == [0, 1, 2] and result["models"] == 3
    singles = []
    for seed in (0, 1, 2):
        code, out1, err = run_cli(["evaluate", tmp_path / "exp" / f"seed{seed}" / "checkpoints" / "last.safetensors",
                                   "--metric", "error", "--json"])
        assert code == 0, err
        singles.append(json.loads(out1)["test_errors"])
    assert result["test_errors_per_seed"] == singles
    assert result["mean_test_errors"] == pytest.approx(sum(singles) / 3)
    # the ensemble: argmax of the mean of the three EMA discriminators' softmax outputs
    ds = load_digits(None, False)
    probs = []
    for seed in (0, 1, 2):
        d, ema = evaluation_discriminator(restore_models(tmp_path / "exp" / f"seed{seed}" / "checkpoints" /
                                                         "last.safetensors", "cpu"))
        assert ema
        probs.append(test_probabilities(d, ds.x_test, ds.to_float))
    want = int((torch.stack(probs).mean(0).argmax(1) != ds.y_test).sum())
    assert result["ensemble_test_errors"] == want and result["n"] == ds.x_test.shape[0]
    assert "ensemble of the 3 models" in table and "mean ± std over 3 seeds" in table


def test_ensemble_refuses_unsupervised_runs(run_cli, tmp_path):
    code, _, err = run_cli(["train", "--steps", "1", *TINY, "--seeds", "2", "--out", tmp_path / "gan"])
    assert code == 0, err
    code, _, err = run_cli(["evaluate", tmp_path / "gan", "--metric", "error"])
    assert code == 2 and "an ensemble test error needs semi-supervised runs" in err
