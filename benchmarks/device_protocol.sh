#!/usr/bin/env bash
# The MNIST Table-1 protocol (10 seeds, --parallel, both recipes as time allows) in one call of at most
# 9 minutes on a GPU machine; resumable: run it again (at once, while the machine is warm) to continue.
# See benchmarks/device_protocol.py and docs/performance.md ("Running the MNIST protocol").
#
#   mkdir -p data/mnist && cp /work/shared/data/mnist/*.gz data/mnist/   # here, before the call
#   bash benchmarks/device_protocol.sh OUT [--seconds 510] [--recipes reference,paper-v1,badgan-ld] [-- igan flags]
set -u
OUT=${1:?usage: bash benchmarks/device_protocol.sh OUT [--seconds S] [--recipes a,b]}
shift
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if ! "$PY" -c "import igan, importlib.metadata as m; m.version('igan')" >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/protocol.log" 2>&1 \
        || { echo "device_protocol: could not install igan (see $OUT/protocol.log)" >&2; exit 1; }
fi
exec env PYTHONUNBUFFERED=1 "$PY" benchmarks/device_protocol.py "$OUT" "$@"
