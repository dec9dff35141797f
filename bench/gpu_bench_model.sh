#!/usr/bin/env bash
# The prepared GPU check of the serving pipeline: reference flow vs serving pipeline with the `paper` UNet preset at batch 32 in
# bf16, once with the offline TAEF2 autoencoder and once with an SD-VAE-sized AutoencoderKL (random weights: timing
# only), then the serving path's batch scaling. Meant for one run of at most 8 minutes on an H200; on a GPU machine
# without the venv, `pip install -e .` (torch, diffusers, timm, scikit-learn) is enough.
#
#   bash bench/gpu_bench_model.sh [OUT_DIR]
#   bash bench/gpu_bench_model.sh --smoke [OUT_DIR]    # or SMOKE=1: the same commands on the CPU with toy sizes
#
# Prints the tables (a `ratio:` line per run, images/s, FLOP/s utilisation) and writes OUT_DIR/*.json.
# The smoke run (no CUDA check, `cpu` preset, 64 px, 8 images, one round, no torch.compile; about a minute on 2 cores)
# exercises the arguments, the imports, the timing-bundle fit, both flows and the output; its figures mean nothing.
# Environment: DDAD_PY (the Python to use), DDAD_SHARED (the folder holding weights/taef2; default ../shared, else
# ./shared).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
smoke=0
[ "${SMOKE:-0}" = 0 ] || smoke=1
if [ "${1:-}" = --smoke ]; then smoke=1; shift; fi
out=${1:-/tmp/ddad_gpu_bench_model$([ "$smoke" = 1 ] && echo _smoke)}
mkdir -p "$out"
py=${DDAD_PY:-${DDAD_HOME:-$HOME/.cache/ddad-inspection}/venv/bin/python}
[ -x "$py" ] || py=python3
if [ -n "${DDAD_SHARED:-}" ]; then shared=$DDAD_SHARED
elif [ -d ../shared ] || [ ! -d shared ]; then shared=../shared
else shared=shared; fi
if [ "$smoke" = 1 ]; then
    echo "== smoke run: CPU, toy sizes (the figures mean nothing)"
    device=cpu preset=cpu batch=4 limit=150 limit_scaling=120
    sizes=(--image-size 64 --images-per-batch-size 8 --rounds 1)
    scaling=(--image-size 64 --scaling-batches 1 2 --images-per-batch-size 2 --rounds 1)
    compile=()
else
    "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: this check needs a GPU")'
    device=cuda preset=paper batch=32 limit=200 limit_scaling=120
    sizes=(--images-per-batch-size 64 --rounds 3)
    scaling=(--images-per-batch-size 64 --rounds 2)
    compile=(--compile)
fi
taef2=(--taef2 "$shared/weights/taef2")
for ae in taef2 sd-random; do
    echo "== $preset preset, bf16, batch $batch, autoencoder $ae"
    timeout "$limit" "$py" bench/bench_model.py --device "$device" --dtype bf16 --preset "$preset" --batches "$batch" \
        "${sizes[@]}" "${compile[@]}" --autoencoder "$ae" "${taef2[@]}" --json "$out/$ae.json"
done
echo "== serving scaling, SD-VAE-sized autoencoder"
timeout "$limit_scaling" "$py" bench/bench_model.py --device "$device" --dtype bf16 --preset "$preset" \
    --autoencoder sd-random --scaling "${scaling[@]}" "${compile[@]}" "${taef2[@]}" --json "$out/scaling.json"
echo "== wrote $out/taef2.json, $out/sd-random.json, $out/scaling.json"
