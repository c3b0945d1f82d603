"""Third-party plugins found through the ``igan`` entry-point group, with nothing installed.

A fake distribution (a ``.dist-info`` folder that is *not* on ``sys.path``) declares the entry point;
``importlib.metadata.entry_points`` is patched to add it to what the real environment provides, and
the plugin's module is written to a folder that is put on ``sys.path``.
"""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from importlib import metadata
from pathlib import Path

import pytest

import igan.plugins

from conftest import TINY, assert_clean_error, flags_in, help_panels

pytestmark = pytest.mark.usefixtures("single_thread")

FAKE_TECH = '''
from igan import hookimpl

CALLS = []


@hookimpl
def igan_addoption(parser):
    parser.add("fake_tech", bool, help="switch on the fake technique")
    parser.add("fake_tech_weight", float, 0.0, help='weight of the fake term [0, 1]; pip install "fake[gpu]"')


@hookimpl
def igan_extra_loss(step, net):
    if not step.config.opt("fake_tech"):
        return None
    CALLS.append((net, step.it))
    return {"fake": step.config.opt("fake_tech_weight") * step.d_fake.logits.mean()}
'''

BROKEN = '''
raise RuntimeError("fake plugin exploded on import")
'''

TYPO = '''
from igan import hookimpl


@hookimpl
def igan_extra_los(step, net):
    return None
'''


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """``install_plugin(ep_name, source, dist=..., version=...) -> module name``: make a plugin visible
    to igan as if ``pip install``-ed, without installing anything."""
    src = tmp_path / "src"
    src.mkdir()
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.setattr(igan.plugins, "_warned", set())  # warnings are once per process
    added: list[metadata.EntryPoint] = []
    modules: list[str] = []
    real_entry_points = metadata.entry_points

    def entry_points(**params):
        found = real_entry_points(**params)
        if params.get("group") == igan.plugins.ENTRY_POINT_GROUP:
            return [*found, *added]
        return found

    monkeypatch.setattr(metadata, "entry_points", entry_points)

    def install(ep_name: str, source: str, dist: str = "fake-igan-tech", version: str = "1.2.3") -> str:
        module = f"{ep_name}_{uuid.uuid4().hex[:8]}"
        (src / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / "dists" / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[igan]\n{ep_name} = {module}\n")
        eps = metadata.PathDistribution(info).entry_points.select(group="igan", name=ep_name)
        added.extend(eps)
        modules.append(module)
        return module

    yield install
    for module in modules:
        sys.modules.pop(module, None)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_plugin_option_gets_its_own_help_panel(install_plugin, run_cli):
    install_plugin("fake_tech", FAKE_TECH)
    code, out, err = run_cli(["train", "--help"])
    assert code == 0, err
    panels = help_panels(out)
    own = [title for title in panels if "fake_tech" in title]
    assert len(own) == 1, list(panels)
    assert flags_in(panels[own[0]]) == {"--fake-tech", "--fake-tech-weight"}
    assert not flags_in(panels["Techniques"]) & {"--fake-tech", "--fake-tech-weight"}
    # a plugin's help text is shown as written: brackets are not swallowed as rich markup
    assert 'weight of the fake term [0, 1]; pip install "fake[gpu]"' in panels[own[0]]


def test_plugin_flag_switches_its_hook_on(install_plugin, train_cli, tmp_path):
    module = install_plugin("fake_tech", FAKE_TECH)

    code, out, err = train_cli(tmp_path / "off")
    assert code == 0, err
    assert sys.modules[module].CALLS == []  # declared but not enabled: the hook adds nothing
    assert not any("loss/D/fake" in r for r in _metrics(tmp_path / "off"))

    code, out, err = train_cli(tmp_path / "on", "--fake-tech", "--fake-tech-weight", "0.5")
    assert code == 0, err
    assert sys.modules[module].CALLS == [("D", 0), ("G", 0), ("D", 1), ("G", 1)]
    records = [r for r in _metrics(tmp_path / "on") if "loss/D" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all("loss/D/fake" in r and "loss/G/fake" in r for r in records)
    config = json.loads((tmp_path / "on" / "config.json").read_text())
    assert config["options"]["fake_tech"] is True and config["options"]["fake_tech_weight"] == 0.5


def test_plugins_json_lists_third_party_plugin(install_plugin, run_cli):
    module = install_plugin("fake_tech", FAKE_TECH, dist="fake-igan-tech", version="1.2.3")
    code, out, err = run_cli(["plugins", "--json"])
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)}
    fake = rows["fake_tech"]
    assert fake["source"] == "package:fake-igan-tech"
    assert fake["version"] == "1.2.3"
    assert fake["module"] == module
    assert fake["error"] is None
    assert set(fake["hooks"]) == {"igan_addoption", "igan_extra_loss"}
    assert rows["feature_matching"]["source"] == "built-in"  # the built-ins come through the same group
    assert rows["core"]["source"] == "essential"


@pytest.mark.parametrize("how", ["env", "flag"])
def test_disabled_plugin_is_not_loaded(install_plugin, run_cli, tmp_path, how):
    module = install_plugin("fake_tech", FAKE_TECH)
    env, extra = {}, []
    if how == "env":  # a comma-separated list, spaces allowed
        env = {"IGAN_DISABLE_PLUGINS": "not_there, fake_tech"}
    else:
        extra = ["--disable-plugin", "fake_tech"]

    args = ["train", "--steps", "2", *TINY, "--out", tmp_path / "run", *extra]
    code, out, err = run_cli([*args, "--fake-tech"], env=env)
    assert_clean_error(code, out, err, 2, "--fake-tech")
    assert module not in sys.modules  # blocked before import

    code, out, err = run_cli(["train", "--help", *extra], env=env)
    assert code == 0, err
    assert not any("fake_tech" in title for title in help_panels(out))

    code, out, err = run_cli(args, env=env)  # igan itself still trains
    assert code == 0, err
    assert module not in sys.modules


def test_broken_plugin_is_reported_and_skipped(install_plugin, run_cli, train_cli, tmp_path):
    install_plugin("broken_tech", BROKEN, dist="broken-dist", version="0.0.1")

    code, out, err = run_cli(["plugins", "--json"])
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)}
    assert "fake plugin exploded on import" in rows["broken_tech"]["error"]
    assert "RuntimeError" in rows["broken_tech"]["error"]
    assert rows["broken_tech"]["hooks"] == []
    warnings = [line for line in err.splitlines() if line.startswith("warning:") and "broken_tech" in line]
    assert len(warnings) == 1, err
    assert "IGAN_DISABLE_PLUGINS=broken_tech" in err  # the hint says how to silence it

    igan.plugins._warned.clear()
    code, out, err = train_cli(tmp_path / "run")
    assert code == 0, err
    assert out == f"{tmp_path / 'run'}\n"
    warnings = [line for line in err.splitlines() if line.startswith("warning:") and "broken_tech" in line]
    assert len(warnings) == 1, err  # once, although the CLI builds more than one plugin manager
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()


def test_third_party_plugin_with_misspelt_hook_is_refused(install_plugin, run_cli):
    install_plugin("typo_tech", TYPO, dist="typo-dist")
    code, out, err = run_cli(["plugins"])
    assert_clean_error(code, out, err, 1, "typo_tech", "igan_extra_los")

    code, out, err = run_cli(["plugins", "--json"], env={"IGAN_DISABLE_PLUGINS": "typo_tech"})
    assert code == 0, err
    assert "typo_tech" not in {row["name"] for row in json.loads(out)}
