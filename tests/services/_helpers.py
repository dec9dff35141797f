"""Shared test helpers for the services tests: synthetic frames, records and small fakes of pure-logic tests."""

from __future__ import annotations

from datetime import UTC, datetime

import cv2
import numpy as np
from kafka.consumer.fetcher import ConsumerRecord

from services.contracts.frames import Frame


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


def record(value: bytes, offset: int, partition: int = 0, topic: str = "frames", key: bytes | None = b"cam1"
           ) -> ConsumerRecord:
    return ConsumerRecord(topic, partition, -1, offset, 0, 0, key, value, [], None, -1, len(value), -1)
