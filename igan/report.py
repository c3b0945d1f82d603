"""What ``igan report`` writes (the command is ``igan.cli.report``): one self-contained HTML page about
one or more run directories.

The page reads only what a run leaves on disk: ``config.json``, ``metrics.jsonl`` (the record of the
run), ``summary.json``, ``samples/epoch_NNNN.png``, the metadata of ``checkpoints/last.safetensors``
(config, plugin versions, igan version) and, for an ``igan semisup`` base directory, ``semisup.json``
(the mean ± std table) with its per-seed runs. Plots are drawn with matplotlib (Agg, no display) to
PNG; every image is embedded as a base64 ``data:`` URI and the page has no external CSS, JS or fonts,
so the file can be mailed or opened offline.

Several run directories overlay their curves, one line per run labelled by its directory name, and the
config table highlights the settings that differ: the view for an ablation.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from igan.errors import IganError

__all__ = ["RunData", "SeedsTable", "load_run", "collect", "build_report", "write_report"]

HINT = 'pip install "igan[report]"'
MAX_SAMPLES = 8  # sample grids shown per run (one row): all when there are at most this many epochs
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# matplotlib's tab10, so table swatches match the plot lines
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]


# ----------------------------------------------------------------------------------------------
# reading run directories


@dataclass
class RunData:
    """What one run directory holds (whatever of it could be read; ``notes`` says what could not)."""

    path: Path
    label: str = ""
    color: str = COLORS[0]
    config: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None  # checkpoint metadata, JSON values decoded
    losses: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records at logging points
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records after epoch ends
    summary: dict[str, Any] | None = None
    samples: list[tuple[int, Path]] = field(default_factory=list)  # (epoch, png), in epoch order
    best: dict[str, Any] | None = None  # checkpoints/best.json (--eval-every)
    steps_per_epoch: float | None = None  # from the loss records (step / fractional epoch)
    notes: list[str] = field(default_factory=list)

    def keys(self, records: list[dict[str, Any]]) -> list[str]:
        seen: dict[str, None] = {}
        for rec in records:
            for k, v in rec.items():
                if k not in ("step", "epoch") and _is_number(v):
                    seen.setdefault(k, None)
        return list(seen)


@dataclass
class SeedsTable:
    """An ``igan semisup`` base directory's ``semisup.json``."""

    path: Path
    label: str
    data: dict[str, Any]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} could not be read: {exc}")
        return None


def _read_object(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None with a note (unreadable, or JSON of another shape: a list, ...)."""
    data = _read_json(path, notes)
    if data is not None and not isinstance(data, dict):
        notes.append(f"{path.name} is not a JSON object (it holds a {type(data).__name__}) and was skipped")
        return None
    return data


def checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The metadata of an igan safetensors checkpoint, JSON values decoded (no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        raw = f.metadata() or {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value  # plain strings (e.g. igan_version) are stored as they are
    return out


def _read_metrics(path: Path, run: RunData) -> None:
    """Split metrics.jsonl into loss records and metric records. A resumed run appends records for steps
    it logged before (when the previous process died after its last checkpoint): the later ones win."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        run.notes.append(f"metrics.jsonl could not be read: {exc}")
        return
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1  # e.g. a line cut short by a crash
            continue
        if not isinstance(rec, dict) or not _is_number(rec.get("step")):
            bad += 1
            continue
        records = run.losses if any(k.startswith("loss/") for k in rec) else run.metrics
        if records and rec["step"] <= records[-1]["step"]:  # at most one record of each kind per step
            records[:] = [r for r in records if r["step"] < rec["step"]]
        records.append(rec)
    if bad:
        run.notes.append(f"metrics.jsonl: {bad} line(s) skipped that were not JSON records")
    # Loss records carry the fractional epoch (step / steps per epoch); metric records the epoch's number,
    # which is rounded up after a partial epoch. Plots put both on the fractional scale.
    for rec in run.losses:
        if rec["step"] > 0 and _is_number(rec.get("epoch")) and rec["epoch"] > 0:
            run.steps_per_epoch = rec["step"] / rec["epoch"]
            break


def load_run(path: Path) -> RunData:
    run = RunData(path=path, label=path.name)
    if (path / "config.json").is_file():
        run.config = _read_object(path / "config.json", run.notes)
    ckpt = path / "checkpoints" / "last.safetensors"
    if ckpt.is_file():
        try:
            run.meta = checkpoint_metadata(ckpt)
        except Exception as exc:  # noqa: BLE001 - a damaged file must not stop the report
            run.notes.append(f"the checkpoint's metadata could not be read: {type(exc).__name__}: {exc}")
    else:
        run.notes.append("no checkpoint (checkpoints/last.safetensors): plugin versions are unknown")
    if run.config is None and run.meta and isinstance(run.meta.get("config"), dict):
        run.config = run.meta["config"]
    if (path / "metrics.jsonl").is_file():
        _read_metrics(path / "metrics.jsonl", run)
    else:
        run.notes.append("no metrics.jsonl")
    if (path / "checkpoints" / "best.json").is_file():
        best = _read_json(path / "checkpoints" / "best.json", run.notes)
        run.best = best if isinstance(best, dict) else None
    if (path / "summary.json").is_file():
        run.summary = _read_object(path / "summary.json", run.notes)
    else:
        run.notes.append("no summary.json: the run has not finished (numbers below are the last logged)")
    for png in (path / "samples").glob("epoch_*.png"):
        m = re.fullmatch(r"epoch_(\d+)\.png", png.name)
        if m:
            run.samples.append((int(m.group(1)), png))
    run.samples.sort()
    return run


def _natural(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _members(base: Path) -> list[Path]:
    """Run directories inside a semisup base directory (seedN/, supervised-only/, supervised-only/seedN/)."""
    found = [base] if (base / "metrics.jsonl").is_file() else []
    nested = [p.parent for pattern in ("*/metrics.jsonl", "*/*/metrics.jsonl") for p in base.glob(pattern)]
    return found + sorted(nested, key=_natural)


def collect(dirs: Iterable[Path]) -> tuple[list[RunData], list[SeedsTable]]:
    """Read every run directory given (a semisup base directory brings its per-seed runs)."""
    runs: list[RunData] = []
    tables: list[SeedsTable] = []
    seen: set[Path] = set()
    given: list[tuple[Path, list[Path], SeedsTable | None]] = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise IganError(f"{d} does not exist", hint="pass run directories written by `igan train` or "
                            "`igan semisup` (the path they print; each holds metrics.jsonl)")
        if not d.is_dir():
            raise IganError(f"{d} is not a directory", hint="pass the run directory, not a file inside it")
        table = None
        semisup = d / "semisup.json"
        if semisup.is_file():
            notes: list[str] = []
            data = _read_json(semisup, notes)
            if not isinstance(data, dict):
                why = "; ".join(notes) or "not a JSON object"
                raise IganError(f"{semisup} is not a semisup result ({why})",
                                hint="rerun `igan semisup`, or pass the per-seed run directories")
            table = SeedsTable(d, d.name, data)
            tables.append(table)
            members = _members(d)
        elif (d / "metrics.jsonl").is_file() or (d / "config.json").is_file():
            members = [d]
        elif (d / "seeds.json").is_file():  # an `igan train --seeds K` base directory brings its seeds
            members = _members(d)
        else:
            inside = sorted({p.parent for p in d.glob("*/metrics.jsonl")}, key=_natural)
            names = ", ".join(p.name for p in inside[:5]) + (", ..." if len(inside) > 5 else "")
            hint = (f"it holds runs ({names}): pass those, e.g. igan report {d}/*" if inside
                    else "pass a directory written by `igan train` or `igan semisup`")
            raise IganError(f"{d} is not an igan run directory (no metrics.jsonl, config.json or "
                            "semisup.json)", hint=hint)
        given.append((d, members, table))
    labels = _unique_labels([d for d, _, _ in given])
    for (d, members, table), label in zip(given, labels):
        if table is not None:
            table.label = label
        for m in members:
            key = m.resolve()
            if key in seen:
                continue
            seen.add(key)
            run = load_run(m)
            run.label = label if m == d else f"{label}/{m.relative_to(d).as_posix()}"
            runs.append(run)
    for i, run in enumerate(runs):
        run.color = COLORS[i % len(COLORS)]
    return runs, tables


def _unique_labels(paths: list[Path]) -> list[str]:
    """Directory names, with as many parent folders as it takes to tell equal names apart."""
    resolved = [p.resolve() for p in paths]
    depth = 1
    while True:
        labels = ["/".join(p.parts[-depth:]) for p in resolved]
        if len(set(labels)) == len(set(resolved)) or depth > max(len(p.parts) for p in resolved):
            return labels
        depth += 1


# ----------------------------------------------------------------------------------------------
# plots


def _matplotlib():
    """matplotlib's Figure and Agg canvas (no pyplot, no display), or an IganError with the install hint."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise IganError(f"igan report draws its plots with matplotlib, which is not installed ({exc})",
                        hint=HINT) from exc
    return Figure, FigureCanvasAgg


@dataclass
class Line:
    label: str
    color: str
    x: list[float]
    y: list[float]
    band: list[float] | None = None  # ± this around y, shaded (a metric's std over its splits)


def _series(run: RunData, records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of ``key``; the epoch is step / steps per epoch where that is known."""
    xs, ys = [], []
    for rec in records:
        v = rec.get(key)
        if _is_number(v):
            spe = run.steps_per_epoch
            xs.append(rec["step"] / spe if spe else float(rec.get("epoch", rec["step"])))
            ys.append(float(v))
    return xs, ys


def _smooth(ys: list[float]) -> list[float]:
    """A debiased exponential moving average, as TensorBoard's smoothing slider: the weight grows with
    the number of points (0.6 for a handful, TensorBoard's default, up to 0.98 for thousands), so the
    average follows a short curve and calms a long noisy one. Non-finite values are skipped."""
    n = len(ys)
    w = min(0.98, max(0.6, 1.0 - 10.0 / max(n, 1)))
    out, avg, norm = [], 0.0, 0.0
    for y in ys:
        if math.isfinite(y):
            avg = w * avg + (1 - w) * y
            norm = w * norm + (1 - w)
        out.append(avg / norm if norm else float("nan"))
    return out


def draw_panels(panels: list[tuple[str, list[Line]]], ncols: int = 2, height: float = 3.0,
                smooth: bool = True):
    """A matplotlib Figure with a grid of line plots, one per (title, lines) panel. With ``smooth``
    (losses) each line is drawn twice: the raw values thin and faint, their moving average thick;
    without it (one point per epoch: metrics) the values as one line with markers."""
    Figure, FigureCanvasAgg = _matplotlib()
    rows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(11.0, height * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, ncols, squeeze=False).ravel()
    for ax, (title, lines) in zip(axes, panels):
        values: list[float] = []
        for line in lines:
            few = len(line.x) <= 40
            if smooth and len(line.x) > 1:
                ax.plot(line.x, line.y, color=line.color, lw=0.8, alpha=0.3)
                ax.plot(line.x, _smooth(line.y), color=line.color, lw=1.8, label=line.label)
            else:
                ax.plot(line.x, line.y, color=line.color, lw=1.5, label=line.label,
                        marker="o" if few else None, ms=3.5)
                if line.band is not None and len(line.band) == len(line.y):
                    ax.fill_between(line.x, [y - b for y, b in zip(line.y, line.band)],
                                    [y + b for y, b in zip(line.y, line.band)], color=line.color, alpha=0.15, lw=0)
            values += [v for v in line.y if math.isfinite(v)]
        clipped = _robust_ylim(ax, values)
        ax.set_title(title + ("  (y clipped to the 1-99th percentile)" if clipped else ""), fontsize=10,
                     loc="left")
        ax.set_xlabel("epoch", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8, frameon=False)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return fig


def plot_panels(panels: list[tuple[str, list[Line]]], ncols: int = 2, height: float = 3.0,
                smooth: bool = True) -> bytes:
    """``draw_panels`` as PNG bytes."""
    fig = draw_panels(panels, ncols, height, smooth)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _robust_ylim(ax, values: list[float]) -> bool:
    """Keep a few huge early values (a GAN's first steps) from flattening the rest of a curve."""
    if len(values) < 20:
        return False
    s = sorted(values)
    lo, hi = s[int(0.01 * (len(s) - 1))], s[int(math.ceil(0.99 * (len(s) - 1)))]
    if hi - lo <= 0 or (s[-1] - s[0]) <= 3 * (hi - lo):
        return False
    pad = 0.1 * (hi - lo)
    ax.set_ylim(lo - pad, hi + pad)
    return True


def _order_terms(keys: list[str]) -> list[str]:
    """Technique terms: D's first, then G's, then bare names (``fm``), each group in first-seen order."""
    def rank(k: str) -> int:
        return 0 if k.startswith("loss/D/") else 1 if k.startswith("loss/G/") else 2
    return sorted(keys, key=rank)


# ----------------------------------------------------------------------------------------------
# HTML


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "—" if v is None else str(v).lower()
    if isinstance(v, int):
        return f"{v:,}".replace(",", "\u2009") if abs(v) >= 10000 else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _img(png: bytes, alt: str, cls: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{cls}" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _swatch(run: RunData) -> str:
    return f'<span class="swatch" style="background:{run.color}"></span>{_e(run.label)}'


def _table(header: list[str], rows: list[list[str]], row_classes: list[str] | None = None,
           cls: str = "") -> str:
    """``header`` and cells are HTML already."""
    out = [f'<div class="scroll"><table class="{cls}"><thead><tr>']
    out += [f"<th>{h}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        rc = row_classes[i] if row_classes else ""
        out.append(f'<tr class="{rc}">' + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1f2328; font: 14px/1.45 system-ui, -apple-system, "Segoe UI",
       Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: #24292f; color: #fff; padding: 14px 0 10px; }
header .wrap { display: flex; flex-wrap: wrap; align-items: baseline; gap: 6px 18px; }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 0; color: #c9d1d9; font-size: 13px; }
nav { width: 100%; font-size: 13px; }
nav a { color: #9ecbff; margin-right: 14px; text-decoration: none; }
.wrap { max-width: 1140px; margin: 0 auto; padding: 0 20px; }
section { background: #fff; border: 1px solid #d8dee4; border-radius: 6px; margin: 16px 0;
          padding: 4px 20px 14px; }
h2 { font-size: 17px; margin: 12px 0 6px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
p.help { color: #57606a; margin: 4px 0 10px; max-width: 900px; font-size: 13px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 8px; }
th, td { text-align: left; padding: 3px 12px 3px 0; border-bottom: 1px solid #eaeef2; vertical-align: top;
         white-space: nowrap; }
th { color: #57606a; font-weight: 600; }
td { font-variant-numeric: tabular-nums; }
tr.diff td { background: #fff8c5; }
tr.group td { color: #57606a; font-weight: 600; padding-top: 8px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
figure.plot { margin: 6px 0 10px; }
figure.plot figcaption { color: #57606a; font-size: 12px; margin-top: 2px; }
img.plot { display: block; width: 100%; height: auto; }
.strip { display: flex; gap: 8px; margin-bottom: 6px; }
.strip figure { margin: 0; flex: 0 1 124px; min-width: 60px; text-align: center; font-size: 12px;
                color: #57606a; }
.strip img { display: block; width: 100%; height: auto; image-rendering: pixelated;
             border: 1px solid #d8dee4; }
details.zoom > summary { display: block; list-style: none; cursor: zoom-in; }
details.zoom > summary::-webkit-details-marker { display: none; }
details.zoom[open] > summary { position: fixed; inset: 0; z-index: 10; display: flex; align-items: center;
                               justify-content: center; background: rgba(15, 18, 22, 0.85); cursor: zoom-out; }
details.zoom[open] > summary img { width: auto; height: min(92vh, 92vw); max-width: 92vw; border: 0; }
.samples { display: flex; flex-wrap: wrap; gap: 0 28px; }
.run-samples { flex: 0 1 auto; max-width: 100%; }
.side { display: flex; flex-wrap: wrap; gap: 0 28px; align-items: flex-start; }
.note { color: #9a6700; font-size: 13px; margin: 2px 0; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f6f8fa;
       padding: 0 3px; }
"""


def _section(sid: str, title: str, body: str, help_text: str = "") -> str:
    help_html = f'<p class="help">{help_text}</p>' if help_text else ""
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{help_html}{body}</section>'


def _techniques(config: dict[str, Any] | None) -> str:
    if not config:
        return "—"
    on = ["--" + k.replace("_", "-") for k, v in sorted((config.get("options") or {}).items()) if v is True]
    if config.get("recipe"):  # a named set of defaults (igan.recipes) changes what the flags alone say
        on.insert(0, f"--recipe {config['recipe']}")
    return " ".join(on) or "none"


def _runs_section(runs: list[RunData]) -> str:
    rows = []
    for r in runs:
        c = r.config or {}
        steps = (r.summary or {}).get("steps") or (r.losses[-1]["step"] if r.losses else None)
        status = "finished" if r.summary else "unfinished"
        rows.append([_swatch(r), f"<code>{_e(r.path)}</code>", _e(c.get("command", "—")),
                     _e(c.get("dataset", "—")), _e(c.get("model", "—")), _e(_techniques(c)), _e(_fmt(steps)),
                     status])
    notes = "".join(f'<p class="note">{_e(r.label)}: {_e(n)}</p>' for r in runs for n in r.notes)
    return _section("runs", "Runs", _table(["run", "directory", "command", "dataset", "model", "flags on",
                                            "steps", "status"], rows) + notes)


def _final_section(runs: list[RunData]) -> str:
    def numbers(r: RunData) -> dict[str, Any]:
        s = r.summary
        if s:
            out = {"steps": s.get("steps"), "epochs": s.get("epochs"), "seconds": s.get("seconds"),
                   "steps/s": s.get("steps_per_second")}
            out.update({k: v for k, v in (s.get("losses") or {}).items()})
            out.update({k: v for k, v in (s.get("metrics") or {}).items()})
            return out
        out = {}
        if r.losses:
            out.update({"steps": r.losses[-1]["step"], "epochs": r.losses[-1].get("epoch")})
            out.update({k: v for k, v in r.losses[-1].items() if k not in ("step", "epoch")})
        if r.metrics:
            out.update({k: v for k, v in r.metrics[-1].items() if k not in ("step", "epoch")})
        return out

    def with_best(r: RunData, out: dict[str, Any]) -> dict[str, Any]:
        b = r.best or {}
        if _is_number(b.get("value")):
            out["best checkpoint"] = f"{b.get('metric')}={_fmt(b['value'])} at epoch {b.get('epoch')}"
        return out

    table = [with_best(r, numbers(r)) for r in runs]
    keys: dict[str, None] = {}
    for t in table:
        for k in t:
            keys.setdefault(k, None)
    order = ["steps", "epochs", "seconds", "steps/s", "loss/D", "loss/G"]
    rest = [k for k in keys if k not in order]
    rest = _order_terms([k for k in rest if k.startswith("loss/") or k in _loss_keys(runs)]) + \
        [k for k in rest if not (k.startswith("loss/") or k in _loss_keys(runs))]
    rows = [[_e(k)] + [_e(_fmt(t.get(k))) for t in table] for k in order + rest if k in keys]
    header = ["", *[_swatch(r) + ("" if r.summary else " (unfinished)") for r in runs]]
    return _section("final", "Final numbers", _table(header, rows),
                    "From each run's <code>summary.json</code>: the losses are the means over the last "
                    "logging interval, the metrics those of the last epoch end; <code>best checkpoint</code> "
                    "(<code>--eval-every</code>) is the value and epoch of <code>checkpoints/best.safetensors</code>.")


def _loss_keys(runs: list[RunData]) -> set[str]:
    return {k for r in runs for k in r.keys(r.losses)}


def _seeds_section(tables: list[SeedsTable]) -> str:
    parts = []
    for t in tables:
        d = t.data
        runs = d.get("runs") or [d]
        first = runs[0]
        n_test = round(first["test_errors"] / first["test_error"]) if first.get("test_error") else None
        seeds = len(d.get("runs") or [d])

        def summary_row(name: str, r: dict[str, Any]) -> list[str]:
            if "std" in r:
                errors = f"{r['mean']:.1f} ± {r['std']:.1f}"
                pct = (f"{100 * r['mean'] / n_test:.2f} ± {100 * r['std'] / n_test:.2f}" if n_test
                       else f"{100 * r.get('test_error', float('nan')):.2f}")
            else:
                errors = _fmt(r.get("test_errors"))
                pct = f"{100 * r['test_error']:.2f}" if _is_number(r.get("test_error")) else "—"
            return [_e(name), _e(errors), _e(pct), str(len(r.get("runs") or [r]))]

        name = "supervised only" if d.get("supervised_only") else "semi-supervised GAN (K+1, FM)"
        rows = [summary_row(name, d)]
        if isinstance(d.get("baseline"), dict):
            rows.append(summary_row("supervised only", d["baseline"]))
        title = (f"{t.label}: {d.get('dataset', '?')}, {d.get('labels', '?')} labels, {seeds} seed"
                 f"{'s' if seeds > 1 else ''}, test errors of {n_test if n_test else '?'}")
        parts.append(f"<h3>{_e(title)}</h3>")
        parts.append(_table(["model", "test errors (mean ± std)", "error % (mean ± std)", "seeds"], rows,
                            cls="seeds"))
        per_seed = []
        groups = [("semi-supervised", runs)]
        if isinstance(d.get("baseline"), dict):
            groups.append(("supervised only", d["baseline"].get("runs") or [d["baseline"]]))
        for name, group in groups:
            for r in group:
                pct = f"{100 * r['test_error']:.2f}" if _is_number(r.get("test_error")) else "—"
                per_seed.append([_e(name), _e(_fmt(r.get("seed"))), _e(_fmt(r.get("label_seed"))),
                                 _e(_fmt(r.get("test_errors"))), _e(pct), _e(_fmt(r.get("epochs"))),
                                 _e(_fmt(r.get("seconds")))])
        parts.append(_table(["model", "seed", "label seed", "test errors", "error %", "epochs", "seconds"],
                            per_seed))
    return _section("seeds", "Seeds (igan semisup)", "".join(parts),
                    "From <code>semisup.json</code>: the test error of each seed (model seed and labelled "
                    "split both vary) and their mean ± sample standard deviation, as the paper's Table 1.")


LOSS_HELP = (
    "These are not training curves that should go down. D and G play a game: each loss is measured "
    "against an opponent that keeps changing, so in a healthy run both settle and wobble around a level "
    "instead of falling. Warning signs: D's loss heading to 0 while G's climbs (D wins, G gets no useful "
    "gradient), wild growing oscillations, or sudden spikes to large values. Thin faint lines are the raw "
    "values (the mean over each logging interval), thick lines their moving average (debiased, as "
    "TensorBoard's smoothing).")
TERMS_HELP = (
    "Each technique's own term, as added to its network's loss. <code>fm</code> (feature matching): the "
    "distance between D's mean features on real and generated batches; it measures what G is asked to fix, "
    "and should drop early and stay low, but it rises whenever D learns new features, so a flat zero is not "
    "the goal. <code>ha</code> (historical averaging): the penalty for moving away from the average of past "
    "parameters; it grows while the parameters travel and stays small once they settle, a steady climb "
    "means they keep drifting. <code>supervised</code> / <code>unsupervised</code> (semisup): D's "
    "classification loss on the labelled batch, which should fall, and its real-versus-generated loss, which "
    "behaves like a GAN loss.")
METRICS_HELP = (
    "Measured at epoch ends, one point each (no smoothing). <code>test_error</code> (semisup) is the "
    "fraction of test images the discriminator misclassifies, with the moving average of its weights: this "
    "one should go down, and it is the number that counts; a rise after a minimum is overfitting to the few "
    "labels. <code>test_errors</code> is the same as a count. <code>eval/*</code> (<code>--eval-every</code>) "
    "score samples of G as <code>igan evaluate</code> does: <code>eval/classifier_score</code> and "
    "<code>eval/is</code> should go up (to the real data's), <code>eval/classifier_fd</code> and "
    "<code>eval/fid</code> down; the best of them is kept as <code>checkpoints/best.safetensors</code>.")


def _losses_section(runs: list[RunData]) -> str:
    main = ["loss/D", "loss/G"]
    panels = []
    for key in main:
        lines = [Line(r.label, r.color, *_series(r, r.losses, key)) for r in runs]
        lines = [ln for ln in lines if ln.x]
        if lines:
            panels.append((key, lines))
    body = []
    if panels:
        body.append(_figure(panels, "losses"))
    else:
        body.append('<p class="note">No losses were logged.</p>')
    terms: dict[str, None] = {}
    for r in runs:
        for k in r.keys(r.losses):
            if k not in main:
                terms.setdefault(k, None)
    term_panels = []
    for key in _order_terms(list(terms)):
        lines = [ln for ln in (Line(r.label, r.color, *_series(r, r.losses, key)) for r in runs) if ln.x]
        term_panels.append((key, lines))
    if term_panels:
        body.append(f'<h3>Technique terms</h3><p class="help">{TERMS_HELP}</p>')
        body.append(_figure(term_panels, "technique terms"))
    return _section("losses", "Losses", "".join(body), LOSS_HELP)


def _figure(panels: list[tuple[str, list[Line]]], what: str, smooth: bool = True) -> str:
    labels = list(dict.fromkeys(ln.label for _, lines in panels for ln in lines))  # in run order
    alt = f"{what}: {', '.join(t for t, _ in panels)}; runs: {', '.join(labels)}"
    legend = ", ".join(labels)
    return (f'<figure class="plot">{_img(plot_panels(panels, smooth=smooth), alt, "plot")}'
            f'<figcaption>{_e(what)} of {_e(legend)}</figcaption></figure>')


def _metrics_section(runs: list[RunData]) -> str:
    keys: dict[str, None] = {}
    for r in runs:
        for k in r.keys(r.metrics):
            keys.setdefault(k, None)
    panels = []
    for key in keys:
        if key.endswith("_std") and key[:-len("_std")] in keys:
            continue  # drawn as the shaded band of its mean's panel
        lines = []
        for r in runs:
            x, y = _series(r, r.metrics, key)
            bx, band = _series(r, r.metrics, f"{key}_std")
            if x:
                lines.append(Line(r.label, r.color, x, y, band if bx == x else None))
        panels.append((key + (" (shaded: ± std over the splits)" if any(ln.band for ln in lines) else ""), lines))
    if not panels:
        none = ('<p class="note">No epoch metrics were logged (<code>igan train --eval-every N</code> logs '
                'sample-quality metrics every N epochs; <code>igan semisup</code> logs the test error at each '
                'epoch end).</p>')
        return _section("metrics", "Metrics", none)
    return _section("metrics", "Metrics", _figure(panels, "metrics", smooth=False), METRICS_HELP)


def _pick(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _samples_section(runs: list[RunData], max_samples: int) -> str:
    parts = []
    for r in runs:
        if not r.samples:
            continue
        shown = [r.samples[i] for i in _pick(len(r.samples), max_samples)]
        figs = []
        for epoch, png in shown:
            try:
                data = png.read_bytes()
            except OSError:
                continue
            if not data.startswith(PNG_MAGIC):
                continue
            # a click opens the grid over the page and another closes it: <details> toggles, CSS
            # draws the open one full size (no script, and the image is embedded once)
            figs.append(f'<figure><details class="zoom"><summary title="click to enlarge">'
                        f"{_img(data, f'{r.label} epoch {epoch}', 'sample')}</summary></details>"
                        f"<figcaption>epoch {epoch}</figcaption></figure>")
        more = (f" ({len(shown)} of {len(r.samples)} epochs)" if len(shown) < len(r.samples) else "")
        parts.append(f'<div class="run-samples"><h3>{_swatch(r)}{_e(more)}</h3>'
                     f'<div class="strip">{"".join(figs)}</div></div>')
    body = f'<div class="samples">{"".join(parts)}</div>' if parts else \
        '<p class="note">No sample grids (samples/epoch_NNNN.png) were found.</p>'
    return _section("samples", "Samples over time", body,
                    "The same fixed noise through the generator at each epoch end "
                    "(<code>samples/epoch_NNNN.png</code>), so changes are the generator's, not the noise's; "
                    "click a grid to see it full size (click again to close). "
                    "Look for variety across the grid (many near-identical images mean mode collapse) and "
                    "for sharper digits or objects over time.")


def _flatten(config: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in sorted((config or {}).items()):
        if k in ("options", "model_kwargs") and isinstance(v, dict):
            for kk, vv in sorted(v.items()):
                out[f"{k}.{kk}"] = vv
        else:
            out[k] = v
    return out


def _config_section(runs: list[RunData]) -> str:
    flat = [_flatten(r.config) for r in runs]
    keys: dict[str, None] = {}
    for f in flat:
        for k in f:
            keys.setdefault(k, None)
    core = [k for k in keys if "." not in k]
    rest = [k for k in keys if "." in k]
    rows, classes = [], []
    for k in core + rest:
        cells = [_fmt(f.get(k)) if k in f else "—" for f in flat]
        differs = len(runs) > 1 and len(set(cells)) > 1 and k not in ("out",)
        rows.append([f"<code>{_e(k)}</code>"] + [_e(c) for c in cells])
        classes.append("diff" if differs else "")
    help_text = ("From each run's <code>config.json</code> (the resolved settings: defaults filled in)."
                 + (" Rows where the runs differ are highlighted." if len(runs) > 1 else ""))
    if not rows:
        return _section("config", "Config", '<p class="note">No config.json was found.</p>', help_text)
    header = ["setting", *[_swatch(r) for r in runs]]
    if len(runs) > 1:
        return _section("config", "Config", _table(header, rows, classes), help_text)
    per = math.ceil(len(rows) / 3)  # one run: three short tables side by side instead of one long one
    tables = [_table(header, rows[i:i + per]) for i in range(0, len(rows), per)]
    return _section("config", "Config", f'<div class="side">{"".join(tables)}</div>', help_text)


def _plugins_section(runs: list[RunData]) -> str:
    names: dict[str, None] = {}
    for r in runs:
        for n in ((r.meta or {}).get("plugins") or {}):
            names.setdefault(n, None)
    rows = [["igan"] + [_e(_fmt((r.meta or {}).get("igan_version"))) for r in runs]]
    rows.append(["model"] + [_e(_model(r.meta)) for r in runs])
    for n in names:
        rows.append([f"<code>{_e(n)}</code>"]
                    + [_e(_fmt(((r.meta or {}).get("plugins") or {}).get(n))) for r in runs])
    classes = [""] * len(rows)
    if len(runs) > 1:
        classes = ["diff" if len({c for c in row[1:]}) > 1 else "" for row in rows]
    return _section("plugins", "Plugins", _table(["", *[_swatch(r) for r in runs]], rows, classes),
                    "From each checkpoint's metadata: the igan version and the plugins (name and version) "
                    "that were installed when it was written; a checkpoint needs the same plugins to be "
                    "loaded again.")


def _model(meta: dict[str, Any] | None) -> str:
    m = (meta or {}).get("model")
    if not isinstance(m, dict):
        return "—"
    kwargs = m.get("kwargs") or {}
    return m.get("name", "?") + (f" {json.dumps(kwargs, sort_keys=True)}" if kwargs else "")


def build_report(runs: list[RunData], tables: list[SeedsTable], max_samples: int = MAX_SAMPLES) -> str:
    """The whole HTML page."""
    from igan import __version__

    sections = [_runs_section(runs), _final_section(runs)]
    nav = [("runs", "Runs"), ("final", "Final numbers")]
    if tables:
        sections.append(_seeds_section(tables))
        nav.append(("seeds", "Seeds"))
    sections += [_samples_section(runs, max_samples), _losses_section(runs), _metrics_section(runs),
                 _config_section(runs), _plugins_section(runs)]
    nav += [("samples", "Samples"), ("losses", "Losses"), ("metrics", "Metrics"), ("config", "Config"),
            ("plugins", "Plugins")]
    title = "igan report: " + ", ".join(r.label for r in runs[:4]) + (", ..." if len(runs) > 4 else "")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    links = "".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name in nav)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><div class=\"wrap\"><h1>igan report</h1><p>{len(runs)} run{'s' if len(runs) != 1 else ''}"
        f" · written {_e(stamp)} by igan {_e(__version__)}</p><nav>{links}</nav></div></header>"
        f"<main class=\"wrap\">{''.join(sections)}</main></body></html>\n")


def write_report(dirs: list[Path], out: Path | None = None, max_samples: int = MAX_SAMPLES) -> Path:
    """Read ``dirs``, write the report and return its path (``RUN_DIR/report.html`` for one directory,
    ``report.html`` for several, unless ``out`` says otherwise)."""
    if not dirs:
        raise IganError("no run directory given", hint="igan report RUN_DIR [RUN_DIR ...]")
    runs, tables = collect(dirs)
    _matplotlib()  # fail before any work if it is missing
    page = build_report(runs, tables, max_samples)
    if out is None:
        out = Path(dirs[0]) / "report.html" if len(dirs) == 1 else Path("report.html")
    elif out.is_dir():
        out = out / "report.html"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise IganError(f"could not write {out}: {exc.strerror or exc}",
                        hint="choose another place with -o, or make the folder writable") from exc
    return out
