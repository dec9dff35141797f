"""Intervals: Clopper-Pearson values, recall at FPR vs brute force, bootstrap replicates vs the exact metrics on
the drawn images, interval behaviour, paired differences."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, stats

from ddad_core.evaluation.intervals import (
    _aupro_replicates,
    _auroc_replicates,
    _bootstrap_counts,
    _pro_grid,
    _recall_replicates,
    binomial_interval,
    bootstrap_intervals,
    rate_with_interval,
    recall_at_fpr,
)
from ddad_core.evaluation.metrics import aupro, auroc


def _image_scores(n_good: int, n_bad: int, seed: int = 0, ties: bool = False):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_good, dtype=bool), np.ones(n_bad, dtype=bool)]
    scores = rng.normal(size=labels.size) + 1.2 * labels
    return (np.round(scores, 1) if ties else scores), labels


def _maps(seed: int = 0, n_good: int = 12, n_bad: int = 18, size: int = 32, empty_bad: int = 1):
    """Smoothed noise with rectangle defects; the last ``empty_bad`` defective images have no region."""
    rng = np.random.default_rng(seed)
    n = n_good + n_bad
    labels = np.r_[np.zeros(n_good, dtype=bool), np.ones(n_bad, dtype=bool)]
    maps = rng.normal(size=(n, size, size))
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n_good, n - empty_bad):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 8, 2)
            h, w = rng.integers(2, 8, 2)
            masks[i, y : y + h, x : x + w] = True
        maps[i][masks[i]] += rng.uniform(0.2, 1.5)
    maps = ndimage.gaussian_filter(maps, sigma=(0, 1.5, 1.5))
    scores = maps.reshape(n, -1).max(axis=1)
    return scores, labels, maps, masks


def _drawn(counts_row: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(counts_row.size), counts_row)


# ----------------------------------------------------------------------------------------------------------------
# Clopper-Pearson


def test_clopper_pearson_closed_forms():
    low, high = binomial_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-12)
    low, high = binomial_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 10), abs=1e-12)
    low, high = binomial_interval(0, 30, confidence=0.9)
    assert high == pytest.approx(1 - 0.05 ** (1 / 30), abs=1e-12)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (3, 17), (50, 100), (1, 300), (299, 300), (7, 8)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_clopper_pearson_matches_scipy_binomtest(k, n, confidence):
    reference = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    low, high = binomial_interval(k, n, confidence)
    assert low == pytest.approx(reference.low, abs=1e-10)
    assert high == pytest.approx(reference.high, abs=1e-10)


def test_rate_with_interval_and_edge_cases():
    r = rate_with_interval(3, 12)
    assert r["rate"] == 0.25 and r["k"] == 3 and r["n"] == 12
    assert (r["low"], r["high"]) == binomial_interval(3, 12)
    assert r["low"] < 0.25 < r["high"]
    empty = rate_with_interval(0, 0)
    assert np.isnan(empty["rate"]) and np.isnan(empty["low"]) and np.isnan(empty["high"])
    for k, n in ((4, 3), (-1, 3)):
        with pytest.raises(ValueError):
            binomial_interval(k, n)
    with pytest.raises(ValueError):
        binomial_interval(1, 3, confidence=1.0)


# ----------------------------------------------------------------------------------------------------------------
# Recall at FPR


def test_recall_at_fpr_hand_computed():
    scores = [0.1, 0.2, 0.3, 0.9, 0.25, 0.05]
    labels = [0, 0, 0, 1, 1, 1]
    # Operating points (fpr, tpr): (0,0) (0,1/3)@0.9 (1/3,1/3)@0.3 (1/3,2/3)@0.25 (2/3,2/3)@0.2 (1,2/3) (1,1).
    assert recall_at_fpr(scores, labels, 0.0) == pytest.approx(1 / 3)
    assert recall_at_fpr(scores, labels, 0.34) == pytest.approx(2 / 3)
    assert recall_at_fpr(scores, labels, 0.99) == pytest.approx(2 / 3)
    assert recall_at_fpr(scores, labels, 1.0) == 1.0
    # A tie between a good and a defective image: both flagged together, no interpolation inside the tie.
    assert recall_at_fpr([0.5, 0.5, 0.9], [0, 1, 1], 0.5) == pytest.approx(0.5)
    assert np.isnan(recall_at_fpr([0.1, 0.2], [1, 1], 0.1))
    with pytest.raises(ValueError):
        recall_at_fpr(scores, labels, 1.5)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.2, 0.5])
def test_recall_at_fpr_matches_threshold_loop(ties, fpr):
    scores, labels = _image_scores(60, 40, seed=3, ties=ties)
    best = 0.0
    for t in np.unique(scores):
        flagged = scores >= t
        if flagged[~labels].mean() <= fpr:
            best = max(best, flagged[labels].mean())
    assert recall_at_fpr(scores, labels, fpr) == pytest.approx(best, abs=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Replicates against the exact metrics on the drawn images


def test_bootstrap_counts_are_stratified():
    _, labels = _image_scores(7, 13)
    counts = _bootstrap_counts(labels, 50, seed=1)
    assert counts.shape == (50, 20)
    assert np.all(counts[:, ~labels].sum(axis=1) == 7) and np.all(counts[:, labels].sum(axis=1) == 13)
    assert np.any(counts > 1)


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_recall_replicates_are_exact(ties):
    scores, labels = _image_scores(25, 15, seed=2, ties=ties)
    counts = _bootstrap_counts(labels, 20, seed=0)
    aurocs = _auroc_replicates(scores, labels, counts)
    recalls = _recall_replicates(scores, labels, counts, 0.05)
    for b in range(counts.shape[0]):
        idx = _drawn(counts[b])
        assert aurocs[b] == pytest.approx(auroc(scores[idx], labels[idx]), abs=1e-12)
        assert recalls[b] == pytest.approx(recall_at_fpr(scores[idx], labels[idx], 0.05), abs=1e-12)
    ones = np.ones((1, labels.size), dtype=np.int64)
    assert _auroc_replicates(scores, labels, ones)[0] == pytest.approx(auroc(scores, labels), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_grid_aupro_close_to_exact(seed):
    _, labels, maps, masks = _maps(seed)
    grid = _pro_grid(maps, masks)
    full = _aupro_replicates(grid, np.ones((1, labels.size), dtype=np.int64))[0]
    exact = aupro(maps, masks)
    assert 0.2 < exact < 0.95  # a curve with room to be wrong
    assert abs(full - exact) < 0.01
    # Each replicate against the exact AUPRO of its drawn images (an image drawn twice counts twice).
    counts = _bootstrap_counts(labels, 5, seed=seed)
    replicates = _aupro_replicates(grid, counts)
    for b in range(counts.shape[0]):
        idx = _drawn(counts[b])
        assert abs(replicates[b] - aupro(maps[idx], masks[idx])) < 0.01


def test_grid_aupro_with_tied_scores():
    _, labels, maps, masks = _maps(4)
    maps = np.round(maps * 4) / 4  # few distinct values: long runs of ties
    full = _aupro_replicates(_pro_grid(maps, masks), np.ones((1, labels.size), dtype=np.int64))[0]
    assert abs(full - aupro(maps, masks)) < 0.01


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap intervals


def test_intervals_contain_the_point_value():
    scores, labels, maps, masks = _maps(0)
    res = bootstrap_intervals(
        scores, labels, maps, masks, metrics=("image_auroc", "aupro", "recall_at_5pct_fpr"), n_boot=300
    )
    assert set(res) == {"image_auroc", "aupro", "recall_at_5pct_fpr"}
    assert res["image_auroc"]["value"] == auroc(scores, labels)
    assert res["aupro"]["value"] == aupro(maps, masks)
    assert res["recall_at_5pct_fpr"]["value"] == recall_at_fpr(scores, labels, 0.05)
    for name, r in res.items():
        assert set(r) == {"value", "low", "high"}
        assert r["low"] < r["high"], name
        assert r["low"] <= r["value"] <= r["high"], name


def test_intervals_narrow_with_more_data():
    metrics = ("image_auroc", "recall_at_5pct_fpr")
    small = bootstrap_intervals(*_image_scores(30, 30, seed=5), metrics=metrics, n_boot=500)
    large = bootstrap_intervals(*_image_scores(600, 600, seed=5), metrics=metrics, n_boot=500)
    for name in metrics:
        width_small = small[name]["high"] - small[name]["low"]
        width_large = large[name]["high"] - large[name]["low"]
        assert width_large < 0.5 * width_small, name


def test_higher_confidence_gives_a_wider_interval():
    scores, labels = _image_scores(40, 40, seed=6)
    narrow = bootstrap_intervals(scores, labels, metrics=("image_auroc",), n_boot=400, confidence=0.8)
    wide = bootstrap_intervals(scores, labels, metrics=("image_auroc",), n_boot=400, confidence=0.99)
    assert wide["image_auroc"]["low"] < narrow["image_auroc"]["low"]
    assert wide["image_auroc"]["high"] > narrow["image_auroc"]["high"]


def test_seed_determinism():
    scores, labels, maps, masks = _maps(1, size=24)
    run = lambda seed: bootstrap_intervals(scores, labels, maps, masks, n_boot=100, seed=seed)  # noqa: E731
    assert run(3) == run(3)
    assert run(3) != run(4)


def test_paired_difference_with_itself_is_exactly_zero():
    scores, labels, maps, masks = _maps(2, size=24)
    metrics = ("image_auroc", "aupro", "recall_at_1pct_fpr", "recall_at_5pct_fpr")
    res = bootstrap_intervals(scores, labels, maps, masks, metrics=metrics, n_boot=200, other=(scores, maps))
    for name in metrics:
        assert res[name]["difference"] == {"value": 0.0, "low": 0.0, "high": 0.0}, name


def test_paired_difference_sees_a_clearly_better_method():
    scores, labels = _image_scores(50, 50, seed=7)
    noise = np.random.default_rng(8).normal(size=scores.size)
    res = bootstrap_intervals(scores, labels, metrics=("image_auroc",), n_boot=500, other=(noise, None))
    diff = res["image_auroc"]["difference"]
    assert diff["value"] == pytest.approx(auroc(scores, labels) - auroc(noise, labels))
    assert 0 < diff["low"] <= diff["value"] <= diff["high"]
    # A method against a slightly perturbed copy of itself: the interval contains 0 (not a win).
    jitter = scores + np.random.default_rng(9).normal(scale=0.05, size=scores.size)
    res = bootstrap_intervals(scores, labels, metrics=("image_auroc",), n_boot=500, other=(jitter, None))
    assert res["image_auroc"]["difference"]["low"] <= 0 <= res["image_auroc"]["difference"]["high"]


def test_bootstrap_input_errors():
    scores, labels, maps, masks = _maps(0, size=16)
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_intervals(scores, labels, metrics=("pixel_auroc",))
    with pytest.raises(ValueError, match="both good and defective"):
        bootstrap_intervals(scores[labels], labels[labels], metrics=("image_auroc",))
    with pytest.raises(ValueError, match="aupro needs"):
        bootstrap_intervals(scores, labels, metrics=("aupro",))
    with pytest.raises(ValueError, match="aupro needs"):
        bootstrap_intervals(scores, labels, maps, masks, metrics=("aupro",), other=(scores, None))
    with pytest.raises(ValueError, match="maps for"):
        bootstrap_intervals(scores[:-1], labels[:-1], maps, masks, metrics=("aupro",))
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_intervals(scores, labels, metrics=("image_auroc",), n_boot=0)
