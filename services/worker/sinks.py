"""Where a batch's results go: masks/heatmaps to the object store, Kafka ``results`` (Redis: ``services._redis``).

Flow step: results -> object store + ``results`` topic. Every write is keyed by frame id (object keys
``masks/{camera_id}/{frame_id}.png``, ``frames/{camera_id}/{frame_id}.{jpg,png}`` of kept flagged frames, record key
camera id with the frame id inside), so when a batch is replayed after a crash between "write" and "commit", the
replay overwrites instead of duplicating. The records written here are built in ``services.worker.results``.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor
from typing import Any

from kafka import KafkaProducer

from services._object_store import ObjectStore, frame_object_key
from services.contracts.frames import Frame
from services.contracts.results import DroppedFrame, InspectionResult
from services.contracts.topics import HEADER_SCHEMA, RESULTS_SCHEMA_VERSION, record_key
from services.worker.inference import FrameOutput, encode_heatmap_png, encode_mask_png


class MaskSink:
    """Writes one mask PNG (and optionally one heatmap PNG) per frame, in parallel on a thread pool, and keeps the
    bytes of flagged inline frames (``keep_flagged_frames``) at their claim-check key, so an operator's mark on the
    alert can later teach or guard the overlay with the very frame (claim-checked frames are there already)."""

    def __init__(self, store: ObjectStore, pool: Executor, write_heatmaps: bool = True,
                 keep_flagged_frames: bool = True) -> None:
        self.store = store
        self.pool = pool
        self.write_heatmaps = write_heatmaps
        self.keep_flagged_frames = keep_flagged_frames

    @staticmethod
    def mask_key(camera_id: str, frame_id: str) -> str:
        return f"masks/{camera_id}/{frame_id}.png"

    @staticmethod
    def heatmap_key(camera_id: str, frame_id: str) -> str:
        return f"heatmaps/{camera_id}/{frame_id}.png"

    def write(self, items: list[tuple[Frame, FrameOutput]], threshold: float) -> list[tuple[str, str | None]]:
        """Write ``(frame, output)`` items; returns ``(mask_uri, heatmap_uri)`` per item, in order.

        Raises:
            Exception: the first failed write (after all writes finished, so none is left running).
        """
        def one(item: tuple[Frame, FrameOutput]) -> tuple[str, str | None]:
            frame, out = item
            cam, fid = frame.camera_id, frame.frame_id
            if self.keep_flagged_frames and out.pred_label and frame.image is not None:
                self.store.put(frame_object_key(cam, fid, frame.encoding), frame.image, f"image/{frame.encoding}")
            mask_uri = self.store.put(self.mask_key(cam, fid), encode_mask_png(out.pred_mask), "image/png")
            heat_uri = None
            if self.write_heatmaps:
                heat_uri = self.store.put(self.heatmap_key(cam, fid),
                                          encode_heatmap_png(out.anomaly_map, threshold), "image/png")
            return mask_uri, heat_uri

        futures = [self.pool.submit(one, item) for item in items]
        return [f.result() for f in futures]


class ResultsProducer:
    """Produces ``results`` (and DLQ) records and tracks their delivery until the brokers acknowledge every one.

    ``flush`` can be called again after it failed: records still in flight are waited for, records whose delivery
    failed (the broker was down past the delivery timeout) are sent once more, and acknowledged ones are never
    re-sent, so retrying a flush through an outage does not duplicate what already arrived.

    Thread-safe: the worker's writer thread adds and flushes a batch's results while the loop thread sends DLQ and
    ``dropped`` records. A ``flush`` covers every record sent before it began; one sent meanwhile is checked by the
    next flush.
    """

    HEADERS = [(HEADER_SCHEMA, f"results/{RESULTS_SCHEMA_VERSION}".encode())]

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self._lock = threading.Lock()
        self._pending: list[tuple[dict[str, Any], Any]] = []  # (send kwargs, future)

    def add(self, record: InspectionResult | DroppedFrame) -> None:
        self.send(topic=self.topic, key=record_key(record.camera_id), value=record.to_bytes(), headers=self.HEADERS)

    def send(self, **kwargs: Any) -> None:
        """Produce any record (``KafkaProducer.send`` keyword arguments) under the same delivery tracking."""
        future = self.producer.send(**kwargs)
        with self._lock:
            self._pending.append((kwargs, future))

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self, timeout_s: float | None = 30.0) -> None:
        """Block until every record added before this call is acknowledged (``acks=all``).

        Raises:
            kafka.errors.KafkaError: a record was not delivered (it is re-sent, and the next ``flush`` waits for
                it) or the flush timed out; the caller must not commit yet.
        """
        with self._lock:
            checking, self._pending = self._pending, []
        failed, first_error, checked = [], None, 0
        try:
            self.producer.flush(timeout=timeout_s)
            for kwargs, fut in checking:
                try:
                    fut.get(timeout=0)
                except Exception as exc:  # noqa: BLE001 - the delivery error of that record
                    first_error = first_error or exc
                    failed.append((kwargs, self.producer.send(**kwargs)))
                checked += 1
        finally:
            with self._lock:  # failed and unchecked records (a flush timeout) wait for the next flush
                self._pending[:0] = [*failed, *checking[checked:]]
        if first_error is not None:
            raise first_error
