"""Frame -> (object store) -> Kafka ``frames``, through a bounded buffer with a counted drop policy.

Flow step: frame -> object store + Kafka ``frames`` (key camera_id). The capture thread never waits for the broker:
it encodes and pushes into a bounded buffer; a sender thread drains it into the producer. When the broker is slow
the buffer fills and the drop policy decides which frame goes (``drop_oldest`` keeps the stream fresh, which is
what an inspection line wants), counted in ``inspection_frames_dropped_total{reason="buffer_full"}``.
Frames whose JPEG exceeds ``inline_limit_bytes`` are written to the object store and sent as a claim-check URI.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import cv2
import numpy as np
from kafka.errors import KafkaError, KafkaTimeoutError

from services import _observability as obs
from services._object_store import ObjectStore, frame_object_key
from services.contracts.frames import Frame
from services.contracts.topics import FRAMES_SCHEMA_VERSION, HEADER_SCHEMA, record_key

SERVICE = "ingestor"


def encode_jpeg(image_bgr: np.ndarray, quality: int = 90) -> bytes:
    """BGR (or gray) uint8 -> standard JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def encode_image(image_bgr: np.ndarray, encoding: Literal["jpeg", "png"] = "jpeg", quality: int = 90) -> bytes:
    """Encode a captured frame as the ``Frame.encoding`` it will be sent with."""
    if encoding == "jpeg":
        return encode_jpeg(image_bgr, quality)
    ok, buf = cv2.imencode(".png", image_bgr)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


@dataclass
class Captured:
    """A captured, encoded frame waiting for the sender."""

    frame_id: str
    sequence: int
    captured_at: datetime
    jpeg: bytes  # the encoded image (JPEG or PNG, see ``encoding``)
    width: int
    height: int
    source: str | None
    encoding: Literal["jpeg", "png"] = "jpeg"


class FrameBuffer:
    """Bounded FIFO between capture and send with an explicit drop policy.

    Example:
        >>> b = FrameBuffer(2, "drop_oldest")
        >>> [b.put(i) for i in range(3)], b.dropped, b.get(0), b.get(0)
        ([True, True, True], 1, 1, 2)
    """

    def __init__(self, capacity: int, policy: Literal["drop_oldest", "drop_newest"] = "drop_oldest") -> None:
        self.capacity = capacity
        self.policy = policy
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any) -> bool:
        """Add an item; returns False if the item itself was dropped (``drop_newest`` on a full buffer)."""
        with self._cond:
            if len(self._items) >= self.capacity:
                self.dropped += 1
                obs.FRAMES_DROPPED.labels(SERVICE, "buffer_full").inc()
                if self.policy == "drop_newest":
                    return False
                self._items.popleft()
            self._items.append(item)
            obs.BUFFER_DEPTH.labels(SERVICE).set(len(self._items))
            self._cond.notify()
            return True

    def get(self, timeout_s: float) -> Any | None:
        """Oldest item, waiting up to ``timeout_s``; None on timeout."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout_s)
            if not self._items:
                return None
            item = self._items.popleft()
            obs.BUFFER_DEPTH.labels(SERVICE).set(len(self._items))
            return item


class FramePublisher:
    """Sender side: claim check when needed, build the ``Frame``, produce it (key camera_id).

    Args:
        producer: Idempotent ``KafkaProducer``.
        topic: The frames topic.
        store: Object store for claim-check frames (None: frames over the limit are dropped, counted).
        camera_id / line_id / product_id: Stamped on every frame.
        inline_limit_bytes: Claim-check threshold.
    """

    def __init__(self, producer: Any, topic: str, store: ObjectStore | None, camera_id: str, line_id: str,
                 product_id: str | None, inline_limit_bytes: int, log: Any, max_inflight: int = 256,
                 send_timeout_s: float = 5.0) -> None:
        self.producer = producer
        self.topic = topic
        self.store = store
        self.camera_id = camera_id
        self.line_id = line_id
        self.product_id = product_id
        self.inline_limit_bytes = inline_limit_bytes
        self.log = log
        self.sent = 0  # acknowledged by the brokers
        self.failed = 0  # delivery failed (send_failed)
        self.not_staged = 0  # claim check could not be written (claim_check_failed)
        self.blocked = 0  # the producer's buffer stayed full for send_timeout_ms (broker_timeout)
        self._inflight = 0
        self._last_progress = time.monotonic()
        self._lock = threading.Lock()
        # kafka-python's producer buffers without a bound while the broker is away; this bound turns a long outage
        # into back-pressure on the capture buffer (whose drop policy then decides), not into unbounded memory.
        self._slots = threading.BoundedSemaphore(max_inflight)
        self.max_inflight = max_inflight
        self.send_timeout_s = send_timeout_s

    def build(self, c: Captured) -> Frame:
        """The wire frame: inline bytes, or a claim-check URI for big frames."""
        common = dict(frame_id=c.frame_id, camera_id=self.camera_id, line_id=self.line_id,
                      product_id=self.product_id, captured_at=c.captured_at, sequence=c.sequence, encoding=c.encoding,
                      width=c.width, height=c.height, source=c.source)
        if len(c.jpeg) <= self.inline_limit_bytes:
            return Frame(image=c.jpeg, **common)
        if self.store is None:
            raise ValueError(f"frame of {len(c.jpeg)} bytes exceeds the inline limit and no object store is set")
        uri = self.store.put(frame_object_key(self.camera_id, c.frame_id, c.encoding), c.jpeg, f"image/{c.encoding}")
        return Frame(image_uri=uri, **common)

    def send(self, c: Captured) -> None:
        try:
            frame = self.build(c)
        except Exception as exc:  # noqa: BLE001 - a frame we cannot stage is dropped, counted, and we carry on
            with self._lock:
                self.not_staged += 1
            obs.FRAMES_DROPPED.labels(SERVICE, "claim_check_failed").inc()
            self.log.warning("frame_not_staged", frame_id=c.frame_id, error=repr(exc))
            return
        if not self._slots.acquire(timeout=self.send_timeout_s):
            raise KafkaTimeoutError(f"{self.max_inflight} frames unacknowledged for {self.send_timeout_s:g} s")
        with self._lock:
            if self._inflight == 0:
                self._last_progress = time.monotonic()
            self._inflight += 1
        try:
            fut = self.producer.send(self.topic, key=record_key(self.camera_id), value=frame.to_bytes(),
                                     headers=[(HEADER_SCHEMA, f"frames/{FRAMES_SCHEMA_VERSION}".encode())])
        except BaseException:
            with self._lock:
                self._inflight -= 1
            self._slots.release()
            raise
        fut.add_callback(self._ok).add_errback(self._err, c.frame_id)

    def stalled_s(self) -> float:
        """How long frames have been waiting for the brokers without any acknowledgement (0 while delivering)."""
        with self._lock:
            return time.monotonic() - self._last_progress if self._inflight else 0.0

    @property
    def inflight(self) -> int:
        return self._inflight

    def _ok(self, _meta: Any) -> None:
        with self._lock:
            self.sent += 1
            self._inflight -= 1
            self._last_progress = time.monotonic()
        self._slots.release()
        obs.FRAMES_PUBLISHED.labels(self.camera_id).inc()

    def _err(self, exc: Exception, frame_id: str) -> None:
        with self._lock:
            self.failed += 1
            self._inflight -= 1
            self._last_progress = time.monotonic()
        self._slots.release()
        obs.FRAMES_DROPPED.labels(SERVICE, "send_failed").inc()
        self.log.warning("frame_send_failed", frame_id=frame_id, error=repr(exc))


def sender_loop(buffer: FrameBuffer, publisher: FramePublisher, stop: threading.Event) -> None:
    """Drain the buffer into the producer until ``stop`` is set and the buffer is empty."""
    while not (stop.is_set() and len(buffer) == 0):
        item = buffer.get(timeout_s=0.2)
        if item is None:
            continue
        try:
            publisher.send(item)
        except KafkaError as exc:
            # KafkaTimeoutError: max_inflight frames stayed unacknowledged for send_timeout_ms (broker down).
            with publisher._lock:
                publisher.blocked += 1
            obs.FRAMES_DROPPED.labels(SERVICE, "broker_timeout").inc()
            publisher.log.warning("frame_send_blocked", frame_id=item.frame_id, error=repr(exc))
            time.sleep(0.1)
