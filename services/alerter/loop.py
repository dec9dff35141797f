"""The alerter loop: consume results -> rules -> record in Redis -> produce DefectAlert -> flush -> commit.

Flow step: Kafka ``results`` -> ``defects`` (+ Redis ``alert:{id}``). Same at-least-once order as the worker: the
offsets of a polled chunk are committed only after its alerts are recorded and acknowledged by the brokers. Alert
ids derive from frame ids, so a replay rewrites the same Redis record; the ``defects`` topic may then carry an
alert twice, and consumers dedupe by ``alert_id``.

Debounce state lives in memory: after a restart a camera's N-of-M window starts empty (at most N-1 anomalous frames
of context are lost).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kafka import TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from pydantic import ValidationError

from services import _observability as obs
from services._config import StartupError
from services._kafka import commit_offsets, consumer_lag
from services._outage import DependencyGuard
from services._redis import AlertStore, OverrideStore
from services._serve import run_steps
from services.alerter.rules import AlertRules
from services.contracts.defects import DefectAlert, alert_id_for
from services.contracts.results import DroppedFrame, parse_results_record
from services.contracts.topics import DEFECTS_SCHEMA_VERSION, HEADER_SCHEMA, Topics, record_key

SERVICE = "alerter"


def calibration_rules(bundle_path: str | None) -> tuple[float | None, dict[str, dict[str, float]]]:
    """Default sensitivity and per-camera/product rules from a bundle's calibration, if it has any.

    Reads ``bundle.json`` directly (no torch import in the alerter). Recognised keys of ``calibration``:
    ``sensitivity`` (float) and ``camera_rules`` / ``per_camera`` (``{scope: {field: value}}``).

    Raises:
        StartupError: the bundle's ``bundle.json`` is missing or not a JSON object.
    """
    if not bundle_path:
        return None, {}
    path = Path(bundle_path) / "bundle.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise StartupError(f"model bundle {bundle_path} not found (no {path})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StartupError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise StartupError(f"{path} must hold a JSON object")
    calib = data.get("calibration") or {}
    sens = calib.get("sensitivity")
    rules = calib.get("camera_rules") or calib.get("per_camera") or {}
    return (float(sens) if isinstance(sens, int | float) else None), {
        str(k): {f: float(v) for f, v in dict(r).items() if isinstance(v, int | float)} for k, r in rules.items()}


class _Listener(ConsumerRebalanceListener):
    def __init__(self, loop: AlerterLoop) -> None:
        self.loop = loop

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.loop.log.info("partitions_revoked", partitions=len(revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.loop.log.info("partitions_assigned", partitions=len(assigned))


class AlerterLoop:
    """Owns the alerter's consumer, rules state and commit.

    Args:
        consumer / producer: Kafka clients from ``services._kafka``.
        rules: Debounce/cooldown state over a ``RuleBook``.
        alert_store: Redis alert records.
        override_store: Redis runtime overrides (None: configured rules only).
        topics: Topic names.
        log: structlog logger.
        refresh_s: How often overrides are re-read.
    """

    def __init__(self, consumer: Any, producer: Any, rules: AlertRules, alert_store: AlertStore,
                 override_store: OverrideStore | None, topics: Topics, log: Any, health: obs.Health | None = None,
                 refresh_s: float = 2.0, max_poll_records: int = 256,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.consumer = consumer
        self.producer = producer
        self.rules = rules
        self.alert_store = alert_store
        self.override_store = override_store
        self.topics = topics
        self.log = log
        self.health = health or obs.Health()
        self.refresh_s = refresh_s
        self.max_poll_records = max_poll_records
        self._wall = wall_clock
        self._next_refresh = 0.0
        self.alerts_raised = 0
        self.guard = DependencyGuard(SERVICE, self.health, log)
        self.lag_interval_s = 5.0
        self._next_lag = time.monotonic() + self.lag_interval_s

    def subscribe(self) -> None:
        self.consumer.subscribe([self.topics.results], listener=_Listener(self))

    def run(self, stop: threading.Event) -> None:
        run_steps(self, stop)

    def refresh_overrides(self) -> None:
        if self.override_store is None:
            return
        try:
            overrides = self.override_store.all()
        except Exception as exc:  # noqa: BLE001 - keep alerting on the last known overrides while Redis is down
            self.log.warning("overrides_refresh_failed", error=repr(exc))
            return
        if overrides != self.rules.book.overrides:
            self.log.info("overrides_changed", overrides=overrides)
            self.rules.book.overrides = overrides

    def step(self) -> None:
        """Poll a chunk of results and process it (steps in ``process``)."""
        self.health.beat()
        if time.monotonic() >= self._next_refresh:
            self._next_refresh = time.monotonic() + self.refresh_s
            self.refresh_overrides()
        if time.monotonic() >= self._next_lag:
            self._next_lag = time.monotonic() + self.lag_interval_s
            self._check_broker()
        # The long timeout keeps kafka-python's group join inside one poll (3.0.12 drops a join that completes
        # while the application works between polls).
        records = self.consumer.poll(timeout_ms=500, max_records=self.max_poll_records)
        if records:
            self.process([r for recs in records.values() for r in recs])

    def _check_broker(self) -> None:
        """Consumer lag, which doubles as the broker health check of an idle alerter (readiness during an outage)."""
        try:
            for topic, lag in consumer_lag(self.consumer, timeout_ms=5000).items():
                obs.CONSUMER_LAG.labels(SERVICE, topic).set(lag)
            self.guard.mark_up("kafka")
        except KafkaError as exc:
            self.guard.mark_down("kafka", exc)
        except Exception as exc:  # noqa: BLE001 - a metric must never stop the loop
            self.log.debug("lag_failed", error=repr(exc))

    def process(self, records: list[Any]) -> list[DefectAlert]:
        """1. parse and decide, 2. record alerts in Redis, 3. produce, 4. flush, 5. commit."""
        alerts: list[DefectAlert] = []
        offsets: dict[TopicPartition, int] = {}
        # 1. parse results and run the rules (in partition order: per-camera order is what debounce needs)
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            offsets[tp] = max(offsets.get(tp, -1), rec.offset + 1)
            obs.FRAMES_IN.labels(SERVICE).inc()
            try:
                result = parse_results_record(rec.value)
            except ValidationError as exc:
                # A malformed result is a worker bug; alerting on guesses would be worse than skipping it.
                obs.FRAMES_DROPPED.labels(SERVICE, "invalid_result").inc()
                self.log.error("invalid_result", source=f"{rec.topic}/{rec.partition}/{rec.offset}",
                               error=str(exc)[:300])
                continue
            if isinstance(result, DroppedFrame):
                continue  # not inspected: no verdict to alert on, and no say in the debounce window (worker logs it)
            decision = self.rules.evaluate(result)
            if not decision.alert:
                continue
            raised_at = datetime.fromtimestamp(self._wall(), UTC)
            alerts.append(DefectAlert(
                alert_id=alert_id_for(result.frame_id), frame_id=result.frame_id, camera_id=result.camera_id,
                line_id=result.line_id, product_id=result.product_id, source=result.source,
                captured_at=result.captured_at, raised_at=raised_at, pred_score=result.pred_score,
                pred_score_raw=result.pred_score_raw, threshold=decision.threshold,
                sensitivity=round(1.0 - decision.threshold, 6),
                severity=decision.severity, debounce=f"{decision.hits}/{decision.window}",
                mask_uri=result.mask_uri, heatmap_uri=result.heatmap_uri, boxes=result.defect_regions,
                model_version=result.model_version))
        # 2. record in Redis (idempotent by alert id); an outage is waited out (services/_outage.py)
        self.guard.until_ok("redis", lambda: self.alert_store.record(alerts))
        # 3. produce (key camera id)
        headers = [(HEADER_SCHEMA, f"defects/{DEFECTS_SCHEMA_VERSION}".encode())]
        pending = [(a, self.producer.send(self.topics.defects, key=record_key(a.camera_id), value=a.to_bytes(),
                                          headers=headers)) for a in alerts]

        # 4. flush: alerts are acknowledged before their results are marked consumed; through a broker outage the
        # flush is retried, and only alerts whose delivery failed are sent again
        def deliver() -> None:
            self.producer.flush(timeout=30)
            failed, error = [], None
            for a, fut in pending:
                try:
                    fut.get(timeout=0)
                except KafkaError as exc:
                    error = error or exc
                    failed.append((a, self.producer.send(self.topics.defects, key=record_key(a.camera_id),
                                                         value=a.to_bytes(), headers=headers)))
            pending[:] = failed
            if error is not None:
                raise error

        if pending:
            self.guard.until_ok("kafka", deliver)
        now = self._wall()
        for a in alerts:
            obs.DEFECTS_OUT.labels(a.camera_id, a.severity).inc()
            obs.END_TO_END.labels("alert").observe(max(0.0, now - a.captured_at.timestamp()))
            self.log.info("defect_alert", camera_id=a.camera_id, frame_id=a.frame_id, alert_id=a.alert_id,
                          severity=a.severity, pred_score=round(a.pred_score, 4), boxes=len(a.boxes),
                          latency_ms=round(a.latency_ms, 1))
        self.alerts_raised += len(alerts)
        # 5. commit
        try:
            commit_offsets(self.consumer, offsets, timeout_ms=10_000)
        except KafkaError as exc:
            obs.COMMIT_FAILURES.labels(SERVICE).inc()
            self.log.warning("commit_failed", error=repr(exc))
        return alerts
