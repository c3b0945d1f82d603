#!/usr/bin/env bash
# The GPU path in one call (benchmarks/device_check.py): CUDA tests, step speed (eager / fast path /
# whole-step capture, igan vs hand-written), vectorised seeds, Inception throughput, the CLI end to end.
#
#   bash benchmarks/device_check.sh OUT [--tiny] [--budget SECONDS] [--parts a,b,...]
#
# Writes OUT/device_check.json, OUT/device_check.log and OUT/summary.md; prints the summary table.
# Installs igan from this checkout first if it is not importable (no network needed: --no-deps,
# --no-build-isolation; the machine's own torch, typer, rich, pluggy and safetensors are used).
set -u
OUT=${1:?usage: bash benchmarks/device_check.sh OUT [--tiny] [--budget SECONDS]}
shift
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if ! "$PY" -c "import igan, importlib.metadata as m; m.version('igan')" >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/device_check.log" 2>&1 \
        || { echo "device_check: could not install igan (see $OUT/device_check.log)" >&2; exit 1; }
fi
exec env PYTHONUNBUFFERED=1 "$PY" benchmarks/device_check.py "$OUT" "$@"
