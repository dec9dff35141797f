"""Alert rules: per-camera/product sensitivity, N-of-M debounce and cooldown. Pure logic, no I/O.

Flow step: results -> decision. The worker's ``pred_score`` is normalised so that 0.5 is the bundle's calibrated
threshold; a rule's sensitivity moves the decision threshold to ``1 - sensitivity`` on that scale (anomalib's
``image_sensitivity`` convention: higher sensitivity, more alerts), or ``min_score`` sets it directly.
Rules resolve most specific first: runtime override for camera+product, runtime override for the camera, configured
rule for camera+product, configured rule for the camera, the bundle calibration's defaults, the service defaults.

Debounce and cooldown run on capture time, not on arrival time, so replaying a stretch of results after a restart
makes the same decisions, and a burst of late results is not mistaken for a burst of defects.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

from services.contracts.results import InspectionResult

Severity = Literal["low", "medium", "high"]


@dataclass(frozen=True)
class Rule:
    """Effective alert rule for one camera (and product).

    Attributes:
        sensitivity: In [0, 1]; the decision threshold on ``pred_score`` is ``1 - sensitivity`` (0.5 = calibrated).
        min_score: If set, the decision threshold on ``pred_score`` itself (overrides sensitivity).
        debounce_n: Alert when at least N of the last M frames were anomalous (and this one is).
        debounce_m: Window length M.
        cooldown_s: After an alert, suppress further alerts of the camera for this long (capture time).
    """

    sensitivity: float = 0.5
    min_score: float | None = None
    debounce_n: int = 1
    debounce_m: int = 1
    cooldown_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.sensitivity <= 1.0:
            raise ValueError(f"sensitivity {self.sensitivity} outside [0, 1]")
        if self.min_score is not None and not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score {self.min_score} outside [0, 1]")
        if not 1 <= self.debounce_n <= self.debounce_m:
            raise ValueError(f"debounce needs 1 <= N ({self.debounce_n}) <= M ({self.debounce_m})")
        if self.cooldown_s < 0:
            raise ValueError("cooldown_s must be >= 0")

    @property
    def threshold(self) -> float:
        """Decision threshold on the normalised score."""
        return self.min_score if self.min_score is not None else 1.0 - self.sensitivity


@dataclass
class RuleBook:
    """Resolves the rule of a camera/product from defaults, configured rules and runtime overrides.

    Scopes are ``"<camera_id>"`` or ``"<camera_id>:<product_id>"``; values are partial dicts of ``Rule`` fields.

    Example:
        >>> book = RuleBook(Rule(), configured={"cam1": {"sensitivity": 0.7}})
        >>> book.overrides = {"cam1:p2": {"min_score": 0.9}}
        >>> book.resolve("cam1", None).threshold, book.resolve("cam1", "p2").threshold, book.resolve("cam2").threshold
        (0.30000000000000004, 0.9, 0.5)
    """

    defaults: Rule = field(default_factory=Rule)
    configured: dict[str, dict[str, float]] = field(default_factory=dict)
    overrides: dict[str, dict[str, float]] = field(default_factory=dict)

    def resolve(self, camera_id: str, product_id: str | None = None) -> Rule:
        rule = self.defaults
        scopes = [camera_id] + ([f"{camera_id}:{product_id}"] if product_id else [])
        for table in (self.configured, self.overrides):  # later layers win
            for scope in scopes:  # the more specific scope wins within a layer
                if scope in table:
                    rule = replace(rule, **_rule_fields(table[scope]))
        return rule


def _rule_fields(values: dict[str, float]) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {}
    for k, v in values.items():
        if k in ("debounce_n", "debounce_m"):
            out[k] = int(v)
        elif k in ("sensitivity", "min_score", "cooldown_s"):
            out[k] = None if v is None else float(v)
    return out


@dataclass(frozen=True)
class Decision:
    """What the rules made of one result."""

    anomalous: bool
    alert: bool
    reason: str  # "alert", "normal", "debounce", "cooldown", "duplicate"
    hits: int
    window: int
    threshold: float
    severity: Severity


def severity_of(score: float, threshold: float) -> Severity:
    """Distance above the threshold on the normalised scale: >= 0.3 high, >= 0.1 medium, else low."""
    margin = score - threshold
    return "high" if margin >= 0.3 else "medium" if margin >= 0.1 else "low"


class AlertRules:
    """Per-camera debounce/cooldown state over a ``RuleBook``.

    Example:
        >>> from datetime import UTC, datetime, timedelta
        >>> rules = AlertRules(RuleBook(Rule(debounce_n=2, debounce_m=3)))
        >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
        >>> def res(i, score):
        ...     return InspectionResult(frame_id=f"f{i}", camera_id="c", line_id="l", sequence=i,
        ...         captured_at=t0 + timedelta(seconds=i), processed_at=t0 + timedelta(seconds=i), pred_score=score,
        ...         pred_score_raw=score, pred_label=score > 0.5, noise_step=0, threshold=0.5, threshold_raw=0.5,
        ...         model_version="m", bundle_hash="h", batch_id="b", batch_size=1, queue_wait_ms=0)
        >>> [rules.evaluate(res(i, s)).reason for i, s in enumerate([0.9, 0.1, 0.8, 0.9])]
        ['debounce', 'normal', 'alert', 'alert']
    """

    def __init__(self, book: RuleBook, dedupe_window: int = 256) -> None:
        self.book = book
        self.dedupe_window = dedupe_window
        self._windows: dict[str, deque[bool]] = {}
        self._last_alert: dict[str, float] = {}
        self._seen: dict[str, deque[str]] = {}
        self._seen_set: dict[str, set[str]] = {}

    def evaluate(self, result: InspectionResult) -> Decision:
        """Update the camera's state with one result and decide whether it raises an alert."""
        rule = self.book.resolve(result.camera_id, result.product_id)
        threshold = rule.threshold
        # Same rule as the model's pred_label (strictly above the threshold), so both never disagree at 0.5.
        anomalous = result.pred_score > threshold
        severity = severity_of(result.pred_score, threshold)
        cam = result.camera_id
        # A replayed result (worker restart between produce and commit) must not count twice in the window.
        seen = self._seen_set.setdefault(cam, set())
        if result.frame_id in seen:
            return Decision(anomalous, False, "duplicate", 0, rule.debounce_m, threshold, severity)
        order = self._seen.setdefault(cam, deque())
        order.append(result.frame_id)
        seen.add(result.frame_id)
        if len(order) > self.dedupe_window:
            seen.discard(order.popleft())

        window = self._windows.get(cam)
        if window is None or window.maxlen != rule.debounce_m:  # rule changed at run time: restart the window
            window = deque(window or (), maxlen=rule.debounce_m)
            self._windows[cam] = window
        window.append(anomalous)
        hits = sum(window)
        if not anomalous:
            return Decision(False, False, "normal", hits, rule.debounce_m, threshold, severity)
        if hits < rule.debounce_n:
            return Decision(True, False, "debounce", hits, rule.debounce_m, threshold, severity)
        now = result.captured_at.timestamp()
        last = self._last_alert.get(cam)
        if last is not None and rule.cooldown_s > 0 and 0 <= now - last < rule.cooldown_s:
            return Decision(True, False, "cooldown", hits, rule.debounce_m, threshold, severity)
        self._last_alert[cam] = now
        return Decision(True, True, "alert", hits, rule.debounce_m, threshold, severity)
