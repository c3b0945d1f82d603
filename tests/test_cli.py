"""The command line: what ``igan train`` and ``igan sample`` write, the stdout/stderr contract, and one
clean ``error:``/``hint:`` with the right exit code for each bad input."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from igan.checkpoint import load_checkpoint
from igan.errors import IganError

from conftest import TINY, assert_clean_error, flags_in, help_panels

pytestmark = pytest.mark.usefixtures("single_thread")

CKPT = ("checkpoints", "last.safetensors")


def _ckpt(run_dir):
    return run_dir.joinpath(*CKPT)


# ------------------------------------------------------------------------------------------------
# igan train


def test_train_writes_the_run_directory(train_cli, tmp_path):
    run = tmp_path / "run"
    code, out, err = train_cli(run, steps=2)
    assert code == 0, err
    assert out == f"{run}\n"  # stdout: the run directory and nothing else
    assert "step 2/2" in err  # progress goes to stderr

    config = json.loads((run / "config.json").read_text())
    core = (config["command"], config["dataset"], config["steps"], config["batch_size"])
    assert core == ("train", "digits", 2, 10)
    assert config["model"] == "digits_mlp"  # resolved from the dataset before it is written

    tensors, meta = load_checkpoint(_ckpt(run))
    assert meta["step"] == 2
    assert any(k.startswith("G.") for k in tensors)

    pngs = sorted((run / "samples").glob("*.png"))
    assert len(pngs) == 1
    with Image.open(pngs[0]) as img:
        img.load()
        assert img.format == "PNG" and img.width > 8 and img.height > 8
        assert np.asarray(img).std() > 0  # not a blank image

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss/D" in r]
    assert [r["step"] for r in losses] == [1, 2]  # --log-every 1
    for r in losses:
        assert isinstance(r["loss/G"], float) and math.isfinite(r["loss/D"]) and math.isfinite(r["loss/G"])
    # atomic writes leave no temporary files behind
    leftovers = [p.name for p in run.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_train_json_prints_one_summary_object(train_cli, tmp_path):
    run = tmp_path / "run"
    code, out, err = train_cli(run, "--json", steps=3)
    assert code == 0, err
    assert out.count("\n") == 1
    summary = json.loads(out)
    assert summary["run_dir"] == str(run)
    assert summary["steps"] == 3
    assert summary["checkpoint"] == str(_ckpt(run)) and _ckpt(run).is_file()
    assert set(summary["losses"]) >= {"loss/D", "loss/G"}


def test_train_help_shows_the_techniques_panel(run_cli):
    code, out, err = run_cli(["train", "--help"])
    assert code == 0, err
    panels = help_panels(out)
    assert "Techniques" in panels
    techniques = flags_in(panels["Techniques"])
    assert {"--fm", "--mbd", "--ha", "--ls", "--vbn"} <= techniques
    assert "--fm" not in flags_in(panels.get("Training", ""))


# ------------------------------------------------------------------------------------------------
# igan sample


def test_sample_png_grid(run_cli, trained_run, tmp_path):
    out_png = tmp_path / "grid.png"
    code, out, err = run_cli(["sample", _ckpt(trained_run), "-n", "16", "-o", out_png])
    assert code == 0, err
    assert out == f"{out_png}\n"
    with Image.open(out_png) as img:
        img.load()
        assert img.format == "PNG"
        # a 4 x 4 grid of 8 x 8 digits with padding, upscaled: larger than one image, about square
        assert img.width == img.height and img.width > 4 * 8


def test_sample_npz_is_uint8_nhwc(run_cli, trained_run, tmp_path):
    _, meta = load_checkpoint(_ckpt(trained_run))
    c, h, w = meta["data"]["image_shape"]
    paths = {name: tmp_path / f"{name}.npz" for name in ("a", "b", "other_seed")}
    for name, path in paths.items():
        seed = "1" if name == "other_seed" else "0"
        code, out, err = run_cli(["sample", _ckpt(trained_run), "-n", "16", "-o", path, "--seed", seed])
        assert code == 0, err
        assert out == f"{path}\n"
    with np.load(paths["a"]) as a, np.load(paths["b"]) as b, np.load(paths["other_seed"]) as o:
        images = a["images"]
        assert images.dtype == np.uint8
        assert images.shape == (16, h, w, c)
        assert np.array_equal(images, b["images"])  # the same seed gives the same samples
        assert not np.array_equal(images, o["images"])


def test_sample_folder_of_pngs(run_cli, trained_run, tmp_path):
    folder = tmp_path / "imgs"
    code, out, err = run_cli(["sample", _ckpt(trained_run), "-n", "16", "-o", f"{folder}/"])
    assert code == 0, err
    files = sorted(folder.glob("*.png"))
    assert len(files) == 16
    _, meta = load_checkpoint(_ckpt(trained_run))
    _, h, w = meta["data"]["image_shape"]
    for f in files[:3]:
        with Image.open(f) as img:
            assert img.size == (w, h)


# ------------------------------------------------------------------------------------------------
# errors: one line of what went wrong, one hint, no traceback, the documented exit code

TRAIN_USAGE_ERRORS = {
    "unknown-flag": (["--bogus-flag"], ["--bogus-flag"]),
    "steps-0": (["--steps", "0"], ["--steps"]),
    "steps-negative": (["--steps", "-1"], ["--steps"]),
    "batch-size-0": (["--batch-size", "0"], ["--batch-size"]),
    "option-of-disabled-technique": (["--mbd-kernels", "50"], ["--mbd-kernels", "--mbd"]),
    "bad-choice": (["--fm", "--fm-norm", "l3"], ["--fm-norm", "l3"]),
    "unknown-dataset": (["--dataset", "nope"], ["nope", "digits"]),
    "batch-larger-than-dataset": (["--batch-size", "5000"], ["5000"]),
    "bad-g-loss": (["--g-loss", "hinge"], ["--g-loss", "hinge"]),
    "cuda-without-cuda": (["--device", "cuda"], ["cuda"]),
}


@pytest.mark.parametrize("case", list(TRAIN_USAGE_ERRORS))
def test_train_usage_errors_exit_2(train_cli, tmp_path, case):
    args, needles = TRAIN_USAGE_ERRORS[case]
    if case == "cuda-without-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = tmp_path / "run"
    code, out, err = train_cli(run, *args)  # later flags override the tiny defaults
    assert_clean_error(code, out, err, 2, *needles)
    assert not run.exists()  # nothing written for a bad command line


def test_mnist_missing_files_names_them(train_cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = train_cli(tmp_path / "run", "--dataset", "mnist", "--data-dir", empty)
    assert_clean_error(code, out, err, 1, str(empty), "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def test_sample_missing_checkpoint(run_cli, tmp_path):
    missing = tmp_path / "nope.safetensors"
    code, out, err = run_cli(["sample", missing, "-o", tmp_path / "g.png"])
    assert_clean_error(code, out, err, 1, str(missing))
    assert not (tmp_path / "g.png").exists()


class _Trap:
    """Unpickling this creates a file: loading a checkpoint must never unpickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["text", "truncated", "pickle"])
def test_sample_bad_checkpoint_files(run_cli, trained_run, tmp_path, kind):
    bad = tmp_path / "bad.safetensors"
    marker = tmp_path / "unpickled"
    if kind == "text":
        bad.write_text("this is not a checkpoint\n")
    elif kind == "truncated":
        data = _ckpt(trained_run).read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(pickle.dumps({"G.weight": torch.zeros(2), "trap": _Trap(marker)}))
    code, out, err = run_cli(["sample", bad, "-o", tmp_path / "g.png"])
    assert_clean_error(code, out, err, 1, str(bad))
    assert not marker.exists()
    assert not (tmp_path / "g.png").exists()


def test_resume_with_another_technique_set_is_refused(train_cli, run_cli, tmp_path):
    run = tmp_path / "run"
    assert train_cli(run, steps=2)[0] == 0
    before = {p: (run / p).read_bytes() for p in ("config.json", "metrics.jsonl", "/".join(CKPT))}
    code, out, err = run_cli(["train", "--steps", "4", *TINY, "--resume", _ckpt(run), "--fm"])
    assert_clean_error(code, out, err, 2, "differ", "--fm (the checkpoint: --no-fm)", str(_ckpt(run)))
    # a refused resume leaves the run exactly as it was (config.json included)
    assert {p: (run / p).read_bytes() for p in before} == before


def test_resume_from_a_missing_checkpoint_writes_nothing(run_cli, tmp_path):
    missing = tmp_path / "elsewhere" / "last.safetensors"
    missing.parent.mkdir()
    code, out, err = run_cli(["train", "--steps", "4", *TINY, "--resume", missing])
    assert_clean_error(code, out, err, 1, str(missing))
    assert list(missing.parent.iterdir()) == []  # no config.json, metrics or samples beside it


def test_existing_run_directory_needs_resume(train_cli, tmp_path):
    run = tmp_path / "run"
    assert train_cli(run, steps=2)[0] == 0
    before = _ckpt(run).read_bytes()
    metrics_before = (run / "metrics.jsonl").read_text()
    code, out, err = train_cli(run, steps=2)
    assert_clean_error(code, out, err, 2, str(run), "--resume")
    assert _ckpt(run).read_bytes() == before
    assert (run / "metrics.jsonl").read_text() == metrics_before


def test_igan_debug_shows_the_exception(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("IGAN_DEBUG", "1")
    with pytest.raises(IganError, match="not found"):
        run_cli(["sample", tmp_path / "nope.safetensors"])


def test_no_arguments_shows_help_without_an_empty_error(run_cli):
    code, out, err = run_cli([])
    assert "train" in out + err and "sample" in out + err  # the command list
    assert code in (0, 2)
    assert "Traceback" not in err
    for line in err.splitlines():  # an error line, if any, must say something
        assert line.strip() not in ("error:", "hint:"), err
        if line.startswith("error:"):
            assert line[len("error:"):].strip(), err
