#!/usr/bin/env bash
# One prepared run for a lent GPU: throughput, memory and mining, float32 and then bfloat16 with
# channels-last, appended to benchmarks/RESULTS.md.
#   bash benchmarks/gpu.sh                      # on the GPU machine (device cuda)
#   bash benchmarks/gpu.sh --device cpu --quick # smoke test (seconds; the test suite runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
run() { env PYTHONPATH=src "$PYTHON" benchmarks/gpu.py "$@"; }
case " $* " in
  *" --device "*) run "$@" ;;
  *)
    run --device cuda --append "$@"
    run --device cuda --append --precision bfloat16 --channels-last "$@"
    ;;
esac
