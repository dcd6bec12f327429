#!/usr/bin/env bash
# What a person sees after a sweep, as headless Chromium renders it: the HTML report, the MLflow view the
# sweep's link opens, and optuna-dashboard. Writes docs/img/*.png; run from the repository root after
# `make setup`:  bash docs/screenshots.sh
# The sweep is the README's main job made short (6 trials of 2 epochs on the embedded demo set), so the
# pictures take minutes on a CPU; `make sweep` gives the same pages with 30 trials.
set -euo pipefail
root=$(pwd)
venv="$root/.venv/bin"
chromium=$(command -v chromium || command -v chromium-browser)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$root/docs/img"
cd "$work"

"$venv/cvstudy" sweep --model resnet50 --trials 6 --epochs 2 | tee sweep.log
"$venv/cvstudy" report resnet50

shoot() {  # shoot NAME URL [WIDTHxHEIGHT]: a full page after its scripts had 15 s to draw
  "$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --virtual-time-budget=15000 \
    --window-size="${3:-1400,1800}" --screenshot="$root/docs/img/$1.png" "$2" 2>/dev/null
}

shoot report "file://$work/reports/resnet50/report.html" 1400,2600

"$venv/mlflow" ui --port 5077 >/dev/null 2>&1 &
"$venv/optuna-dashboard" sqlite:///optuna.db --port 8077 >/dev/null 2>&1 &
for url in http://127.0.0.1:5077/health http://127.0.0.1:8077/api/studies; do
  for _ in $(seq 60); do curl -fs "$url" >/dev/null && break; sleep 1; done
done
link=$(grep -o 'http://127.0.0.1:5000/#[^ ]*' sweep.log | head -1)
shoot mlflow "${link/5000/5077}"
shoot optuna-dashboard "http://127.0.0.1:8077/dashboard/studies/1"
ls -l "$root/docs/img"
