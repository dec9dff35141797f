"""Operators' feedback -> a proposed per-camera threshold, applied through the alerter's override path.

Flow step: Kafka ``feedback`` (the dashboard's marks) + Redis ``alert:{id}`` (the stored scores) -> proposal ->
(operator approves) -> ``OverrideStore.set(min_score=...)`` with an audit entry -> running alerters pick it up within
``ALERTER_OVERRIDES_REFRESH_S``.

The alert rule fires when ``pred_score > threshold`` (normalised scale). For each camera, the latest mark of each
alert counts (an operator may correct a mark): ``false_alarm`` alerts must end at or below the new threshold,
``confirm_defect`` alerts must stay strictly above it; ``acknowledge`` carries no verdict. A threshold exists when
the highest false-alarm score is below the lowest confirmed score; the proposal sits ``margin`` above the highest
false alarm (at most half-way to the lowest confirmed defect), or, with only confirmed defects under the threshold in
force, ``margin`` below the lowest of them. When the threshold in force already separates them, nothing is proposed.
Commands::

    python -m services.alerter calibrate [--camera cam-1 ...] [--margin 0.02]          # print the proposals
    python -m services.alerter calibrate --apply --actor alice [--camera cam-1 ...]    # approve and apply them
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from kafka import TopicPartition
from pydantic import ValidationError

from services._config import EXIT_BAD_CONFIG, StartupError, load_settings
from services._kafka import check_kafka, make_consumer
from services._redis import AlertStore, OverrideStore, connect_checked
from services.contracts.feedback import FeedbackRecord, latest_verdicts
from services.contracts.topics import Topics


@dataclass(frozen=True)
class Mark:
    """The latest verdict on one alert, with the score the alert was raised at."""

    alert_id: str
    camera_id: str
    action: str
    score: float
    score_source: str  # "redis" (the stored alert) or "record" (the alert expired; the feedback record's copy)


@dataclass(frozen=True)
class ThresholdProposal:
    """What ``calibrate`` proposes for one camera."""

    camera_id: str
    current: float | None  # threshold in force (override, else the latest marked alert's)
    proposed: float | None  # None: no change needed, or no threshold separates the marks
    false_alarms: int
    max_false_alarm: float | None
    confirmed: int
    min_confirmed: float | None
    reason: str

    @property
    def changes(self) -> bool:
        return self.proposed is not None


def read_feedback(kafka_kwargs: dict[str, Any], topic: str,
                  timeout_s: float = 30.0) -> tuple[list[FeedbackRecord], int]:
    """Every record of the ``feedback`` topic from the beginning (no consumer group, nothing committed).

    Returns:
        ``(records, invalid)``: valid records in topic order, and the count of records that broke the contract.
    """
    consumer = make_consumer(kafka_kwargs, None, auto_offset_reset="earliest")  # type: ignore[arg-type]
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return [], 0
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps, timeout_ms=int(timeout_s * 1000))
        records: list[FeedbackRecord] = []
        invalid = 0
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took over {timeout_s:g} s")
            for recs in consumer.poll(timeout_ms=500).values():
                for rec in recs:
                    try:
                        records.append(FeedbackRecord.from_bytes(rec.value))
                    except ValidationError:
                        invalid += 1
        return records, invalid
    finally:
        consumer.close(autocommit=False)


def latest_marks(records: list[FeedbackRecord], alerts: AlertStore | None) -> list[Mark]:
    """The latest verdict per alert (``acknowledge`` is not a verdict; ``withdraw`` takes one back), scored from the
    stored alert when it exists."""
    marks = []
    for rec in latest_verdicts(records).values():
        stored = alerts.get(rec.alert_id) if alerts is not None else None
        score, source = (stored.pred_score, "redis") if stored is not None else (rec.pred_score, "record")
        marks.append(Mark(rec.alert_id, rec.camera_id, rec.action, score, source))
    return marks


def propose(camera_id: str, marks: list[Mark], current: float | None, margin: float = 0.02) -> ThresholdProposal:
    """The threshold for one camera that puts every false alarm at or below it and every confirmed defect above.

    Example:
        >>> ms = [Mark("a", "c", "false_alarm", 0.58, "redis"), Mark("b", "c", "confirm_defect", 0.9, "redis")]
        >>> propose("c", ms, current=0.5).proposed
        0.6
        >>> propose("c", ms, current=0.7).proposed is None  # 0.7 already separates them
        True
    """
    fas = [m.score for m in marks if m.action == "false_alarm"]
    oks = [m.score for m in marks if m.action == "confirm_defect"]
    lo, hi = (max(fas) if fas else None), (min(oks) if oks else None)
    base = dict(camera_id=camera_id, current=current, false_alarms=len(fas), max_false_alarm=lo, confirmed=len(oks),
                min_confirmed=hi)
    if lo is not None and hi is not None and lo >= hi:
        return ThresholdProposal(**base, proposed=None, reason=f"no threshold separates them: a false alarm scored "
                                 f"{lo:.4f}, at or above a confirmed defect at {hi:.4f}")
    if current is not None and (lo is None or current >= lo) and (hi is None or current < hi):
        return ThresholdProposal(**base, proposed=None, reason="the threshold in force already separates the marks")
    if lo is not None:
        room = (hi if hi is not None else 1.0) - lo
        proposed = lo + min(margin, room / 2) if room > 0 else lo
    else:  # only confirmed defects, and the threshold in force is above some of them
        proposed = hi - min(margin, hi / 2)
    proposed = round(min(1.0, max(0.0, proposed)), 6)
    return ThresholdProposal(**base, proposed=proposed, reason="removes the marked false alarms, keeps every "
                             "confirmed defect above it")


def current_thresholds(overrides: dict[str, dict[str, float]], records: list[FeedbackRecord]) -> dict[str, float]:
    """Per camera: its runtime override (``min_score``, else ``1 - sensitivity``), else its latest alert's threshold."""
    out: dict[str, float] = {}
    for rec in sorted(records, key=lambda r: r.at):
        out[rec.camera_id] = rec.threshold
    for scope, values in overrides.items():
        if ":" in scope:
            continue
        if "min_score" in values:
            out[scope] = values["min_score"]
        elif "sensitivity" in values:
            out[scope] = round(1.0 - values["sensitivity"], 6)
    return out


def proposals(records: list[FeedbackRecord], alerts: AlertStore | None, overrides: dict[str, dict[str, float]],
              cameras: list[str] | None = None, margin: float = 0.02) -> list[ThresholdProposal]:
    marks = latest_marks(records, alerts)
    current = current_thresholds(overrides, records)
    cams = sorted({m.camera_id for m in marks} if not cameras else set(cameras))
    return [propose(cam, [m for m in marks if m.camera_id == cam], current.get(cam), margin) for cam in cams]


def apply(store: OverrideStore, proposal: ThresholdProposal, actor: str) -> str:
    """Write the proposal as the camera's ``min_score`` override, with an audit entry (one transaction)."""
    if proposal.proposed is None:
        raise ValueError(f"{proposal.camera_id}: nothing to apply ({proposal.reason})")
    reason = (f"feedback calibration {uuid.uuid4().hex[:8]}: {proposal.false_alarms} false alarm(s) up to "
              f"{_f(proposal.max_false_alarm)}, {proposal.confirmed} confirmed defect(s) from "
              f"{_f(proposal.min_confirmed)}; threshold {_f(proposal.current)} -> {proposal.proposed:.4f}")
    store.set(OverrideStore.scope(proposal.camera_id), actor, reason, min_score=proposal.proposed)
    return reason


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def calibrate(argv: list[str]) -> int:
    """The ``calibrate`` subcommand of ``python -m services.alerter`` (see the module docstring)."""
    from services.alerter.config import AlerterSettings

    parser = argparse.ArgumentParser(prog="services.alerter calibrate",
                                     description="Propose per-camera thresholds from operators' feedback.")
    parser.add_argument("--camera", action="append", help="only this camera (repeatable)")
    parser.add_argument("--margin", type=float, default=0.02, help="distance above the highest false alarm")
    parser.add_argument("--apply", action="store_true", help="approve: write the proposals as overrides")
    parser.add_argument("--actor", help="who approves (required with --apply; goes into the audit log)")
    parser.add_argument("--json", action="store_true", help="one JSON object per camera instead of a table")
    args = parser.parse_args(argv)
    if args.apply and not args.actor:
        parser.error("--apply needs --actor")
    if not 0 < args.margin < 0.5:
        parser.error("--margin must be in (0, 0.5)")
    try:
        settings = load_settings(AlerterSettings)
    except ValueError as exc:
        print(f"AlerterSettings: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    kafka = settings.kafka_kwargs("alerter-calibrate")
    topic = Topics(settings.topic_prefix).feedback
    try:
        client, _ = connect_checked(settings.redis_url, settings.connect_timeout_s)
        check_kafka(kafka, settings.connect_timeout_s, [topic])
    except StartupError as exc:
        print(f"alerter calibrate: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    records, invalid = read_feedback(kafka, topic, timeout_s=max(30.0, settings.connect_timeout_s))
    alert_store = AlertStore(client, prefix=settings.redis_key_prefix)
    override_store = OverrideStore(client, settings.redis_key_prefix)
    props = proposals(records, alert_store, override_store.all(), args.camera, args.margin)
    print(f"feedback: {len(records)} record(s) on {topic}" + (f", {invalid} invalid skipped" if invalid else ""),
          file=sys.stderr)
    for p in props:
        if args.json:
            print(json.dumps({**asdict(p), "applied": bool(args.apply and p.changes)}))
        else:
            print(f"{p.camera_id}: threshold {_f(p.current)} -> {_f(p.proposed) if p.changes else 'unchanged'}  "
                  f"({p.false_alarms} false alarm(s) max {_f(p.max_false_alarm)}, {p.confirmed} confirmed min "
                  f"{_f(p.min_confirmed)}): {p.reason}")
        if args.apply and p.changes:
            apply(override_store, p, args.actor)
    if not args.apply and any(p.changes for p in props):
        print("to approve: the same command with --apply --actor <name>", file=sys.stderr)
    return 0
