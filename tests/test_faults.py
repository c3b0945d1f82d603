"""The fault matrix (docs/reliability.md): crashes, full or read-only disks, divergence, a second run on
the same folder, a bad environment and plugins that fail or try to take over lose nothing and end in a
one-line error with a hint."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from importlib import metadata

import pytest

from conftest import TINY, assert_clean_error, igan_subprocess
from igan.checkpoint import load_checkpoint
from igan.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """Install a plugin module written in the test as if a package provided it (entry point group igan)."""

    import igan.plugins

    monkeypatch.setattr(igan.plugins, "_warned", set())  # warnings are once per process

    def install(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, name, raising=False)  # another test's module of the same name
        original = metadata.entry_points

        def entry_points(**kw):
            eps = list(original(**kw))
            if kw.get("group") == "igan":
                eps.append(metadata.EntryPoint(name=name, value=name, group="igan"))
            return eps

        monkeypatch.setattr(metadata, "entry_points", entry_points)

    return install


def test_sigkill_at_random_steps_loses_at_most_one_checkpoint_interval(tmp_path):
    rng = random.Random(1234)
    interval = 20
    for attempt in range(3):
        out = tmp_path / f"run{attempt}"
        cmd = [sys.executable, "-m", "igan", "train", "--steps", "2000", "--batch-size", "10", "--log-every", "5",
               "--checkpoint-every", str(interval), "--device", "cpu", "--out", str(out)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_after = rng.randint(25, 120)
        last_logged = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and last_logged < kill_after:
            time.sleep(0.05)
            metrics = out / "metrics.jsonl"
            if metrics.exists():
                lines = [ln for ln in metrics.read_text().splitlines() if ln.endswith("}")]
                if lines:
                    last_logged = json.loads(lines[-1])["step"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert last_logged >= kill_after, "training did not get far enough before the deadline"
        ckpt = out / "checkpoints" / "last.safetensors"
        _, meta = load_checkpoint(ckpt)  # never half written: it always loads
        saved = meta["step"]
        assert saved % interval == 0 and saved <= last_logged + interval
        assert last_logged - saved <= interval + 5  # lost at most one interval (plus the log granularity)
        resumed = subprocess.run([sys.executable, "-m", "igan", "train", "--steps", str(saved + 5), "--batch-size",
                                  "10", "--device", "cpu", "--resume", str(ckpt), "--json"],
                                 capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert json.loads(resumed.stdout)["steps"] == saved + 5


def test_nan_loss_stops_with_the_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path, capsys, third_party):
    third_party("nan_plugin", """
        import torch
        from igan import hookimpl

        @hookimpl
        def igan_extra_loss(step, net):
            if net == "D" and step.it >= 4:  # steps 5, 6, ... diverge
                return {"boom": torch.tensor(float("nan"))}
    """)
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--steps", "20", "--batch-size", "10", "--log-every", "1",
                            "--checkpoint-every", "2", "--out", str(out)], capsys)
    assert code == 1
    assert "error: non-finite loss at step 5" in err and "loss/D/boom=nan" in err and "hint:" in err
    assert "Traceback" not in err
    _, meta = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert meta["step"] == 4  # the last good one, not overwritten with NaN weights


def test_a_plugin_raising_in_a_hook_is_named_with_the_hook(tmp_path, capsys, third_party):
    third_party("faulty_plugin", """
        from igan import hookimpl

        @hookimpl
        def igan_train_start(run):
            raise ValueError("bad configuration of the faulty thing")
    """)
    code, _, err = run_cli(["train", "--steps", "2", "--out", str(tmp_path / "run")], capsys)
    assert code == 1
    assert "plugin faulty_plugin failed in igan_train_start: ValueError: bad configuration" in err
    assert "hint:" in err and "Traceback" not in err


def test_plugin_that_fails_to_import_is_listed_as_broken_and_skipped(tmp_path, capsys, third_party):
    third_party("broken_plugin", "raise ImportError('needs a library that is not installed')\n")
    code, out, err = run_cli(["plugins", "--json"], capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert "needs a library" in rows["broken_plugin"]["error"]
    assert "warning: plugin 'broken_plugin'" in err and "IGAN_DISABLE_PLUGINS=broken_plugin" in err
    code, _, _ = run_cli(["train", "--steps", "2", "--out", str(tmp_path / "run")], capsys)
    assert code == 0


def test_disabled_plugins_are_not_loaded(tmp_path, capsys, third_party, monkeypatch):
    third_party("loud_plugin", "raise RuntimeError('must never be imported')\n")
    monkeypatch.setenv("IGAN_DISABLE_PLUGINS", "loud_plugin")
    code, out, err = run_cli(["plugins", "--json"], capsys)
    assert code == 0 and "loud_plugin" not in out and "must never" not in err


@pytest.mark.parametrize("args, message", [
    (["--labels", "55"], "not divisible by the 10 classes"),
    (["--labels", "2000"], "more than the 1500 training examples"),
    (["--labels", "1500"], "fewer than the 150 labels per class"),
])
def test_bad_label_counts_are_usage_errors(args, message, tmp_path, capsys):
    code, _, err = run_cli(["semisup", "--steps", "2", "--no-baseline", "--out", str(tmp_path / "r"), *args], capsys)
    assert code == 2, err
    assert message in err and "hint:" in err


def test_unwritable_run_directory_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import igan.checkpoint as ck

    out = tmp_path / "run"
    code, _, _ = run_cli(["train", "--steps", "2", "--batch-size", "10", "--out", str(out)], capsys)
    assert code == 0
    before = (out / "checkpoints" / "last.safetensors").read_bytes()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full_disk)
    code, _, err = run_cli(["train", "--steps", "4", "--batch-size", "10", "--resume",
                            str(out / "checkpoints" / "last.safetensors")], capsys)
    assert code == 1 and "No space left on device" in err and "previous checkpoint is intact" in err
    assert (out / "checkpoints" / "last.safetensors").read_bytes() == before
    assert not list((out / "checkpoints").glob("*.tmp"))


# ------------------------------------------------------------------------------------------------
# Round two (issue 21): real file systems, the environment, the command line, one run per folder,
# plugins that try to take over. Each case failed before the fix, except two regression checks (marked).


def _mount_tmpfs(where, options: str) -> None:
    """Mount a real tmpfs at ``where`` (root only); skip the test, saying why, where that is impossible."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small or read-only file system needs a tmpfs mount, which needs root")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")


def _umount(where) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB file system (tmpfs): ``--out`` on it, and ``fill(where)`` makes it really full."""
    where = tmp_path / "disk"
    _mount_tmpfs(where, "size=8m")
    yield where
    _umount(where)


@pytest.fixture
def read_only_dir(tmp_path):
    """A real read-only folder: an empty tmpfs mounted read-only (root ignores a folder's mode bits), or a
    folder without write permission for a user who is not root."""
    where = tmp_path / "ro"
    if os.geteuid() != 0:
        where.mkdir()
        where.chmod(0o555)
        yield where
        where.chmod(0o755)
        return
    _mount_tmpfs(where, "ro,size=1m")
    yield where
    _umount(where)


FILLER = '''
import os
from igan import hookimpl

WHEN = os.environ.get("FILL_WHEN", "")


def fill(folder):
    """Write a file until the file system is full (a real ENOSPC, not a patched one)."""
    fd = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


@hookimpl
def igan_train_start(run):
    if WHEN == "train_start":
        fill(run.run_dir.parent)


@hookimpl
def igan_after_optimizer_step(step, net):
    if WHEN == f"step{step.it + 1}" and net == "G":
        fill(step.run.run_dir.parent)


@hookimpl
def igan_epoch_end(run, epoch):
    if WHEN == "epoch_end":
        fill(run.run_dir.parent)


@hookimpl
def igan_train_end(run, completed):
    if WHEN == "train_end" and completed:
        fill(run.run_dir.parent)
'''

# (when the disk fills, extra flags, the file whose write fails, checkpoint step kept or None)
FULL_DISK = {
    "checkpoint": ("step2", ["--checkpoint-every", "1", "--log-every", "100"], "checkpoints/last.safetensors", 1),
    "first-checkpoint": ("step1", ["--checkpoint-every", "1", "--log-every", "100"], "checkpoints/last.safetensors",
                         None),
    "metrics": ("step3", ["--checkpoint-every", "2", "--log-every", "100"], "metrics.jsonl", 2),
    "config": ("train_start", [], "config.json", None),
    "sample-grid": ("epoch_end", [], "samples/epoch_0001.png", None),
    "summary": ("train_end", [], "summary.json", 3),
}


@pytest.mark.parametrize("case", list(FULL_DISK))
def test_a_really_full_disk_is_a_clear_error_and_loses_nothing(case, small_disk, third_party, run_cli, monkeypatch):
    when, flags, victim, kept = FULL_DISK[case]
    third_party("disk_filler", FILLER)
    monkeypatch.setenv("FILL_WHEN", when)
    run = small_disk / "run"
    code, out, err = run_cli(["train", "--steps", "3", *TINY, *flags, "--out", run])
    assert_clean_error(code, out, err, 1, f"{run / victim}: no space left on device", "free disk space")
    ckpt = run / "checkpoints" / "last.safetensors"
    if kept is None:
        assert "intact" not in err  # no claim about a checkpoint that was never written
    else:
        assert load_checkpoint(ckpt)[1]["step"] == kept  # the last good one, loadable
        if victim.startswith("checkpoints"):
            assert "previous checkpoint is intact" in err
    leftovers = [p.name for p in run.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []  # no temporary file (nor the lock) left behind


@pytest.mark.parametrize("case", ["read-only", "existing-file", "under-a-file"])
def test_out_that_cannot_be_a_run_directory(case, read_only_dir, tmp_path, train_cli):
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    out, expected, needles = {
        "read-only": (read_only_dir / "run", 1, ["cannot create run directory", str(read_only_dir / "run")]),
        "existing-file": (afile, 2, ["is an existing file", str(afile)]),
        "under-a-file": (afile / "run", 2, [f"lies under {afile}, which is a file"]),
    }[case]
    code, stdout, err = train_cli(out)
    assert_clean_error(code, stdout, err, expected, *needles)
    assert afile.read_text() == "not a folder\n"


@pytest.mark.parametrize("case", ["read-only-grid", "read-only-npz", "read-only-folder", "onto-a-file",
                                  "grid-onto-a-folder"])
def test_sample_output_that_cannot_be_written(case, read_only_dir, tmp_path, trained_run, run_cli):
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    (tmp_path / "dir.png").mkdir()
    target, expected, needles = {
        "read-only-grid": (read_only_dir / "g.png", 1, [f"could not write {read_only_dir / 'g.png'}"]),
        "read-only-npz": (read_only_dir / "g.npz", 1, [f"could not write {read_only_dir / 'g.npz'}"]),
        "read-only-folder": (read_only_dir / "imgs", 1, ["cannot create -o folder", str(read_only_dir / "imgs")]),
        "onto-a-file": (afile, 2, ["is an existing file", str(afile)]),
        "grid-onto-a-folder": (tmp_path / "dir.png", 2, [f"cannot write {tmp_path / 'dir.png'}", "existing folder",
                                                       f"{tmp_path / 'dir.png'}/"]),
    }[case]
    code, out, err = run_cli(["sample", trained_run / "checkpoints" / "last.safetensors", "-n", "4", "-o", target])
    assert_clean_error(code, out, err, expected, *needles)
    assert afile.read_text() == "keep me\n"


@pytest.mark.parametrize("args, needles", [
    (["--seed", "18446744073709551615"], ["--seed"]),
    (["--seed", "1e23"], ["--seed"]),  # regression check: typer already refused it (not an integer)
    (["--seed", "4294967295", "--seeds", "2"], ["--seed 4294967295", "largest seed"]),
    (["--device", "tpu"], ["--device tpu", "cpu", "cuda"]),
    (["--lr", "inf"], ["--lr", "finite"]),
    (["--lr", "nan"], ["--lr"]),  # regression check: typer's range check already refused it
    (["--ha", "--ha-weight", "inf"], ["--ha-weight", "finite"]),
])
def test_bad_numbers_and_devices_are_usage_errors(args, needles, tmp_path, train_cli):
    code, out, err = train_cli(tmp_path / "run", *args)
    assert_clean_error(code, out, err, 2, *needles)
    assert not (tmp_path / "run").exists()


def test_sample_seed_out_of_range_is_a_usage_error(trained_run, tmp_path, run_cli):
    code, out, err = run_cli(["sample", trained_run / "checkpoints" / "last.safetensors", "--seed",
                              str(2**64), "-o", tmp_path / "g.png"])
    assert_clean_error(code, out, err, 2, "--seed")


@pytest.mark.parametrize("env, needles", [
    ({"IGAN_DIST_TIMEOUT": "abc"}, ["IGAN_DIST_TIMEOUT='abc'"]),
    ({"WORLD_SIZE": "2", "RANK": "abc"}, ["RANK='abc'"]),
    ({"WORLD_SIZE": "2"}, ["WORLD_SIZE=2", "RANK is not"]),
    ({"RANK": "1"}, ["RANK=1", "WORLD_SIZE is not"]),
    ({"WORLD_SIZE": "2", "RANK": "2"}, ["RANK=2", "outside"]),
    ({"WORLD_SIZE": "two", "RANK": "0"}, ["WORLD_SIZE='two'"]),
    ({"IGAN_COMPILE": "maybe"}, ["IGAN_COMPILE='maybe'", "auto"]),
])
def test_bad_environment_is_a_usage_error(env, needles, tmp_path, train_cli, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, out, err = train_cli(tmp_path / "run")
    assert_clean_error(code, out, err, 2, *needles)
    assert not (tmp_path / "run").exists()


def test_the_last_resort_handler_imports_nothing_and_cannot_fail(run_cli, monkeypatch):
    import igan.cli.app

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("str() of this exception fails too")

    for exc, needle in ((ValueError("boom"), "ValueError: boom"), (Unprintable(), "Unprintable")):
        def broken_app(*a, exc=exc, **k):
            raise exc

        monkeypatch.setattr(igan.cli.app, "build_app", broken_app)
        monkeypatch.setitem(sys.modules, "igan.train", None)  # a module that fails to import, as it did
        code, out, err = run_cli(["plugins"])
        assert_clean_error(code, out, err, 1, needle, "bug in igan")


def test_report_of_a_run_whose_config_is_a_list(train_cli, run_cli, tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    assert train_cli(run)[0] == 0
    (run / "config.json").write_text("[1, 2, 3]\n")
    code, out, err = run_cli(["report", run, "-o", tmp_path / "r.html"])
    assert code == 0, err
    assert "config.json is not a JSON object" in (tmp_path / "r.html").read_text()


# one run per folder

def _wait_for(path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tmp_path, train_cli):
    out = tmp_path / "run"
    first = igan_subprocess(["train", "--steps", "100000", *TINY, "--checkpoint-every", "1", "--out", out])
    try:
        _wait_for(out / "checkpoints" / "last.safetensors", first)
        before = (out / "config.json").read_bytes()
        code, stdout, err = train_cli(out)
        assert_clean_error(code, stdout, err, 1, f"{out} is in use by another igan run (PID {first.pid})")
        code, stdout, err = train_cli(out, "--resume", out / "checkpoints" / "last.safetensors")
        assert_clean_error(code, stdout, err, 1, f"PID {first.pid}")
        assert (out / "config.json").read_bytes() == before
    finally:
        first.kill()
        first.wait(timeout=30)
    # the OS released the lock of the killed run: the folder is usable again (here: it holds a run)
    code, stdout, err = train_cli(out)
    assert_clean_error(code, stdout, err, 2, "already holds a run")


@pytest.mark.parametrize("parallel", [False, True])
def test_seeds_lock_each_seed_folder(parallel, tmp_path, train_cli):
    from igan.runlock import RunLock

    base = tmp_path / "exp"
    with RunLock(base / "seed1"):  # a run of seed 1 is in progress (this process holds its folder)
        code, out, err = train_cli(base, "--seeds", "2", *(["--parallel"] if parallel else []))
    assert_clean_error(code, out, err, 1, f"{base / 'seed1'} is in use", f"PID {os.getpid()}")
    assert not (base / "seed1" / "checkpoints").exists()
    # one after the other, seed 0 ran before seed 1 was refused; all at once, nothing ran
    assert (base / "seed0" / "checkpoints" / "last.safetensors").exists() is not parallel
    with RunLock(base / "seed1"):  # released when the refused run ended
        pass


# plugins that try to take over the host

CLASHING_NAME = '''
from igan import hookimpl

@hookimpl
def igan_addoption(parser):
    parser.add("fm", bool, help="my own feature matching")
'''

CLASHING_FLAG = '''
from igan import hookimpl

@hookimpl
def igan_addoption(parser):
    parser.add("my_steps", int, 1200, flag="--steps", help="steps, my way")
'''


@pytest.mark.parametrize("source, needles", [
    (CLASHING_NAME, ["plugin 'hijacker' declares the option 'fm'", "plugin 'feature_matching'"]),
    (CLASHING_FLAG, ["plugin 'hijacker' declares the flag --steps", "igan itself"]),
])
def test_a_plugin_cannot_take_an_option_name_or_flag(source, needles, tmp_path, third_party, run_cli, train_cli):
    third_party("hijacker", source)
    code, out, err = train_cli(tmp_path / "run")
    assert_clean_error(code, out, err, 1, *needles, "IGAN_DISABLE_PLUGINS=hijacker")
    assert not (tmp_path / "run").exists()  # refused at start-up: no 1,200-step run
    code, out, err = run_cli(["plugins", "--json"])
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert needles[0] in rows["hijacker"]["error"]
    assert rows["feature_matching"]["error"] is None
    code, out, err = run_cli(["train", "--help"])
    assert code == 0 and "--fm" in out and "--steps" in out
    code, out, err = train_cli(tmp_path / "run", "--disable-plugin", "hijacker")
    assert code == 0, err


@pytest.mark.parametrize("raise_it", ["SystemExit(0)", "KeyboardInterrupt()", "GeneratorExit()",
                                      "type('Boom', (BaseException,), {})('boom')"])
def test_a_plugin_that_ends_the_process_at_import_is_a_broken_plugin(raise_it, tmp_path, third_party, run_cli,
                                                                   train_cli, monkeypatch):
    import igan.plugins

    third_party("quitter", f"raise {raise_it}\n")
    code, out, err = run_cli(["plugins", "--json"])
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["quitter"]["error"] and "warning: plugin 'quitter'" in err
    monkeypatch.setattr(igan.plugins, "_warned", set())
    code, out, err = train_cli(tmp_path / "run")
    assert code == 0, err  # carries on without it, saying so
    assert out.strip() == str(tmp_path / "run") and "warning: plugin 'quitter'" in err
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()
    code, out, err = run_cli(["--help"])
    assert code == 0 and "train" in out


@pytest.mark.parametrize("hook", ["igan_train_start", "igan_log", "igan_epoch_end"])
@pytest.mark.parametrize("raise_it", ["SystemExit(0)", "KeyboardInterrupt()"])
def test_a_plugin_hook_cannot_end_the_process(hook, raise_it, tmp_path, third_party, train_cli):
    args = {"igan_train_start": "run", "igan_log": "run, step, values", "igan_epoch_end": "run, epoch"}[hook]
    third_party("quitter", f"""
        from igan import hookimpl

        @hookimpl
        def {hook}({args}):
            raise {raise_it}
    """)
    code, out, err = train_cli(tmp_path / "run")
    assert_clean_error(code, out, err, 1, f"plugin quitter raised {raise_it.replace('()', '')}", hook,
                       "IGAN_DISABLE_PLUGINS=quitter")
    assert "interrupted" not in err and "checkpoint was saved" not in err


def test_a_real_ctrl_c_during_a_plugin_hook_is_still_an_interrupt(tmp_path, third_party, train_cli):
    third_party("slow_plugin", """
        import os
        import signal
        from igan import hookimpl

        @hookimpl
        def igan_train_start(run):
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C while the hook runs
    """)
    code, out, err = train_cli(tmp_path / "run")
    assert code == 130 and "error: interrupted" in err and "quitter" not in err


def test_non_finite_loss_before_any_checkpoint_says_there_is_none(tmp_path, capsys, third_party):
    third_party("nan_plugin", """
        import torch
        from igan import hookimpl

        @hookimpl
        def igan_extra_loss(step, net):
            if net == "D":
                return {"boom": torch.tensor(float("nan"))}
    """)
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--steps", "20", "--batch-size", "10", "--log-every", "1", "--out", str(out)],
                           capsys)
    assert code == 1 and "error: non-finite loss at step 1" in err
    assert "no checkpoint had been written yet" in err and "is kept" not in err
    assert not (out / "checkpoints" / "last.safetensors").exists()


def test_diverged_weights_never_replace_the_last_good_checkpoint(tmp_path, capsys, third_party):
    third_party("nan_weights", """
        import torch
        from igan import hookimpl

        @hookimpl
        def igan_after_optimizer_step(step, net):
            if step.it == 2 and net == "G":  # step 3 ends with NaN weights, between two logging points
                for p in step.run.generator.parameters():
                    p.fill_(float("nan"))
    """)
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--steps", "6", "--batch-size", "10", "--log-every", "100",
                            "--checkpoint-every", "1", "--out", str(out)], capsys)
    assert code == 1 and "error: non-finite weights at step 3" in err and "was not written" in err
    assert "hint:" in err and "Traceback" not in err
    _, meta = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert meta["step"] == 2
