"""The plugin packages under plugins/ (igan-spectral-norm, igan-gen-ema), end to end, when installed.

CI (``.ci/run``) pip-installs every ``plugins/*/`` after igan; a developer who has not installed them
sees these tests skipped (``pytest.importorskip`` plus a check that the distribution's metadata, and so
its entry point, is installed). Each package's own test suite (``plugins/<pkg>/tests``) runs here too,
in a subprocess with the package folder as the working directory, so its ``pyproject.toml`` pytest
settings and its ``conftest.py`` apply exactly as when the package's authors run ``pytest`` there.
A subprocess keeps the two suites' ``tests/conftest.py`` modules apart and keeps igan's
``testpaths = ["tests"]`` unchanged.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import flags_in, help_panels

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {  # distribution -> (module, entry-point name)
    "igan-spectral-norm": ("igan_spectral_norm", "spectral_norm"),
    "igan-gen-ema": ("igan_gen_ema", "gen_ema"),
}


def require(dist: str):
    """Skip unless the package is importable and installed (its entry point is what igan loads)."""
    module = pytest.importorskip(PACKAGES[dist][0])
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is importable but not installed (pip install -e plugins/{dist})")
    return module


@pytest.mark.parametrize("dist", sorted(PACKAGES))
def test_package_test_suite_passes(dist):
    require(dist)
    folder = REPO / "plugins" / dist
    if not (folder / "tests").is_dir():
        pytest.skip(f"{folder}/tests is not here")
    env = {**os.environ, "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is faster, and fair to a busy machine
    env.pop("IGAN_DEBUG", None)
    env.pop("IGAN_DISABLE_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests"], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{dist}'s tests failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    assert re.search(r"\b\d+ passed\b", proc.stdout) and "skipped" not in proc.stdout, proc.stdout[-2000:]


def test_plugins_json_lists_both_packages_with_their_versions(run_cli):
    for dist in PACKAGES:
        require(dist)
    code, out, err = run_cli(["plugins", "--json"])
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    for dist, (module, name) in PACKAGES.items():
        row = rows[name]
        assert row["version"] == metadata.version(dist) == "0.1.0"
        assert row["source"] == f"package:{dist}" and row["module"] == module and row["error"] is None
        assert "igan_addoption" in row["hooks"] and "igan_configure" in row["hooks"]
    assert "igan_modify_models" in rows["spectral_norm"]["hooks"]
    # gen_ema's training and inference hooks live on the object it registers in igan_configure
    assert rows["gen_ema"]["hooks"] == ["igan_addoption", "igan_configure"]


def test_sn_trains_with_fm_its_flags_have_their_own_panel_and_u_v_reload(run_cli, train_cli, tmp_path):
    require("igan-spectral-norm")
    code, out, _ = run_cli(["train", "--help"])
    assert code == 0
    panels = help_panels(out)
    assert {"--sn", "--sn-power-iterations"} <= flags_in(panels["Plugin: spectral_norm"])
    assert "--sn" not in flags_in(panels["Techniques"])

    code, _, err = train_cli(tmp_path / "run", "--sn", "--fm", steps=2)
    assert code == 0, err
    ckpt = tmp_path / "run" / "checkpoints" / "last.safetensors"
    assert ckpt.is_file()

    # igan sample / evaluate rebuild the model (igan_modify_models runs again) and load _u/_v back.
    from igan.restore import restore_models

    saved = load_file(ckpt)
    restored = restore_models(ckpt, "cpu").models.discriminator.state_dict()
    uv = [k for k in restored if k.endswith(("._u", "._v"))]
    assert len(uv) == 2 * 4  # three hidden layers and the head of digits_mlp
    for k in uv:
        assert torch.equal(restored[k], saved[f"D.{k}"]), k


def test_g_ema_checkpoint_holds_the_average_and_sample_uses_it(train_cli, tmp_path):
    require("igan-gen-ema")
    code, _, err = train_cli(tmp_path / "run", "--g-ema", "0.9", steps=3)
    assert code == 0, err
    ckpt = tmp_path / "run" / "checkpoints" / "last.safetensors"
    tensors = load_file(ckpt)
    prefix = "plugin.gen_ema.run."
    assert int(tensors[prefix + "updates"]) == 3
    g_keys = [k[len("G."):] for k in tensors if k.startswith("G.")]
    assert g_keys and all(tensors[prefix + "ema." + k].shape == tensors["G." + k].shape for k in g_keys)
    assert any(not torch.equal(tensors[prefix + "ema." + k], tensors["G." + k]) for k in g_keys)

    # igan sample / evaluate load G.*, then the plugin's igan_prepare_inference puts the average in G
    from igan.restore import restore_models

    state = restore_models(ckpt, "cpu").models.generator.state_dict()
    assert sorted(state) == sorted(g_keys)
    for k in g_keys:
        assert torch.equal(state[k], tensors[prefix + "ema." + k]), k
