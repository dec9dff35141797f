"""In-memory live state of the dashboard: per-camera tiles, dependency status, and the push hub to the browsers.

Flow step: ``consumer.py`` (Kafka thread) -> ``LiveState`` / ``Hub`` -> server-sent events of ``app.py``. Tiles are
computed from the ``results`` the dashboard consumes: frames/s over the last minute (by arrival), last score,
a sparkline of recent scores and the time since the last frame (stale warning). The tick in ``app.py`` adds what
lives in Redis (alerts in the last hour, runtime overrides) and pushes a snapshot every ``DASHBOARD_TICK_S``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from services.contracts.defects import DefectAlert
from services.contracts.results import InspectionResult
from services.dashboard import metrics


@dataclass
class CameraTile:
    camera_id: str
    line_id: str = ""
    arrivals: deque[float] = field(default_factory=deque)  # wall time of each result in the last minute
    scores: deque[float] = field(default_factory=lambda: deque(maxlen=60))
    last_score: float | None = None
    last_seen: float | None = None
    model_threshold: float | None = None  # the result's own decision point (the bundle's calibration)
    alert_threshold: float | None = None  # the threshold the alert rule applied to the latest alert
    model_version: str | None = None  # of the latest result
    overlay_version: int | None = None  # the product's nominal overlay the latest result was scored with


class LiveState:
    """Thread-safe tiles and dependency flags (written by the Kafka thread, read by the web loop)."""

    def __init__(self, sparkline_points: int = 60, stale_after_s: float = 10.0, clock=time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.sparkline_points = sparkline_points
        self.stale_after_s = stale_after_s
        self.tiles: dict[str, CameraTile] = {}
        self.kafka_ok = False
        self.redis_ok = False

    def _tile(self, camera_id: str) -> CameraTile:
        tile = self.tiles.get(camera_id)
        if tile is None:
            tile = self.tiles[camera_id] = CameraTile(camera_id, scores=deque(maxlen=self.sparkline_points))
        return tile

    def on_result(self, result: InspectionResult) -> None:
        now = self._clock()
        with self._lock:
            tile = self._tile(result.camera_id)
            tile.line_id = result.line_id
            tile.arrivals.append(now)
            tile.scores.append(round(result.pred_score, 4))
            tile.last_score = result.pred_score
            tile.last_seen = now
            tile.model_threshold = result.threshold
            tile.model_version = result.model_version
            tile.overlay_version = result.overlay_version

    def on_alert(self, alert: DefectAlert) -> None:
        with self._lock:
            tile = self._tile(alert.camera_id)
            tile.line_id = tile.line_id or alert.line_id
            tile.alert_threshold = alert.threshold

    def snapshot(self, overrides: dict[str, dict[str, float]] | None = None,
                 alerts_last_hour: dict[str, int] | None = None) -> list[dict[str, Any]]:
        """One dict per camera for the page, with the threshold in force and where it comes from."""
        now = self._clock()
        overrides = overrides or {}
        out = []
        with self._lock:
            cams = sorted(set(self.tiles) | set(alerts_last_hour or {}))
            for cam in cams:
                tile = self._tile(cam)
                while tile.arrivals and tile.arrivals[0] < now - 60:
                    tile.arrivals.popleft()
                threshold, source = _threshold_in_force(tile, overrides.get(cam, {}))
                out.append({
                    "camera_id": cam, "line_id": tile.line_id,
                    "fps": round(len(tile.arrivals) / 60.0, 3), "last_score": tile.last_score,
                    "threshold": threshold, "threshold_source": source,
                    "sensitivity": None if threshold is None else round(1.0 - threshold, 4),
                    "alerts_last_hour": (alerts_last_hour or {}).get(cam, 0), "scores": list(tile.scores),
                    "seconds_since_frame": None if tile.last_seen is None else round(now - tile.last_seen, 1),
                    "stale": tile.last_seen is None or now - tile.last_seen > self.stale_after_s,
                    "model_version": tile.model_version, "overlay_version": tile.overlay_version,
                })
        return out

    def status(self) -> dict[str, bool]:
        return {"kafka": self.kafka_ok, "redis": self.redis_ok}

    def set_dependency(self, name: str, ok: bool) -> None:
        setattr(self, f"{name}_ok", ok)
        metrics.DEPENDENCY_UP.labels(name).set(1 if ok else 0)


def _threshold_in_force(tile: CameraTile, override: dict[str, float]) -> tuple[float | None, str]:
    if "min_score" in override:
        return override["min_score"], "override"
    if "sensitivity" in override:
        return round(1.0 - override["sensitivity"], 6), "override"
    if tile.alert_threshold is not None:
        return tile.alert_threshold, "latest alert"
    if tile.model_threshold is not None:
        return tile.model_threshold, "model calibration"
    return None, ""


class Hub:
    """Fans events out to every connected browser (one bounded queue each; a slow browser loses events, not memory).

    ``publish`` may be called from any thread; the queues live on the web server's event loop (``bind``).
    """

    def __init__(self, queue_size: int = 256) -> None:
        self.queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: set[asyncio.Queue] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(self.queue_size)
        self._queues.add(q)
        metrics.STREAM_CLIENTS.set(len(self._queues))
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._queues.discard(q)
        metrics.STREAM_CLIENTS.set(len(self._queues))

    def publish(self, event: str, data: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        message = sse(event, data)
        try:
            loop.call_soon_threadsafe(self._fanout, message)
        except RuntimeError:  # the loop closed meanwhile (shutdown)
            pass

    def close(self) -> None:
        """End every stream (None is the generators' stop sign)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._fanout, None)
            except RuntimeError:
                pass

    def _fanout(self, message: str | None) -> None:
        for q in list(self._queues):
            try:
                q.put_nowait(message)
            except asyncio.QueueFull:
                pass


def sse(event: str, data: Any) -> str:
    """One server-sent event (JSON data on one line)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
