"""Benchmark: the detector's recipes against a PatchCore-style k-NN baseline, side by side, under one protocol.

The protocol (every published quality figure comes from it):

1. **Fit on good images only** (``train/good``, at most ``--max-train-images``, evenly spaced), every method on
   the same images with the same offline weights.
2. **Calibrate every method the same way**: each good training image is scored out of sample (its own patches
   and statistics left out, ``ddad_core/fitting/out_of_sample.py``) and the image threshold is the conformal
   quantile for ``--target-fpr`` (``ddad_core/fitting/calibration.py``; a labelled generalised Pareto tail fit
   where a dataset has too few good images for the target).
3. **Two fixed halves of each test set** (``ddad_core/evaluation/splits.py``): settings are chosen on the *tune*
   half; the tables report the *report* half, with 95 % stratified bootstrap intervals (image AUROC, AUPRO,
   recall at 1 % false alarms), exact binomial intervals for the rates at the threshold, and, for every method,
   the paired bootstrap difference to the baseline on the same resampled images (an interval that contains 0 is
   not a win).

Methods:

* **k-NN baseline** (PatchCore without coreset): ImageNet MobileNetV2 features (blocks at strides 8 and 16), 3 x 3
  zero-padded local average, every patch of every training image in the bank, L2 distance to the nearest bank
  patch, upsampled, blurred (sigma 4 at 256 px), image score = maximum;
* **a fitted bundle per recipe** (``--recipes``, fitted with ``ddad fit`` into ``<bundles>/<dataset>_<recipe>``
  when missing): its raw map components are computed once (good training images out of sample, both test halves;
  cached under ``<out>/cache``) and blended as *variants* without refitting: the recipe as fitted, the patch term
  alone (``knn_weight`` 1, what the ``fast`` recipe computes) and the reconstruction alone (``knn_weight`` 0),
  each with per-position or min-max normalisation. A variant's threshold comes from its own out-of-sample good
  scores, so every row is calibrated as a fitted bundle of that variant would be.

Seconds per image are measured on the report half with the device and threads given (the patch-only variants
skip the reconstruction, as the ``fast`` recipe does).

    python bench/bench_detector.py --data /data/kolektorsdd /data/magnetic_tile --bundles /tmp/bundles \\
        --autoencoder tae:/weights/taef2 --out /tmp/bench
    python bench/bench_detector.py --data DIR --recipes fast --quick   # tiny smoke run (CI)

``DDAD_DATA`` may name a folder holding the datasets (``--data`` names then resolve inside it).
"""

from __future__ import annotations

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()  # passive OpenMP waiting, one thread per usable core; before torch (ddad_core/runtime.py)

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from ddad_core.anomaly_map import gaussian_blur, upsample_map
from ddad_core.config import DDADConfig, TrainConfig
from ddad_core.data import MVTecFolder, evenly_spaced, load_images, load_mask, resize_mask
from ddad_core.evaluation.evaluate import EvaluationData, compute_results
from ddad_core.evaluation.intervals import bootstrap_intervals
from ddad_core.evaluation.splits import half_of_items
from ddad_core.features import load_backbone
from ddad_core.fitting.calibration import conformal_threshold
from ddad_core.fitting.fit import fit, make_configs
from ddad_core.fitting.out_of_sample import good_components, out_of_sample_maps
from ddad_core.fitting.recipes import RECIPES
from ddad_core.fitting.select import separation
from ddad_core.fitting.synthetic import KINDS, SUBTLE_KINDS, make_synthetic_defects
from ddad_core.patch_knn import PatchKNN, patch_features
from ddad_core.pipeline import DDADPipeline, MapComponents
from ddad_core.preprocess import as_shape, preprocess

DEFAULT_BACKBONE = "mobilenetv2_100:offline"
HALVES = ("tune", "report")
SYNTHETIC_FAMILIES = {"classic": KINDS, "subtle": SUBTLE_KINDS}
#: Figures with bootstrap intervals, and the paired differences to the baseline.
CI_METRICS = ("image_auroc", "aupro", "recall_at_1pct_fpr")


# ----------------------------------------------------------------------------------------------------------------
# data


@dataclass
class Half:
    """One half of a test set, preprocessed."""

    items: list
    images: torch.Tensor
    masks: np.ndarray
    labels: np.ndarray


def load_half(folder: MVTecFolder, half: str, size: int | tuple[int, int], limit: int | None) -> Half:
    items = half_of_items(folder.test_items, folder.root / "test", half)
    items = [items[i] for i in evenly_spaced(len(items), limit)]
    loaded = load_images([it.path for it in items], warn=False)
    by_path = dict(zip(loaded.paths, loaded.images, strict=True))
    items = [it for it in items if it.path in by_path]
    masks = []
    for it in items:
        mask = np.zeros(as_shape(size), bool)
        if it.mask_path is not None:
            mask = resize_mask(load_mask(it.mask_path, by_path[it.path].shape), size)
        masks.append(mask)
    images = torch.cat([preprocess([by_path[it.path] for it in items[s : s + 32]], image_size=size)
                        for s in range(0, len(items), 32)])  # fmt: skip
    return Half(items, images, np.stack(masks), np.array([it.label for it in items], dtype=np.int64))


def load_train(folder: MVTecFolder, size: int | tuple[int, int], limit: int | None) -> tuple[list[str], torch.Tensor]:
    paths = [folder.train_good[i] for i in evenly_spaced(len(folder.train_good), limit)]
    loaded = load_images(paths, warn=False)
    names = [str(Path(p).relative_to(folder.root)) for p in loaded.paths]
    return names, torch.cat([preprocess(loaded.images[s : s + 32], image_size=size)
                             for s in range(0, len(loaded.images), 32)])  # fmt: skip


def evaluation_data(half: Half, maps: torch.Tensor, threshold: float | None) -> EvaluationData:
    n = len(half.items)
    return EvaluationData(
        paths=[it.path for it in half.items],
        defect_types=[it.defect_type for it in half.items],
        labels=half.labels,
        maps=maps.numpy().astype(np.float32),
        masks=half.masks,
        has_mask=np.array([it.label == 0 or it.mask_path is not None for it in half.items]),
        noise_steps=np.zeros(n, dtype=np.int64),
        thumbnails=np.zeros((n, 1, 1, 3), np.uint8),
        threshold=threshold,
    )


# ----------------------------------------------------------------------------------------------------------------
# methods


@dataclass
class MethodRun:
    """A method's maps on both halves, its calibrated threshold and its costs."""

    name: str
    maps: dict[str, torch.Tensor]
    threshold: float
    calibration: dict[str, Any]
    fit_seconds: float
    seconds_per_image: float


def good_tail(good_maps: torch.Tensor) -> float:
    """How far the good images' highest scores stand out of their own pixels, in pixel standard deviations:
    ``(99th percentile of the image scores - mean pixel) / pixel sd``, from out-of-sample maps. Scale-free, so the
    normalisations of one bundle can be compared on good images alone: a defect has to rise above this tail."""
    pixels = good_maps.flatten().double()
    scores = good_maps.flatten(1).amax(dim=1).double()
    return float((torch.quantile(scores, 0.99) - pixels.mean()) / pixels.std().clamp_min(1e-12))


def threshold_from(train_maps: torch.Tensor, args) -> tuple[float, dict[str, Any]]:
    scores = train_maps.flatten(1).amax(dim=1).numpy()
    return conformal_threshold(scores, args.target_fpr, tail_fit=True)


@torch.inference_mode()
def run_baseline(train: torch.Tensor, halves: dict[str, Half], args, cache: Path) -> MethodRun:
    """PatchCore-style baseline, calibrated by the same out-of-sample protocol as the bundles (maps cached)."""
    if cache.exists():
        saved = torch.load(cache)
        threshold, record = threshold_from(saved["train"], args)
        record["good_tail"] = good_tail(saved["train"])
        return MethodRun("kNN baseline", saved["halves"], threshold, record, saved["fit_seconds"], saved["seconds"])
    device = torch.device(args.device)
    extractor = load_backbone(args.backbone).to(device).eval()
    sigma = 4.0 * args.image_size / 256

    def feats(x: torch.Tensor) -> torch.Tensor:
        return patch_features(extractor(x.to(device)), zero_padded=True)

    t0 = time.perf_counter()
    bank = PatchKNN().fit(torch.cat([feats(train[s : s + 16]).cpu() for s in range(0, len(train), 16)]), 1 << 62)
    fit_seconds = time.perf_counter() - t0

    def maps_of(x: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        for s in range(0, len(x), 16):
            part = bank(feats(x[s : s + 16]), None if exclude is None else exclude[s : s + 16])
            out.append(gaussian_blur(upsample_map(part, args.image_size), sigma).cpu())
        return torch.cat(out)

    train_maps = maps_of(train, torch.arange(len(train)))
    threshold, record = threshold_from(train_maps, args)
    record["good_tail"] = good_tail(train_maps)
    maps, seconds = {}, 0.0
    for name, half in halves.items():
        t0 = time.perf_counter()
        maps[name] = maps_of(half.images)
        if name == "report":
            seconds = (time.perf_counter() - t0) / max(len(half.items), 1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"train": train_maps, "halves": maps, "fit_seconds": fit_seconds, "seconds": seconds}, cache)
    return MethodRun("kNN baseline", maps, threshold, record, fit_seconds, seconds)


def parse_recipe(text: str) -> tuple[str, dict[str, Any]]:
    """``fast`` or ``fast:knn_zero_pad=true,knn_features=expanded`` -> recipe name and overrides of ``DDADConfig``,
    ``TrainConfig`` (``production:timestep_max=400``) or the input geometry (``aspect=keep``); values read as JSON,
    bare words as strings."""
    name, _, rest = text.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value.lower() if value.lower() in ("true", "false") else value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A recipe's overrides -> ``DDADConfig`` fields, ``TrainConfig`` fields and the fit's ``aspect`` (default auto).

    Example:
        >>> split_overrides({"timestep_max": 400, "da_teacher": 0.1, "aspect": "keep"})
        ({'da_teacher': 0.1}, {'timestep_max': 400}, 'keep')
    """
    rest = dict(overrides)
    aspect = rest.pop("aspect", "auto")  # a fit setting (input geometry), not a config field
    training = {k: rest.pop(k) for k in list(rest) if k in TrainConfig.model_fields}
    return rest, training, aspect


def bundle_path(bundles: Path, data_dir: Path, recipe: str) -> Path:
    """Where the bundle of ``recipe`` (with its overrides) on ``data_dir`` lives: ``fast:aspect=keep`` ->
    ``BUNDLES/<dataset>_fast_aspect-keep``."""
    return bundles / f"{data_dir.name}_{recipe.replace(':', '_').replace('=', '-').replace(',', '_')}"


def bundle_for(data_dir: Path, recipe: str, args) -> Path:
    bundle = bundle_path(args.bundles, data_dir, recipe)
    if (bundle / "bundle.json").exists():
        return bundle
    recipe, overrides = parse_recipe(recipe)
    overrides, training, aspect = split_overrides(overrides)
    config, train_config = make_configs(
        args.preset, epochs=args.epochs, image_size=args.image_size, recipe=recipe, ddad_overrides=overrides,
        train_overrides=training,
    )  # fmt: skip
    fit(
        data_dir, bundle, config=config, train_config=train_config, autoencoder=args.autoencoder,
        backbone=args.backbone, device=args.device, max_train_images=args.max_train_images, recipe=recipe,
        target_fpr=args.target_fpr, tail_fit=True, aspect=aspect, progress=not args.quiet,
        log=None if args.quiet else print,
    )  # fmt: skip
    return bundle


def fit_bundle(data_dir: Path, bundle: Path, args: argparse.Namespace, device, recipe: str) -> float:
    """Fit ``recipe`` on ``data_dir`` into ``bundle`` with the benchmark's settings (also used by ``ablations.py``);
    returns the fit seconds."""
    t0 = time.perf_counter()
    args.bundles, args.device = bundle.parent, str(device)
    bundle_for(data_dir, recipe, args)
    return time.perf_counter() - t0


def cached_components(cache: Path, compute) -> MapComponents:
    """Raw components from ``cache``, or ``compute()`` them and keep them there (maps and noise steps)."""
    if cache.exists():
        return MapComponents(**torch.load(cache))
    comps = compute()
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: getattr(comps, k) for k in ("latent_map", "feature_map", "noise_step", "knn_map")}, cache)
    return comps


def components(pipe: DDADPipeline, cache: Path, images: torch.Tensor, good: bool, batch: int) -> MapComponents:
    """Raw components (good training images out of sample when ``good``), cached on disk by bundle and set."""
    if good:
        return cached_components(cache, lambda: good_components(pipe, images, batch_size=batch))
    return cached_components(cache, lambda: pipe.components_batched(images, batch))


def variants_of(pipe: DDADPipeline) -> dict[str, dict[str, Any]]:
    """Map settings to compare on one bundle's components: the recipe as fitted, the patch term alone, the
    reconstruction alone, each per position and min-max."""
    out: dict[str, dict[str, Any]] = {}
    terms = {"patch term": {"knn_weight": 1.0}} if pipe.patch_knn is not None else {}
    if pipe.reconstructs:
        terms = {"as fitted": {}, **terms, "reconstruction": {"knn_weight": 0.0}}
    for term, weights in terms.items():
        for norm in ("position", "minmax"):
            out[f"{term}, {norm}"] = {**weights, "component_norm": norm}
    return out


@torch.inference_mode()
def run_bundle(
    bundle: Path, folder: MVTecFolder, train: torch.Tensor, names: list[str], halves: dict[str, Half], args
) -> list[MethodRun]:
    """Every variant of one bundle (``variants_of``). A bundle fitted at its own aspect ratio (``--aspect keep``)
    sees the images at its input shape; its maps are brought to the common square grid of the masks (bilinear)
    before they are scored, so every method is measured on the same pixels."""
    pipe = DDADPipeline.from_bundle(bundle, device=args.device)
    recorded = (pipe.bundle_config.metadata or {}).get("good_images")
    if recorded is not None and list(recorded) != names:
        raise SystemExit(f"{bundle}: its banks hold other good images than this run's; use the same --max-train-images")
    grid = tuple(train.shape[-2:])
    if pipe.input_shape != grid:
        train = load_train(folder, pipe.input_shape, args.max_train_images)[1]
        halves = {h: load_half(folder, h, pipe.input_shape, args.max_test_images) for h in halves}
    key = f"{bundle.name}-{pipe.model_version}"
    good = components(pipe, args.out / "cache" / f"{key}-good.pt", train, True, args.batch_size)
    tests = {h: components(pipe, args.out / "cache" / f"{key}-{h}.pt", half.images, False, args.batch_size)
             for h, half in halves.items()}  # fmt: skip
    fit_seconds = float((pipe.bundle_config.metadata.get("fit_seconds") or {}).get("total", float("nan")))
    runs = []
    recipe = (pipe.bundle_config.recipe or {}).get("name", "custom")
    # Settings named in the label where they differ from the recipe's own.
    known = RECIPES.get(recipe)
    recipe_train_max = known.train.get("timestep_max") if known else None
    recipe_da = known.ddad.get("da_epochs", DDADConfig.model_fields["da_epochs"].default) if known else None
    cfg = pipe.config
    settings = [
        *(["zero-padded patches"] if cfg.knn_zero_pad else []),
        *(["expanded features"] if cfg.knn_features == "expanded" else []),
        *([f"{cfg.input_shape[1]} x {cfg.input_shape[0]} input"] if cfg.image_shape is not None else []),
        *([f"{cfg.da_epochs} DA epochs" + (f", teacher {cfg.da_teacher:g}" if cfg.da_teacher else "")]
          if pipe.reconstructs and (cfg.da_epochs != recipe_da or cfg.da_teacher) else []),  # fmt: skip
        *([f"UNet t < {trained}"] if (trained := pipe.bundle_config.train.timestep_max) != recipe_train_max else []),
    ]
    if settings:
        recipe += f" ({', '.join(settings)})"
    synthetic = synthetic_sets(pipe, train, args.out / "cache" / key, args.batch_size)
    for label, overrides in variants_of(pipe).items():
        variant = pipe.with_settings(**{k: v for k, v in overrides.items() if k == "knn_weight"})
        good_maps = out_of_sample_maps(pipe, good, overrides=overrides)
        threshold, record = threshold_from(upsample_map(good_maps, grid), args)
        record["good_tail"] = good_tail(good_maps)
        for set_name, (made, source, comps) in synthetic.items():
            defect_maps = out_of_sample_maps(pipe, good, comps, source, overrides)
            record[f"synthetic_{set_name}"] = separation(good_maps, defect_maps, made.masks.cpu())["score"]
        maps = {h: upsample_map(out_of_sample_maps(pipe, good, comps, [-1] * len(comps), overrides), grid)
                for h, comps in tests.items()}  # fmt: skip
        runs.append(
            MethodRun(f"{recipe}: {label}", maps, threshold, record, fit_seconds, time_per_image(variant, halves))
        )
    return runs


def synthetic_sets(pipe: DDADPipeline, train: torch.Tensor, cache: Path, batch: int, count: int = 64) -> dict:
    """Synthetic defects made on up to ``count`` evenly spaced good training images, of each family (the classic
    DRAEM/CutPaste pastes and the subtle pits, scratches and stains), with their out-of-sample components (each
    leaves out the image it was made on) -- what ``--select`` ranks settings with."""
    source = evenly_spaced(len(train), count)
    out = {}
    for name, kinds in SYNTHETIC_FAMILIES.items():
        made = make_synthetic_defects(train[source], seed=0, kinds=kinds)
        path = Path(f"{cache}-synthetic-{name}.pt")
        comps = cached_components(path, lambda made=made: good_components(pipe, made.images, source, batch))
        out[name] = (made, torch.as_tensor(source), comps)
    return out


def synthetic_agreement(rows: list[tuple[str, str, dict]]) -> dict[str, float]:
    """Spearman correlation, over one dataset's bundle variants, between each synthetic family's separation score
    and the real one on the tune half (mean of image AUROC, pixel AUROC and AUPRO): does ranking settings on
    synthetic defects rank them as the real defects do?"""
    real, synthetic = [], {name: [] for name in SYNTHETIC_FAMILIES}
    for _, _, r in rows:
        if f"synthetic_{next(iter(SYNTHETIC_FAMILIES))}" not in r["calibration"]:
            continue
        tune = r["tune"]
        real.append(np.mean([tune["image_auroc"], tune["pixel_auroc"], tune["aupro"]]))
        for name in SYNTHETIC_FAMILIES:
            synthetic[name].append(r["calibration"][f"synthetic_{name}"])
    if len(real) < 3:
        return {}
    return {name: float(spearmanr(values, real).statistic) for name, values in synthetic.items()}


def selection_rows(rows: list[tuple[str, str, dict]]) -> list[tuple[str, dict]]:
    """What ``ddad fit --select`` would ship for each bundle, from good images and synthetic defects alone: among
    the bundle's variants in the selection grid (the recipe as fitted or the patch term alone, each per position or
    min-max; never the reconstruction alone), the one whose synthetic defects separate best -- one row per
    synthetic family, with that variant's figures."""
    out = []
    bundles: dict[str, list[tuple[str, dict]]] = {}
    for _, method, res in rows:
        recipe, _, variant = method.partition(": ")
        if variant and not variant.startswith("reconstruction") and "synthetic_classic" in res["calibration"]:
            bundles.setdefault(recipe, []).append((variant, res))
    for recipe, variants in bundles.items():
        for family in SYNTHETIC_FAMILIES:
            variant, res = max(variants, key=lambda v: v[1]["calibration"][f"synthetic_{family}"])
            out.append((f"{recipe}: --select on {family} synthetic defects -> {variant}", res))
    return out


def time_per_image(pipe: DDADPipeline, halves: dict[str, Half], count: int = 32) -> float:
    images = halves["report"].images[:count]
    t0 = time.perf_counter()
    for s in range(0, len(images), 16):
        pipe.components(images[s : s + 16])
    return (time.perf_counter() - t0) / max(len(images), 1)


# ----------------------------------------------------------------------------------------------------------------
# figures


def results_of(run: MethodRun, halves: dict[str, Half], base: MethodRun | None, args) -> dict[str, Any]:
    out: dict[str, Any] = {"calibration": run.calibration, "fit_seconds": run.fit_seconds,
                           "seconds_per_image": run.seconds_per_image}  # fmt: skip
    for name, half in halves.items():
        data = evaluation_data(half, run.maps[name], run.threshold)
        res = compute_results(data, intervals=name == "report", n_boot=args.n_boot)
        res.pop("per_defect_type", None)
        if name == "report" and base is not None:
            pix = data.has_mask
            other = (base.maps[name].flatten(1).amax(1).numpy()[pix], base.maps[name].numpy()[pix])
            paired = bootstrap_intervals(data.scores[pix], data.labels[pix], data.maps[pix], data.masks[pix],
                                         metrics=CI_METRICS, n_boot=args.n_boot, other=other)  # fmt: skip
            res["vs_baseline"] = {k: v["difference"] for k, v in paired.items()}
        out[name] = res
    return out


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def _ci(res: dict, key: str) -> str:
    ci = (res.get("ci95") or {}).get(key)
    return f"{_f(res.get(key))} ({_f(ci['low'])}-{_f(ci['high'])})" if ci else _f(res.get(key))


def _rate(at: dict, key: str) -> str:
    low, high = at[f"{key}_ci95"]
    return f"{100 * at[key]:.1f} % ({100 * low:.0f}-{100 * high:.0f})"


def _diff(res: dict, key: str) -> str:
    d = (res.get("vs_baseline") or {}).get(key)
    if not d:
        return ""
    mark = "**" if d["low"] > 0 or d["high"] < 0 else ""
    return f"{mark}{d['value']:+.3f} ({d['low']:+.3f}, {d['high']:+.3f}){mark}"


def report_table(rows: list[tuple[str, str, dict]]) -> str:
    """Markdown: the report half, with intervals; differences to the baseline in bold when their interval
    excludes 0."""
    head = (
        "| dataset | method | image AUROC | AUPRO | recall @1 % FA | recall @5 % FA | pixel AUROC | false alarms at "
        "threshold | misses at threshold | vs baseline: image AUROC | AUPRO | recall @1 % | s/image | images |"
    )
    lines = [head, "|" + "---|" * 14]
    for dataset, method, r in rows:
        res = r["report"]
        at = res.get("at_threshold") or {}
        lines.append(
            f"| {dataset} | {method} | {_ci(res, 'image_auroc')} | {_ci(res, 'aupro')} | "
            f"{_ci(res, 'recall_at_1pct_fpr')} | {_f(res.get('recall_at_5pct_fpr'))} | {_f(res.get('pixel_auroc'))} | "
            f"{_rate(at, 'false_alarm_rate') if at else 'n/a'} | {_rate(at, 'miss_rate') if at else 'n/a'} | "
            f"{_diff(res, 'image_auroc')} | {_diff(res, 'aupro')} | {_diff(res, 'recall_at_1pct_fpr')} | "
            f"{r['seconds_per_image']:.3f} | {res['n_images']} |"
        )
    return "\n".join(lines)


def tune_table(rows: list[tuple[str, str, dict]]) -> str:
    """Markdown: the tune half (what settings are chosen on), point figures only."""
    lines = [
        "| dataset | method | image AUROC | AUPRO | recall @1 % FA | pixel AUROC | good tail (sd) | images |",
        "|" + "---|" * 8,
    ]
    for dataset, method, r in rows:
        res = r["tune"]
        lines.append(
            f"| {dataset} | {method} | {_f(res.get('image_auroc'))} | {_f(res.get('aupro'))} | "
            f"{_f(res.get('recall_at_1pct_fpr'))} | {_f(res.get('pixel_auroc'))} | "
            f"{_f(r['calibration'].get('good_tail'), 2)} | {res['n_images']} |"
        )
    return "\n".join(lines)


def _resolve(path: Path) -> Path:
    root = os.environ.get("DDAD_DATA")
    return Path(root) / path if root and not path.is_absolute() and not path.exists() else path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="MVTec-layout dataset folders")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ddad_bench"), help="tables, JSON, component cache")
    parser.add_argument("--bundles", type=Path, help="where bundles are found or fitted (default <out>/bundles)")
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=["production"],
        help="recipes to fit or reuse; RECIPE:FIELD=VALUE,... adds method settings (fast:knn_zero_pad=true)",
    )
    parser.add_argument("--autoencoder", help="tae:<dir>, sd:<dir> or conv (recipes with reconstruction)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu")
    parser.add_argument("--epochs", type=int, help="UNet epochs (the recipe's otherwise)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--max-train-images", type=int, default=200)
    parser.add_argument("--max-test-images", type=int, help="per half, evenly spaced (default: all)")
    parser.add_argument("--target-fpr", type=float, default=0.01)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 px, 24 train and 16 test images")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.image_size, args.max_train_images, args.max_test_images, args.n_boot = 64, 24, 16, 50
        args.target_fpr = max(args.target_fpr, 0.05)
    args.bundles = args.bundles or args.out / "bundles"
    args.out.mkdir(parents=True, exist_ok=True)
    rows, everything, agreement = [], {}, {}
    for data_dir in map(_resolve, args.data):
        folder = MVTecFolder(data_dir, require_test=True)
        name = data_dir.name
        names, train = load_train(folder, args.image_size, args.max_train_images)
        halves = {h: load_half(folder, h, args.image_size, args.max_test_images) for h in HALVES}
        print(f"== {name}: {len(train)} good training images; tune {len(halves['tune'].items)}, report "
              f"{len(halves['report'].items)} test images", flush=True)  # fmt: skip
        sizes = f"{args.image_size}-{len(train)}-{args.max_test_images}"
        base_cache = args.out / "cache" / f"{name}-baseline-{args.backbone.replace(':', '_')}-{sizes}.pt"
        runs = [] if args.skip_baseline else [run_baseline(train, halves, args, base_cache)]
        for recipe in args.recipes:
            runs.extend(run_bundle(bundle_for(data_dir, recipe, args), folder, train, names, halves, args))
        base = None if args.skip_baseline else runs[0]
        first = len(rows)
        for run in runs:
            res = results_of(run, halves, base if run is not base else None, args)
            rows.append((name, run.name, res))
            everything[f"{name}/{run.name}"] = res
            print(report_table(rows[-1:]).splitlines()[-1], flush=True)
        agreement[name] = synthetic_agreement(rows[first:])
        for method, res in selection_rows(rows[first:]):
            rows.append((name, method, res))
            everything[f"{name}/{method}"] = res
        print(f"{name}: synthetic vs real ranking of the variants on the tune half (Spearman): {agreement[name]}")
    spearman = "\n".join(
        f"- {name}: " + ", ".join(f"{family} {rho:+.2f}" for family, rho in values.items())
        for name, values in agreement.items()
        if values
    )
    text = ("## Report half (95 % intervals)\n\n" + report_table(rows) + "\n\n## Tune half\n\n" + tune_table(rows)
            + "\n\n## Synthetic defects against real ones: Spearman correlation of the variants' rankings (tune half)"
            + "\n\n" + spearman + "\n")  # fmt: skip
    print("\n" + text)
    settings = {k: str(v) for k, v in vars(args).items()}
    (args.out / "bench_results.json").write_text(
        json.dumps(
            {"settings": settings, "results": everything, "synthetic_agreement": agreement}, indent=2, default=str
        )
    )
    (args.out / "bench_results.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
