"""Shared test helpers for the services tests: synthetic frames, records and small fakes of pure-logic tests."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np
from kafka.consumer.fetcher import ConsumerRecord

from services._kafka import TopicSpec, default_topic_specs, ensure_topics, make_consumer, make_producer
from services.contracts.frames import Frame
from services.contracts.topics import Topics


def texture(seed: int, size: int = 64, defect: bool = False) -> np.ndarray:
    """A smooth random RGB texture; ``defect`` paints a bright square (a 'planted defect')."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(90, 160, (8, 8, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    if defect:
        s = size // 4
        base[s : 2 * s, s : 2 * s] = 255
    return base


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def make_frame(i: int, camera_id: str = "cam1", size: int = 64, defect: bool = False,
               captured_at: datetime | None = None, **kw) -> Frame:
    return Frame(frame_id=f"{camera_id}-{i:06d}", camera_id=camera_id, sequence=i, encoding="jpeg", width=size,
                 height=size, image=jpeg(texture(i, size, defect)), captured_at=captured_at or datetime.now(UTC),
                 **kw)


def png_frame(image: np.ndarray, seq: int, camera_id: str = "cam1", product_id: str | None = None) -> Frame:
    """An inline PNG frame of ``image`` (lossless: the pixels the test drew are the pixels the worker scores)."""
    ok, buf = cv2.imencode(".png", image[..., ::-1])
    assert ok
    return Frame(frame_id=f"{camera_id}-{seq:06d}", camera_id=camera_id, product_id=product_id, sequence=seq,
                 encoding="png", width=image.shape[1], height=image.shape[0], image=buf.tobytes(),
                 captured_at=datetime.now(UTC))


def record(value: bytes, offset: int, partition: int = 0, topic: str = "frames", key: bytes | None = b"cam1"
           ) -> ConsumerRecord:
    return ConsumerRecord(topic, partition, -1, offset, 0, 0, key, value, [], None, -1, len(value), -1)


# ------------------------------------------------------------------------------------------- streaming harness
# Used by tests/integration/test_streaming*.py and bench/bench_streaming.py: real servers, services in threads.


FAST_GROUP = dict(session_timeout_ms=6000, heartbeat_interval_ms=1000)


@dataclass
class StreamEnv:
    """One isolated set of topics/keys/groups on the shared real servers."""

    bootstrap: str
    redis_url: str
    object_store_url: str
    s3_client_kwargs: dict[str, Any] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    frames_partitions: int = 4

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    @property
    def kafka(self) -> dict[str, Any]:
        return {"bootstrap_servers": [self.bootstrap], "client_id": f"{self.prefix}-test"}

    def create_topics(self) -> None:
        specs = default_topic_specs(self.topics, self.frames_partitions)
        specs[self.topics.defects] = TopicSpec(1, 3600_000)
        ensure_topics(self.kafka, specs)

    def common(self) -> dict[str, Any]:
        s3 = self.s3_client_kwargs
        return dict(kafka_bootstrap_servers=self.bootstrap, topic_prefix=self.prefix, redis_url=self.redis_url,
                    redis_key_prefix=self.prefix, object_store_url=self.object_store_url,
                    s3_endpoint_url=s3.get("endpoint_url"), s3_access_key_id=s3.get("aws_access_key_id"),
                    s3_secret_access_key=s3.get("aws_secret_access_key"),
                    s3_region=s3.get("region_name", "us-east-1"), http_port=-1, log_level="WARNING")

    def worker_settings(self, **kw: Any):
        from services.worker.config import WorkerSettings

        base = dict(group_id=f"{self.prefix}-worker", max_batch_size=4, max_queue_delay_ms=50, max_frame_age_ms=0,
                    warmup=False, device="cpu", decode_threads=2, sink_threads=2, **FAST_GROUP)
        return WorkerSettings(**{**self.common(), **base, **kw})

    def alerter_settings(self, **kw: Any):
        from services.alerter.config import AlerterSettings

        base = dict(group_id=f"{self.prefix}-alerter", overrides_refresh_s=0.5, **FAST_GROUP)
        return AlerterSettings(**{**self.common(), **base, **kw})

    def ingestor_settings(self, **kw: Any):
        from services.ingestor.config import IngestorSettings

        return IngestorSettings(**{**self.common(), "fps": 0.0, **kw})


class ServiceThread:
    """A service's ``serve`` on a thread with its own stop event; ``error`` keeps what it raised."""

    def __init__(self, target, settings, name: str, **kwargs: Any) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.loop: Any = None

        def run() -> None:
            try:
                target(settings, stop=self.stop, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported to the test
                self.error = exc

        self.thread = threading.Thread(target=run, name=name, daemon=True)

    def start(self) -> ServiceThread:
        self.thread.start()
        return self

    def join(self, timeout: float = 60.0) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.thread.name} did not stop"


def start_worker(env: StreamEnv, detector: Any, name: str = "worker", on_loop: Any = None, **kw: Any
                 ) -> ServiceThread:
    """A worker thread; ``st.loops[0]`` is its WorkerLoop once it runs; ``on_loop`` may patch it first."""
    from services.worker.__main__ import serve

    loops: list[Any] = []

    def hook(loop: Any) -> None:
        if on_loop is not None:
            on_loop(loop)
        loops.append(loop)

    st = ServiceThread(serve, env.worker_settings(**kw), name, detector=detector, on_loop=hook)
    st.loops = loops  # type: ignore[attr-defined]
    return st.start()


def produce_frames(env: StreamEnv, frames: list[Frame], extra_values: list[tuple[bytes, bytes]] = ()) -> None:
    """Produce frames (key camera_id) and raw extra records, then flush."""
    producer = make_producer(env.kafka)
    for f in frames:
        producer.send(env.topics.frames, key=f.camera_id.encode(), value=f.to_bytes())
    for key, value in extra_values:
        producer.send(env.topics.frames, key=key, value=value)
    producer.flush()
    producer.close()


class TopicReader:
    """Reads every record of a topic from the beginning (own group), accumulating across calls."""

    def __init__(self, env: StreamEnv, topic: str) -> None:
        self.consumer = make_consumer(env.kafka, f"{env.prefix}-reader-{uuid.uuid4().hex[:6]}", **FAST_GROUP)
        self.consumer.subscribe([topic])
        self.records: list[Any] = []

    def read_until(self, predicate, timeout_s: float = 120.0) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not predicate(self.records):
            for recs in self.consumer.poll(timeout_ms=1000).values():
                self.records.extend(recs)
        return self.records

    def close(self) -> None:
        self.consumer.close()


def wait_for(predicate, timeout_s: float = 60.0, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
