"""The command line: what ``igan train`` and ``igan sample`` write, the stdout/stderr contract, and one
clean ``error:``/``hint:`` with the right exit code for each bad input."""

from __future__ import annotations

import json
import math
import os
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


@pytest.mark.parametrize("name, fmt", [("grid.jpg", "JPEG"), ("grid.JPEG", "JPEG"), ("grid.webp", "WEBP"),
                                       ("grid.png", "PNG")])
def test_sample_grid_in_the_format_of_the_suffix(run_cli, trained_run, tmp_path, name, fmt):
    from PIL import features

    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    path = tmp_path / name
    code, out, err = run_cli(["sample", _ckpt(trained_run), "-n", "16", "-o", path])
    assert code == 0, err
    assert out == f"{path}\n" and path.is_file()  # one file, not a folder named grid.jpg
    with Image.open(path) as img:
        img.load()
        assert img.format == fmt and img.width == img.height and img.width > 4 * 8
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


def test_sample_into_an_existing_folder_without_a_slash(run_cli, trained_run, tmp_path):
    folder = tmp_path / "imgs.v2"  # a suffix, but a folder that exists: single images inside
    folder.mkdir()
    code, out, err = run_cli(["sample", _ckpt(trained_run), "-n", "3", "-o", folder])
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png", "000002.png"]


@pytest.mark.parametrize("name", ["grid.gif", "samples.tar"])
def test_sample_refuses_a_suffix_it_cannot_write(run_cli, trained_run, tmp_path, name):
    path = tmp_path / name
    code, out, err = run_cli(["sample", _ckpt(trained_run), "-o", path])
    assert_clean_error(code, out, err, 2, name, ".png", ".jpg", ".npz", f"{path}/")
    assert not path.exists()


def test_sample_grid_size_limit_applies_to_every_grid_format(run_cli, trained_run, tmp_path):
    code, out, err = run_cli(["sample", _ckpt(trained_run), "-n", "5000", "-o", tmp_path / "big.jpg"])
    assert_clean_error(code, out, err, 2, "5000", ".npz")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# models and image sizes


def test_model_that_does_not_fit_the_dataset_is_a_usage_error(train_cli, tmp_path):
    run = tmp_path / "run"
    code, out, err = train_cli(run, "--model", "cifar_conv")
    assert_clean_error(code, out, err, 2, "cifar_conv", "32x32", "8x8", "digits_mlp", "mnist_mlp")
    assert "svhn_conv" not in err  # it is named only among the models that do not fit
    assert "bug" not in err and not run.exists()


def test_model_defs_state_their_image_sizes():
    from igan.plugins import get_plugin_manager
    from igan.train import model_registry

    models = model_registry(get_plugin_manager())
    assert models["cifar_conv"].image_sizes == ((32, 32),) and models["svhn_conv"].accepts((3, 32, 32))
    assert not models["cifar_conv"].accepts((1, 8, 8))
    assert models["mnist_mlp"].image_sizes is None and models["mnist_mlp"].accepts((1, 8, 8))


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


def test_no_arguments_shows_help_and_exits_0(run_cli):
    code, out, err = run_cli([])
    assert code == 0, err
    assert "Usage: igan" in out and "train" in out and "sample" in out  # the help, with the command list
    assert "error" not in err and "Traceback" not in err


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(run_cli, flag):
    import igan

    code, out, err = run_cli([flag])
    assert code == 0, err
    assert out == f"igan {igan.__version__}\n"  # data on stdout, one line, as `uv --version`


def test_version_is_in_the_help(run_cli):
    code, out, _ = run_cli(["--help"])
    assert code == 0 and "--version" in out and "-V" in out


# ------------------------------------------------------------------------------------------------
# help text


COMMANDS = ["train", "semisup", "sample", "evaluate", "report", "plugins"]


def _help(run_cli, *args) -> str:
    code, out, err = run_cli([*args, "--help"], env={"COLUMNS": "400"})  # one row per option
    assert code == 0, err
    return out


def _rows(text: str) -> list[str]:
    """The option rows of rich help panels: ``--flag  TYPE  help [default: x]``."""
    return [line.strip(" │") for line in text.splitlines() if line.strip(" │").startswith(("-", "*"))]


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]])
def test_flags_show_no_value_and_defaults_are_stated_once(run_cli, command):
    text = _help(run_cli, *command)
    rows = _rows(text)
    assert rows, text
    for row in rows:
        assert "<bool>" not in row, row  # a flag takes no value: no `-h <bool>`
        if "[default:" in row:
            before = row.split("[default:")[0]
            assert "default" not in before.lower(), f"default stated twice: {row}"


def test_each_command_describes_its_own_options(run_cli):
    train, semisup = _help(run_cli, "train"), _help(run_cli, "semisup")
    for text, other in ((train, "semisup"), (semisup, "for train")):
        assert not [row for row in _rows(text) if other in row], f"help mentions {other!r}"
    fm_train = next(row for row in _rows(train) if row.startswith("--fm "))
    fm_semisup = next(row for row in _rows(semisup) if row.startswith("--fm "))
    assert "default: off" in fm_train and "default: on" in fm_semisup
    assert "label" not in next(row for row in _rows(train) if row.startswith("--seeds "))
    assert "--label-seed" in next(row for row in _rows(semisup) if row.startswith("--seeds "))


def test_choices_are_listed_and_enforced(run_cli, train_cli, tmp_path):
    rows = _rows(_help(run_cli, "train"))
    for flag, choices in (("--g-loss", "ns|minimax"), ("--adam", "reference|torch"),
                          ("--lr-schedule", "linear|cosine"), ("--fm-norm", "l2|l1"), ("--ls-g-target", "one|half")):
        row = next(r for r in rows if r.startswith(flag + " "))
        assert f"<{choices}>" in row, row
    code, out, err = train_cli(tmp_path / "run", "--adam", "sgd")
    assert_clean_error(code, out, err, 2, "--adam", "sgd", "reference")


@pytest.mark.parametrize("command, usage", [("sample", "Usage: igan sample [OPTIONS] CHECKPOINT"),
                                             ("evaluate", "Usage: igan evaluate [OPTIONS] INPUT"),
                                             ("report", "Usage: igan report [OPTIONS] RUN_DIR...")])
def test_usage_lines_name_the_arguments(run_cli, command, usage):
    [line] = [line.strip() for line in _help(run_cli, command).splitlines() if "Usage:" in line]
    assert line == usage  # CHECKPOINT, not {checkpoint}


def test_command_list_has_one_line_descriptions(run_cli):
    """Each command's description in `igan --help` is one sentence on one row (no hard line break)."""
    commands = [line.strip(" │") for line in help_panels(_help(run_cli))["Commands"].splitlines()]
    assert [c.split()[0] for c in commands] == COMMANDS
    assert all(c.endswith(".") for c in commands), commands


def test_option_of_a_disabled_builtin_plugin_says_it_is_disabled(train_cli, tmp_path):
    run = tmp_path / "run"
    code, out, err = train_cli(run, "--disable-plugin", "feature_matching", "--fm")
    assert_clean_error(code, out, err, 2, "--fm", "feature_matching", "disabled")
    assert "No such option" not in err


def test_option_of_a_plugin_disabled_by_the_environment(run_cli, tmp_path):
    code, out, err = run_cli(["train", "--steps", "2", *TINY, "--out", tmp_path / "run", "--mbd"],
                             env={"IGAN_DISABLE_PLUGINS": "minibatch_discrimination"})
    assert_clean_error(code, out, err, 2, "--mbd", "minibatch_discrimination", "IGAN_DISABLE_PLUGINS")
    assert not (tmp_path / "run").exists()


def _pty_stdout(args: list[str]) -> tuple[int, str, str]:
    """Run ``python -m igan ARGS`` with stdout on a pseudo-terminal (stderr a pipe)."""
    from conftest import run_on_terminal

    return run_on_terminal(args, "stdout", env={**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"})


def test_plugins_in_a_terminal_prints_the_table_once(run_cli):
    code, tty_out, err = _pty_stdout(["plugins"])
    assert code == 0, err
    assert "feature_matching" in err and "hooks" in err  # the table
    assert tty_out.strip() == ""  # not the names again
    code, out, err = run_cli(["plugins"])  # stdout a pipe: the names, for scripts
    assert code == 0 and "feature_matching" in out.split()
