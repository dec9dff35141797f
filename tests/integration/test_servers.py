"""Smoke tests of the real servers under the pipeline: Kafka (frames/results/defects), Redis (state), S3 (images).

Each test round-trips real data through a real server, started by the fixtures in ``tests/conftest.py`` or given by
``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` / ``S3_ENDPOINT_URL``, so a broken harness fails here, loudly, before the
service tests that build on it.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _poll_until(consumer, count: int, timeout_s: float = 30.0) -> list:
    # kafka-python 3.0 joins the group inside poll(): keep polling in a loop (a single poll may return before the
    # join completes and the partitions are assigned).
    records: list = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    return records


def _consumer(bootstrap: str, topic: str, group: str):
    from kafka import KafkaConsumer

    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        client_id=f"test-{group}",
    )


def test_kafka_produce_consume_commit(kafka_bootstrap_servers: str) -> None:
    from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    topic, group = f"smoke-{uuid.uuid4().hex[:8]}", f"smoke-group-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 0)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers, client_id="test-admin")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap_servers, acks="all")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        sent = [(f"cam-{i}".encode(), os.urandom(64)) for i in range(3)]
        for key, value in sent:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=30)

        # 1. A consumer group reads all three records in order and commits its position.
        first = _consumer(kafka_bootstrap_servers, topic, group)
        try:
            got = _poll_until(first, 3)
            assert [(r.key, r.value) for r in got] == sent
            first.commit()
            assert first.committed(tp) == 3
        finally:
            first.close()

        # 2. The commit is stored by the broker: the admin API and a new member of the group both see offset 3.
        offsets = admin.list_group_offsets(group)[group]
        assert offsets[tp].offset == 3, offsets

        producer.send(topic, key=b"cam-late", value=b"after-commit")
        producer.flush(timeout=30)
        second = _consumer(kafka_bootstrap_servers, topic, group)
        try:
            assert second.committed(tp) == 3
            resumed = _poll_until(second, 1)
            # It resumes after the committed offset: only the new record, nothing re-delivered.
            assert [(r.offset, r.value) for r in resumed] == [(3, b"after-commit")]
        finally:
            second.close()
    finally:
        producer.close()
        admin.close()


def test_redis_set_get(redis_url: str) -> None:
    import redis

    key, value = f"smoke:{uuid.uuid4().hex}", os.urandom(32)
    writer = redis.Redis.from_url(redis_url)
    reader = redis.Redis.from_url(redis_url)  # a second connection: the value really lives in the server
    try:
        assert writer.set(key, value, ex=60)
        assert reader.get(key) == value
        assert 0 < reader.ttl(key) <= 60
        assert writer.delete(key) == 1
        assert reader.get(key) is None
    finally:
        writer.close()
        reader.close()


def test_s3_put_get(s3_client_kwargs: dict[str, str]) -> None:
    import boto3
    from botocore.exceptions import ClientError

    from devtools.localstack import create_bucket

    s3 = boto3.client("s3", **s3_client_kwargs)
    bucket, key, body = f"ddad-smoke-{uuid.uuid4().hex[:12]}", "frames/cam-1/000001.png", os.urandom(256 * 1024)
    create_bucket(s3_client_kwargs, bucket)
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/png")
        got = s3.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == body
        assert got["ContentLength"] == len(body)
        assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="frames/")["Contents"]] == [key]
        with pytest.raises(ClientError) as missing:
            s3.get_object(Bucket=bucket, Key="frames/absent.png")
        assert missing.value.response["Error"]["Code"] in ("NoSuchKey", "404")
    finally:
        for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)


def test_s3_rejects_wrong_secret(s3_client_kwargs: dict[str, str]) -> None:
    # The local store checks signatures like a real one, so a credentials bug cannot hide behind it.
    import boto3
    from botocore.exceptions import ClientError

    bad = dict(s3_client_kwargs, aws_secret_access_key="not-the-secret")
    with pytest.raises(ClientError) as denied:
        boto3.client("s3", **bad).list_buckets()
    assert denied.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied")


def test_taken_port_is_one_clear_error(tmp_path) -> None:
    import socket

    from devtools import localstack

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(localstack.ServerNotAvailable, match=f"port {port} on 127.0.0.1 is taken"):
            localstack.start_redis(tmp_path / "redis", port=port)


def test_missing_binaries_are_one_clear_error(tmp_path, monkeypatch) -> None:
    from devtools import localstack

    monkeypatch.setenv("DDAD_KAFKA_LIBS", str(tmp_path / "no-jars"))
    with pytest.raises(localstack.ServerNotAvailable, match="Kafka .* jars missing .*KAFKA_BOOTSTRAP_SERVERS"):
        localstack.start_kafka(tmp_path / "kafka")
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server (nor java) on this PATH
    monkeypatch.delenv("DDAD_REDIS_SERVER", raising=False)
    with pytest.raises(localstack.ServerNotAvailable, match="redis-server not found.*REDIS_URL"):
        localstack.start_redis(tmp_path / "redis")
