"""Feedback closes the loop: marks made on the dashboard -> ``python -m services.alerter calibrate`` proposes a
per-camera threshold -> approved with ``--apply`` -> the real alerter no longer alerts on the false alarm's score but
still on the confirmed defect's. Real Kafka, Redis and S3; the proposal logic also on its own."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from services._kafka import make_producer
from services._redis import OverrideStore
from services.alerter.__main__ import main as alerter_main
from services.alerter.__main__ import serve as alerter_serve
from services.alerter.feedback import Mark, propose
from services.contracts.defects import DefectAlert
from services.contracts.topics import record_key
from services.dashboard.store import FeedbackStore
from tests.services._helpers import ServiceThread, TopicReader, wait_for
from tests.services.dashboard._harness import make_env, result_bytes, start_dashboard, stop_dashboard


def _m(action: str, score: float) -> Mark:
    return Mark(uuid.uuid4().hex, "c", action, score, "redis")


@pytest.mark.parametrize("marks, current, expected", [
    ([("false_alarm", 0.58), ("confirm_defect", 0.9)], 0.5, 0.6),  # margin above the highest false alarm
    ([("false_alarm", 0.58), ("confirm_defect", 0.59)], 0.5, 0.585),  # half-way when the gap is small
    ([("false_alarm", 0.7)], 0.5, 0.72),  # no confirmed defects: margin above
    ([("confirm_defect", 0.6)], 0.65, 0.58),  # a confirmed defect below the threshold in force: lowered
    ([("false_alarm", 0.58), ("confirm_defect", 0.9)], 0.7, None),  # already separates them
    ([("false_alarm", 0.8), ("confirm_defect", 0.7)], 0.5, None),  # nothing separates them
    ([("false_alarm", 1.0)], 0.5, 1.0),  # clamped at the top of the scale
])
def test_proposal_separates_false_alarms_from_confirmed_defects(marks, current, expected):
    p = propose("c", [_m(a, s) for a, s in marks], current)
    assert p.proposed == (pytest.approx(expected) if expected is not None else None), p.reason
    if p.proposed is not None:
        assert all(s <= p.proposed for a, s in marks if a == "false_alarm")
        assert all(s > p.proposed for a, s in marks if a == "confirm_defect")


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_feedback_from_the_dashboard_recalibrates_the_alerter_end_to_end(kafka_bootstrap_servers, redis_url,
                                                                        s3_client_kwargs, monkeypatch, capsys):
    env = make_env(kafka_bootstrap_servers, redis_url, s3_client_kwargs)
    dash = start_dashboard(env)
    try:
        marks = [("cam-cal", 0.55, "false_alarm"), ("cam-cal", 0.58, "false_alarm"),
                 ("cam-cal", 0.75, "confirm_defect"), ("cam-cal", 0.9, "confirm_defect"),
                 ("cam-cal", 0.95, "acknowledge"), ("cam-mix", 0.7, "false_alarm"), ("cam-mix", 0.65, "confirm_defect")]
        alerts = [(dash.alert(camera_id=cam, score=score), action) for cam, score, action in marks]
        with dash.client() as c:
            for a, _ in alerts:
                assert wait_for(lambda a=a: c.get(f"/api/alerts/{a.alert_id}").status_code == 200, 20)
            # a corrected mark: the latest one counts
            first = alerts[2][0]
            assert c.post(f"/api/alerts/{first.alert_id}/feedback", json={"action": "false_alarm"}).status_code == 200
            for a, action in alerts:
                r = c.post(f"/api/alerts/{a.alert_id}/feedback", json={"action": action})
                assert r.status_code == 200, r.text
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        assert wait_for(lambda: not FeedbackStore(client, prefix=env.prefix).pending(), 20)
    finally:
        stop_dashboard(dash)

    for k, v in {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers, "TOPIC_PREFIX": env.prefix,
                 "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": env.prefix}.items():
        monkeypatch.setenv(f"ALERTER_{k}", v)
    overrides = OverrideStore(client, env.prefix)

    capsys.readouterr()
    assert alerter_main(["calibrate", "--json"]) == 0
    proposals = {p["camera_id"]: p for p in map(json.loads, capsys.readouterr().out.splitlines())}
    cal, mix = proposals["cam-cal"], proposals["cam-mix"]
    assert (cal["current"], cal["proposed"], cal["false_alarms"], cal["confirmed"]) == (0.5, 0.6, 2, 2)
    assert cal["max_false_alarm"] == pytest.approx(0.58) and cal["min_confirmed"] == pytest.approx(0.75)
    assert mix["proposed"] is None and "no threshold separates" in mix["reason"]
    assert overrides.all() == {}  # a proposal changes nothing until approved

    assert alerter_main(["calibrate", "--apply", "--actor", "qe-bob", "--camera", "cam-cal"]) == 0
    assert overrides.all() == {"cam-cal": {"min_score": 0.6}}
    audit = overrides.audit(5)[0]
    assert audit["actor"] == "qe-bob" and audit["scope"] == "cam-cal" and "feedback calibration" in audit["reason"]
    capsys.readouterr()
    assert alerter_main(["calibrate", "--json", "--camera", "cam-cal"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["current"] == 0.6 and again["proposed"] is None  # applied: nothing left to change

    # the real alerter, reading the override: the false alarm's score stays quiet, the confirmed defect's alerts
    reader = TopicReader(env, env.topics.defects)
    alerter = ServiceThread(alerter_serve, env.alerter_settings(), "alerter").start()
    producer = make_producer(env.kafka)
    try:
        for seq, score in enumerate((0.58, 0.75)):  # same partition, in order: r1000 would come first
            producer.send(env.topics.results, key=record_key("cam-cal"),
                          value=result_bytes("cam-cal", score, 1000 + seq))
        producer.flush(10)

        def fresh(rs):
            alerts = [DefectAlert.from_bytes(r.value) for r in rs]
            return [a for a in alerts if a.frame_id.startswith("cam-cal-r")]

        new = fresh(reader.read_until(lambda rs: bool(fresh(rs)), 60))
        assert [a.frame_id for a in new] == ["cam-cal-r1001"] and new[0].threshold == pytest.approx(0.6)
    finally:
        producer.close(5)
        reader.close()
        alerter.join(30)
    assert alerter.error is None
