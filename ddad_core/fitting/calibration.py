"""Offline calibration (fit time): from held-out good images -- and labelled defects when available -- to the
fixed ``Calibration`` that ``scoring`` applies to every frame.

Two ways to choose the image threshold (ECOSYSTEM.md 2.2-2.3):

* **good images only** (the default, what a new production line has): the threshold at a target false-alarm rate
  on good parts, by default 1 %. With fewer than 100 good images, 1 % of them is less than one image and the
  threshold is the largest good score (anomalib's "max normal" rule);
* **labelled defects given**: the F1-optimal threshold (anomalib ``F1AdaptiveThreshold``), which falls back to the
  maximum good score when no defect is present and to just below the minimum defect score when no good image is.

The pixel threshold is the image threshold unless defect masks are given (F1-optimal over pixels then). With
matching thresholds, and the image score being the map's maximum, an image is flagged exactly when its predicted
mask is non-empty -- what operators expect from the overlay.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ddad_core.anomaly_map import MapNormalization, image_scores
from ddad_core.evaluation.metrics import f1_max
from ddad_core.scoring import Calibration, check_sensitivity


def threshold_at_fpr(good_scores, target_fpr: float = 0.01) -> float:
    """Raw threshold that flags at most ``floor(target_fpr * n)`` of the ``n`` good scores (rule ``score > thr``).

    Args:
        good_scores: Image scores of good parts.
        target_fpr: Allowed false-alarm rate in [0, 1).

    Returns:
        The threshold (one of the good scores; the largest when fewer than one false alarm is allowed).

    Example:
        >>> threshold_at_fpr(np.arange(200.0), 0.01)  # two of 200 may exceed
        197.0
        >>> threshold_at_fpr([0.1, 0.5, 0.3], 0.01)
        0.5
    """
    scores = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())[::-1]
    if scores.size == 0:
        raise ValueError("threshold_at_fpr needs at least one good score")
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    allowed = int(math.floor(target_fpr * scores.size + 1e-9))
    return float(scores[min(allowed, scores.size - 1)])


def f1_adaptive_threshold(scores, labels) -> tuple[float, str]:
    """F1-optimal raw threshold, with anomalib's fallbacks for one-class data.

    Args:
        scores: Image (or pixel) scores.
        labels: 1 = defect, 0 = good.

    Returns:
        ``(threshold, method)`` with method ``f1``, ``max_good`` (no defects) or ``below_min_defect`` (no good).

    Example:
        >>> f1_adaptive_threshold([0.1, 0.2, 0.3], [0, 0, 0])
        (0.3, 'max_good')
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if not y.any():
        warnings.warn("no defective sample for the F1 threshold; using the maximum good score", stacklevel=2)
        return float(s.max()), "max_good"
    if y.all():
        warnings.warn("no good sample for the F1 threshold; flagging every defect (below the minimum)", stacklevel=2)
        low = float(s.min())
        return low - max(abs(low), 1.0) * 1e-6, "below_min_defect"
    _, threshold = f1_max(s, y)
    return threshold, "f1"


def _as_maps(maps: torch.Tensor | np.ndarray) -> torch.Tensor:
    maps = torch.as_tensor(maps).float()
    if maps.ndim != 3:
        raise ValueError(f"anomaly maps must be (N, S, S), got {tuple(maps.shape)}")
    return maps


def fit_calibration(
    good_maps: torch.Tensor,
    normalization: MapNormalization,
    defect_maps: torch.Tensor | None = None,
    defect_masks: torch.Tensor | None = None,
    target_fpr: float = 0.01,
    sensitivity: float = 0.5,
    synthetic_maps: torch.Tensor | None = None,
    synthetic_masks: torch.Tensor | None = None,
) -> Calibration:
    """Choose thresholds and score statistics from calibration maps.

    The pixel threshold (what ``pred_mask`` and the alert boxes come from) equals the image threshold unless
    defect masks are at hand: labelled defects (``defect_maps`` + ``defect_masks``) or synthetic defects made on
    held-out good images (``synthetic_maps`` + ``synthetic_masks``, ``ddad_core.fitting.synthetic``). Then it is the
    F1-optimal pixel threshold over the good and defect pixels, so masks fit the defects instead of the blurred
    halo around them (a flagged image whose peak stays below it still gets a mask: ``scoring.score_maps``).
    Synthetic defects never move the image threshold (they are not the product's real defects).

    Args:
        good_maps: ``(N, S, S)`` blended maps of held-out good images.
        normalization: The component statistics these maps were blended with (stored alongside).
        defect_maps: Optional ``(M, S, S)`` maps of labelled defective images (switches to the F1 threshold).
        defect_masks: Optional ``(M, S, S)`` binary masks of those images (F1 pixel threshold).
        target_fpr: False-alarm rate on good parts for good-only calibration.
        sensitivity: Default operating point stored in the calibration.
        synthetic_maps: Optional ``(K, S, S)`` maps of synthetic defects (pixel threshold only).
        synthetic_masks: Their ``(K, S, S)`` masks.

    Returns:
        Calibration.
    """
    check_sensitivity(sensitivity)
    good_maps = _as_maps(good_maps)
    if good_maps.shape[0] == 0:
        raise ValueError("calibration needs at least one good image")
    good_scores = image_scores(good_maps).numpy()
    all_maps = [good_maps]
    info: dict = {}
    if defect_maps is None or len(defect_maps) == 0:
        image_threshold = threshold_at_fpr(good_scores, target_fpr)
        method = "target_fpr" if math.floor(target_fpr * good_scores.size + 1e-9) >= 1 else "max_good"
        pixel_threshold = image_threshold
        n_defect = 0
    else:
        defect_maps = _as_maps(defect_maps)
        all_maps.append(defect_maps)
        defect_scores = image_scores(defect_maps).numpy()
        scores = np.r_[good_scores, defect_scores]
        labels = np.r_[np.zeros(good_scores.size), np.ones(defect_scores.size)]
        image_threshold, method = f1_adaptive_threshold(scores, labels)
        info["f1_image"] = float(f1_max(scores, labels)[0])
        pixel_threshold = image_threshold
        if defect_masks is not None:
            masks = torch.as_tensor(defect_masks).bool()
            pixel_scores = torch.cat([good_maps.flatten(), defect_maps.flatten()]).numpy()
            pixel_labels = torch.cat([torch.zeros(good_maps.numel(), dtype=torch.bool), masks.flatten()]).numpy()
            if pixel_labels.any():
                info["f1_pixel"], pixel_threshold = f1_max(pixel_scores, pixel_labels)
        n_defect = int(defect_maps.shape[0])
        target_fpr = None
    if synthetic_maps is not None and len(synthetic_maps) and (defect_maps is None or len(defect_maps) == 0):
        synthetic_maps = _as_maps(synthetic_maps)
        masks = torch.as_tensor(synthetic_masks).bool()
        pixel_scores = torch.cat([good_maps.flatten(), synthetic_maps.flatten()]).numpy()
        pixel_labels = torch.cat([torch.zeros(good_maps.numel(), dtype=torch.bool), masks.flatten()]).numpy()
        if pixel_labels.any():
            f1, best = f1_max(pixel_scores, pixel_labels)
            pixel_threshold = float(best)
            info.update(pixel_method="synthetic_f1", f1_pixel_synthetic=float(f1), n_synthetic=int(len(masks)))
    info.setdefault("pixel_method", "f1" if "f1_pixel" in info else "image_threshold")
    info["good_false_alarm_rate"] = float((good_scores > image_threshold).mean())
    stacked = torch.cat([m.flatten(1) for m in all_maps])
    scores_all = stacked.amax(dim=1)
    return Calibration(
        normalization=normalization,
        image_threshold=float(image_threshold),
        pixel_threshold=float(pixel_threshold),
        image_min=float(scores_all.min()),
        image_max=float(scores_all.max()),
        pixel_min=float(stacked.min()),
        pixel_max=float(stacked.max()),
        sensitivity=float(sensitivity),
        method=method,
        target_fpr=target_fpr,
        n_good=int(good_maps.shape[0]),
        n_defect=n_defect,
        info=info,
    )
