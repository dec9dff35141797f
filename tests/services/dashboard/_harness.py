"""A real dashboard on the harness's real servers, and alerts with real images in the object store.

Used by tests/services/dashboard/ and tests/integration/test_dashboard_browser.py.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import cv2
import httpx
import numpy as np

from devtools.localstack import create_bucket
from services._kafka import TopicSpec, ensure_topics, make_producer
from services._object_store import open_object_store
from services._redis import InspectionStore, connect
from services.contracts.defects import DefectAlert, alert_id_for
from services.contracts.results import BoundingBox, InspectionResult
from services.contracts.topics import record_key
from tests.services._helpers import FAST_GROUP, ServiceThread, StreamEnv, texture, wait_for

TOKEN = "test-token-" + uuid.uuid4().hex  # long enough, unique per run


def make_env(kafka_bootstrap_servers: str, redis_url: str, s3_client_kwargs: dict[str, Any]) -> StreamEnv:
    bucket = f"dash-{uuid.uuid4().hex[:8]}"
    create_bucket(s3_client_kwargs, bucket)
    env = StreamEnv(kafka_bootstrap_servers, redis_url, f"s3://{bucket}/objects", s3_client_kwargs)
    env.create_topics()
    ensure_topics(env.kafka, {env.topics.feedback: TopicSpec(1, 3600_000)})
    return env


@dataclass
class Dashboard:
    env: StreamEnv
    thread: ServiceThread
    port: int
    token: str = TOKEN
    store: Any = None
    producer: Any = None
    redis: Any = None
    _seq: list[int] = field(default_factory=lambda: [0])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, auth: bool = True, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Client:
        base = {"Authorization": f"Bearer {self.token}"} if auth else {}
        return httpx.Client(base_url=self.url, headers={**base, **(headers or {})}, timeout=10, **kw)

    def alert(self, camera_id: str = "cam-1", score: float = 0.8, threshold: float = 0.5, *, frame: bool = True,
              source: str | None = None, model_version: str = "m-test", captured_at: datetime | None = None,
              publish: bool = True) -> DefectAlert:
        """An alert with a real mask, heatmap (and frame) in the object store, produced to ``defects``."""
        self._seq[0] += 1
        i = self._seq[0]
        frame_id = f"{camera_id}-{uuid.uuid4().hex[:6]}-{i:04d}"
        mask_uri, heat_uri = put_images(self.store, camera_id, frame_id, frame)
        now = datetime.now(UTC)
        alert = DefectAlert(alert_id=alert_id_for(frame_id), frame_id=frame_id, camera_id=camera_id, line_id="line-1",
                            product_id="fabric", source=source, captured_at=captured_at or now, raised_at=now,
                            pred_score=score, pred_score_raw=score * 2, threshold=threshold,
                            sensitivity=round(1 - threshold, 6), severity="high" if score - threshold >= 0.3 else "low",
                            debounce="1/1", mask_uri=mask_uri, heatmap_uri=heat_uri,
                            boxes=[BoundingBox(x=16, y=16, width=16, height=16, area_fraction=0.06)],
                            model_version=model_version)
        # the worker's result hash of the frame (the detail view reads the noise level from it)
        InspectionStore(self.redis, prefix=self.env.prefix).write([result_record(camera_id, score, i, frame_id)])
        if publish:
            self.publish(self.env.topics.defects, alert.camera_id, alert.to_bytes())
        return alert

    def result(self, camera_id: str, score: float, seq: int) -> None:
        self.publish(self.env.topics.results, camera_id, result_bytes(camera_id, score, seq))

    def publish(self, topic: str, camera_id: str, value: bytes) -> None:
        self.producer.send(topic, key=record_key(camera_id), value=value)
        self.producer.flush(10)


def result_record(camera_id: str, score: float, seq: int, frame_id: str | None = None) -> InspectionResult:
    """An inspected frame (``{camera_id}-r{seq}`` unless named) captured now, noise level 120."""
    now = datetime.now(UTC)
    return InspectionResult(frame_id=frame_id or f"{camera_id}-r{seq}", camera_id=camera_id, line_id="line-1",
                            sequence=seq, captured_at=now, processed_at=now + timedelta(milliseconds=5),
                            pred_score=score, pred_score_raw=score * 2, pred_label=score > 0.5, noise_step=120,
                            threshold=0.5, threshold_raw=1.0, model_version="m-test", bundle_hash="h", batch_id="b",
                            batch_size=1, queue_wait_ms=0.0)


def result_bytes(camera_id: str, score: float, seq: int) -> bytes:
    """The ``results`` record value of ``result_record``."""
    return result_record(camera_id, score, seq).to_bytes()


def put_images(store: Any, camera_id: str, frame_id: str, frame: bool = True) -> tuple[str, str]:
    """Mask (a 16x16 square in a 64x64 frame), a colour heatmap and optionally the frame, under the worker's keys."""
    mask = np.zeros((64, 64), np.uint8)
    mask[16:32, 16:32] = 255
    heat = cv2.applyColorMap(cv2.GaussianBlur(mask, (0, 0), 4), cv2.COLORMAP_JET)
    mask_uri = store.put(f"masks/{camera_id}/{frame_id}.png", cv2.imencode(".png", mask)[1].tobytes(), "image/png")
    heat_uri = store.put(f"heatmaps/{camera_id}/{frame_id}.png", cv2.imencode(".png", heat)[1].tobytes(), "image/png")
    if frame:
        img = texture(7, 64, defect=True)[..., ::-1]
        store.put(f"frames/{camera_id}/{frame_id}.jpg", cv2.imencode(".jpg", img)[1].tobytes(), "image/jpeg")
    return mask_uri, heat_uri


def start_dashboard(env: StreamEnv, redis_url: str | None = None, **kw: Any) -> Dashboard:
    """``services.dashboard.__main__.serve`` on a thread; returns once it listens and its group has partitions."""
    from services.dashboard.__main__ import serve
    from services.dashboard.config import DashboardSettings

    common = {**env.common(), "http_port": 0, "bind_host": "127.0.0.1", "log_level": "INFO"}
    if redis_url:
        common["redis_url"] = redis_url
    settings = DashboardSettings(**{**common, "token": TOKEN, "group_id": f"{env.prefix}-dashboard", "tick_s": 0.3,
                                    "stale_after_s": 3.0, **FAST_GROUP, **kw})
    ports: list[int] = []
    st = ServiceThread(serve, settings, "dashboard", on_ready=ports.append).start()
    assert wait_for(lambda: bool(ports) or st.error is not None or not st.thread.is_alive(), 60), "dashboard not ready"
    assert st.error is None, st.error
    dash = Dashboard(env, st, ports[0], store=open_object_store(env.object_store_url, env.s3_client_kwargs),
                     producer=make_producer(env.kafka), redis=connect(redis_url or env.redis_url))
    return dash


def stop_dashboard(dash: Dashboard) -> None:
    dash.producer.close(5)
    dash.thread.join(30)
    assert dash.thread.error is None, dash.thread.error


def logged_in_page(browser: Any, url: str, timeout_ms: int = 15000) -> Any:
    """A new Playwright page of ``browser`` on the dashboard at ``url``, logged in as alice (close its context)."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(timeout_ms)
    page.goto(url + "/login")
    page.fill("#login-name", "alice")
    page.fill("#login-token", TOKEN)
    page.click("#login-submit")
    page.wait_for_url(url + "/")
    return page
