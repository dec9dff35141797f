"""Kafka plumbing against the real broker: topic creation, manual commit / redelivery, DLQ headers, lag."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import TopicPartition

from services._kafka import (
    DeadLetterPublisher,
    TopicSpec,
    commit_offsets,
    consumer_lag,
    ensure_topics,
    make_consumer,
    make_producer,
)

FAST_GROUP = dict(session_timeout_ms=6000, heartbeat_interval_ms=1000)


@pytest.fixture
def kafka(kafka_bootstrap_servers):
    return {"bootstrap_servers": [kafka_bootstrap_servers], "client_id": "test"}


def _topic(kafka, partitions=2) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    assert ensure_topics(kafka, {name: TopicSpec(partitions, 3600_000)}) == [name]
    return name


def _consume(consumer, n, timeout_s=30.0):
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=1000).values():
            got.extend(recs)
    return got


def test_ensure_topics_is_idempotent(kafka):
    name = _topic(kafka, partitions=3)
    assert ensure_topics(kafka, {name: TopicSpec(3, 3600_000)}) == []
    producer = make_producer(kafka)
    assert len(producer.partitions_for(name)) == 3
    producer.close()


def test_uncommitted_records_are_redelivered_committed_are_not(kafka):
    topic = _topic(kafka, partitions=1)
    producer = make_producer(kafka)
    for i in range(6):
        producer.send(topic, key=b"cam1", value=f"v{i}".encode())
    producer.flush()
    producer.close()
    group = f"g-{uuid.uuid4().hex[:8]}"

    first = make_consumer(kafka, group, **FAST_GROUP)
    first.subscribe([topic])
    got = _consume(first, 6)
    assert [r.value for r in got] == [f"v{i}".encode() for i in range(6)]
    commit_offsets(first, {TopicPartition(topic, 0): 3})  # only the first three are "done"
    first.close()

    second = make_consumer(kafka, group, **FAST_GROUP)
    second.subscribe([topic])
    again = _consume(second, 3)
    assert [r.value for r in again] == [b"v3", b"v4", b"v5"]
    assert consumer_lag(second) == {topic: 0}
    second.close()


def test_dead_letter_keeps_bytes_and_reason_headers(kafka):
    topic = _topic(kafka, partitions=1)
    dlq_topic = _topic(kafka, partitions=1)
    producer = make_producer(kafka)
    producer.send(topic, key=b"cam9", value=b"\x00garbage")
    producer.flush()
    consumer = make_consumer(kafka, f"g-{uuid.uuid4().hex[:8]}", **FAST_GROUP)
    consumer.subscribe([topic])
    (rec,) = _consume(consumer, 1)
    DeadLetterPublisher(producer, dlq_topic, "worker").send(rec, "bad_envelope", "no magic")
    producer.flush()
    reader = make_consumer(kafka, f"g-{uuid.uuid4().hex[:8]}", **FAST_GROUP)
    reader.subscribe([dlq_topic])
    (dead,) = _consume(reader, 1)
    headers = dict(dead.headers)
    assert dead.key == b"cam9" and dead.value == b"\x00garbage"
    assert headers["dlq.reason"] == b"bad_envelope" and headers["dlq.detail"] == b"no magic"
    assert headers["dlq.source"] == f"{topic}/0/0".encode() and headers["dlq.service"] == b"worker"
    for c in (consumer, reader):
        c.close()
    producer.close()
