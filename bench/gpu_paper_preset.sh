#!/usr/bin/env bash
# The prepared GPU check of issue 13: the `paper` UNet preset (281 M parameters) trained 300 epochs on one dataset
# with the offline TAEF2 autoencoder and MobileNetV2 features, then the same side-by-side table as on the CPU
# (k-NN baseline, paper recipe, production recipe). Meant for one run of at most 8 minutes on an H200.
#
#   bash bench/gpu_paper_preset.sh [DATASET_DIR] [OUT_DIR]
#
# Needs CUDA and the project's venv (scripts/bootstrap.sh); prints the table and writes OUT_DIR/bench_results.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data=${1:-../shared/data/kolektorsdd}
out=${2:-/tmp/ddad_gpu_paper}
py=${DDAD_PY:-${DDAD_HOME:-$HOME/.cache/ddad-inspection}/venv/bin/python}
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: this check needs a GPU")'
"$py" bench/bench_detector.py --data "$data" --out "$out" --preset paper --epochs 300 --recipes paper production \
    --max-train-images 200 --max-test-images 150 --device cuda --quiet
