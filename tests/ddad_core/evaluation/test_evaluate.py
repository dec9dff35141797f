"""Evaluation at the bundle's operating point: the sensitivity moves the decisions, the masks and ``at_threshold``
together, halves select the fixed tune/report images, and the figures carry their intervals."""

from __future__ import annotations

import numpy as np
import pytest

from ddad_core.bundle import read_bundle_config
from ddad_core.evaluation.evaluate import evaluate
from ddad_core.testing import make_tiny_bundle

from .._helpers import write_mvtec


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return make_tiny_bundle(root / "bundle"), write_mvtec(root / "data", n_train=4, n_good=6, n_bad=6)


def test_sensitivity_moves_at_threshold_like_the_masks(setup):
    bundle, data = setup
    base = evaluate(bundle, data, log=None, sensitivity=0.5)
    eager = evaluate(bundle, data, log=None, sensitivity=1.0)
    assert eager["sensitivity"] == 1.0 and base["sensitivity"] == 0.5
    assert eager["at_threshold"]["threshold"] < base["at_threshold"]["threshold"]

    def flagged(r: dict) -> int:
        at = r["at_threshold"]
        return at["false_alarms"] + at["n_defective"] - at["misses"]

    assert flagged(eager) >= flagged(base)
    cal = read_bundle_config(bundle).calibration  # anomalib's rule: thr + (0.5 - sensitivity) * (max - min)
    expected = cal["image_threshold"] - 0.5 * (cal["image_max"] - cal["image_min"])
    assert eager["at_threshold"]["threshold"] == pytest.approx(expected)
    low, high = base["at_threshold"]["false_alarm_rate_ci95"]
    assert 0.0 <= low <= base["at_threshold"]["false_alarm_rate"] <= high <= 1.0


def test_halves_and_intervals(setup):
    bundle, data = setup
    tune = evaluate(bundle, data, log=None, half="tune")
    report = evaluate(bundle, data, log=None, half="report")
    assert tune["n_images"] == report["n_images"] == 6 and report["half"] == "report"
    for key in ("image_auroc", "aupro", "recall_at_1pct_fpr"):
        ci = report["ci95"][key]
        assert ci["low"] <= ci["value"] <= ci["high"]
    assert 0.0 <= report["recall_at_5pct_fpr"] <= 1.0
    assert np.isfinite(report["at_threshold"]["miss_rate"])
