#!/usr/bin/env bash
# The prepared GPU check of the paper-sized model: the `paper` UNet preset (281 M parameters) trained 300 epochs on one dataset
# with the offline TAEF2 autoencoder and MobileNetV2 features, then the same side-by-side table as on the CPU
# (k-NN baseline, paper recipe, production recipe). Meant for one run of at most 8 minutes on an H200.
#
#   bash bench/gpu_paper_preset.sh [DATASET_DIR] [OUT_DIR]
#   bash bench/gpu_paper_preset.sh --smoke [DATASET_DIR] [OUT_DIR]   # or SMOKE=1: same command, CPU, toy sizes
#
# Needs CUDA and the project's venv (scripts/bootstrap.sh); prints the table and writes OUT_DIR/bench_results.md
# (and .json). The smoke run (no CUDA check, `cpu` preset, 1 epoch, bench_detector's --quick sizes: 64 px, 24 good
# training and 16 test images per half; about a minute on 2 cores) exercises the arguments, the imports, both fits
# and the tables; its figures mean nothing. Environment: DDAD_PY (the Python to use), DDAD_SHARED (the folder holding
# data/ and weights/taef2; default ../shared, else ./shared).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
smoke=0
[ "${SMOKE:-0}" = 0 ] || smoke=1
if [ "${1:-}" = --smoke ]; then smoke=1; shift; fi
if [ -n "${DDAD_SHARED:-}" ]; then shared=$DDAD_SHARED
elif [ -d ../shared ] || [ ! -d shared ]; then shared=../shared
else shared=shared; fi
data=${1:-$shared/data/kolektorsdd}
out=${2:-/tmp/ddad_gpu_paper$([ "$smoke" = 1 ] && echo _smoke)}
py=${DDAD_PY:-${DDAD_HOME:-$HOME/.cache/ddad-inspection}/venv/bin/python}
run=("$py" bench/bench_detector.py --data "$data" --out "$out" --recipes paper production
     --autoencoder "tae:$shared/weights/taef2" --quiet)
if [ "$smoke" = 1 ]; then
    echo "== smoke run: CPU, toy sizes (the figures mean nothing)"
    # Toy sizes spelled out as well as --quick, so that the run stays small whatever --quick sets; bench_detector
    # fits with a tail fit where the few good images cannot support the target false-alarm rate.
    timeout 300 "${run[@]}" --preset cpu --epochs 1 --image-size 64 --max-train-images 24 --max-test-images 16 \
        --n-boot 50 --target-fpr 0.05 --device cpu --quick
else
    "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: this check needs a GPU")'
    "${run[@]}" --preset paper --epochs 300 --max-train-images 200 --max-test-images 150 --device cuda
fi
