"""Metrics: hand-computed cases, sklearn agreement, exact AUPRO vs a brute-force re-statement, invariance."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, roc_auc_score

from ddad_core.evaluation.metrics import (
    aupro,
    aupro_variant_c,
    auroc,
    average_precision,
    f1_max,
    pixel_auroc,
    pro_curve,
    roc_curve,
)


def _synthetic_maps(seed: int = 0, n: int = 12, size: int = 24, levels: int | None = None):
    """Noisy maps with rectangle/blob defects; ``levels`` quantises the scores to force ties."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(n, size, size))
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n // 2):
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(0, size - 6, 2)
            h, w = rng.integers(2, 6, 2)
            masks[i, y : y + h, x : x + w] = True
        maps[i][masks[i]] += rng.uniform(0.5, 2.5)
    maps = ndimage.gaussian_filter(maps, sigma=(0, 1, 1))
    if levels:
        maps = np.round(maps * levels) / levels
    return maps, masks


def _brute_force_aupro(maps, masks, limit=0.3):
    """Literal statement of docs/method.md 11.3 via thresholds: PRO(t), FPR(t) for every distinct t, A > t."""
    regions = []
    for mask, amap in zip(masks, maps, strict=True):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        for r in range(1, count + 1):
            regions.append(amap[labelled == r])
    background = maps[~masks]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1][1:]:  # thresholds strictly between distinct values, descending
        fpr = float((background > t).mean())
        pro = float(np.mean([(r > t).mean() for r in regions]))
        points.append((fpr, pro))
    points.append((1.0, 1.0))
    points.append((1.0, 1.0))
    fprs = np.array([p[0] for p in points])
    pros = np.array([p[1] for p in points])
    # Integrate to the limit with interpolation.
    area = 0.0
    for i in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[i - 1], fprs[i], pros[i - 1], pros[i]
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def _literal_variant_c(maps, masks, steps=200, limit=0.3):
    """Variant C exactly as listed in docs/method.md 11.3 (loop over thresholds)."""
    amaps = (maps - maps.min()) / (maps.max() - maps.min())
    fprs, pros = [], []
    inverse = 1 - masks.astype(float)
    for th in np.arange(amaps.min(), amaps.max(), (amaps.max() - amaps.min()) / steps):
        binary = amaps > th
        region_shares = []
        for b, mask in zip(binary, masks, strict=True):
            labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
            for r in range(1, count + 1):
                region = labelled == r
                region_shares.append(b[region].sum() / region.sum())
        fp = np.logical_and(inverse > 0, binary).sum()
        fprs.append(fp / inverse.sum())
        pros.append(np.mean(region_shares))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < limit
    return float(auc(fprs[keep] / fprs[keep].max(), pros[keep]))


def test_auroc_hand_computed_and_ties():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # One tie between a positive and a negative counts one half.
    assert auroc([0.5, 0.5, 0.9], [0, 1, 1]) == pytest.approx(0.75)
    assert auroc([1, 2, 3], [0, 1, 1]) == 1.0
    with pytest.warns(UserWarning):
        assert np.isnan(auroc([1, 2], [1, 1]))


def test_roc_curve_endpoints():
    fpr, tpr, thr = roc_curve([0.2, 0.6, 0.6, 0.9], [0, 1, 0, 1])
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.isinf(thr[0]) and len(fpr) == 4  # +inf and three distinct scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_ap_agree_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(size=500) + labels, 1)  # rounding creates many ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_pixel_auroc_matches_flat_sklearn():
    maps, masks = _synthetic_maps(3)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)


def test_f1_max_hand_computed():
    f1, threshold = f1_max([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert f1 == pytest.approx(0.8)
    assert 0.1 < threshold < 0.35
    f1, threshold = f1_max([0.1, 0.2, 0.9, 0.95], [0, 0, 1, 1])
    assert f1 == 1.0 and 0.2 < threshold < 0.9


def test_aupro_hand_computed():
    # Perfect separation: PRO reaches 1 at FPR 0.
    maps = np.array([[[0.9, 0.1], [0.2, 0.3]]])
    masks = np.array([[[1, 0], [0, 0]]])
    assert aupro(maps, masks) == pytest.approx(1.0)
    # Defect pixel scored below every background pixel: PRO is 0 until FPR 1, area under [0, 0.3] is 0.
    maps = np.array([[[0.0, 0.5], [0.6, 0.7]]])
    assert aupro(maps, masks) == pytest.approx(0.0)
    # Two regions of 2 pixels in a 4x4 map (12 background pixels). Scores: region A both 1.0;
    # region B one pixel 0.5 and one 0.05; background values 0.9 (one), the rest 0.1.
    m = np.full((4, 4), 0.1)
    gt = np.zeros((4, 4), dtype=bool)
    gt[0, 0:2] = True  # region A
    gt[3, 2:4] = True  # region B
    m[0, 0:2] = 1.0
    m[3, 2] = 0.5
    m[3, 3] = 0.05
    m[2, 0] = 0.9
    # Curve (fpr, pro): (0,0) -> t<1.0: (0, 0.5) -> t<0.9: (1/12, 0.5) -> t<0.5: (1/12, 0.75)
    # -> t<0.1: (1, 0.75) -> t<0.05: (1, 1).
    # Area to 0.3: 0.5/12 + 0.75*(0.3 - 1/12) = 0.041667 + 0.1625 = 0.204167, /0.3 = 0.680556.
    assert aupro(m[None], gt[None]) == pytest.approx((0.5 / 12 + 0.75 * (0.3 - 1 / 12)) / 0.3)


@pytest.mark.parametrize("levels", [None, 4])
def test_aupro_matches_brute_force(levels):
    maps, masks = _synthetic_maps(1, n=6, size=16, levels=levels)
    assert aupro(maps, masks) == pytest.approx(_brute_force_aupro(maps, masks), abs=1e-9)


def test_aupro_invariant_under_monotone_transform():
    maps, masks = _synthetic_maps(2)
    base = aupro(maps, masks)
    assert aupro(np.exp(1.5 * maps), masks) == pytest.approx(base, abs=1e-12)
    assert aupro(3 * maps + 7, masks) == pytest.approx(base, abs=1e-12)
    # Variant C is not invariant (docs/method.md 11.4): it changes under exp.
    assert abs(aupro_variant_c(np.exp(1.5 * maps), masks) - aupro_variant_c(maps, masks)) > 1e-3


def test_aupro_eight_connectivity():
    # Diagonal neighbours (1,1)-(2,2) form ONE region with 8-connectivity; (4,4) is a second region.
    gt = np.zeros((1, 5, 5), dtype=bool)
    gt[0, 1, 1] = gt[0, 2, 2] = gt[0, 4, 4] = True
    maps = np.zeros((1, 5, 5))
    maps[0, 1, 1] = 1.0
    maps[0, 2, 2] = 0.5
    curve = pro_curve(maps, gt)
    # First threshold below 1.0: (1/2 + 0) / 2 regions = 0.25; 4-connectivity would give (1 + 0 + 0) / 3.
    assert curve.fpr[1] == 0.0
    assert curve.pro[1] == pytest.approx(0.25)


def test_variant_c_matches_literal_restatement():
    maps, masks = _synthetic_maps(4, n=6, size=16)
    assert aupro_variant_c(maps, masks) == pytest.approx(_literal_variant_c(maps, masks), abs=1e-9)


def test_metric_input_errors():
    with pytest.raises(ValueError):
        aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))  # no region
    with pytest.raises(ValueError):
        auroc([np.nan, 1.0], [0, 1])
    with pytest.raises(ValueError):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
