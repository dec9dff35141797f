"""Flow step 8, score, normalise, threshold: anomaly maps -> anomalib-style decisions (its post-processor).

The calibration state (``Calibration``) is fixed when the model is fitted and travels in the bundle, so a
streaming worker never needs a test set. One implementation serves every caller (pipeline, evaluation, services):
the lesson of anomalib's review of PR #3596, where two post-processing paths disagreed.

* ``pred_score_raw = max(anomaly_map)``.
* ``pred_score = clamp((raw - image_threshold) / (image_max - image_min) + 0.5, 0, 1)``: the threshold maps to 0.5.
* ``sensitivity`` (default 0.5) moves the decision point in normalised space to ``1 - sensitivity``, as in
  anomalib; higher sensitivity flags more parts. The raw-space equivalent is
  ``threshold + (0.5 - sensitivity) * (max - min)``, which is what the labels are computed from (no rounding
  trouble near the threshold).
* ``pred_mask = anomaly_map > pixel threshold`` (sensitivity-adjusted the same way with the pixel statistics); a
  flagged image whose map nowhere exceeds the pixel threshold gets ``anomaly_map > image threshold`` instead, and
  an image that is not flagged has an empty mask: an image is flagged exactly when its mask is non-empty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ddad_core.anomaly_map import MapNormalization, image_scores


@dataclass
class Calibration:
    """Everything that turns raw maps into decisions; saved as ``bundle.json["calibration"]``.

    Attributes:
        normalization: Fixed min/max of the two component maps (from held-out good images).
        image_threshold: Raw image-score threshold (``pred_score_raw > image_threshold`` is anomalous).
        pixel_threshold: Raw pixel threshold of ``anomaly_map`` for ``pred_mask``.
        image_min: Smallest calibration image score (for ``pred_score``).
        image_max: Largest calibration image score.
        pixel_min: Smallest calibration map value (for normalised heatmaps).
        pixel_max: Largest calibration map value.
        sensitivity: Default operating point (0.5 = the calibrated threshold).
        method: How ``image_threshold`` was chosen: ``conformal`` (the quantile of out-of-sample good scores
            for ``target_fpr``), ``tail_fit``, ``f1`` (labelled defects), ``manual``; bundles calibrated before
            out-of-sample scoring say ``target_fpr`` or ``max_good``.
        target_fpr: The false-alarm rate aimed at on good parts (``target_fpr`` method).
        n_good: Number of good calibration images.
        n_defect: Number of defective calibration images (0 for good-only calibration).
        info: Free-form extras (e.g. the achieved FPR on the calibration images).
    """

    normalization: MapNormalization
    image_threshold: float
    pixel_threshold: float
    image_min: float
    image_max: float
    pixel_min: float
    pixel_max: float
    sensitivity: float = 0.5
    method: str = "conformal"
    target_fpr: float | None = 0.01
    n_good: int = 0
    n_defect: int = 0
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["normalization"] = self.normalization.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        values = dict(data)
        values["normalization"] = MapNormalization.from_dict(values["normalization"])
        return cls(**values)

    def with_sensitivity(self, sensitivity: float) -> Calibration:
        """A copy with another default sensitivity."""
        check_sensitivity(sensitivity)
        values = self.to_dict()
        values["sensitivity"] = float(sensitivity)
        return Calibration.from_dict(values)


def check_sensitivity(sensitivity: float) -> float:
    """Validate a sensitivity in [0, 1]."""
    if not 0.0 <= float(sensitivity) <= 1.0:
        raise ValueError(f"sensitivity must be in [0, 1], got {sensitivity}")
    return float(sensitivity)


def _span(low: float, high: float, threshold: float) -> float:
    # A single calibration image (or identical scores) gives a zero range; fall back to the threshold's magnitude
    # so normalisation stays finite and monotone.
    span = high - low
    return span if span > 0 else max(abs(threshold), 1e-6)


def normalize_scores(raw: torch.Tensor, threshold: float, low: float, high: float) -> torch.Tensor:
    """anomalib's min-max normalisation around the threshold: ``clamp((raw - thr) / (high - low) + 0.5, 0, 1)``.

    Example:
        >>> normalize_scores(torch.tensor([0.0, 1.0, 2.0, 9.0]), threshold=1.0, low=0.0, high=2.0).tolist()
        [0.0, 0.5, 1.0, 1.0]
    """
    return ((raw - threshold) / _span(low, high, threshold) + 0.5).clamp(0.0, 1.0)


def decision_threshold(threshold: float, low: float, high: float, sensitivity: float = 0.5) -> float:
    """Raw-space threshold at which the normalised score crosses ``1 - sensitivity``.

    Example:
        >>> decision_threshold(1.0, 0.0, 2.0, 0.5), decision_threshold(1.0, 0.0, 2.0, 0.75)
        (1.0, 0.5)
    """
    check_sensitivity(sensitivity)
    return threshold + (0.5 - sensitivity) * _span(low, high, threshold)


def score_maps(
    anomaly_maps: torch.Tensor, calibration: Calibration, sensitivity: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn blended anomaly maps into scores, labels and masks.

    Args:
        anomaly_maps: ``(B, S, S)`` blended, blurred maps.
        calibration: The bundle's calibration.
        sensitivity: Overrides ``calibration.sensitivity``.

    Returns:
        ``(pred_score, pred_score_raw, pred_label, pred_mask)`` with shapes ``(B,)``, ``(B,)``, ``(B,)``,
        ``(B, S, S)``.

    Example:
        >>> cal = Calibration(MapNormalization(0, 1, 0, 1), image_threshold=1.0, pixel_threshold=1.0,
        ...                   image_min=0.0, image_max=2.0, pixel_min=0.0, pixel_max=2.0)
        >>> maps = torch.zeros(2, 4, 4); maps[1, 0, 0] = 1.5
        >>> score, raw, label, mask = score_maps(maps, cal)
        >>> score.tolist(), label.tolist(), int(mask.sum())
        ([0.0, 0.75], [False, True], 1)
    """
    sens = calibration.sensitivity if sensitivity is None else check_sensitivity(sensitivity)
    c = calibration
    raw = image_scores(anomaly_maps)
    pred_score = normalize_scores(raw, c.image_threshold, c.image_min, c.image_max)
    image_thr = decision_threshold(c.image_threshold, c.image_min, c.image_max, sens)
    pred_label = raw > image_thr
    pred_mask = anomaly_maps > decision_threshold(c.pixel_threshold, c.pixel_min, c.pixel_max, sens)
    weak = pred_label & ~pred_mask.flatten(1).any(dim=1)  # flagged, but below the (higher) pixel threshold
    if bool(weak.any()):
        pred_mask[weak] = anomaly_maps[weak] > image_thr
    pred_mask &= pred_label.view(-1, *([1] * (pred_mask.ndim - 1)))
    return pred_score, raw, pred_label, pred_mask


def normalize_map(anomaly_maps: torch.Tensor, calibration: Calibration) -> torch.Tensor:
    """Heatmap for display: maps normalised with the pixel statistics, 0.5 = the pixel threshold."""
    c = calibration
    return normalize_scores(anomaly_maps, c.pixel_threshold, c.pixel_min, c.pixel_max)
