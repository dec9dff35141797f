"""The alerter loop against real Kafka and Redis: alerts produced and recorded, runtime overrides with audit."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import structlog

from services._kafka import make_consumer, make_producer
from services._redis import AlertStore, OverrideStore, connect
from services.alerter.__main__ import main as alerter_main
from services.alerter.loop import AlerterLoop
from services.alerter.rules import AlertRules, Rule, RuleBook
from services.contracts.defects import DefectAlert
from services.contracts.results import BoundingBox, InspectionResult
from tests.services._helpers import FAST_GROUP, StreamEnv, TopicReader

T0 = datetime.now(UTC)


def _result(i: int, score: float) -> InspectionResult:
    at = T0 + timedelta(milliseconds=100 * i)
    return InspectionResult(frame_id=f"cam1-{i}", camera_id="cam1", line_id="l1", sequence=i, captured_at=at,
                            processed_at=at, pred_score=score, pred_score_raw=score, pred_label=score > 0.5,
                            noise_step=20, threshold=0.5, threshold_raw=0.5, model_version="m", bundle_hash="h",
                            batch_id="b", batch_size=1, queue_wait_ms=0.0, mask_uri="file:///m.png",
                            defect_regions=[BoundingBox(x=1, y=1, width=4, height=4, area_fraction=0.01)])


def _loop(env: StreamEnv, redis_client) -> AlerterLoop:
    consumer = make_consumer(env.kafka, f"{env.prefix}-alerter", **FAST_GROUP)
    loop = AlerterLoop(consumer, make_producer(env.kafka), AlertRules(RuleBook(Rule())),
                       AlertStore(redis_client, 60, env.prefix), OverrideStore(redis_client, env.prefix), env.topics,
                       structlog.get_logger(), refresh_s=0.0)
    loop.subscribe()
    return loop


def _publish(env: StreamEnv, results: list[InspectionResult]) -> None:
    producer = make_producer(env.kafka)
    for r in results:
        producer.send(env.topics.results, key=b"cam1", value=r.to_bytes())
    producer.flush()
    producer.close()


def _run_until(loop: AlerterLoop, n: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while loop.alerts_raised < n and time.monotonic() < deadline:
        loop.step()


def test_alerts_recorded_and_produced_then_override_changes_decisions(kafka_bootstrap_servers, redis_url, tmp_path,
                                                                      monkeypatch):
    env = StreamEnv(kafka_bootstrap_servers, redis_url, f"file://{tmp_path}")
    env.create_topics()
    redis_client = connect(redis_url)
    loop = _loop(env, redis_client)
    _publish(env, [_result(0, 0.2), _result(1, 0.7), _result(2, 0.4)])
    _run_until(loop, 1)
    assert loop.alerts_raised == 1

    # an operator raises the sensitivity of cam1 through the CLI: threshold 0.5 -> 0.3
    monkeypatch.setenv("ALERTER_REDIS_URL", redis_url)
    monkeypatch.setenv("ALERTER_REDIS_KEY_PREFIX", env.prefix)
    assert alerter_main(["override", "--camera", "cam1", "--sensitivity", "0.7", "--actor", "alice",
                         "--reason", "new lighting"]) == 0
    _publish(env, [_result(3, 0.35), _result(4, 0.25)])
    _run_until(loop, 2)
    loop.consumer.close()
    loop.producer.close()
    assert loop.alerts_raised == 2

    reader = TopicReader(env, env.topics.defects)
    alerts = [DefectAlert.from_bytes(r.value) for r in reader.read_until(lambda recs: len(recs) >= 2, 30)]
    reader.close()
    assert [(a.frame_id, round(a.threshold, 6)) for a in alerts] == [("cam1-1", 0.5), ("cam1-3", 0.3)]
    assert alerts[0].boxes and alerts[0].mask_uri == "file:///m.png"
    store = AlertStore(redis_client, prefix=env.prefix)
    assert store.for_camera("cam1") == [a.alert_id for a in alerts]
    (entry,) = OverrideStore(redis_client, env.prefix).audit()
    assert (entry["actor"], entry["scope"], entry["reason"]) == ("alice", "cam1", "new lighting")
