"""Benchmark of flow step 4 alone: the conditioned DDIM sampler (``ddad_core.denoise.reconstruct``).

Prints images/s for ``steps_per_image`` UNet calls per image at several batch sizes, each batch with mixed start
steps (as the dynamic noise level produces). CPU: the ``cpu`` preset in float32. CUDA (when available): the
``cpu`` and ``paper`` presets in bf16 as well. Random weights: speed does not depend on them.

    python bench/bench_sampler.py                       # defaults
    python bench/bench_sampler.py --batches 1 8 32 --presets cpu paper --device cuda --repeats 5
"""

from __future__ import annotations

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()  # passive OpenMP waiting, one thread per usable core; before torch (ddad_core/runtime.py)

import argparse
import time

import torch

from ddad_core.ddim import DDADScheduler
from ddad_core.denoise import reconstruct
from ddad_core.noise_schedule import NoiseSchedule
from ddad_core.unet import build_unet, count_parameters

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
parser.add_argument("--presets", nargs="+", default=None, help="default: cpu (and paper on CUDA)")
parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
parser.add_argument("--steps", type=int, default=10, help="UNet calls per image")
parser.add_argument("--latent-channels", type=int, default=4)
parser.add_argument("--latent-size", type=int, default=32)
parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (the best is reported)")
parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
parser.add_argument(
    "--dtype",
    choices=["auto", "float32", "bfloat16"],
    default="auto",
    help="auto: float32 on CPU; on CUDA bf16 for every preset plus float32 for 'cpu'",
)
parser.add_argument("--channels-last", action="store_true", help="run the UNet in channels_last memory format")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(preset: str, dtype: torch.dtype, batch: int, args, device: torch.device) -> float:
    """Images per second of ``reconstruct`` for one setting (best of ``args.repeats``)."""
    unet = build_unet(preset, args.latent_channels, args.latent_size, seed=0).to(device=device, dtype=dtype).eval()
    if args.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    scheduler = DDADScheduler(NoiseSchedule(device=device), steps_per_image=args.steps)
    gen = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn(batch, args.latent_channels, args.latent_size, args.latent_size, device=device, generator=gen)
    noise_steps = torch.arange(batch, device=device) % 7 * 10 + 20  # 20..80, mixed within the batch
    reconstruct(unet, scheduler, latents, noise_steps, guidance=4.0)  # warm-up (allocator, kernels)
    best = float("inf")
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        reconstruct(unet, scheduler, latents, noise_steps, guidance=4.0)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return batch / best


def main(argv=None) -> int:
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    presets = args.presets or (["cpu", "paper"] if device.type == "cuda" else ["cpu"])
    rows = []
    for preset in presets:
        if args.dtype != "auto":
            dtypes = [getattr(torch, args.dtype)]
        elif device.type == "cuda":
            dtypes = [torch.bfloat16] if preset == "paper" else [torch.float32, torch.bfloat16]
        else:
            dtypes = [torch.float32]
        params = count_parameters(build_unet(preset, args.latent_channels, args.latent_size))
        for dtype in dtypes:
            for batch in args.batches:
                ips = bench_one(preset, dtype, batch, args, device)
                rows.append((preset, f"{params / 1e6:.1f}M", str(dtype).replace("torch.", ""), batch, ips))
                print(f"  {preset:6s} {rows[-1][2]:8s} batch {batch:3d}: {ips:9.2f} images/s", flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"\nSampler only: reconstruct(), {args.steps} UNet calls per image, "
        f"latents {args.latent_channels}x{args.latent_size}x{args.latent_size}, {name}"
    )
    print("| preset | params | dtype | batch | images/s | ms/image |\n|---|---|---|---|---|---|")
    for preset, params, dtype, batch, ips in rows:
        print(f"| {preset} | {params} | {dtype} | {batch} | {ips:.2f} | {1000 / ips:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
