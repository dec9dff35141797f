"""Offline evaluation: run a bundle over ``DATA_DIR/test`` and score it against ``ground_truth`` (docs/method.md 11).

Metrics are computed at the model resolution (S x S as D3AD does at 256, or the bundle's H x W), with masks resized
by nearest neighbour (binary; no fractional boundary pixels). ``normalization="fixed"`` (default) uses the bundle's
calibration -- what a stream sees; ``"paper"`` re-normalises both map components with the min and max over the whole
evaluated set, as the reference code does (offline reproduction only; the bundle's threshold does not apply then).

With ``report_dir``, ``evaluate`` also writes the HTML report (``report.py``: ``write_report``).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddad_core.anomaly_map import MapNormalization
from ddad_core.data import MVTecFolder, evenly_spaced, load_mask, resize_mask
from ddad_core.evaluation.intervals import binomial_interval, bootstrap_intervals, recall_at_fpr
from ddad_core.evaluation.metrics import (
    aupro,
    aupro_variant_c,
    auroc,
    average_precision,
    f1_max,
    pixel_auroc,
)
from ddad_core.evaluation.report import write_report
from ddad_core.evaluation.splits import half_of_items
from ddad_core.fitting.recipes import SettingError, recipe_label
from ddad_core.pipeline import DDADPipeline, MapComponents
from ddad_core.preprocess import load_image, preprocess
from ddad_core.progress import Progress, as_progress, format_timings
from ddad_core.scoring import decision_threshold, score_maps


@dataclass
class EvaluationData:
    """Everything collected over the test set (kept for the report).

    Attributes:
        paths: Image files, in evaluation order.
        defect_types: ``"good"`` or the defect folder of each image.
        labels: ``(N,)`` 1 = defective.
        maps: ``(N, S, S)`` float32 blended anomaly maps.
        masks: ``(N, S, S)`` bool ground truth (all False for good images).
        has_mask: ``(N,)`` False for defective images without a mask file (excluded from pixel metrics).
        noise_steps: ``(N,)`` start timesteps.
        thumbnails: ``(N, S, S, 3)`` uint8 preprocessed inputs (for the report).
        threshold: Raw image decision threshold on the scale of ``maps``, at the evaluated sensitivity (None in
            ``paper`` mode).
        pred_masks: ``(N, S, S)`` predicted masks at the bundle's operating point (None in ``paper`` mode).
        skipped: ``(path, reason)`` of undecodable images.
    """

    paths: list[Path]
    defect_types: list[str]
    labels: np.ndarray
    maps: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray
    noise_steps: np.ndarray
    thumbnails: np.ndarray
    threshold: float | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    pred_masks: np.ndarray | None = None

    @property
    def scores(self) -> np.ndarray:
        return self.maps.reshape(len(self.maps), -1).max(axis=1)


def _metrics(scores, labels, maps, masks, has_mask) -> dict[str, Any]:
    out: dict[str, Any] = {"n_images": int(len(labels)), "n_defective": int(labels.sum())}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["image_auroc"] = auroc(scores, labels)
        out["image_ap"] = average_precision(scores, labels)
        out["f1_max"], out["f1_max_threshold"] = f1_max(scores, labels)
    pix = has_mask
    if masks[pix].any() and (~masks[pix]).any():
        out["pixel_auroc"] = pixel_auroc(maps[pix], masks[pix])
        out["pixel_ap"] = average_precision(maps[pix].ravel(), masks[pix].ravel())
        out["aupro"] = aupro(maps[pix], masks[pix])
        out["aupro_paper"] = aupro_variant_c(maps[pix], masks[pix])
    else:
        out.update(pixel_auroc=float("nan"), pixel_ap=float("nan"), aupro=float("nan"), aupro_paper=float("nan"))
    return out


def collect(
    pipe: DDADPipeline,
    folder: MVTecFolder,
    batch_size: int = 16,
    normalization: str = "fixed",
    max_images: int | None = None,
    progress: Progress | bool = False,
    half: str = "all",
    sensitivity: float | None = None,
) -> tuple[EvaluationData, dict[str, float]]:
    """Run the detector over every test image (of ``half``, ``splits.py``) and gather maps, masks and timings
    (progress step ``evaluation``). Decisions use the bundle's operating point at ``sensitivity`` (default: the
    bundle's), as a served frame would.

    Returns:
        ``(data, timing)`` with timing keys ``seconds_model`` (pipeline time), ``seconds_total`` (with file IO).
    """
    items = half_of_items(folder.test_items, folder.root / "test", half)
    items = [items[i] for i in evenly_spaced(len(items), max_images)]
    size = pipe.input_shape
    kept, parts, thumbs, masks, has_mask, skipped = [], [], [], [], [], []
    model_seconds = 0.0
    start_total = time.perf_counter()
    with as_progress(progress).step("evaluation", total=len(items)) as step:
        for start in range(0, len(items), batch_size):
            batch_items, images = [], []
            for item in items[start : start + batch_size]:
                try:
                    image = load_image(item.path)
                except ValueError as exc:
                    skipped.append((item.path, str(exc)))
                    step.update(1)
                    continue
                mask = np.zeros(size, dtype=bool)
                mask_ok = item.label == 0
                if item.mask_path is not None:
                    try:
                        mask = resize_mask(load_mask(item.mask_path, image.shape), size)
                        mask_ok = True
                    except ValueError as exc:
                        warnings.warn(f"mask {item.mask_path} cannot be read ({exc}); image metrics only", stacklevel=2)
                batch_items.append(item)
                images.append(image)
                masks.append(mask)
                has_mask.append(mask_ok)
            if not images:
                continue
            t0 = time.perf_counter()
            x = preprocess(images, image_size=size)
            comps = pipe.components(x)
            if pipe.device.type == "cuda":
                torch.cuda.synchronize()
            model_seconds += time.perf_counter() - t0
            parts.append(comps)
            thumbs.append(((x.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy())
            kept.extend(batch_items)
            step.update(len(batch_items))
            step.set_postfix(s_per_image=f"{model_seconds / len(kept):.2f}")
    if not kept:
        raise ValueError(f"no test image of {folder.root} could be decoded")
    comps = MapComponents.concat(parts)
    t0 = time.perf_counter()
    if normalization == "paper":
        norm = MapNormalization.from_maps(comps.latent_map, comps.feature_map, comps.knn_map)
        threshold = None
    elif normalization == "fixed":
        norm = pipe.calibration.normalization
        c = pipe.calibration
        threshold = decision_threshold(
            c.image_threshold, c.image_min, c.image_max, c.sensitivity if sensitivity is None else sensitivity
        )
    else:
        raise ValueError(f"normalization must be 'fixed' or 'paper', got {normalization!r}")
    n = len(comps)
    maps = torch.cat([pipe.blend(comps.select(range(i, min(i + 64, n))), norm) for i in range(0, n, 64)])
    model_seconds += time.perf_counter() - t0
    data = EvaluationData(
        paths=[it.path for it in kept],
        defect_types=[it.defect_type for it in kept],
        labels=np.array([it.label for it in kept], dtype=np.int64),
        maps=maps.numpy().astype(np.float32),
        masks=np.stack(masks),
        has_mask=np.array(has_mask, dtype=bool),
        noise_steps=comps.noise_step.numpy(),
        thumbnails=np.concatenate(thumbs),
        threshold=threshold,
        skipped=skipped,
        pred_masks=score_maps(maps, pipe.calibration, sensitivity)[3].numpy() if threshold is not None else None,
    )
    return data, {"seconds_model": model_seconds, "seconds_total": time.perf_counter() - start_total}


def mask_iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Intersection over union of two binary masks (1.0 when both are empty)."""
    union = np.logical_or(pred, true).sum()
    return float(np.logical_and(pred, true).sum() / union) if union else 1.0


def mask_overlap(data: EvaluationData) -> dict[str, float]:
    """How well the predicted masks fit the defects, over the *detected* defective images with a true mask (a missed
    one has no mask to fit; the miss rate counts it): mean IoU of the operating masks (``mask_iou``), of masks cut
    at the image threshold instead (``mask_iou_at_image_threshold``, what every bundle did before pixel thresholds
    were calibrated), and the median predicted mask area over the true one's."""
    if data.threshold is None or data.pred_masks is None:
        return {}
    detected = data.scores > data.threshold
    sel = np.flatnonzero((data.labels == 1) & detected & data.has_mask & data.masks.reshape(len(data.masks), -1).any(1))
    if sel.size == 0:
        return {"mask_images": 0}
    at_image = data.maps > data.threshold
    return {
        "mask_images": int(sel.size),
        "mask_iou": float(np.mean([mask_iou(data.pred_masks[i], data.masks[i]) for i in sel])),
        "mask_iou_at_image_threshold": float(np.mean([mask_iou(at_image[i], data.masks[i]) for i in sel])),
        "mask_area_ratio": float(np.median([data.pred_masks[i].sum() / data.masks[i].sum() for i in sel])),
        "mask_area_ratio_at_image_threshold": float(np.median([at_image[i].sum() / data.masks[i].sum() for i in sel])),
    }


def operating_figures(scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """What the field compares: recall at 1 % and 5 % false alarms (read off the ROC curve) and, at the bundle's
    threshold, the false-alarm and miss rates with exact 95 % binomial (Clopper-Pearson) intervals."""
    out: dict[str, Any] = {}
    if labels.any() and (~labels.astype(bool)).any():
        out["recall_at_1pct_fpr"] = recall_at_fpr(scores, labels, 0.01)
        out["recall_at_5pct_fpr"] = recall_at_fpr(scores, labels, 0.05)
    if threshold is None:
        return out
    flagged = scores > threshold
    good, bad = labels == 0, labels == 1
    tp, fp = int((flagged & bad).sum()), int((flagged & good).sum())
    n_good, n_bad = int(good.sum()), int(bad.sum())
    fa_low, fa_high = binomial_interval(fp, n_good)
    miss_low, miss_high = binomial_interval(n_bad - tp, n_bad)
    out["at_threshold"] = {
        "threshold": float(threshold),
        "false_alarms": fp,
        "n_good": n_good,
        "false_alarm_rate": fp / n_good if n_good else float("nan"),
        "false_alarm_rate_ci95": [fa_low, fa_high],
        "misses": n_bad - tp,
        "n_defective": n_bad,
        "miss_rate": (n_bad - tp) / n_bad if n_bad else float("nan"),
        "miss_rate_ci95": [miss_low, miss_high],
        "precision": tp / max(tp + fp, 1),
        "recall": tp / n_bad if n_bad else float("nan"),
    }
    return out


def compute_results(data: EvaluationData, intervals: bool = True, n_boot: int = 1000) -> dict[str, Any]:
    """Overall and per-defect-type metrics (each type against all good images), the operating figures
    (``operating_figures``) and, with ``intervals``, 95 % stratified bootstrap intervals of image AUROC, AUPRO and
    recall at 1 % false alarms (``intervals.py``)."""
    scores = data.scores
    results = _metrics(scores, data.labels, data.maps, data.masks, data.has_mask)
    per_type = {}
    types = np.array(data.defect_types)
    for defect in sorted(set(data.defect_types) - {"good"}):
        sel = (types == defect) | (types == "good")
        per_type[defect] = _metrics(scores[sel], data.labels[sel], data.maps[sel], data.masks[sel], data.has_mask[sel])
    results["per_defect_type"] = per_type
    results.update(operating_figures(scores, data.labels, data.threshold))
    if "at_threshold" in results and data.pred_masks is not None:
        results["at_threshold"].update(mask_overlap(data))
    pix = data.has_mask  # the intervals resample images whose pixels are labelled (AUPRO needs their masks)
    if intervals and data.labels[pix].any() and (data.labels[pix] == 0).any():
        results["ci95"] = bootstrap_intervals(
            scores[pix],
            data.labels[pix],
            data.maps[pix],
            data.masks[pix],
            metrics=("image_auroc", "aupro", "recall_at_1pct_fpr"),
            n_boot=n_boot,
        )
    steps, counts = np.unique(data.noise_steps, return_counts=True)
    results["noise_step_histogram"] = {str(int(s)): int(c) for s, c in zip(steps, counts, strict=True)}
    results["skipped_images"] = [str(p) for p, _ in data.skipped]
    return results


def evaluate(
    bundle_dir: str | Path,
    data_dir: str | Path,
    json_path: str | Path | None = None,
    report_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 16,
    normalization: str | None = None,
    max_images: int | None = None,
    backbone: str | None = None,
    log: Callable[[str], None] | None = print,
    progress: Progress | bool = False,
    half: str = "all",
    sensitivity: float | None = None,
) -> dict[str, Any]:
    """Evaluate a bundle on an MVTec-layout folder; optionally write the JSON and the HTML report.

    Args:
        bundle_dir: Fitted bundle.
        data_dir: Category folder with ``test/`` and ``ground_truth/``.
        json_path: Where to write the results JSON.
        report_dir: Where to write ``index.html``.
        device: Where to run (default: CUDA if available).
        batch_size: Images per batch.
        normalization: ``fixed`` / ``paper`` (default: the bundle's ``DDADConfig.normalization``).
        max_images: Evaluate an evenly spaced subset (quick runs).
        backbone: Refuse the bundle if it was fitted with another backbone.
        log: Where the skipped images and the result line go (None: silent).
        progress: Progress of the steps ``evaluation``, ``metrics`` and ``report`` (``ddad_core.progress``); their
            times go to ``results["seconds_per_step"]``.
        half: ``all``, or the fixed ``tune`` / ``report`` half of the test set (``splits.py``).
        sensitivity: Operating point of ``at_threshold`` and the masks (default: the bundle's).

    Returns:
        The results dictionary (also written to ``json_path``).

    Raises:
        DatasetLayoutError: not MVTec layout. BundleError / BackboneMismatchError: see ``DDADPipeline.from_bundle``.
    """
    progress = as_progress(progress)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = DDADPipeline.from_bundle(bundle_dir, device=device, backbone=backbone)
    folder = MVTecFolder(data_dir, require_test=True, require_train=False)
    normalization = normalization or pipe.config.normalization
    if normalization == "paper" and pipe.config.component_norm == "position":
        raise SettingError(
            "--normalization paper (test-set min-max) applies to recipes that min-max normalise the map; this "
            "bundle's recipe normalises each position against held-out good images"
        )
    data, timing = collect(
        pipe,
        folder,
        batch_size=batch_size,
        normalization=normalization,
        max_images=max_images,
        progress=progress,
        half=half,
        sensitivity=sensitivity,
    )
    if data.skipped and log is not None:
        log(f"skipped {len(data.skipped)} undecodable test image(s):")
        for path, reason in data.skipped:
            log(f"  {path}: {reason}")
    with progress.step("metrics"):
        results = compute_results(data)
    n = len(data.labels)
    results.update(
        n_images=n,
        half=half,
        sensitivity=pipe.sensitivity if sensitivity is None else sensitivity,
        operating_point=(pipe.calibration.info or {}).get("operating_point"),
        seconds_per_image=timing["seconds_model"] / n,
        seconds_per_image_with_io=timing["seconds_total"] / n,
        normalization=normalization,
        recipe=recipe_label(pipe.bundle_config.recipe if pipe.bundle_config else None),
        settings=pipe.config.model_dump(),
        resolution=" x ".join(map(str, pipe.input_shape[::-1])),
        bundle=str(bundle_dir),
        model_version=pipe.model_version,
        data_dir=str(data_dir),
        device=str(device),
        backbone=pipe.backbone_name,
        autoencoder=(pipe.bundle_config.autoencoder or {}).get("kind") if pipe.bundle_config else None,
    )
    if report_dir is not None:
        with progress.step("report", total=len(data.labels)) as step:
            write_report(report_dir, data, results, pipe, on_image=step.update)
    results["seconds_per_step"] = {k: round(v, 2) for k, v in progress.timings.items()}
    results["seconds_total"] = round(progress.total_seconds(), 2)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(_jsonable(results), indent=2))
    if log is not None:
        log(
            f"{Path(data_dir).name}: image AUROC {results['image_auroc']:.4f}, "
            f"pixel AUROC {results['pixel_auroc']:.4f}, "
            f"AUPRO {results['aupro']:.4f} (paper-style {results['aupro_paper']:.4f}), F1-max {results['f1_max']:.4f}, "
            f"{n} images, {results['seconds_per_image']:.3f} s/image (recipe {results['recipe']}, "
            f"{normalization} normalisation)"
        )
        log(f"time per step: {format_timings(progress.timings, progress.total_seconds())}")
    return results


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None  # JSON has no NaN
    return value
