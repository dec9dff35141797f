"""Scoring: threshold at 0.5, sensitivity, masks, round trip of the calibration record."""

from __future__ import annotations

import pytest
import torch

from ddad_core.anomaly_map import MapNormalization
from ddad_core.scoring import Calibration, decision_threshold, normalize_map, normalize_scores, score_maps


def _calibration(**kw) -> Calibration:
    values = dict(
        normalization=MapNormalization(0.0, 1.0, 0.0, 2.0),
        image_threshold=1.0,
        pixel_threshold=1.0,
        image_min=0.0,
        image_max=2.0,
        pixel_min=0.0,
        pixel_max=2.0,
    )
    values.update(kw)
    return Calibration(**values)


def test_threshold_maps_to_half():
    raw = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 10.0, -5.0])
    got = normalize_scores(raw, threshold=1.0, low=0.0, high=2.0)
    assert got.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 0.0]
    # Degenerate range stays finite and monotone.
    flat = normalize_scores(torch.tensor([0.9, 1.0, 1.1]), threshold=1.0, low=3.0, high=3.0)
    assert flat[1] == 0.5 and flat[0] < 0.5 < flat[2]


def test_labels_follow_raw_threshold_strictly():
    cal = _calibration()
    maps = torch.zeros(3, 4, 4)
    maps[1, 0, 0] = 1.0  # exactly at the threshold: not anomalous
    maps[2, 1, 1] = 1.0 + 1e-6
    score, raw, label, mask = score_maps(maps, cal)
    assert label.tolist() == [False, False, True]
    assert raw.tolist() == pytest.approx([0.0, 1.0, 1.0 + 1e-6])
    assert (score[label] > 0.5).all() and (score[~label] <= 0.5).all()
    # Matching thresholds: flagged exactly when the mask is non-empty.
    assert mask.flatten(1).any(1).tolist() == label.tolist()


def test_sensitivity_moves_the_decision_point():
    cal = _calibration()
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 0.8  # normalised 0.4
    assert not score_maps(maps, cal)[2].item()
    assert score_maps(maps, cal, sensitivity=0.65)[2].item()  # decision at 0.35
    assert not score_maps(maps, cal, sensitivity=0.55)[2].item()  # decision at 0.45
    assert decision_threshold(1.0, 0.0, 2.0, 0.0) == 2.0
    assert score_maps(maps, cal.with_sensitivity(0.65))[2].item()
    with pytest.raises(ValueError):
        score_maps(maps, cal, sensitivity=1.5)


def test_calibration_round_trip_and_heatmap():
    cal = _calibration(info={"good_false_alarm_rate": 0.0})
    again = Calibration.from_dict(cal.to_dict())
    assert again == cal
    heat = normalize_map(torch.tensor([[[1.0, 3.0]]]), cal)
    assert heat.tolist() == [[[0.5, 1.0]]]


def test_flagged_image_below_the_pixel_threshold_still_gets_a_mask():
    cal = Calibration(MapNormalization(0, 1, 0, 1), image_threshold=1.0, pixel_threshold=2.0, image_min=0.0,
                      image_max=2.0, pixel_min=0.0, pixel_max=3.0)  # fmt: skip
    maps = torch.zeros(3, 4, 4)
    maps[0, 0, 0] = 1.5  # flagged, weak: below the pixel threshold
    maps[1, 1, 1], maps[1, 2, 2] = 2.5, 1.5  # flagged, strong: only the pixel above 2
    maps[2, 3, 3] = 0.9  # not flagged
    _, _, label, mask = score_maps(maps, cal)
    assert label.tolist() == [True, True, False]
    assert mask[0].sum() == 1 and bool(mask[0, 0, 0])
    assert mask[1].sum() == 1 and bool(mask[1, 1, 1])
    assert not mask[2].any()
