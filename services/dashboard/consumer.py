"""The dashboard's Kafka thread: ``defects`` + ``results`` in, the feedback outbox out.

Flow step: Kafka ``defects`` -> Redis alert record (idempotent, ``AlertStore``) -> push to the browsers; Kafka
``results`` -> camera tiles; Redis ``feedback-outbox`` -> Kafka ``feedback``. One consumer group of its own
(``DASHBOARD_GROUP_ID``). Offsets are committed only after the chunk's alerts are in Redis: while Redis is down the
partitions are paused (polling continues, so the group keeps the dashboard) and the chunk is retried every second,
so an outage loses nothing. Broker reachability is probed every few seconds with a bounded offsets request; both
states drive the page's "disconnected" banner.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from services import _observability as obs
from services._kafka import commit_offsets, consumer_lag
from services._redis import AlertStore
from services.contracts.defects import DefectAlert
from services.contracts.results import InspectionResult, parse_results_record
from services.contracts.topics import FEEDBACK_SCHEMA_VERSION, HEADER_SCHEMA, Topics, record_key
from services.dashboard import metrics
from services.dashboard.live import Hub, LiveState
from services.dashboard.store import FeedbackStore, summary

SERVICE = "dashboard"


class DashboardConsumer:
    """Owns the consumer and the producer; ``run`` is the thread's body."""

    def __init__(self, consumer: Any, producer: Any, topics: Topics, alerts: AlertStore, feedback: FeedbackStore,
                 live: LiveState, hub: Hub, log: Any, health: obs.Health, probe_interval_s: float = 2.0,
                 probe_timeout_ms: int = 2000) -> None:
        self.consumer = consumer
        self.producer = producer
        self.topics = topics
        self.alerts = alerts
        self.feedback = feedback
        self.live = live
        self.hub = hub
        self.log = log
        self.health = health
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_ms = probe_timeout_ms
        self.assigned = threading.Event()
        self.failed = False
        self._pending: list[DefectAlert] = []
        self._pending_offsets: dict[TopicPartition, int] = {}
        self._next_probe = 0.0
        self._next_retry = 0.0

    def subscribe(self) -> None:
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        outer = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
                outer.log.info("partitions_revoked", partitions=len(revoked))

            def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
                outer.log.info("partitions_assigned", partitions=len(assigned))
                outer.assigned.set()

        self.consumer.subscribe([self.topics.defects, self.topics.results], listener=_Listener())

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop``; an unexpected error is logged and stops the whole service (``failed``)."""
        try:
            while not stop.is_set():
                self.step()
        except Exception as exc:
            self.failed = True
            self.log.error("kafka_thread_failed", error=repr(exc)[:500], exc_info=True)
            stop.set()
            raise
        finally:
            try:
                self.consumer.close()
            finally:
                self.producer.close(timeout=5)

    def step(self) -> None:
        self.health.beat()
        now = time.monotonic()
        if now >= self._next_probe:
            self._next_probe = now + self.probe_interval_s
            self.probe_kafka()
        if self._pending and now >= self._next_retry:
            self._next_retry = now + 1.0
            self.store_pending()
        records = self.consumer.poll(timeout_ms=300, max_records=256)
        if records:
            self.process([r for recs in records.values() for r in recs])
        self.drain_outbox()

    # ------------------------------------------------------------------------------------------- in: records
    def process(self, records: list[Any]) -> None:
        """1. parse, 2. tiles and live push, 3. alerts to Redis, 4. commit (or pause until Redis is back)."""
        alerts: list[DefectAlert] = []
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            self._pending_offsets[tp] = max(self._pending_offsets.get(tp, -1), rec.offset + 1)
            try:
                if rec.topic == self.topics.defects:
                    alert = DefectAlert.from_bytes(rec.value)
                    alerts.append(alert)
                    self.live.on_alert(alert)
                else:
                    result = parse_results_record(rec.value)
                    if isinstance(result, InspectionResult):
                        self.live.on_result(result)
            except (ValidationError, ValueError, TypeError) as exc:
                # A record that breaks the contract (markup in an id, a truncated value) is skipped and named.
                metrics.RECORDS.labels(rec.topic, "invalid").inc()
                self.log.warning("invalid_record", source=f"{rec.topic}/{rec.partition}/{rec.offset}",
                                 error=str(exc)[:300])
                continue
            metrics.RECORDS.labels(rec.topic, "ok").inc()
        for alert in alerts:  # pushed at once: an operator sees the alert even while Redis is away
            self.hub.publish("alert", summary(alert, None))
        self._pending.extend(alerts)
        self.store_pending()

    def store_pending(self) -> None:
        try:
            self.alerts.record(self._pending)
        except Exception as exc:  # noqa: BLE001 - any Redis failure: keep the chunk, pause, retry
            if self.live.redis_ok:
                self.log.warning("redis_unavailable", error=repr(exc)[:300], pending=len(self._pending))
            self.live.set_dependency("redis", False)
            self._pause(True)
            return
        self._pending = []
        self._pause(False)
        try:
            commit_offsets(self.consumer, self._pending_offsets)
            self._pending_offsets = {}
        except KafkaError as exc:  # a rebalance or a broker outage: the records come again (idempotent writes)
            obs.COMMIT_FAILURES.labels(SERVICE).inc()
            self.log.warning("commit_failed", error=repr(exc))
            self._pending_offsets = {}

    def _pause(self, paused: bool) -> None:
        assigned = list(self.consumer.assignment())
        if paused and assigned:
            self.consumer.pause(*assigned)
        elif not paused and self.consumer.paused():
            self.consumer.resume(*self.consumer.paused())

    # ------------------------------------------------------------------------------------------- out: feedback
    def drain_outbox(self) -> None:
        """Publish queued feedback records; an entry leaves the outbox only once Kafka acknowledged it."""
        try:
            pending = self.feedback.pending(100)
        except Exception:  # noqa: BLE001 - Redis down: the page shows it; retried next step
            return
        if not pending:
            return
        headers = [(HEADER_SCHEMA, f"feedback/{FEEDBACK_SCHEMA_VERSION}".encode())]
        try:
            futures = [(entry_id, self.producer.send(self.topics.feedback, key=record_key(rec.camera_id),
                                                     value=rec.to_bytes(), headers=headers))
                       for entry_id, rec in pending]
            self.producer.flush(timeout=5)
            done = [entry_id for entry_id, fut in futures if fut.is_done and fut.succeeded()]
        except KafkaError as exc:
            self.log.warning("feedback_publish_failed", error=repr(exc)[:300], pending=len(pending))
            return
        try:
            self.feedback.published(done)
        except Exception:  # noqa: BLE001 - published again later; consumers dedupe by feedback_id
            return
        metrics.FEEDBACK_PUBLISHED.inc(len(done))

    # ------------------------------------------------------------------------------------------- broker status
    def probe_kafka(self) -> None:
        """One bounded offsets request: answers within the timeout = connected. Also exports the consumer lag."""
        try:
            self.consumer.end_offsets([TopicPartition(self.topics.defects, 0)], timeout_ms=self.probe_timeout_ms)
        except Exception as exc:  # noqa: BLE001 - timeouts, lost connections: all mean "not reachable now"
            if self.live.kafka_ok:
                self.log.warning("kafka_unavailable", error=repr(exc)[:300])
            self.live.set_dependency("kafka", False)
            return
        if not self.live.kafka_ok:
            self.log.info("kafka_connected")
        self.live.set_dependency("kafka", True)
        try:
            for topic, lag in consumer_lag(self.consumer).items():
                obs.CONSUMER_LAG.labels(SERVICE, topic).set(lag)
        except KafkaError:
            pass
