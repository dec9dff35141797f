"""Calibration: the conformal threshold and its guarantee, the refusal and the tail fit, F1 threshold and its
fallbacks, the pixel threshold from synthetic defects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddad_core.anomaly_map import MapNormalization
from ddad_core.fitting.calibration import (
    conformal_rank,
    conformal_threshold,
    f1_adaptive_threshold,
    fit_calibration,
    min_good_images,
)
from ddad_core.fitting.recipes import SettingError
from ddad_core.scoring import score_maps

NORM = MapNormalization(0.0, 1.0, 0.0, 1.0)


def _maps_with_scores(scores, size=8):
    maps = torch.zeros(len(scores), size, size)
    for i, s in enumerate(scores):
        maps[i, i % size, 0] = s
    return maps


def test_conformal_threshold_is_the_kth_score_and_states_its_guarantee():
    scores = np.random.default_rng(0).permutation(np.arange(240.0))
    thr, record = conformal_threshold(scores, 0.01)
    assert record["rank"] == conformal_rank(240, 0.01) == 239 and thr == 238.0
    assert record["guaranteed_fpr"] == pytest.approx(2 / 241) and record["guaranteed_fpr"] <= 0.01
    assert "240 good images" in record["statement"] and "239th" in record["statement"]
    assert min_good_images(0.01) == 99 and conformal_rank(99, 0.01) == 99


def test_conformal_threshold_keeps_its_false_alarm_promise_over_many_fits():
    """Marginal guarantee: over fits, the chance that a new good part exceeds the threshold is 1 - k/(N+1)."""
    rng = np.random.default_rng(3)
    n, alpha = 59, 0.05
    rates = []
    for _ in range(4000):
        thr, _ = conformal_threshold(rng.uniform(size=n), alpha)
        rates.append(1.0 - thr)  # uniform scores: P(new score > thr)
    bound = 1 - conformal_rank(n, alpha) / (n + 1)
    assert bound <= alpha + 1e-12
    assert np.mean(rates) == pytest.approx(bound, abs=0.003)


def test_a_target_finer_than_the_data_allow_is_refused_in_one_line_or_tail_fitted():
    scores = np.random.default_rng(1).exponential(size=54)
    with pytest.raises(SettingError, match="needs at least 99 good images, this fit has 54") as err:
        conformal_threshold(scores, 0.01)
    assert "\n" not in str(err.value) and "--tail-fit" in str(err.value)
    thr, record = conformal_threshold(scores, 0.01, tail_fit=True)
    assert record["rule"] == "tail_fit" and record["guaranteed_fpr"] is None
    assert "no finite-sample guarantee" in record["statement"]
    assert thr >= scores.max()
    # Over many samples, the tail fit lands near the true 99 % quantile of the exponential (log 100 = 4.6).
    rng = np.random.default_rng(2)
    fitted = [conformal_threshold(rng.exponential(size=54), 0.01, tail_fit=True)[0] for _ in range(200)]
    assert 3.5 < np.median(fitted) < 6.0


def test_f1_threshold_and_fallbacks():
    thr, method = f1_adaptive_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert method == "f1" and 0.2 < thr < 0.8
    with pytest.warns(UserWarning, match="maximum good"):
        assert f1_adaptive_threshold([0.1, 0.4], [0, 0]) == (0.4, "max_good")
    with pytest.warns(UserWarning, match="no good"):
        thr, method = f1_adaptive_threshold([0.5, 0.7], [1, 1])
    assert method == "below_min_defect" and thr < 0.5


def test_good_only_calibration_uses_the_conformal_rule():
    rng = np.random.default_rng(1)
    scores = rng.uniform(1, 2, 300)
    cal = fit_calibration(_maps_with_scores(scores), NORM, target_fpr=0.01)
    assert cal.method == "conformal" and cal.n_good == 300 and cal.n_defect == 0
    k = conformal_rank(300, 0.01)  # 298: two of 300 lie above
    labels = score_maps(_maps_with_scores(scores), cal)[2]
    assert int(labels.sum()) == 300 - k
    assert cal.pixel_threshold == cal.image_threshold
    assert cal.info["good_false_alarm_rate"] == pytest.approx((300 - k) / 300)
    assert cal.info["operating_point"]["rank"] == k
    with pytest.raises(SettingError):
        fit_calibration(_maps_with_scores([1.0, 1.5, 1.2]), NORM)


def test_pixel_threshold_from_a_pixel_target():
    maps = torch.rand(40, 16, 16)
    cal = fit_calibration(maps, NORM, target_fpr=0.05, pixel_target_fpr=0.01)
    above = float((maps > cal.pixel_threshold).float().mean())
    assert cal.info["pixel_method"] == "conformal" and 0.005 < above <= 0.01


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


def test_synthetic_defects_set_a_pixel_threshold_that_fits_the_defect():
    gen = torch.Generator().manual_seed(0)
    good = torch.rand(10, 32, 32, generator=gen) * 0.3
    masks = torch.zeros(10, 32, 32, dtype=torch.bool)
    masks[:, 10:16, 10:16] = True
    defects = torch.rand(10, 32, 32, generator=gen) * 0.3
    defects[:, 8:18, 8:18] += 0.4  # halo around the defect
    defects[masks] += 0.6  # the defect itself
    norm = MapNormalization(0, 1, 0, 1)
    plain = fit_calibration(good, norm, target_fpr=0.1)
    cal = fit_calibration(good, norm, target_fpr=0.1, synthetic_maps=defects, synthetic_masks=masks)
    assert cal.image_threshold == plain.image_threshold  # synthetic defects never move the image threshold
    assert cal.pixel_threshold > cal.image_threshold and cal.info["pixel_method"] == "synthetic_f1"
    _, _, label, mask = score_maps(defects, cal)
    iou = (mask & masks).sum() / (mask | masks).sum()
    _, _, _, mask_plain = score_maps(defects, plain)
    iou_plain = (mask_plain & masks).sum() / (mask_plain | masks).sum()
    assert bool(label.all()) and float(iou) > 0.9 > float(iou_plain)
