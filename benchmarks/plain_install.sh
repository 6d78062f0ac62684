#!/usr/bin/env bash
# A user's first minutes: a fresh virtual environment, `pip install '.[samples]'` (no Makefile,
# the demo's photos as the one extra, no --no-deps weights package), then `vital models` and
# `vital demo --steps 20`, each timed.
#
#   bash benchmarks/plain_install.sh [VENV_DIR]     (default /tmp/vital-plain; it is replaced)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-/tmp/vital-plain}"
out="$(mktemp -d)"
rm -rf "$venv"
echo "== python3 -m venv $venv && pip install .[samples] ($(date -u +%FT%TZ), $(nproc) cores)"
start=$(date +%s)
python3 -m venv "$venv"
"$venv/bin/pip" install -q ".[samples]"
echo "install: $(( $(date +%s) - start )) s"
"$venv/bin/vital" models
echo "== vital demo --steps 20 --out $out"
start=$(date +%s)
VITAL_CACHE="$out/cache" "$venv/bin/vital" demo --steps 20 --out "$out"
echo "demo: $(( $(date +%s) - start )) s; grid: $out/demo-grid.png"
