"""The serving pipeline against the reference implementation's flow: same weights, same images, one run.

Usage:
    python bench/bench_model.py                                   # fit a timing bundle (cpu preset), batches 1 8 32
    python bench/bench_model.py --bundle BUNDLE --images DIR      # a fitted bundle and real images
    python bench/bench_model.py --scaling                         # serving images/s at batch 1, 2, 4, ..., 32
    python bench/bench_model.py --device cuda --dtype bf16 --preset paper --autoencoder sd-random   # GPU script

Two flows run on the same networks:

* ``reference``: how the authors' code processes a test batch, restated by us from docs/method.md section 13 (13.1 and
  13.2): no inference mode (``no_grad``), the noise schedule rebuilt from a numpy linspace twice per sampling step,
  per-image timestep tensors built on the host with one device sync per image, the state and x0-hat copied to the
  host and back at every step, five feature passes per batch (g(x) for the k-NN, phi(x) and phi(x-hat) for the
  map, and the same two again for the visualisation-only maps), the k-NN on the CPU (scikit-learn, L1, brute force),
  per-image ``.item()`` score collection, every map kept until the end, gathered with repeated ``torch.cat``, and the
  test-set min-max pass at the end.
* ``serving``: ``DDADPipeline.run_tensor`` as served (channels-last weights, the default), with ``--compile``
  also ``torch.compile`` (``DDADPipeline.optimize``).

Both start from the same preprocessed images (preprocessing is the same code in both and is timed separately).
The check that the speed-up is not bought with a different result: each flow's raw image score (the max of the
blended, blurred map with the bundle's fixed normalisation) and the chosen noise steps agree within the printed
tolerance. The reference's final min-max scores are transductive (they depend on the whole test set) and are only
timed.

Timing: the flows alternate (reference, serving, reference, ...) ``--rounds`` times per batch size after one
warm-up each; medians are reported, and the ratio is taken pair by pair. Peak memory: on CUDA the peak allocated
by each flow (``torch.cuda.max_memory_allocated``); on the CPU the peak resident set above the flow's start,
sampled every 2 ms.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()

import argparse
import copy
import json
import statistics
import tempfile
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from ddad_core.anomaly_map import gaussian_kernel1d
from ddad_core.features import DIC_BLOCK, MAP_BLOCKS
from ddad_core.pipeline import DDADPipeline, _Timer
from ddad_core.preprocess import preprocess

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------------- reference
class ReferenceFlow:
    """The reference code's test loop (docs/method.md 13.1/13.2), restated on the networks of a loaded pipeline."""

    def __init__(self, pipe: DDADPipeline) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.pipe = pipe
        self.cfg = pipe.config
        self.device = pipe.device
        # The k-NN lives on the CPU, fitted on the bank moved off the device (13.2 item 4).
        bank = pipe.noise_level.bank.cpu().numpy()
        self.k = min(self.cfg.knn_k, bank.shape[0])
        self.knn = NearestNeighbors(n_neighbors=self.k, metric="l1", algorithm="brute").fit(bank)
        self.edges = pipe.noise_level.bin_edges.cpu().numpy()
        self.norm = pipe.calibration.normalization
        self.reset()

    def reset(self) -> None:
        # Everything the reference keeps until the end of the test set (13.1 items 8 and 14).
        self.all_maps: torch.Tensor | None = None
        self.all_latent_vis: torch.Tensor | None = None
        self.all_feature_vis: torch.Tensor | None = None
        self.all_inputs: torch.Tensor | None = None
        self.all_recons: torch.Tensor | None = None
        self.scores: list[float] = []

    def _compute_alpha(self, t: torch.Tensor) -> torch.Tensor:
        # Rebuilt from a numpy linspace on every call (13.1 item 1); index t + 1 so that t = -1 gives 1.
        cfg = self.cfg
        betas = np.linspace(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps, dtype=np.float64)
        betas = torch.from_numpy(betas).to(self.device)
        beta = torch.cat([torch.zeros(1, dtype=betas.dtype, device=self.device), betas])
        abar = (1 - beta).cumprod(dim=0).float()
        return abar.index_select(0, t.long() + 1).view(-1, 1, 1, 1)

    def _noise_steps(self, x: torch.Tensor) -> list[int]:
        cfg = self.cfg
        if not cfg.dynamic_noise:
            return [cfg.max_noise_step] * x.shape[0]
        # A separate feature pass for g(x) (13.2 item 3), features moved to the host for scikit-learn.
        block2 = self.pipe.features(x.to(self.pipe.dtype))[DIC_BLOCK].float()
        size = min(cfg.dic_pool_size, block2.shape[-2], block2.shape[-1])
        g = F.adaptive_avg_pool2d(block2, size).flatten(1).cpu().numpy()
        dist, _ = self.knn.kneighbors(g, n_neighbors=self.k)
        y = dist.mean(axis=1)
        steps = []
        for value in y:  # one image at a time, in Python
            kappa = min(int(np.searchsorted(self.edges, value, side="left")), cfg.num_bins)
            k = max(kappa, cfg.min_bin)
            m, nb, t_max = cfg.steps_per_image, cfg.num_bins, cfg.max_noise_step
            steps.append(max(((2 * k * t_max + nb * m) // (2 * nb * m)) * m, m))
        return steps

    def _denoise(self, z0: torch.Tensor, noise_steps: list[int]) -> torch.Tensor:
        cfg, unet = self.cfg, self.pipe.unet
        n = cfg.steps_per_image
        first = 1 if cfg.grid == "faithful" else 0
        # Per-image grids as Python lists.
        seqs = []
        for t_start in noise_steps:
            step = max(t_start // n, 1)
            seqs.append([max(t_start - (k + first) * step, 0) for k in range(n)])
        start = torch.tensor(noise_steps, device=self.device)
        abar0 = self._compute_alpha(start)
        xs = [(abar0.sqrt() * z0).cpu()]  # states kept in a host list (13.2 item 1)
        x0_preds = []
        unet_dtype = next(unet.parameters()).dtype
        for i in range(n):
            # Timesteps from per-image device scalars, one element (one sync) at a time (13.2 item 1).
            per_image = [torch.tensor(seq[i], device=self.device) for seq in seqs]
            t = torch.tensor([int(v.item()) for v in per_image], device=self.device)
            t_next = torch.tensor([seq[i + 1] if i + 1 < n else -1 for seq in seqs], device=self.device)
            at = self._compute_alpha(t)
            at_next = self._compute_alpha(t_next)
            xt = xs[-1].to(self.device)
            et = unet(xt.to(unet_dtype), t).sample.float()
            yt = at.sqrt() * z0 + (1 - at).sqrt() * et
            et_hat = et - (1 - at).sqrt() * cfg.guidance * (yt - xt)
            x0_t = (xt - et_hat * (1 - at).sqrt()) / at.sqrt()
            x0_preds.append(x0_t.to("cpu"))
            c2 = (1 - at_next).clamp(min=0).sqrt()  # eta = 0: c1 = 0
            xt_next = at_next.sqrt() * x0_t + c2 * et_hat
            xs.append(xt_next.to("cpu"))
        return xs[-1].to(self.device)

    def _blur(self, maps: torch.Tensor) -> torch.Tensor:
        sigma = self.cfg.blur_sigma
        if sigma <= 0:
            return maps
        size = gaussian_kernel1d(sigma).numel()
        return gaussian_blur(maps.unsqueeze(1), [size, size], [sigma, sigma]).squeeze(1)

    def _cat(self, acc: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        # Repeated concatenation on the device (quadratic over the test set, 13.1 item 8).
        return new if acc is None else torch.cat([acc, new])

    def _feature_map(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        size, pool = self.cfg.image_size, self.cfg.feature_pool
        fx = self.pipe.features(x.to(self.pipe.dtype))
        fr = self.pipe.features(recon.to(self.pipe.dtype))
        total = 0
        for j in MAP_BLOCKS:
            a, b = fx[j].float(), fr[j].float()
            if pool > 1:
                a = F.avg_pool2d(a, pool, stride=1, padding=pool // 2, count_include_pad=False)
                b = F.avg_pool2d(b, pool, stride=1, padding=pool // 2, count_include_pad=False)
            d = (1 - F.cosine_similarity(a, b, dim=1)).unsqueeze(1)
            total = total + F.interpolate(d, size=(size, size), mode="bilinear", align_corners=True).squeeze(1)
        return total

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, timer: _Timer) -> tuple[list[float], list[int]]:
        cfg, pipe, size = self.cfg, self.pipe, self.cfg.image_size
        lap = timer.lap
        x = x.to(self.device)
        z0 = pipe.autoencoder.encode(x).mean
        lap("encode")
        steps = self._noise_steps(x)
        lap("noise_level")
        z_hat = self._denoise(z0, steps)
        lap("denoise")
        recon = pipe.autoencoder.decode(z_hat)
        lap("decode")
        latent = (z_hat - z0).abs().mean(dim=1, keepdim=True)
        latent = F.interpolate(latent, size=(size, size), mode="bilinear", align_corners=True).squeeze(1)
        feature = self._feature_map(x, recon)
        lap("features")
        lo_l, hi_l = self.norm.range_of("latent")
        lo_f, hi_f = self.norm.range_of("feature")
        lam = cfg.latent_weight
        blended = lam * (latent - lo_l) / (hi_l - lo_l) + (1 - lam) * (feature - lo_f) / (hi_f - lo_f)
        amap = self._blur(blended)
        lap("anomaly_map")
        # Visualisation-only maps: two more feature passes, separately blurred components (13.2 items 3 and 6).
        vis_feature = self._blur(self._feature_map(x, recon))
        vis_latent = self._blur(latent)
        batch_scores = [amap[i].max().item() for i in range(amap.shape[0])]  # per-image syncs (13.1 item 3)
        self.scores.extend(batch_scores)
        self.all_maps = self._cat(self.all_maps, amap)
        self.all_latent_vis = self._cat(self.all_latent_vis, vis_latent)
        self.all_feature_vis = self._cat(self.all_feature_vis, vis_feature)
        self.all_inputs = self._cat(self.all_inputs, x)
        self.all_recons = self._cat(self.all_recons, recon)
        lap("post")
        return batch_scores, steps

    def finish(self) -> torch.Tensor:
        """The test-set min-max pass at the end (13.2 item 7): every map normalised by the set's own range."""
        maps = self.all_maps
        return (maps - maps.min()) / (maps.max() - maps.min())


# ------------------------------------------------------------------------------------------------------ memory
class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or resident set above the start sampled every 2 ms."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (4096 / 2**20)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._rss_mb()
            self._stop = threading.Event()
            self._max = self._base

            def sample() -> None:
                while not self._stop.wait(0.002):
                    self._max = max(self._max, self._rss_mb())

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._max, self._rss_mb()) - self._base


# -------------------------------------------------------------------------------------------------------- setup
def fit_timing_bundle(args: argparse.Namespace, out: Path, images: list[np.ndarray]) -> Path:
    """A real bundle fitted for timing only: the chosen preset and autoencoder, one UNet epoch."""
    from ddad_core.fitting.fit import fit_images, make_configs

    config, train_config = make_configs(args.preset, epochs=1, image_size=args.image_size, recipe=args.recipe)
    print(
        f"[bench] fitting a {args.preset}/{args.recipe} bundle for timing (1 epoch, {len(images)} images) ...",
        flush=True,
    )
    fit_images(
        images,
        out,
        config=config,
        train_config=train_config,
        autoencoder=args.autoencoder_spec,
        backbone=args.backbone,
        device=args.device,
        log=None,
        progress=False,
        tail_fit=True,
    )
    return out


def load_images(args: argparse.Namespace, count: int) -> list[np.ndarray]:
    if args.images:
        import cv2

        paths = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".bmp"})
        paths = [p for p in paths if "mask" not in p.stem.lower() and "ground_truth" not in p.parts]
        if not paths:
            raise SystemExit(f"no images under {args.images}")
        picked = [paths[i % len(paths)] for i in range(count)]
        return [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in picked]
    from ddad_core.testing import synthetic_textures

    return synthetic_textures(count, size=args.image_size, seed=1)


def sd_vae_sized(latent_scale: float = 0.18215):
    """An AutoencoderKL with Stable Diffusion's VAE configuration and random weights (timing only)."""
    from diffusers import AutoencoderKL

    from ddad_core.autoencoders import DiffusersVAE

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    return DiffusersVAE(vae, source="random-sd-vae-sized", latent_scale=latent_scale)


def count_flops(pipe: DDADPipeline, x: torch.Tensor) -> float:
    """FLOPs of one serving batch, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        pipe.run_tensor(x)
    return float(counter.get_total_flops())


#: Dense peak FLOP/s per dtype of known accelerators (vendor data sheets), for the utilisation figure.
PEAK_FLOPS = {"H200": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12}}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in PEAK_FLOPS.items():
        if key in name:
            return table.get(dtype)
    return None


# -------------------------------------------------------------------------------------------------------- timing
def time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_batch(args, pipe: DDADPipeline, ref: ReferenceFlow, x: torch.Tensor, batch: int) -> dict:
    """Alternate the two flows over the images in batches of ``batch``; return medians, breakdowns, checks."""
    device = pipe.device
    chunks = [x[s : s + batch] for s in range(0, len(x), batch) if len(x[s : s + batch]) == batch]
    if not chunks:
        raise SystemExit(f"need at least {batch} images for batch {batch}")

    def reference() -> tuple[list[float], list[int], dict]:
        ref.reset()
        timer = _Timer(device)
        scores, steps = [], []
        for c in chunks:
            s, t = ref(c, timer)
            scores += s
            steps += t
        ref.finish()
        timer.lap("post")
        return scores, steps, timer.times

    def serving() -> tuple[list[float], list[int], dict]:
        timer: dict[str, float] = {}
        raw, steps = [], []
        for c in chunks:
            out = pipe.run_tensor(c)
            raw.append(out.pred_score_raw)
            steps.append(out.noise_step)
            for k, v in out.timings_ms.items():
                timer[k] = timer.get(k, 0.0) + v
        scores = torch.cat(raw).float().cpu().tolist()  # one transfer at the end
        return scores, torch.cat(steps).cpu().tolist(), timer

    images = len(chunks) * batch
    results = {"reference": [], "serving": []}
    outputs, timers, memory = {}, {}, {}
    for name, fn in (("reference", reference), ("serving", serving)):  # warm-up, outputs and memory
        with PeakMemory(device) as peak:
            outputs[name] = fn()
        memory[name] = peak.peak_mb
    for _ in range(args.rounds):
        for name, fn in (("reference", reference), ("serving", serving)):
            holder = {}
            seconds = time_once(lambda fn=fn, holder=holder: holder.setdefault("out", fn()))
            results[name].append(seconds)
            timers.setdefault(name, []).append(holder["out"][2])
    ref_scores, ref_steps, _ = outputs["reference"]
    srv_scores, srv_steps, _ = outputs["serving"]
    ref_a, srv_a = np.asarray(ref_scores), np.asarray(srv_scores)
    same_steps = int(sum(a == b for a, b in zip(ref_steps, srv_steps, strict=True)))
    both = np.asarray([a == b for a, b in zip(ref_steps, srv_steps, strict=True)])
    scale = max(float(np.abs(ref_a).max()), 1e-12)
    max_rel = float(np.abs(ref_a[both] - srv_a[both]).max() / scale) if both.any() else float("nan")
    pair_ratios = [r / s for r, s in zip(results["reference"], results["serving"], strict=True)]

    def breakdown(name: str) -> dict[str, float]:
        runs = timers[name]
        keys = sorted({k for t in runs for k in t})
        return {k: round(statistics.median(t.get(k, 0.0) for t in runs) / images, 2) for k in keys}

    return {
        "batch": batch,
        "images": images,
        "reference_images_per_s": images / statistics.median(results["reference"]),
        "serving_images_per_s": images / statistics.median(results["serving"]),
        "ratio": statistics.median(pair_ratios),
        "pair_ratios": [round(r, 3) for r in pair_ratios],
        "reference_ms_per_image": breakdown("reference"),
        "serving_ms_per_image": breakdown("serving"),
        "peak_memory_mb": {k: round(v, 1) for k, v in memory.items()},
        "same_noise_steps": f"{same_steps}/{len(ref_steps)}",
        "max_relative_score_difference": max_rel,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="a fitted bundle (default: fit one for timing)")
    p.add_argument("--images", type=Path, help="folder of test images (default: generated textures)")
    p.add_argument("--preset", default="cpu", help="UNet preset of the timing bundle (cpu, paper)")
    p.add_argument("--recipe", default="paper", help="recipe of the timing bundle (the reference flow restates paper)")
    p.add_argument(
        "--autoencoder",
        default="taef2",
        choices=("taef2", "sd-random"),
        help="taef2: the offline TAEF2 weights; sd-random: an SD-VAE-sized AutoencoderKL, random weights",
    )
    p.add_argument(
        "--taef2",
        default=str(Path(__file__).resolve().parents[2] / "shared" / "weights" / "taef2"),
        help="TAEF2 weights folder",
    )
    p.add_argument("--backbone", default="mobilenetv2_100:offline")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--images-per-batch-size", type=int, default=32, help="images timed per batch size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--no-channels-last", action="store_true", help="serve with NCHW weights (as the reference)")
    p.add_argument("--compile", action="store_true", help="also torch.compile the UNet (serving flow)")
    p.add_argument("--scaling", action="store_true", help="serving only: images/s at each --scaling-batches size")
    p.add_argument("--scaling-batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="with --scaling")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max relative score difference accepted")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    args.autoencoder_spec = f"tae:{args.taef2}"
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or fit_timing_bundle(args, Path(tmp) / "bundle", load_images(args, 24))
        pipe = DDADPipeline.from_bundle(bundle, device=device, dtype=dtype, channels_last=False)
    if args.autoencoder == "sd-random":
        # Same latent geometry as the bundle is not possible (4 vs 32 channels): the UNet is rebuilt for 4 channels
        # with the bundle's architecture and random weights; every other network keeps the bundle's weights.
        from ddad_core.unet import unet_from_config

        unet_cfg = dict(pipe.bundle_config.unet_config, in_channels=4, out_channels=4)
        pipe.autoencoder = pipe._place(sd_vae_sized())
        pipe.unet = pipe._place(unet_from_config(unet_cfg))
    ref_pipe = pipe
    serve_pipe = copy.deepcopy(pipe)  # its own networks: the fast-path options must not reach the reference flow
    sizes = args.scaling_batches if args.scaling else args.batches
    serve_pipe.optimize(channels_last=not args.no_channels_last, compile=args.compile, batch_sizes=sizes)
    ref = ReferenceFlow(ref_pipe)
    n = max(args.images_per_batch_size, max(sizes))
    x = preprocess(load_images(args, n), image_size=pipe.image_size, device=device)
    print(
        f"[bench] device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
        f"dtype {args.dtype}, threads {torch.get_num_threads()}, preset {args.preset}, recipe {args.recipe}, "
        f"autoencoder {args.autoencoder}, image {pipe.image_size} px, {n} images, rounds {args.rounds}",
        flush=True,
    )

    report: dict = {
        "device": str(device),
        "dtype": args.dtype,
        "preset": args.preset,
        "autoencoder": args.autoencoder,
        "image_size": pipe.image_size,
        "threads": torch.get_num_threads(),
        "batches": [],
    }
    if args.scaling:
        for batch in sizes:
            chunks = [x[s : s + batch] for s in range(0, n, batch) if len(x[s : s + batch]) == batch]
            serve_pipe.run_tensor(chunks[0])
            runs = [time_once(lambda cs=chunks: [serve_pipe.run_tensor(c) for c in cs]) for _ in range(args.rounds)]
            ips = len(chunks) * batch / statistics.median(runs)
            report["batches"].append({"batch": batch, "serving_images_per_s": ips})
            print(f"batch {batch:3d}: serving {ips:7.2f} images/s", flush=True)
    else:
        ok = True
        # The `ratio:` line: batch 8 (the CPU target), else the largest batch timed (named on the line).
        ratio_batch = 8 if 8 in args.batches else max(args.batches)
        for batch in args.batches:
            row = run_batch(args, serve_pipe, ref, x, batch)
            report["batches"].append(row)
            print(
                f"batch {batch:3d}: reference {row['reference_images_per_s']:7.2f} images/s, serving "
                f"{row['serving_images_per_s']:7.2f} images/s, ratio {row['ratio']:.2f} (pairs {row['pair_ratios']})",
                flush=True,
            )
            print(f"           ms/image reference {row['reference_ms_per_image']}", flush=True)
            print(f"           ms/image serving   {row['serving_ms_per_image']}", flush=True)
            print(
                f"           peak memory MB {row['peak_memory_mb']}; noise steps equal {row['same_noise_steps']}; "
                f"max relative score difference {row['max_relative_score_difference']:.2e} "
                f"(tolerance {args.tolerance:g})",
                flush=True,
            )
            ok &= row["max_relative_score_difference"] <= args.tolerance
            if batch == ratio_batch:
                print(f"ratio: {row['ratio']:.2f}" + ("" if batch == 8 else f" (batch {batch})"), flush=True)
        flops = count_flops(serve_pipe, x[:8])
        report["flops_per_image"] = flops / 8
        best = max(r["serving_images_per_s"] for r in report["batches"])
        achieved = flops / 8 * best
        peak = peak_flops(device, dtype)
        report["achieved_flops"] = achieved
        report["utilisation"] = achieved / peak if peak else None
        print(
            f"FLOPs per image {flops / 8 / 1e9:.2f} G; achieved {achieved / 1e12:.3f} TFLOP/s at the best batch"
            + (f"; utilisation {achieved / peak:.1%} of {peak / 1e12:.0f} TFLOP/s peak" if peak else ""),
            flush=True,
        )
        print(f"scores match: {'yes' if ok else 'NO'}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
