#!/usr/bin/env bash
# The prepared GPU check of issue 12: reference flow vs serving pipeline with the `paper` UNet preset at batch 32 in
# bf16, once with the offline TAEF2 autoencoder and once with an SD-VAE-sized AutoencoderKL (random weights: timing
# only), then the serving path's batch scaling. Meant for one run of at most 8 minutes on an H200; on a GPU machine
# without the venv, `pip install -e .` (torch, diffusers, timm, scikit-learn) is enough.
#
#   bash bench/gpu_bench_model.sh [OUT_DIR]
#
# Prints the tables (a `ratio:` line per run, images/s, FLOP/s utilisation) and writes OUT_DIR/*.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-/tmp/ddad_gpu_bench_model}
mkdir -p "$out"
py=${DDAD_PY:-${DDAD_HOME:-$HOME/.cache/ddad-inspection}/venv/bin/python}
[ -x "$py" ] || py=python3
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: this check needs a GPU")'
common=(--device cuda --dtype bf16 --preset paper --batches 32 --images-per-batch-size 64 --rounds 3 --compile)
for ae in taef2 sd-random; do
    echo "== paper preset, bf16, batch 32, autoencoder $ae"
    timeout 200 "$py" bench/bench_model.py "${common[@]}" --autoencoder "$ae" --json "$out/$ae.json"
done
echo "== serving scaling, SD-VAE-sized autoencoder"
timeout 120 "$py" bench/bench_model.py --device cuda --dtype bf16 --preset paper --autoencoder sd-random --scaling \
    --images-per-batch-size 64 --rounds 2 --compile --json "$out/scaling.json"
