"""Hostile and broken input on ``frames``: each record lands in ``frames.dlq`` with its reason, the rest flows on.

Against the session's real Kafka and S3 servers (nothing is stopped here), with the worker in a thread of this
process. Each hostile record carries its own key so its DLQ copy (key and value kept byte for byte) is found again.
"""

from __future__ import annotations

import json
import uuid

import pytest
from kafka.consumer.fetcher import ConsumerRecord

from services._kafka import DLQ_MAX_VALUE_BYTES, HEADER_DLQ_VALUE_OMITTED, DeadLetterPublisher, make_producer
from services._object_store import open_object_store
from services.contracts.frames import Frame
from tests.integration._fault_harness import MAX_RECORD, hostile_records
from tests.services._helpers import StreamEnv, TopicReader, make_frame, start_worker

pytestmark = [pytest.mark.integration]

@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    from ddad_core.testing import make_tiny_bundle
    from services.worker.inference import load_detector

    return load_detector(str(make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", image_size=64)), "cpu")


@pytest.mark.timeout(240)
def test_hostile_frames_are_dead_lettered_with_a_reason_and_the_stream_goes_on(
        kafka_bootstrap_servers, redis_url, s3_client_kwargs, detector):
    bucket = f"hostile-{uuid.uuid4().hex[:8]}"
    store_url = f"s3://{bucket}/objects"
    store = open_object_store(store_url, s3_client_kwargs, create_bucket=True)
    env = StreamEnv(kafka_bootstrap_servers, redis_url, store_url, s3_client_kwargs)
    env.create_topics()
    cases = hostile_records(bucket, "objects", store)
    good = [make_frame(i, camera_id=f"h{i % 2}") for i in range(12)]
    producer = make_producer(env.kafka, max_request_size=4 * 1024 * 1024)
    for i, f in enumerate(good):  # hostile records interleaved with good frames on the same partitions
        producer.send(env.topics.frames, key=f.camera_id.encode(), value=f.to_bytes())
        if i == 3:
            for name, (value, _) in cases.items():
                producer.send(env.topics.frames, key=f"hostile-{name}".encode(), value=value)
    producer.flush()
    producer.close()
    hostile = {n: r for n, (_, r) in cases.items() if r}

    worker = start_worker(env, detector, max_record_bytes=MAX_RECORD)
    results, dlq = TopicReader(env, env.topics.results), TopicReader(env, env.topics.frames_dlq)
    try:
        got = results.read_until(lambda recs: len(recs) >= len(good) + 1, timeout_s=150)
        dead = dlq.read_until(lambda recs: len(recs) >= len(hostile), timeout_s=60)
    finally:
        worker.join()
        results.close()
        dlq.close()
    assert worker.error is None, worker.error
    ids = sorted(json.loads(r.value)["frame_id"] for r in got)
    assert ids == sorted([f.frame_id for f in good] + [Frame.from_bytes(cases["_valid_claim_check"][0]).frame_id])
    by_key = {r.key.decode(): dict(r.headers) for r in dead}
    assert len(dead) == len(hostile), sorted(by_key)
    reasons = {k.removeprefix("hostile-"): h["dlq.reason"].decode() for k, h in by_key.items()}
    assert reasons == hostile
    for r in dead:  # key and value byte for byte, a readable detail, where it came from
        name = r.key.decode().removeprefix("hostile-")
        assert r.value == cases[name][0] or (r.value is None and cases[name][0] in (None, b""))
        headers = dict(r.headers)
        assert headers["dlq.detail"] and headers["dlq.source"].startswith(env.topics.frames.encode())
        assert headers["dlq.service"] == b"worker"
    assert not any(b"\x1b" in h["dlq.detail"] or b"\x00" in h["dlq.detail"] for h in by_key.values())


def test_a_value_too_big_for_the_dlq_is_dead_lettered_without_it():
    big = b"DDF\x01" + b"x" * (DLQ_MAX_VALUE_BYTES + 1)
    rec = ConsumerRecord("frames", 2, -1, 17, 0, 0, b"cam1", big, [], None, -1, len(big), -1)
    out = DeadLetterPublisher(None, "frames.dlq", "worker").build(rec, "too_large", "record of 900005 bytes")
    headers = dict(out["headers"])
    assert out["value"] is None and out["key"] == b"cam1" and out["topic"] == "frames.dlq"
    assert headers[HEADER_DLQ_VALUE_OMITTED] == str(len(big)).encode()
    assert headers["dlq.source"] == b"frames/2/17" and headers["dlq.reason"] == b"too_large"
    small = DeadLetterPublisher(None, "frames.dlq", "worker").build(rec._replace(value=b"v"), "bad_envelope")
    assert small["value"] == b"v" and HEADER_DLQ_VALUE_OMITTED not in dict(small["headers"])
