"""Offline evaluation: run a bundle over ``DATA_DIR/test`` and score it against ``ground_truth`` (METHOD.md 11).

Metrics are computed at the model resolution S x S (as D3AD does at 256), with masks resized by nearest neighbour
(binary; no fractional boundary pixels). ``normalization="fixed"`` (default) uses the bundle's calibration --
what a stream sees; ``"paper"`` re-normalises both map components with the min and max over the whole evaluated
set, as the reference code does (offline reproduction only; the bundle's threshold does not apply then).

``write_report`` renders a self-contained HTML page (no matplotlib: curves are inline SVG, images base64 PNG made
with OpenCV): ROC and PRO curves, the score histogram with the threshold, and the worst misses / false alarms
with image, heatmap overlay, predicted and true mask.
"""

from __future__ import annotations

import base64
import html
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ddad_core.anomaly_map import MapNormalization
from ddad_core.data import MVTecFolder, load_mask, resize_mask
from ddad_core.evaluation.metrics import (
    aupro,
    aupro_variant_c,
    auroc,
    average_precision,
    f1_max,
    pixel_auroc,
    roc_curve,
)
from ddad_core.fitting.recipes import SettingError, recipe_label
from ddad_core.pipeline import DDADPipeline, MapComponents
from ddad_core.preprocess import load_image, preprocess
from ddad_core.scoring import normalize_map, score_maps


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
        threshold: Raw image threshold on the scale of ``maps`` (None in ``paper`` mode).
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
    log: Callable[[str], None] | None = print,
) -> tuple[EvaluationData, dict[str, float]]:
    """Run the detector over every test image and gather maps, masks and timings.

    Returns:
        ``(data, timing)`` with timing keys ``seconds_model`` (pipeline time), ``seconds_total`` (with file IO).
    """
    items = folder.test_items
    if max_images is not None and len(items) > max_images:
        keep = sorted(set(np.linspace(0, len(items) - 1, max_images).round().astype(int).tolist()))
        items = [items[i] for i in keep]
    size = pipe.image_size
    kept, parts, thumbs, masks, has_mask, skipped = [], [], [], [], [], []
    model_seconds = 0.0
    start_total = time.perf_counter()
    for start in range(0, len(items), batch_size):
        batch_items, images = [], []
        for item in items[start : start + batch_size]:
            try:
                image = load_image(item.path)
            except ValueError as exc:
                skipped.append((item.path, str(exc)))
                continue
            mask = np.zeros((size, size), dtype=bool)
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
        if log is not None:
            log(f"  evaluated {len(kept)}/{len(items)} images")
    if not kept:
        raise ValueError(f"no test image of {folder.root} could be decoded")
    comps = MapComponents.concat(parts)
    t0 = time.perf_counter()
    if normalization == "paper":
        norm = MapNormalization.from_maps(comps.latent_map, comps.feature_map, comps.knn_map)
        threshold = None
    elif normalization == "fixed":
        norm = pipe.calibration.normalization
        threshold = pipe.calibration.image_threshold
    else:
        raise ValueError(f"normalization must be 'fixed' or 'paper', got {normalization!r}")
    n = len(comps.latent_map)
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
        pred_masks=score_maps(maps, pipe.calibration)[3].numpy() if threshold is not None else None,
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


def compute_results(data: EvaluationData) -> dict[str, Any]:
    """Overall and per-defect-type metrics (each type against all good images), plus decisions at the threshold."""
    scores = data.scores
    results = _metrics(scores, data.labels, data.maps, data.masks, data.has_mask)
    per_type = {}
    types = np.array(data.defect_types)
    for defect in sorted(set(data.defect_types) - {"good"}):
        sel = (types == defect) | (types == "good")
        per_type[defect] = _metrics(scores[sel], data.labels[sel], data.maps[sel], data.masks[sel], data.has_mask[sel])
    results["per_defect_type"] = per_type
    if data.threshold is not None:
        flagged = scores > data.threshold
        good, bad = data.labels == 0, data.labels == 1
        tp, fp = int((flagged & bad).sum()), int((flagged & good).sum())
        results["at_threshold"] = {
            "threshold": float(data.threshold),
            "false_alarm_rate": float(fp / max(good.sum(), 1)),
            "miss_rate": float(1 - tp / max(bad.sum(), 1)),
            "precision": float(tp / max(tp + fp, 1)),
            "recall": float(tp / max(bad.sum(), 1)),
        }
        if data.pred_masks is not None:
            results["at_threshold"].update(mask_overlap(data))
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
        log: Progress output.

    Returns:
        The results dictionary (also written to ``json_path``).

    Raises:
        DatasetLayoutError: not MVTec layout. BundleError / BackboneMismatchError: see ``DDADPipeline.from_bundle``.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = DDADPipeline.from_bundle(bundle_dir, device=device, backbone=backbone)
    folder = MVTecFolder(data_dir, require_test=True)
    normalization = normalization or pipe.config.normalization
    if normalization == "paper" and pipe.config.component_norm == "position":
        raise SettingError(
            "--normalization paper (test-set min-max) applies to recipes that min-max normalise the map; this "
            "bundle's recipe normalises each position against held-out good images"
        )
    data, timing = collect(
        pipe, folder, batch_size=batch_size, normalization=normalization, max_images=max_images, log=log
    )
    if data.skipped and log is not None:
        log(f"skipped {len(data.skipped)} undecodable test image(s):")
        for path, reason in data.skipped:
            log(f"  {path}: {reason}")
    results = compute_results(data)
    n = len(data.labels)
    results.update(
        n_images=n,
        seconds_per_image=timing["seconds_model"] / n,
        seconds_per_image_with_io=timing["seconds_total"] / n,
        normalization=normalization,
        recipe=recipe_label(pipe.bundle_config.recipe if pipe.bundle_config else None),
        settings=pipe.config.model_dump(),
        resolution=pipe.image_size,
        bundle=str(bundle_dir),
        model_version=pipe.model_version,
        data_dir=str(data_dir),
        device=str(device),
        backbone=pipe.backbone_name,
        autoencoder=(pipe.bundle_config.autoencoder or {}).get("kind") if pipe.bundle_config else None,
    )
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(_jsonable(results), indent=2))
    if report_dir is not None:
        write_report(report_dir, data, results, pipe)
    if log is not None:
        log(
            f"{Path(data_dir).name}: image AUROC {results['image_auroc']:.4f}, "
            f"pixel AUROC {results['pixel_auroc']:.4f}, "
            f"AUPRO {results['aupro']:.4f} (paper-style {results['aupro_paper']:.4f}), F1-max {results['f1_max']:.4f}, "
            f"{n} images, {results['seconds_per_image']:.3f} s/image (recipe {results['recipe']}, "
            f"{normalization} normalisation)"
        )
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


# ----------------------------------------------------------------------------------------------------------------
# HTML report

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _thin(xs: np.ndarray, ys: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Resample a monotone curve with up to millions of points onto a grid for drawing."""
    if len(xs) <= points:
        return xs, ys
    grid = np.linspace(xs.min(), xs.max(), points)
    return grid, np.interp(grid, xs, ys)


def svg_line_chart(
    series: list[tuple[np.ndarray, np.ndarray, str]],
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float] = (0.0, 1.0),
    ylim: tuple[float, float] = (0.0, 1.0),
    vline: float | None = None,
    width: int = 360,
    height: int = 280,
) -> str:
    """A small inline SVG line chart.

    Args:
        series: ``(xs, ys, label)`` per line.
        xlabel: x-axis title.
        ylabel: y-axis title.
        xlim: x range.
        ylim: y range.
        vline: Optional dashed vertical marker.
        width: Pixel width.
        height: Pixel height.

    Returns:
        ``<svg>`` markup.
    """
    left, right, top, bottom = 48, 12, 12, 40
    pw, ph = width - left - right, height - top - bottom

    def px(x, y):
        u = left + (x - xlim[0]) / (xlim[1] - xlim[0]) * pw
        v = top + (1 - (y - ylim[0]) / (ylim[1] - ylim[0])) * ph
        return u, v

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">']
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    for i in range(6):
        fx = xlim[0] + i / 5 * (xlim[1] - xlim[0])
        fy = ylim[0] + i / 5 * (ylim[1] - ylim[0])
        u, _ = px(fx, ylim[0])
        _, v = px(xlim[0], fy)
        parts.append(f'<text x="{u:.1f}" y="{top + ph + 14}" text-anchor="middle">{fx:.2g}</text>')
        parts.append(f'<text x="{left - 4}" y="{v + 4:.1f}" text-anchor="end">{fy:.2g}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{html.escape(xlabel)}</text>')
    parts.append(
        f'<text x="12" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 12 {top + ph / 2})">'
        f"{html.escape(ylabel)}</text>"
    )
    if vline is not None and xlim[0] <= vline <= xlim[1]:
        u, _ = px(vline, 0)
        parts.append(f'<line x1="{u:.1f}" y1="{top}" x2="{u:.1f}" y2="{top + ph}" stroke="#444" stroke-dasharray="4"/>')
    for k, (xs, ys, label) in enumerate(series):
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        if xs.size and xs[-1] > xlim[1]:
            # Cut the (monotone) curve at the right edge, interpolating the end point, before thinning.
            keep = xs <= xlim[1]
            xs, ys = np.r_[xs[keep], xlim[1]], np.r_[ys[keep], np.interp(xlim[1], xs, ys)]
        xs, ys = _thin(xs, ys)
        inside = (xs >= xlim[0]) & (xs <= xlim[1])
        points = " ".join(
            f"{u:.1f},{v:.1f}" for u, v in (px(x, y) for x, y in zip(xs[inside], ys[inside], strict=True))
        )
        color = _COLORS[k % len(_COLORS)]
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        parts.append(f'<text x="{left + 8}" y="{top + 14 + 13 * k}" fill="{color}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(
    groups: list[tuple[np.ndarray, str]], threshold: float | None, bins: int = 40, width: int = 420, height: int = 280
) -> str:
    """Overlaid histograms (e.g. good vs defective image scores) with a threshold marker, as inline SVG."""
    values = np.concatenate([g for g, _ in groups if len(g)])
    low, high = float(values.min()), float(values.max())
    if threshold is not None:
        low, high = min(low, threshold), max(high, threshold)
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    counts = [np.histogram(g, edges)[0] for g, _ in groups]
    peak = max(int(c.max()) for c in counts) or 1
    left, right, top, bottom = 40, 12, 12, 40
    pw, ph = width - left - right, height - top - bottom
    bar = pw / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">']
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    for k, ((_, label), c) in enumerate(zip(groups, counts, strict=True)):
        color = ("#2ca02c", "#d62728", "#1f77b4")[k % 3]
        for i, n in enumerate(c):
            if n:
                h = n / peak * ph
                parts.append(
                    f'<rect x="{left + i * bar:.1f}" y="{top + ph - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                    f'fill="{color}" fill-opacity="0.45"/>'
                )
        parts.append(f'<text x="{left + 8}" y="{top + 14 + 13 * k}" fill="{color}">{html.escape(label)}</text>')
    for i in range(5):
        value = low + i / 4 * (high - low)
        parts.append(f'<text x="{left + i / 4 * pw:.1f}" y="{top + ph + 14}" text-anchor="middle">{value:.3g}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">image score (raw)</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{peak}</text>')
    if threshold is not None:
        u = left + (threshold - low) / (high - low) * pw
        parts.append(f'<line x1="{u:.1f}" y1="{top}" x2="{u:.1f}" y2="{top + ph}" stroke="#000" stroke-dasharray="4"/>')
        parts.append(f'<text x="{u + 3:.1f}" y="{top + ph - 4}">threshold</text>')
    parts.append("</svg>")
    return "".join(parts)


def _png(image: np.ndarray) -> str:
    """``data:`` URI of an RGB (or gray) uint8 image."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def heatmap_overlay(
    image: np.ndarray, heat: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.45
) -> np.ndarray:
    """JET heatmap (``heat`` in [0, 1]) blended over an RGB image, optional mask contour in red.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        heat: ``(H, W)`` float in [0, 1].
        mask: Optional ``(H, W)`` bool mask whose outline is drawn.
        alpha: Heatmap opacity.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    colored = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(image, 1 - alpha, colored, alpha, 0)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 0, 0), 1)
    return out


def write_report(
    report_dir: str | Path, data: EvaluationData, results: dict[str, Any], pipe: DDADPipeline, per_group: int = 8
) -> Path:
    """Write ``index.html``: metrics table, ROC / PRO curves, score histogram, worst misses and false alarms."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    scores = data.scores
    threshold = data.threshold
    # Heatmaps: 0.5 = the pixel threshold in fixed mode; min-max over the set in paper mode.
    if threshold is not None and pipe.calibration is not None:
        heat = normalize_map(torch.from_numpy(data.maps), pipe.calibration).numpy()
        pred_masks = data.pred_masks
    else:
        lo, hi = float(data.maps.min()), float(data.maps.max())
        heat = (data.maps - lo) / max(hi - lo, 1e-12)
        cut = results.get("f1_max_threshold", float("nan"))
        pred_masks = data.maps > cut if np.isfinite(cut) else np.zeros_like(data.masks)

    fpr, tpr, _ = roc_curve(scores, data.labels)
    roc_svg = svg_line_chart([(fpr, tpr, f"image ROC, AUROC {results['image_auroc']:.3f}")], "FPR", "TPR")
    pro_svg = "<p>no defect regions</p>"
    pix = data.has_mask
    if data.masks[pix].any():
        value, curve = aupro(data.maps[pix], data.masks[pix], return_curve=True)
        pro_svg = svg_line_chart(
            [(curve.fpr, curve.pro, f"PRO, AUPRO(0.3) {value:.3f}")], "pixel FPR", "PRO", xlim=(0, 0.3), vline=None
        )
    hist_svg = svg_histogram([(scores[data.labels == 0], "good"), (scores[data.labels == 1], "defective")], threshold)

    def row(i: int) -> str:
        thumb = data.thumbnails[i]
        cells = [
            _png(thumb),
            _png(heatmap_overlay(thumb, heat[i], pred_masks[i])),
            _png((pred_masks[i] * 255).astype(np.uint8)),
            _png((data.masks[i] * 255).astype(np.uint8)),
        ]
        images = "".join(f'<td><img src="{c}" width="160"></td>' for c in cells)
        caption = (
            f"{html.escape(data.paths[i].name)}<br>{html.escape(data.defect_types[i])}<br>score {scores[i]:.4f}"
            f"<br>T&#770; = {int(data.noise_steps[i])}"
        )
        return f"<tr><td>{caption}</td>{images}</tr>"

    header = (
        "<tr><th></th><th>image</th><th>heatmap + predicted outline</th><th>predicted mask</th><th>true mask</th></tr>"
    )
    bad = np.flatnonzero(data.labels == 1)
    good = np.flatnonzero(data.labels == 0)
    misses = bad[np.argsort(scores[bad], kind="stable")][:per_group]
    alarms = good[np.argsort(-scores[good], kind="stable")][:per_group]

    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.4f}"

    keys = ("image_auroc", "pixel_auroc", "aupro", "aupro_paper", "f1_max", "image_ap", "pixel_ap", "n_images")
    table = ["<tr><th>subset</th>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"]
    for name, res in [("all", results), *results["per_defect_type"].items()]:
        cells = "".join(f"<td>{fmt(res[k]) if k != 'n_images' else res[k]}</td>" for k in keys)
        table.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    at = results.get("at_threshold")
    at_text = (
        f"At the bundle's threshold {at['threshold']:.4f}: false-alarm rate {at['false_alarm_rate']:.3f}, "
        f"miss rate {at['miss_rate']:.3f}, precision {at['precision']:.3f}."
        if at
        else "Paper-style normalisation: the bundle's threshold does not apply; masks use the F1-max threshold."
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>D3AD evaluation</title>
<style>body{{font-family:sans-serif;margin:20px}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;
padding:4px;font-size:12px;text-align:center}} .charts{{display:flex;gap:20px;flex-wrap:wrap}}</style></head><body>
<h1>D3AD evaluation: {html.escape(Path(results.get("data_dir", "")).name)}</h1>
<p>bundle {html.escape(str(results.get("bundle")))} ({html.escape(str(results.get("model_version")))}), backbone
{html.escape(str(results.get("backbone")))}, {results["n_images"]} images at {results.get("resolution")} px,
{results["seconds_per_image"]:.3f} s/image on {html.escape(str(results.get("device")))},
{html.escape(str(results.get("normalization")))} normalisation. AUPRO is the exact MVTec metric (FPR &le; 0.3);
aupro_paper is the reference code's 200-threshold variant.</p>
<table>{"".join(table)}</table><p>{at_text}</p>
<div class="charts"><div><h3>ROC</h3>{roc_svg}</div><div><h3>PRO curve</h3>{pro_svg}</div>
<div><h3>Image scores</h3>{hist_svg}</div></div>
<h2>Worst misses (defective, lowest scores)</h2><table>{header}{"".join(row(i) for i in misses)}</table>
<h2>Worst false alarms (good, highest scores)</h2><table>{header}{"".join(row(i) for i in alarms)}</table>
</body></html>"""
    path = report_dir / "index.html"
    path.write_text(page)
    return path
