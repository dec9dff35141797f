"""Calibration: target false-alarm rate on good parts, F1 threshold and its fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddad_core.anomaly_map import MapNormalization
from ddad_core.fitting.calibration import f1_adaptive_threshold, fit_calibration, threshold_at_fpr
from ddad_core.scoring import score_maps

NORM = MapNormalization(0.0, 1.0, 0.0, 1.0)


def _maps_with_scores(scores, size=8):
    maps = torch.zeros(len(scores), size, size)
    for i, s in enumerate(scores):
        maps[i, i % size, 0] = s
    return maps


def test_threshold_at_target_fpr():
    good = np.random.default_rng(0).normal(size=1000)
    thr = threshold_at_fpr(good, 0.01)
    assert (good > thr).mean() == pytest.approx(0.01)
    assert threshold_at_fpr(good, 0.0) == good.max()
    # Fewer good images than 1/target: nothing may exceed, threshold = max good ("max normal").
    assert threshold_at_fpr([0.3, 0.1, 0.2], 0.01) == 0.3
    with pytest.raises(ValueError):
        threshold_at_fpr([], 0.01)


def test_f1_threshold_and_fallbacks():
    thr, method = f1_adaptive_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert method == "f1" and 0.2 < thr < 0.8
    with pytest.warns(UserWarning, match="maximum good"):
        assert f1_adaptive_threshold([0.1, 0.4], [0, 0]) == (0.4, "max_good")
    with pytest.warns(UserWarning, match="no good"):
        thr, method = f1_adaptive_threshold([0.5, 0.7], [1, 1])
    assert method == "below_min_defect" and thr < 0.5


def test_good_only_calibration_gives_target_false_alarms():
    rng = np.random.default_rng(1)
    scores = rng.uniform(1, 2, 300)
    cal = fit_calibration(_maps_with_scores(scores), NORM, target_fpr=0.01)
    assert cal.method == "target_fpr" and cal.n_good == 300 and cal.n_defect == 0
    labels = score_maps(_maps_with_scores(scores), cal)[2]
    assert labels.float().mean().item() == pytest.approx(0.01)
    assert cal.pixel_threshold == cal.image_threshold
    assert cal.info["good_false_alarm_rate"] == pytest.approx(0.01)
    small = fit_calibration(_maps_with_scores([1.0, 1.5, 1.2]), NORM)
    assert small.method == "max_good" and small.image_threshold == 1.5


def test_labelled_calibration_uses_f1():
    good = _maps_with_scores([1.0, 1.1, 1.2, 1.3])
    bad = _maps_with_scores([1.25, 2.0, 2.5])
    masks = bad > 0
    cal = fit_calibration(good, NORM, defect_maps=bad, defect_masks=masks)
    assert cal.method == "f1" and cal.n_defect == 3 and cal.target_fpr is None
    # Best cut: flag >= 1.25 (TP 3, FP 1 -> F1 6/7) rather than >= 2.0 (TP 2 -> F1 0.8).
    assert 1.2 < cal.image_threshold < 1.25
    assert cal.info["f1_image"] == pytest.approx(6 / 7)
    assert cal.image_max == pytest.approx(2.5)
    assert "f1_pixel" in cal.info
