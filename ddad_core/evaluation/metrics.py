"""Evaluation metrics (docs/method.md section 11): image and pixel AUROC, AUPRO, AP and F1-max.

* ``auroc`` / ``roc_curve``: exact (every distinct score is a threshold, ties handled as in sklearn).
* ``aupro``: the exact MVTec AD algorithm -- 8-connected ground-truth regions, every threshold, ties collapsed to
  the last point of each run, trapezoid integration up to FPR 0.3 with linear interpolation at 0.3, divided by
  0.3. Invariant under any strictly increasing transform of the scores.
* ``aupro_variant_c``: the RD4AD-style 200-threshold computation that DDAD and D3AD used for their published
  "PRO" (global min-max, FPR < 0.3 kept, FPRs divided by the largest kept one). It is *not* invariant to monotone
  transforms (docs/method.md 11.4); we report it labelled ``aupro_paper`` for comparison with the paper only.
* ``average_precision`` (sklearn's step-wise definition) and ``f1_max``.

Everything is NumPy on the host: metrics run once per evaluation, over up to tens of millions of pixels, and must
not depend on the accelerator's numerics. Masks are binary (nearest-neighbour resized, ``ddad_core.data``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _as_flat(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores).ravel()
    if s.dtype not in (np.float32, np.float64):  # float32 maps stay float32: pixel metrics sort ~10^7 values
        s = s.astype(np.float64)
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in size")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    return s, y


def _descending_runs(scores: np.ndarray, *weights: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sort by score (descending), cumulate the weights, keep the last index of every run of equal scores.

    Returns:
        The distinct scores (descending) and, per weight, its cumulative sum at the end of each run.
    """
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    sums = [np.cumsum(w[order])[ends] for w in weights]
    return sorted_scores[ends], sums


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve with one point per distinct score (prediction: ``score >= threshold``).

    Args:
        scores: Any shape; flattened.
        labels: Same size; truthy = positive.

    Returns:
        ``(fpr, tpr, thresholds)``; starts at (0, 0) with threshold +inf.

    Raises:
        ValueError: size mismatch or non-finite scores.
    """
    s, y = _as_flat(scores, labels)
    thresholds, (tps, fps) = _descending_runs(s, y.astype(np.int64), (~y).astype(np.int64))
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    return fpr, tpr, np.r_[np.inf, thresholds]


def auroc(scores, labels) -> float:
    """Area under the ROC curve (exact; NaN with a warning when only one class is present).

    Example:
        >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        0.75
    """
    s, y = _as_flat(scores, labels)
    if y.all() or not y.any():
        warnings.warn("AUROC is undefined with a single class; returning NaN", stacklevel=2)
        return float("nan")
    fpr, tpr, _ = roc_curve(s, y)
    return float(np.trapezoid(tpr, fpr))


def precision_recall_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall for every distinct threshold (prediction: ``score >= threshold``), in descending
    threshold order.

    Returns:
        ``(precision, recall, thresholds)``, all of the same length.
    """
    s, y = _as_flat(scores, labels)
    thresholds, (tps, fps) = _descending_runs(s, y.astype(np.int64), (~y).astype(np.int64))
    precision = tps / np.maximum(tps + fps, 1)
    recall = tps / max(int(y.sum()), 1)
    return precision, recall, thresholds


def average_precision(scores, labels) -> float:
    """Average precision, sum over thresholds of ``(R_n - R_{n-1}) P_n`` (sklearn's definition, no interpolation).

    Example:
        >>> round(average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), 4)
        0.8333
    """
    _, y = _as_flat(scores, labels)
    if not y.any():
        warnings.warn("average precision is undefined without positives; returning NaN", stacklevel=2)
        return float("nan")
    precision, recall, _ = precision_recall_curve(scores, labels)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_max(scores, labels) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold that achieves it.

    The returned threshold is meant for the strict rule ``score > threshold`` used everywhere in ddad_core: it is
    the midpoint between the best cut's lowest positive score and the next lower distinct score.

    Returns:
        ``(f1, threshold)``; ``(nan, nan)`` without positives.

    Example:
        >>> f1, thr = f1_max([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        >>> round(f1, 3), round(thr, 3)
        (0.8, 0.225)
    """
    s, y = _as_flat(scores, labels)
    if not y.any():
        return float("nan"), float("nan")
    precision, recall, thresholds = precision_recall_curve(s, y)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    best = int(np.argmax(f1))
    upper = float(thresholds[best])
    lower = float(thresholds[best + 1]) if best + 1 < thresholds.size else upper - max(abs(upper), 1.0) * 1e-6
    return float(f1[best]), (upper + lower) / 2


# ----------------------------------------------------------------------------------------------------------------
# AUPRO


@dataclass
class ProCurve:
    """The PRO curve: per-region overlap against false-positive rate, for every distinct threshold.

    Attributes:
        fpr: Non-decreasing false-positive rates, from 0 to 1.
        pro: Mean per-region overlap at each point.
    """

    fpr: np.ndarray
    pro: np.ndarray


def _regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel region ids (0 = background) over all images, 8-connected, and the number of regions."""
    region_ids = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        region_ids[i] = np.where(labelled > 0, labelled + offset, 0)
        offset += count
    return region_ids, offset


def _check_maps(anomaly_maps, masks) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(anomaly_maps)
    gts = np.asarray(masks).astype(bool)
    if maps.ndim == 2:
        maps, gts = maps[None], gts[None]
    if maps.shape != gts.shape or maps.ndim != 3:
        raise ValueError(f"anomaly maps {maps.shape} and masks {gts.shape} must both be (N, H, W)")
    if not np.all(np.isfinite(maps)):
        raise ValueError("anomaly maps contain NaN or infinity")
    return maps, gts


def pro_curve(anomaly_maps, masks) -> ProCurve:
    """Exact PRO curve (MVTec AD official algorithm, docs/method.md 11.3 steps 1-5).

    Args:
        anomaly_maps: ``(N, H, W)`` scores.
        masks: ``(N, H, W)`` binary ground truth (good images: all zero).

    Returns:
        ProCurve with (0, 0) prepended and (1, 1) appended, both coordinates clipped to 1.

    Raises:
        ValueError: no defect region or no background pixel.
    """
    maps, gts = _check_maps(anomaly_maps, masks)
    region_ids, n_regions = _regions(gts)
    n_negative = int((~gts).sum())
    if n_regions == 0 or n_negative == 0:
        raise ValueError("AUPRO needs at least one defect region and one background pixel")
    sizes = np.bincount(region_ids.ravel(), minlength=n_regions + 1).astype(np.float64)
    pro_weight = np.where(region_ids > 0, 1.0 / sizes[region_ids], 0.0).ravel()
    fp_weight = (~gts).ravel().astype(np.int64)
    _, (fps, pros) = _descending_runs(maps.ravel(), fp_weight, pro_weight)
    fpr = np.minimum(fps / n_negative, 1.0)
    pro = np.minimum(pros / n_regions, 1.0)
    return ProCurve(fpr=np.r_[0.0, fpr, 1.0], pro=np.r_[0.0, pro, 1.0])


def area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under ``y(x)`` for ``x`` in [0, x_max]; linear interpolation at ``x_max`` if it is not a
    sample point (x must be non-decreasing).

    Example:
        >>> area_up_to(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.5)
        0.125
    """
    inside = x <= x_max
    xs, ys = x[inside], y[inside]
    if xs[-1] < x_max:
        after = int(np.searchsorted(x, x_max, side="right"))
        if after < x.size:
            x0, x1, y0, y1 = x[after - 1], x[after], y[after - 1], y[after]
            y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0) if x1 > x0 else y1
            xs, ys = np.r_[xs, x_max], np.r_[ys, y_at]
    return float(np.trapezoid(ys, xs))


def aupro(anomaly_maps, masks, fpr_limit: float = 0.3, return_curve: bool = False):
    """Normalised area under the exact PRO curve up to ``fpr_limit`` (MVTec AD official; docs/method.md 11.3).

    Args:
        anomaly_maps: ``(N, H, W)``.
        masks: ``(N, H, W)`` binary.
        fpr_limit: Integration limit (0.3).
        return_curve: Also return the ProCurve.

    Returns:
        AUPRO in [0, 1] (and the curve).

    Example:
        >>> maps = np.array([[[0.9, 0.1], [0.2, 0.3]]])
        >>> masks = np.array([[[1, 0], [0, 0]]])
        >>> aupro(maps, masks)
        1.0
    """
    curve = pro_curve(anomaly_maps, masks)
    value = area_up_to(curve.fpr, curve.pro, fpr_limit) / fpr_limit
    return (value, curve) if return_curve else value


def aupro_variant_c(anomaly_maps, masks, num_thresholds: int = 200, fpr_limit: float = 0.3) -> float:
    """The reference code's 200-threshold PRO (RD4AD style, docs/method.md 11.3 "Variant C"); reported as
    ``aupro_paper``.

    1. Min-max normalise all maps together. 2. Thresholds ``arange(min, max, (max - min) / num_thresholds)``.
    3. At each: PRO = mean over regions of the share of region pixels with ``A > t``; FPR = background pixels with
    ``A > t`` over all background pixels. 4. Keep FPR < limit. 5. Divide the kept FPRs by their maximum.
    6. Trapezoid area, no anchor at 0, no interpolation.

    Computed with one histogram pass instead of ``num_thresholds`` passes over the pixels (same counts).

    Returns:
        The value (NaN if fewer than two thresholds stay below the limit).
    """
    maps, gts = _check_maps(anomaly_maps, masks)
    region_ids, n_regions = _regions(gts)
    if n_regions == 0 or not (~gts).any():
        raise ValueError("AUPRO needs at least one defect region and one background pixel")
    low, high = float(maps.min()), float(maps.max())
    if high <= low:
        return float("nan")
    scaled = ((maps.astype(np.float64) - low) / (high - low)).ravel()
    thresholds = np.arange(0.0, 1.0, 1.0 / num_thresholds)
    # above[k] = #pixels with value > thresholds[k]; a pixel exceeds exactly the thresholds below its rank.
    rank = np.searchsorted(thresholds, scaled, side="left")
    n_t = thresholds.size

    def exceed_counts(ids: np.ndarray, groups: int) -> np.ndarray:
        hist = np.bincount(ids, minlength=groups * (n_t + 1)).reshape(groups, n_t + 1)
        # Reverse cumulative sum over rank, then shift: count of rank > k.
        return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]

    background = ~gts.ravel()
    fp_above = exceed_counts(rank[background], 1)[0]
    fpr = fp_above / background.sum()
    flat_ids = region_ids.ravel()
    in_region = flat_ids > 0
    region_above = exceed_counts((flat_ids[in_region] - 1) * (n_t + 1) + rank[in_region], n_regions)
    sizes = np.bincount(flat_ids[in_region] - 1, minlength=n_regions)
    pro = (region_above / sizes[:, None]).mean(axis=0)
    keep = fpr < fpr_limit
    if keep.sum() < 2:
        return float("nan")
    fpr_k, pro_k = fpr[keep], pro[keep]
    fpr_k = fpr_k / fpr_k.max()
    # The reference integrates the points in threshold order (FPR falling) with sklearn's ``auc``; reversing, not
    # sorting, keeps its order inside runs of equal FPR, which decides the area there.
    return float(np.trapezoid(pro_k[::-1], fpr_k[::-1]))


def pixel_auroc(anomaly_maps, masks) -> float:
    """AUROC over all pixels of all images (``(N, H, W)`` maps and binary masks)."""
    maps, gts = _check_maps(anomaly_maps, masks)
    return auroc(maps.ravel(), gts.ravel())
