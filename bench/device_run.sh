#!/usr/bin/env bash
# What the GPU machine runs (issue 16: 15 minutes of device time in all, at most 10 a call):
# python -m bench.device_run in one of its modes; bench/device_run.py says what each step
# does and bench/README.md how long each is expected to take.
#
#   OUT=/some/dir bash bench/device_run.sh run        # the first run, ~8 min: preflight, pytest -m gpu,
#                                                     # bench core (xlarge), 50 search steps, table
#   OUT=/some/dir bash bench/device_run.sh continue   # a second call: the table from where it stopped, validate
#   OUT=/some/dir bash bench/device_run.sh preflight  # versions, GPU, a tiny CUDA op
#   OUT=/tmp/x bash bench/device_run.sh smoke         # the same run on the CPU, tiny settings (~1 min)
#   OUT=/tmp/x bash bench/device_run.sh continue --smoke --budget 120
#
# Extra arguments go to bench.device_run (--budget S, --tag T, --work DIR, --table-limit S).
# Installs nothing: bench/vendor (pure-Python packages the device image lacks, made here by
# python -m bench.vendor and carried) goes on PYTHONPATH, and wheels in .whl/ (carried too)
# are unpacked into /tmp/site first. On exit everything is packed into $OUT (at most 7 files).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${OUT:?set OUT to the folder whose files come back}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
MODE="${1:-run}"
[ $# -gt 0 ] && shift
if [ "$MODE" = smoke ]; then MODE=run; set -- --smoke "$@"; fi
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -d bench/vendor ]; then export PYTHONPATH="$ROOT/bench/vendor${PYTHONPATH:+:$PYTHONPATH}"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" -m bench.device_run "$MODE" --out "$OUT" "$@"
