"""Alert rules: thresholds from sensitivity, N-of-M debounce, cooldown on capture time, scope resolution."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.alerter.rules import AlertRules, Rule, RuleBook, severity_of
from services.contracts.results import InspectionResult

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def res(i: int, score: float, camera: str = "cam1", product: str | None = None, t: float | None = None,
        frame_id: str | None = None) -> InspectionResult:
    at = T0 + timedelta(seconds=i if t is None else t)
    return InspectionResult(frame_id=frame_id or f"{camera}-{i}", camera_id=camera, line_id="l1", product_id=product,
                            sequence=i, captured_at=at, processed_at=at, pred_score=score, pred_score_raw=score * 2,
                            pred_label=score > 0.5, noise_step=20, threshold=0.5, threshold_raw=1.0,
                            model_version="m",
                            bundle_hash="h", batch_id="b", batch_size=1, queue_wait_ms=0.0)


def test_default_rule_alerts_on_calibrated_threshold():
    rules = AlertRules(RuleBook())
    # Strictly above 0.5, the same rule as the model's pred_label (raw score > calibrated threshold).
    scores = [0.49, 0.5, 0.51, 0.9]
    assert [rules.evaluate(res(i, s)).alert for i, s in enumerate(scores)] == [False, False, True, True]


def test_sensitivity_moves_the_threshold():
    rules = AlertRules(RuleBook(Rule(sensitivity=0.8)))
    assert rules.evaluate(res(0, 0.25)).alert  # threshold 0.2
    strict = AlertRules(RuleBook(Rule(sensitivity=0.2)))
    assert not strict.evaluate(res(0, 0.75)).alert  # threshold 0.8


def test_n_of_m_debounce():
    rules = AlertRules(RuleBook(Rule(debounce_n=2, debounce_m=3)))
    seq = [0.9, 0.1, 0.1, 0.9, 0.1, 0.9, 0.9]
    assert [rules.evaluate(res(i, s)).reason for i, s in enumerate(seq)] == [
        "debounce", "normal", "normal", "debounce", "normal", "alert", "alert"]


def test_cooldown_uses_capture_time_and_is_per_camera():
    rules = AlertRules(RuleBook(Rule(cooldown_s=10)))
    assert rules.evaluate(res(0, 0.9, t=0)).alert
    assert rules.evaluate(res(1, 0.9, t=5)).reason == "cooldown"
    assert rules.evaluate(res(2, 0.9, camera="cam2", t=5)).alert  # other camera unaffected
    assert rules.evaluate(res(3, 0.9, t=10.5)).alert


def test_replayed_result_is_not_counted_twice():
    rules = AlertRules(RuleBook(Rule(debounce_n=2, debounce_m=2)))
    assert rules.evaluate(res(0, 0.9)).reason == "debounce"
    assert rules.evaluate(res(0, 0.9)).reason == "duplicate"
    assert rules.evaluate(res(1, 0.9)).alert


def test_scope_resolution_order():
    book = RuleBook(Rule(sensitivity=0.5), configured={"cam1": {"sensitivity": 0.6}, "cam1:pA": {"sensitivity": 0.7}})
    assert book.resolve("cam1").sensitivity == 0.6
    assert book.resolve("cam1", "pA").sensitivity == 0.7
    assert book.resolve("cam1", "pB").sensitivity == 0.6
    book.overrides = {"cam1": {"min_score": 0.95}}
    assert book.resolve("cam1", "pA").threshold == 0.95  # runtime overrides win over configuration
    assert book.resolve("cam2").threshold == 0.5


def test_invalid_rules_and_severity():
    with pytest.raises(ValueError):
        Rule(debounce_n=3, debounce_m=2)
    with pytest.raises(ValueError):
        Rule(sensitivity=1.5)
    assert [severity_of(s, 0.5) for s in (0.55, 0.65, 0.85)] == ["low", "medium", "high"]
