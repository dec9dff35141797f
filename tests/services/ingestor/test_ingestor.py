"""Ingestor pieces: sources (folder, video, camera reconnect), frame-rate cap, bounded buffer, claim check."""

from __future__ import annotations

from datetime import UTC, datetime

import cv2
import numpy as np
import pytest
import structlog

from services._object_store import LocalObjectStore
from services.contracts.frames import Frame
from services.ingestor.camera import CameraSource, FolderSource, RateLimiter, VideoSource, open_source
from services.ingestor.publish import Captured, FrameBuffer, FramePublisher, encode_jpeg
from tests.services._helpers import texture


def _write_images(folder, n=3):
    for i in range(n):
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), texture(i, 32))
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("ignored")


def test_folder_source_once_and_loop(tmp_path):
    _write_images(tmp_path)
    once = FolderSource(tmp_path)
    names = []
    while (got := once.read()) is not None:
        names.append(got[1])
    assert names == ["img_000.png", "img_001.png", "img_002.png"] and once.skipped == ["broken.png"]
    looping = FolderSource(tmp_path, loop=True)
    assert [looping.read()[1] for _ in range(5)] == ["img_000.png", "img_001.png", "img_002.png", "img_000.png",
                                                     "img_001.png"]
    assert isinstance(open_source(str(tmp_path)), FolderSource)


def test_video_source(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for i in range(4):
        writer.write(texture(i, 32))
    writer.release()
    src = open_source(str(path))
    assert isinstance(src, VideoSource)
    frames = []
    while (got := src.read()) is not None:
        frames.append(got)
    assert len(frames) == 4 and frames[0][0].shape == (32, 32, 3)
    looping = VideoSource(path, loop=True)
    assert sum(looping.read() is not None for _ in range(6)) == 6


class FlakyCapture:
    """A camera that delivers `ok` frames and then dies."""

    def __init__(self, ok: int):
        self.ok = ok
        self.released = False

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return True

    def read(self):
        if self.ok > 0:
            self.ok -= 1
            return True, np.zeros((8, 8, 3), np.uint8)
        return False, None

    def release(self):
        self.released = True


def test_camera_reconnects_with_backoff():
    caps = [FlakyCapture(2), FlakyCapture(0), FlakyCapture(3)]
    sleeps = []
    src = CameraSource("rtsp://cam/stream", "cam1", 0.5, 1.5, opener=lambda url: caps.pop(0), sleep=sleeps.append)
    got = [src.read() is not None for _ in range(4)]
    assert got == [True, True, True, True]
    assert sleeps == [0.5, 1.0] and src.reconnects == 2


def test_rate_limiter_caps_fps_without_drift():
    t = [0.0]
    sleeps = []

    def sleep(s):
        sleeps.append(round(s, 6))
        t[0] += s

    lim = RateLimiter(10, clock=lambda: t[0], sleep=sleep)
    for _ in range(4):
        lim.wait()
        t[0] += 0.02  # work per frame
    assert sleeps == [0.08, 0.08, 0.08]
    assert RateLimiter(0).period == 0.0


def test_buffer_drop_policies():
    oldest = FrameBuffer(2, "drop_oldest")
    for i in range(5):
        oldest.put(i)
    assert oldest.dropped == 3 and [oldest.get(0), oldest.get(0), oldest.get(0)] == [3, 4, None]
    newest = FrameBuffer(2, "drop_newest")
    assert [newest.put(i) for i in range(3)] == [True, True, False]
    assert [newest.get(0), newest.get(0)] == [0, 1]


def test_claim_check_for_big_frames(tmp_path):
    store = LocalObjectStore(tmp_path)
    pub = FramePublisher(None, "frames", store, "cam1", "line-1", None, inline_limit_bytes=2000,
                         log=structlog.get_logger())
    small = encode_jpeg(texture(0, 16))
    rng = np.random.default_rng(0)
    big = encode_jpeg(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), 95)
    now = datetime.now(UTC)
    inline = pub.build(Captured("cam1-a-1", 1, now, small, 16, 16, "x.png"))
    claim = pub.build(Captured("cam1-a-2", 2, now, big, 256, 256, "y.png"))
    assert inline.image == small and inline.image_uri is None
    assert claim.image is None and store.get(claim.image_uri) == big
    assert Frame.from_bytes(claim.to_bytes()).image_uri == claim.image_uri
    no_store = FramePublisher(None, "frames", None, "cam1", "line-1", None, 2000, structlog.get_logger())
    with pytest.raises(ValueError, match="inline limit"):
        no_store.build(Captured("cam1-a-3", 3, now, big, 256, 256, None))


def test_png_frames_are_lossless(tmp_path):
    from services.ingestor.publish import encode_image
    from services.worker.inference import decode_frame

    img = texture(3, 24)
    pub = FramePublisher(None, "frames", None, "cam1", "line-1", None, 10**6, structlog.get_logger())
    frame = pub.build(Captured("cam1-a-1", 1, datetime.now(UTC), encode_image(img, "png"), 24, 24, None, "png"))
    assert frame.encoding == "png"
    assert np.array_equal(decode_frame(frame, None, 10**6), img[..., ::-1])  # RGB, bit-exact
