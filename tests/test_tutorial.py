"""docs/writing-plugins.md builds a working plugin, and docs/public-api.md lists exactly ``igan.__all__``.

The tutorial's files are the fenced code blocks preceded by a ``<!-- file: PATH -->`` line. They are
written into ``tmp_path``; nothing is pip-installed. The package is made visible the way an editable
install does it, but without touching the environment: its folder goes on the import path, next to a
``<name>-<version>.dist-info`` folder (METADATA + entry_points.txt, generated from the tutorial's own
pyproject.toml), which ``importlib.metadata`` (and so igan's plugin discovery) reads like any installed
distribution. Then the tutorial's test file runs in a subprocess (its own pytest, with PYTHONPATH set),
and a 2-step ``igan train`` with the new flag runs in this process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import igan
from igan.hookspecs import all_hook_names

from conftest import flags_in, help_panels

REPO = Path(__file__).resolve().parents[1]
TUTORIAL = REPO / "docs" / "writing-plugins.md"
PUBLIC_API = REPO / "docs" / "public-api.md"
FILE_BLOCK = re.compile(r"^<!-- file: (?P<path>\S+) -->\n```[\w-]*\n(?P<body>.*?)^```$", re.M | re.S)
EXPECTED_FILES = {"pyproject.toml", "igan_instance_noise/__init__.py", "tests/test_instance_noise.py"}


def tutorial_files() -> dict[str, str]:
    files = {m["path"]: m["body"] for m in FILE_BLOCK.finditer(TUTORIAL.read_text(encoding="utf-8"))}
    assert set(files) == EXPECTED_FILES, f"file blocks in {TUTORIAL.name}: {sorted(files)}"
    return files


@pytest.fixture(scope="module")
def tutorial_package(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(project folder, site folder with the fake .dist-info, parsed pyproject)."""
    root = tmp_path_factory.mktemp("tutorial")
    project = root / "igan-instance-noise"
    for rel, body in tutorial_files().items():
        path = project / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    meta = pyproject["project"]
    site = root / "site"
    dist_info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    eps = "".join(f"{name} = {value}\n" for name, value in meta["entry-points"]["igan"].items())
    (dist_info / "entry_points.txt").write_text(f"[igan]\n{eps}")
    return project, site, pyproject


def test_tutorial_code_uses_only_public_names_and_real_hooks():
    files = tutorial_files()
    code = files["igan_instance_noise/__init__.py"] + files["tests/test_instance_noise.py"]
    assert not re.search(r"^\s*(from|import)\s+igan\.", code, re.M), "the tutorial must import only `igan`"
    used = set(re.findall(r"\bigan\.(\w+)", code))
    assert used and used <= set(igan.__all__), used - set(igan.__all__)
    hooks = set(re.findall(r"def (igan_\w+)\(", files["igan_instance_noise/__init__.py"]))
    assert hooks and hooks <= set(all_hook_names()), hooks - set(all_hook_names())


def test_tutorial_pyproject_declares_the_entry_point(tutorial_package):
    _, _, pyproject = tutorial_package
    assert pyproject["project"]["entry-points"]["igan"] == {"instance_noise": "igan_instance_noise"}
    assert any(dep.startswith("igan") for dep in pyproject["project"]["dependencies"])


def test_tutorial_tests_pass(tutorial_package):
    project, site, _ = tutorial_package
    path = os.pathsep.join([str(site), str(project), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is faster, and fair to a busy machine
    env.pop("IGAN_DISABLE_PLUGINS", None)
    env.pop("IGAN_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\b3 passed\b", proc.stdout), proc.stdout[-2000:]


@pytest.fixture
def visible_plugin(tutorial_package, monkeypatch):
    project, site, _ = tutorial_package
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop("igan_instance_noise", None)


def test_tutorial_plugin_trains_two_steps_and_has_its_panel(visible_plugin, run_cli, train_cli, tmp_path):
    code, out, err = run_cli(["plugins", "--json"])
    assert code == 0, err
    (row,) = [r for r in json.loads(out) if r["name"] == "instance_noise"]
    assert row["version"] == "0.1.0" and row["source"] == "package:igan-instance-noise"
    assert row["error"] is None

    code, out, _ = run_cli(["train", "--help"])
    assert code == 0
    panels = help_panels(out)
    assert {"--instance-noise", "--instance-noise-steps"} <= flags_in(panels["Plugin: instance_noise"])

    code, _, err = train_cli(tmp_path / "run", "--instance-noise", "0.1", steps=2)
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    sigmas = [r["instance_noise/sigma"] for r in records if "instance_noise/sigma" in r]
    assert sigmas == pytest.approx([0.05, 0.0])


def test_public_api_doc_lists_exactly_igan_all():
    text = PUBLIC_API.read_text(encoding="utf-8")
    section = text.split("## What you may import", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `(?:igan\.)?([\w.]+)`", section, re.M)
    assert sorted(listed) == sorted(igan.__all__), (sorted(listed), sorted(igan.__all__))
    assert len(listed) == len(set(listed))
