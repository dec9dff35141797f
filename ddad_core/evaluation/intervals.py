"""Uncertainty of the published figures: exact binomial intervals and a stratified image bootstrap.

* ``binomial_interval`` / ``rate_with_interval``: the exact Clopper-Pearson interval for a rate ``k / n``: with
  ``alpha = 1 - confidence``, low = ``Beta.ppf(alpha / 2; k, n - k + 1)`` (0 when ``k == 0``), high =
  ``Beta.ppf(1 - alpha / 2; k + 1, n - k)`` (1 when ``k == n``); ``(nan, nan)`` when ``n == 0``.
* ``recall_at_fpr``: the largest true-positive rate among the ROC operating points whose false-positive rate is
  ``<= fpr``; an operating point is ``score >= t`` for ``t`` a distinct score (``metrics.roc_curve``). Read off
  the ROC curve, no interpolation.
* ``bootstrap_intervals``: stratified percentile bootstrap over images.

  1. Each replicate draws the good images and the defective images separately, with replacement, as many of
     each as there are (so every replicate has both classes and the original class counts).
  2. The metric is computed on the drawn images; an image drawn ``m`` times counts ``m`` times (its pixels and
     its regions too).
  3. Percentile method: the interval is ``[q(alpha / 2), q(1 - alpha / 2)]`` of the replicate values,
     ``alpha = 1 - confidence``, ``q`` NumPy's default (linear) quantile; replicates where the metric is
     undefined (NaN) are left out. The reported ``value`` is the metric on the full data, not a replicate mean.
  4. With a second method (``other``), the same drawn images serve both methods (paired bootstrap) and the
     difference ``this - other`` gets its point value and percentile interval. A difference whose interval
     contains 0 is not a win.

  ``image_auroc`` and ``recall_at_*`` replicates are exact (from per-score counts of the drawn images). The exact
  AUPRO of every replicate would sort all pixels each time, so the AUPRO *interval* uses a fixed grid of
  thresholds while its ``value`` is the exact ``metrics.aupro``:

  a. Grid: the normal (mask-false) pixels' score quantiles at 1000 false-positive-rate levels evenly spaced in
     [0, 0.5] and 50 more in (0.5, 1], plus the maximum of all scores. A pixel is positive at ``t`` when
     ``score >= t``.
  b. Per image, once: its number of normal pixels at or above each threshold, and for each 8-connected
     ground-truth region (``metrics._regions``) the fraction of its pixels at or above each threshold.
  c. Per replicate: FPR(t) = summed normal counts of the drawn images / their summed normal pixels; PRO(t) =
     mean overlap of the drawn regions (a region counts once per time its image is drawn). The curve gets (0, 0)
     prepended and (1, 1) appended, and ``metrics.area_up_to`` integrates PRO up to FPR 0.3, divided by 0.3,
     exactly as ``metrics.aupro``.

  A threshold between two distinct scores flags the same pixels as the next higher score, so every grid point is
  a point of the exact PRO curve and the grid curve is the exact one linearly interpolated between grid points
  (on synthetic maps the full-data grid value is within 0.01 of the exact one, typically within 1e-3). Defective
  images without a region (empty mask) contribute their normal pixels only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ddad_core.evaluation.metrics import _as_flat, _check_maps, _regions, area_up_to, aupro, auroc, roc_curve

BOOTSTRAP_METRICS = ("image_auroc", "aupro", "recall_at_1pct_fpr", "recall_at_5pct_fpr")
_RECALL_FPR = {"recall_at_1pct_fpr": 0.01, "recall_at_5pct_fpr": 0.05}
_FPR_LIMIT = 0.3
_GRID_DENSE = 1000  # thresholds for FPR levels in [0, _GRID_DENSE_SPAN]
_GRID_DENSE_SPAN = 0.5
_GRID_TAIL = 50  # thresholds for FPR levels in (_GRID_DENSE_SPAN, 1]


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def binomial_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for the rate ``k / n``.

    Args:
        k: Successes, ``0 <= k <= n``.
        n: Trials.
        confidence: Coverage, in (0, 1).

    Returns:
        ``(low, high)``; ``(nan, nan)`` when ``n == 0``.

    Raises:
        ValueError: ``k`` outside ``[0, n]`` or ``confidence`` outside (0, 1).

    Example:
        >>> low, high = binomial_interval(0, 10)
        >>> low, round(high, 4)
        (0.0, 0.3085)
    """
    _check_confidence(confidence)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def rate_with_interval(k: int, n: int, confidence: float = 0.95) -> dict:
    """A rate with its exact interval, ready for a report.

    Returns:
        ``{"rate": k / n, "k": k, "n": n, "low": .., "high": ..}``; rate and bounds NaN when ``n == 0``.

    Example:
        >>> r = rate_with_interval(3, 4)
        >>> r["rate"], r["k"], r["n"], round(r["low"], 4), round(r["high"], 4)
        (0.75, 3, 4, 0.1941, 0.9937)
    """
    low, high = binomial_interval(k, n, confidence)
    rate = k / n if n else float("nan")
    return {"rate": rate, "k": int(k), "n": int(n), "low": low, "high": high}


def recall_at_fpr(scores, labels, fpr: float) -> float:
    """Largest true-positive rate among ROC operating points with false-positive rate ``<= fpr``.

    An operating point is ``score >= t`` for ``t`` a distinct score (``metrics.roc_curve``); read off the ROC
    curve, no interpolation. The point (0, 0) (nothing flagged) always qualifies.

    Args:
        scores: Image scores, any shape (flattened).
        labels: Same size; truthy = defective.
        fpr: Largest admissible false-positive rate, in [0, 1].

    Returns:
        The recall; NaN when only one class is present.

    Example:
        >>> recall_at_fpr([0.1, 0.2, 0.3, 0.9, 0.25, 0.05], [0, 0, 0, 1, 1, 1], 0.34)
        0.6666666666666666
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    s, y = _as_flat(scores, labels)
    if y.all() or not y.any():
        return float("nan")
    fpr_curve, tpr_curve, _ = roc_curve(s, y)
    return float(tpr_curve[fpr_curve <= fpr].max())


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap


def _groups(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the good and of the defective images."""
    return np.flatnonzero(~labels), np.flatnonzero(labels)


def _bootstrap_counts(labels: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, N)`` number of times each image is drawn; good and defective images are drawn separately."""
    rng = np.random.default_rng(seed)
    n = labels.size
    rows = np.arange(n_boot)[:, None] * n
    drawn = [group[rng.integers(0, group.size, size=(n_boot, group.size))] for group in _groups(labels)]
    flat = np.concatenate([(rows + d).ravel() for d in drawn])
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n)


def _weights_by_score(scores: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drawn defective and good images per distinct score (ascending): two ``(n_boot, U)`` float arrays."""
    unique, inverse = np.unique(scores, return_inverse=True)
    by_class = []
    for group in _groups(labels):
        members = group[np.argsort(inverse[group], kind="stable")]  # ascending score
        columns = inverse[members]
        starts = np.r_[0, np.flatnonzero(np.diff(columns)) + 1]
        weights = np.zeros((counts.shape[0], unique.size))
        weights[:, columns[starts]] = np.add.reduceat(counts[:, members], starts, axis=1)
        by_class.append(weights)
    good, defective = by_class
    return defective, good


def _auroc_replicates(scores: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUROC of every replicate: P(defective score > good score) + half the ties, over the drawn pairs."""
    pos, neg = _weights_by_score(scores, labels, counts)
    neg_below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    return np.sum(pos * (neg_below + 0.5 * neg), axis=1) / pairs


def _recall_replicates(scores: np.ndarray, labels: np.ndarray, counts: np.ndarray, fpr: float) -> np.ndarray:
    """``recall_at_fpr`` of every replicate (the same ROC points, counted over the drawn images)."""
    pos, neg = _weights_by_score(scores, labels, counts)
    tps = np.cumsum(pos[:, ::-1], axis=1)  # thresholds descending: images with score >= t
    fps = np.cumsum(neg[:, ::-1], axis=1)
    n_pos, n_neg = pos.sum(axis=1, keepdims=True), neg.sum(axis=1, keepdims=True)
    admissible = fps / n_neg <= fpr
    return np.max(np.where(admissible, tps / n_pos, 0.0), axis=1)


@dataclass
class _ProGrid:
    """Per-image AUPRO ingredients on a fixed threshold grid (thresholds descending along the last axis).

    Attributes:
        normal_above: ``(N, T)`` normal pixels with ``score >= t``.
        normal_total: ``(N,)`` normal pixels per image.
        overlap: ``(R, T)`` fraction of each region's pixels with ``score >= t``.
        region_image: ``(R,)`` image of each region.
    """

    normal_above: np.ndarray
    normal_total: np.ndarray
    overlap: np.ndarray
    region_image: np.ndarray


def _grid_thresholds(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Ascending distinct thresholds: normal-pixel quantiles at the grid's FPR levels, plus the overall maximum."""
    normal = maps[~masks]
    levels = np.r_[
        np.linspace(0.0, _GRID_DENSE_SPAN, _GRID_DENSE),
        np.linspace(_GRID_DENSE_SPAN, 1.0, _GRID_TAIL + 1)[1:],
    ]
    quantiles = np.quantile(normal, 1.0 - levels)
    return np.unique(np.r_[quantiles, maps.max()].astype(np.float64))


def _at_or_above(ranks: np.ndarray, groups: np.ndarray, n_groups: int, n_thresholds: int) -> np.ndarray:
    """``(n_groups, T)`` pixels per group with ``rank > k`` (i.e. ``score >= thresholds[k]``), ``k`` descending."""
    hist = np.bincount(groups * (n_thresholds + 1) + ranks, minlength=n_groups * (n_thresholds + 1))
    hist = hist.reshape(n_groups, n_thresholds + 1)
    above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]  # above[:, k] = pixels with rank > k
    return above[:, ::-1]  # highest threshold first


def _pro_grid(maps: np.ndarray, masks: np.ndarray) -> _ProGrid:
    """Steps a and b of the module docstring."""
    thresholds = _grid_thresholds(maps, masks)
    n_t = thresholds.size
    normal_above = np.zeros((maps.shape[0], n_t), dtype=np.int64)
    overlaps: list[np.ndarray] = []
    region_image: list[int] = []
    for i, (amap, mask) in enumerate(zip(maps, masks, strict=True)):
        ranks = np.searchsorted(thresholds, amap.ravel(), side="right")  # thresholds <= score
        normal = ~mask.ravel()
        normal_above[i] = _at_or_above(ranks[normal], np.zeros(int(normal.sum()), dtype=np.int64), 1, n_t)[0]
        region_ids, n_regions = _regions(mask[None])
        if n_regions:
            ids = region_ids.ravel()
            inside = ids > 0
            above = _at_or_above(ranks[inside], ids[inside] - 1, n_regions, n_t)
            sizes = np.bincount(ids[inside] - 1, minlength=n_regions)
            overlaps.append(above / sizes[:, None])
            region_image.extend([i] * n_regions)
    return _ProGrid(
        normal_above=normal_above,
        normal_total=(~masks).reshape(masks.shape[0], -1).sum(axis=1),
        overlap=np.concatenate(overlaps) if overlaps else np.zeros((0, n_t)),
        region_image=np.array(region_image, dtype=np.int64),
    )


def _aupro_replicates(grid: _ProGrid, counts: np.ndarray, fpr_limit: float = _FPR_LIMIT) -> np.ndarray:
    """Step c of the module docstring for every row of ``counts`` (NaN where no region or normal pixel is drawn)."""
    weights = counts.astype(np.float64)
    normal_total = weights @ grid.normal_total
    region_weights = weights[:, grid.region_image]
    n_regions = region_weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = np.minimum((weights @ grid.normal_above) / normal_total[:, None], 1.0)
        pro = np.minimum((region_weights @ grid.overlap) / n_regions[:, None], 1.0)
    values = np.full(counts.shape[0], np.nan)
    for b in np.flatnonzero((n_regions > 0) & (normal_total > 0)):
        x = np.r_[0.0, fpr[b], 1.0]
        y = np.r_[0.0, pro[b], 1.0]
        values[b] = area_up_to(x, y, fpr_limit) / fpr_limit
    return values


def _metric(
    name: str, scores: np.ndarray, labels: np.ndarray, maps, masks, counts: np.ndarray
) -> tuple[float, np.ndarray]:
    """Point value on the full data and the replicate values of one metric."""
    if name == "image_auroc":
        return auroc(scores, labels), _auroc_replicates(scores, labels, counts)
    if name == "aupro":
        return float(aupro(maps, masks)), _aupro_replicates(_pro_grid(maps, masks), counts)
    fpr = _RECALL_FPR[name]
    return recall_at_fpr(scores, labels, fpr), _recall_replicates(scores, labels, counts, fpr)


def _interval(value: float, replicates: np.ndarray, confidence: float) -> dict:
    alpha = 1.0 - confidence
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return {"value": float(value), "low": float("nan"), "high": float("nan")}
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return {"value": float(value), "low": float(low), "high": float(high)}


def bootstrap_intervals(
    scores,
    labels,
    maps=None,
    masks=None,
    metrics: Sequence[str] = ("image_auroc", "aupro", "recall_at_1pct_fpr"),
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    other=None,
) -> dict:
    """Stratified percentile bootstrap intervals over images (method in the module docstring).

    Args:
        scores: ``(N,)`` image scores.
        labels: ``(N,)``; truthy = defective. Both classes must be present.
        maps: ``(N, H, W)`` anomaly maps; needed for ``aupro``.
        masks: ``(N, H, W)`` binary ground truth (good images all false); needed for ``aupro``.
        metrics: Any of ``BOOTSTRAP_METRICS``: ``image_auroc``, ``aupro``, ``recall_at_1pct_fpr``,
            ``recall_at_5pct_fpr``.
        n_boot: Number of replicates.
        seed: Seed of the resampling (``numpy.random.default_rng``).
        confidence: Coverage of each interval, in (0, 1).
        other: Optional ``(scores, maps)`` of a second method on the same images (``maps`` may be None without
            ``aupro``); adds the paired difference ``this - other`` per metric.

    Returns:
        Per metric ``{"value": .., "low": .., "high": ..}`` (value: the metric on the full data; AUPRO exact), with
        ``"difference": {"value": .., "low": .., "high": ..}`` added when ``other`` is given.

    Raises:
        ValueError: unknown metric, a single class, missing or mis-shaped maps, no defect region (``aupro``),
            ``n_boot < 1``, bad confidence.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> labels = np.r_[np.zeros(30), np.ones(30)]
        >>> scores = rng.normal(size=60) + 1.5 * labels
        >>> res = bootstrap_intervals(scores, labels, metrics=("image_auroc",), n_boot=200)
        >>> r = res["image_auroc"]
        >>> r["value"] == auroc(scores, labels), r["low"] <= r["value"] <= r["high"]
        (True, True)
    """
    # 1. Validate.
    unknown = [m for m in metrics if m not in BOOTSTRAP_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {', '.join(BOOTSTRAP_METRICS)}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    _check_confidence(confidence)
    s, y = _as_flat(scores, labels)
    if y.all() or not y.any():
        raise ValueError("the bootstrap needs both good and defective images")
    other_scores, other_maps = (None, None) if other is None else other
    if other_scores is not None:
        other_scores, _ = _as_flat(other_scores, y)
    if "aupro" in metrics:
        if maps is None or masks is None or (other is not None and other_maps is None):
            raise ValueError("aupro needs anomaly maps and masks (and the other method's maps)")
        maps, masks = _check_maps(maps, masks)
        if other_maps is not None:
            other_maps, _ = _check_maps(other_maps, masks)
        if maps.shape[0] != s.size:
            raise ValueError(f"{maps.shape[0]} maps for {s.size} scores")

    # 2. Draw every replicate once: the same images serve every metric and both methods.
    counts = _bootstrap_counts(y, n_boot, seed)

    # 3. Point values, replicates and percentile intervals.
    result: dict = {}
    for name in metrics:
        value, replicates = _metric(name, s, y, maps, masks, counts)
        result[name] = _interval(value, replicates, confidence)
        if other is not None:
            other_value, other_replicates = _metric(name, other_scores, y, other_maps, masks, counts)
            result[name]["difference"] = _interval(value - other_value, replicates - other_replicates, confidence)
    return result
