"""Frame sources: image folder (once or looping), video file, camera or RTSP/HTTP stream through OpenCV.

Flow step: camera -> frame. Every source returns BGR ``uint8`` frames (OpenCV's order; ``publish.encode_jpeg``
writes standard JPEG from it) or None at the end of a finite source. A live camera never ends: when it stops
delivering, it is released and reopened with exponential backoff (counted in
``inspection_camera_reconnects_total``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from services import _observability as obs

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm"}


class FrameSource(Protocol):
    """What the ingestor reads from."""

    def read(self) -> tuple[np.ndarray, str] | None:
        """Next ``(BGR image, source name)`` or None when a finite source is exhausted."""

    def close(self) -> None: ...


class FolderSource:
    """Sorted image files of a folder; unreadable files are skipped (and logged by the caller via ``skipped``)."""

    def __init__(self, folder: str | Path, loop: bool = False) -> None:
        self.folder = Path(folder)
        self.paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {self.folder}")
        self.loop = loop
        self._i = 0
        self.skipped: list[str] = []

    def read(self) -> tuple[np.ndarray, str] | None:
        for _ in range(len(self.paths)):
            if self._i >= len(self.paths):
                if not self.loop:
                    return None
                self._i = 0
            path = self.paths[self._i]
            self._i += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return image, path.name
            self.skipped.append(path.name)
        return None

    def close(self) -> None:
        return None


class VideoSource:
    """A video file, frame by frame (looping rewinds to the start)."""

    def __init__(self, path: str | Path, loop: bool = False, opener: Callable[[str], Any] = cv2.VideoCapture) -> None:
        self.path = str(path)
        self.loop = loop
        self._open = opener
        self.cap = opener(self.path)
        if not self.cap.isOpened():
            raise FileNotFoundError(f"cannot open video {self.path}")
        self._n = 0

    def read(self) -> tuple[np.ndarray, str] | None:
        ok, image = self.cap.read()
        if not ok and self.loop and self._n > 0:
            self.cap.release()
            self.cap = self._open(self.path)
            ok, image = self.cap.read()
        if not ok:
            return None
        self._n += 1
        return image, f"{Path(self.path).name}#{self._n}"

    def close(self) -> None:
        self.cap.release()


class CameraSource:
    """A live camera (device index) or network stream (rtsp://, http://) with reconnect on loss.

    Args:
        url: ``"0"`` for the first local device, or a stream URL.
        camera_id: For the reconnect counter.
        initial_backoff_s / max_backoff_s: Reconnect backoff (doubles per failed attempt).
        opener / sleep: Injectable for tests.
    """

    def __init__(self, url: str, camera_id: str, initial_backoff_s: float = 0.5, max_backoff_s: float = 10.0,
                 opener: Callable[[Any], Any] = cv2.VideoCapture, sleep: Callable[[float], None] = time.sleep,
                 log: Any = None) -> None:
        self.url: Any = int(url) if url.isdigit() else url
        self.camera_id = camera_id
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self._open = opener
        self._sleep = sleep
        self.log = log
        self.closed = False
        self.reconnects = 0
        self.cap = self._open(self.url)
        self._n = 0

    def read(self) -> tuple[np.ndarray, str] | None:
        backoff = self.initial_backoff_s
        while not self.closed:
            if self.cap is not None and self.cap.isOpened():
                ok, image = self.cap.read()
                if ok and image is not None:
                    self._n += 1
                    return image, f"{self.url}#{self._n}"
            # Lost (or never had) the stream: release, wait, reopen. Cameras reboot and networks blip; the ingestor
            # must outlive both without a restart.
            if self.cap is not None:
                self.cap.release()
            if self.log is not None:
                self.log.warning("camera_reconnect", camera_id=self.camera_id, backoff_s=round(backoff, 2))
            self._sleep(backoff)
            backoff = min(self.max_backoff_s, backoff * 2)
            self.reconnects += 1
            obs.CAMERA_RECONNECTS.labels(self.camera_id).inc()
            self.cap = self._open(self.url)
        return None

    def close(self) -> None:
        self.closed = True
        if self.cap is not None:
            self.cap.release()


def open_source(source: str, kind: str = "auto", loop: bool = False, camera_id: str = "cam-1",
                initial_backoff_s: float = 0.5, max_backoff_s: float = 10.0, log: Any = None) -> FrameSource:
    """Pick the source from ``kind`` or, for "auto", from what ``source`` looks like."""
    if kind == "auto":
        path = Path(source)
        if "://" in source or source.isdigit():
            kind = "camera"
        elif path.is_dir():
            kind = "folder"
        elif path.suffix.lower() in VIDEO_SUFFIXES or path.is_file():
            kind = "video"
        else:
            raise FileNotFoundError(f"source {source!r} is neither a folder, a video file, a URL nor a device index")
    if kind == "folder":
        return FolderSource(source, loop)
    if kind == "video":
        return VideoSource(source, loop)
    return CameraSource(source, camera_id, initial_backoff_s, max_backoff_s, log=log)


class RateLimiter:
    """Paces calls to at most ``fps`` per second (0 = unlimited) without drifting.

    If the caller falls behind (a slow source), the schedule restarts from now instead of bursting to catch up.
    """

    def __init__(self, fps: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None

    def wait(self) -> None:
        if self.period == 0.0:
            return
        now = self._clock()
        if self._next is None or now > self._next + self.period:
            self._next = now
        elif now < self._next:
            self._sleep(self._next - now)
        self._next += self.period
