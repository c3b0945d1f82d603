"""``igan report`` (one self-contained HTML page about runs) and the plain progress output.

Three tiny runs are shared by the module: two ``igan train`` runs (one with --fm --ha for technique
terms) and an ``igan semisup --seeds 2`` base directory (for the mean ± std table).
"""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import TINY, assert_clean_error, igan_subprocess


class Page(HTMLParser):
    """What the tests look at: section ids, headings, images, tables (as rows of cell texts)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.headings: list[str] = []
        self.images: list[dict[str, str]] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.rows: list[tuple[str, list[str]]] = []  # (tr class, cell texts)
        self._heading: list[str] | None = None
        self._row: tuple[str, list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "section":
            self.sections.append(a.get("id", ""))
        elif tag in ("h1", "h2", "h3"):
            self._heading = []
        elif tag == "img":
            self.images.append(a)
        elif tag == "tr":
            self._row = (a.get("class", ""), [])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._heading is not None:
            self._heading.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _main(args) -> int:
    from igan.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("report")
    out = {"fm": base / "fm-ha", "plain": base / "plain", "ss": base / "ss"}
    assert _main(["train", "--steps", "4", *TINY, "--out", out["fm"], "--fm", "--ha"]) == 0
    assert _main(["train", "--steps", "3", *TINY, "--out", out["plain"]]) == 0
    assert _main(["semisup", "--steps", "3", *TINY, "--seeds", "2", "--no-baseline", "--out", out["ss"]]) == 0
    return out


@pytest.fixture
def mpl():
    pytest.importorskip("matplotlib")


def _decode_all(page: Page) -> int:
    from PIL import Image

    prefix = "data:image/png;base64,"
    for img in page.images:
        assert img["src"].startswith(prefix), img["src"][:60]
        with Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix):], validate=True))) as im:
            im.load()
            assert im.format == "PNG" and im.width > 10 and im.height > 10
    return len(page.images)


def _self_contained(text: str, page: Page) -> None:
    assert not any(tag in ("script", "link", "iframe") for tag, _ in page.tags)
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key, "")
            assert not value or value.startswith(("data:", "#")), (tag, value[:80])
    assert "url(" not in text and "@import" not in text


def _table_with(page: Page, first_cell: str) -> tuple[str, list[str]]:
    found = [row for row in page.rows if row[1] and row[1][0] == first_cell]
    assert found, f"no table row starts with {first_cell!r}"
    return found[0]


def test_report_of_one_run(runs, run_cli, mpl):
    run = runs["fm"]
    code, out, err = run_cli(["report", run])
    assert code == 0, err
    path = run / "report.html"
    assert out.strip() == str(path) and path.is_file()
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert {"runs", "final", "losses", "metrics", "samples", "config", "plugins"} <= set(page.sections)
    assert "seeds" not in page.sections  # no semisup.json here
    assert {"Runs", "Final numbers", "Losses", "Technique terms", "Metrics", "Samples over time", "Config",
            "Plugins"} <= set(page.headings)
    _self_contained(text, page)
    assert _decode_all(page) >= 3  # D/G losses, technique terms, at least one sample grid
    alts = " | ".join(img.get("alt", "") for img in page.images)
    for key in ("loss/D", "loss/G", "loss/D/ha", "loss/G/ha", "fm"):
        assert key in alts
    assert "epoch 1" in alts  # the sample strip
    # final numbers from summary.json, config from config.json, versions from the checkpoint
    summary = json.loads((run / "summary.json").read_text())
    assert _table_with(page, "steps")[1][1] == str(summary["steps"])
    assert _table_with(page, "batch_size")[1][1] == "10"
    assert _table_with(page, "options.fm")[1][1] == "true"
    import igan

    assert _table_with(page, "igan")[1][1] == igan.__version__
    assert _table_with(page, "feature_matching")[1][1] == igan.__version__
    assert "--fm" in text and "--ha" in text  # techniques on, in the runs table


def test_loss_plots_are_what_the_page_says(runs, run_cli, mpl, monkeypatch, tmp_path):
    """"Thin faint lines are the raw values, thick lines their moving average": two lines per run in each
    loss plot; the metrics (one point per epoch end) are plotted as they are."""
    import igan.report as report

    drawn = []
    real = report.draw_panels

    def spy(panels, *args, **kwargs):
        fig = real(panels, *args, **kwargs)
        drawn.append((panels, kwargs.get("smooth", True), fig))
        return fig

    monkeypatch.setattr(report, "draw_panels", spy)
    code, out, err = run_cli(["report", runs["fm"], runs["plain"], "-o", tmp_path / "r.html"])
    assert code == 0, err
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Thin faint lines are the raw values" in text and "thick lines their moving average" in text
    losses = next(fig for panels, smooth, fig in drawn if panels[0][0] == "loss/D")
    for ax, (title, lines) in zip(losses.axes, next(p for p, _, _ in drawn if p[0][0] == "loss/D")):
        assert len(ax.lines) == 2 * len(lines) == 4, title  # two runs, raw + average each
        for raw, avg, line in zip(ax.lines[::2], ax.lines[1::2], lines):
            assert list(raw.get_ydata()) == line.y and raw.get_alpha() < 1 and raw.get_linewidth() < avg.get_linewidth()
            assert list(avg.get_ydata()) == report._smooth(line.y) != line.y
    assert [smooth for panels, smooth, _ in drawn if panels[0][0].startswith("loss/")] == [True, True]


def test_moving_average_is_a_debiased_ema():
    from igan.report import _smooth

    w = 0.6  # the weight of a short curve
    ys = [1.0, 3.0, 2.0]
    num = [(1 - w) * 1.0, w * (1 - w) * 1.0 + (1 - w) * 3.0]
    den = [1 - w, 1 - w * w]
    assert _smooth(ys)[:2] == pytest.approx([n / d for n, d in zip(num, den)])
    assert _smooth(ys)[0] == 1.0  # debiased: the first value is itself
    assert _smooth([float("nan"), 2.0]) [1] == 2.0


def test_sample_grids_open_full_size_on_click(runs, run_cli, mpl, tmp_path):
    code, out, err = run_cli(["report", runs["fm"], "-o", tmp_path / "r.html"])
    assert code == 0, err
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    page = Page(text)
    _self_contained(text, page)  # no script, still
    samples = text.split('id="samples"')[1].split("</section>")[0]
    grids = samples.count('class="sample"')
    assert grids >= 1
    # each grid is the summary of a <details>: a click opens it, and the CSS shows an open one full size
    assert samples.count('<details class="zoom"><summary') == grids
    assert re.search(r"details\.zoom\[open\] > summary \{[^}]*position: fixed", text)
    assert re.search(r"details\.zoom\[open\] > summary img \{[^}]*height: min\(92vh", text)


def test_report_of_semisup_seeds(runs, run_cli, mpl, tmp_path):
    out_file = tmp_path / "ss.html"
    code, out, err = run_cli(["report", runs["ss"], "-o", out_file])
    assert code == 0, err
    assert out.strip() == str(out_file)
    page = Page(out_file.read_text(encoding="utf-8"))
    assert "seeds" in page.sections
    result = json.loads((runs["ss"] / "semisup.json").read_text())
    row = _table_with(page, "semi-supervised GAN (K+1, FM)")[1]
    assert row[1] == f"{result['mean']:.1f} ± {result['std']:.1f}"
    assert row[3] == "2"
    per_seed = [cells for _, cells in page.rows if cells and cells[0] == "semi-supervised"]
    assert [cells[1] for cells in per_seed] == ["0", "1"]
    assert _decode_all(page) >= 3
    alts = " | ".join(img.get("alt", "") for img in page.images)
    assert "test_error" in alts  # the metrics plot
    assert "ss/seed0" in alts and "ss/seed1" in alts  # both seeds' curves, overlaid
    assert any(h.startswith("ss: digits") for h in page.headings)


def test_two_runs_overlay(runs, run_cli, mpl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["report", runs["fm"], runs["plain"]])
    assert code == 0, err
    assert out.strip() == "report.html"  # several runs: in the current folder
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    _decode_all(page)
    losses = [img["alt"] for img in page.images if img.get("alt", "").startswith("losses:")]
    assert len(losses) == 1 and "fm-ha" in losses[0] and "plain" in losses[0]  # one plot, both runs
    assert "fm-ha" in text and "plain" in text
    run_rows = [cells for _, cells in page.rows if cells and cells[0] in ("fm-ha", "plain")]
    assert {cells[0] for cells in run_rows} == {"fm-ha", "plain"}
    cls, cells = _table_with(page, "options.fm")
    # the ablation's difference is highlighted (--fm is tri-state: "not given" is stored as null)
    assert cls == "diff" and cells[1] == "true" and cells[2] in ("false", "null", "—")
    assert _table_with(page, "batch_size")[0] == ""


def test_missing_run_dir_is_an_error(run_cli, tmp_path):
    code, out, err = run_cli(["report", tmp_path / "nope"])
    assert_clean_error(code, out, err, 1, "does not exist")
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(["report", tmp_path / "empty"])
    assert_clean_error(code, out, err, 1, "not an igan run directory")


def test_folder_of_runs_hints_at_its_runs(runs, run_cli):
    code, out, err = run_cli(["report", runs["fm"].parent])
    assert_clean_error(code, out, err, 1, "not an igan run directory", "fm-ha")


def test_without_matplotlib(runs, run_cli, monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    code, out, err = run_cli(["report", runs["plain"], "-o", tmp_path / "r.html"])
    assert_clean_error(code, out, err, 1, "matplotlib")
    assert 'pip install "igan[report]"' in err
    assert not (tmp_path / "r.html").exists()


def test_plain_progress_has_no_control_characters(tmp_path):
    """stderr to a pipe: plain progress lines, even when FORCE_COLOR makes rich take the pipe for a tty."""
    proc = igan_subprocess(["train", "--steps", "2", *TINY, "--out", tmp_path / "run"],
                           env={"NO_COLOR": "", "FORCE_COLOR": "1"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "\x1b" not in err and "\r" not in err, repr(err[:300])
    lines = [line for line in err.splitlines() if line.startswith("train ")]
    assert len(lines) == 2, err
    assert lines[-1].startswith("train epoch 1/1 step 2/2 ") and " it/s eta " in lines[-1] and " D=" in lines[-1]


def test_report_of_train_seeds_base_directory(run_cli, mpl, tmp_path):
    """An ``igan train --seeds K`` base directory (seeds.json) brings its seed runs, overlaid."""
    base = tmp_path / "seeds"
    code, _, err = run_cli(["train", "--steps", "2", *TINY, "--seeds", "2", "--out", base])
    assert code == 0, err
    code, out, err = run_cli(["report", base])
    assert code == 0, err
    page = Page(Path(out.strip()).read_text(encoding="utf-8"))
    alts = " | ".join(img.get("alt", "") for img in page.images)
    assert "seed0" in alts and "seed1" in alts
