"""An operator teaches the model from the dashboard, in headless Chromium, on the whole live stack.

Real Kafka, Redis and S3 servers; worker (tiny ``fast`` bundle following product p1's overlay), alerter, teacher and
dashboard on threads of this process. In the browser: confirm a defect, mark a harmless pattern as a false alarm,
see the overlay version change on the alert and on the camera tile, see the same pattern on a later frame raise no
alert while a new defect still does, undo, and see the pattern alert again.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ddad_core.testing import make_tiny_bundle, synthetic_textures
from services._kafka import make_producer
from services.alerter.__main__ import serve as alerter_serve
from services.contracts.defects import alert_id_for
from services.teacher.__main__ import serve as teacher_serve
from services.teacher.config import TeacherSettings
from tests.ddad_core._helpers import recapture, ring, square
from tests.services._helpers import FAST_GROUP, ServiceThread, png_frame, start_worker, wait_for
from tests.services.dashboard._harness import logged_in_page, make_env, start_dashboard, stop_dashboard

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
CHROMIUM = os.environ.get("DDAD_CHROMIUM", "/usr/bin/chromium")
PRODUCT = "p1"


@pytest.fixture(scope="module")
def stack(kafka_bootstrap_servers, redis_url, s3_client_kwargs, tmp_path_factory):
    from services.worker.inference import load_detector

    bundle = make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "fast", num_images=20, recipe="fast")
    env = make_env(kafka_bootstrap_servers, redis_url, s3_client_kwargs)
    dash = start_dashboard(env)
    worker = start_worker(env, load_detector(str(bundle), "cpu"), overlay_product=PRODUCT, overlay_refresh_s=0.2)
    alerter = ServiceThread(alerter_serve, env.alerter_settings(), "alerter").start()
    teacher = ServiceThread(teacher_serve, TeacherSettings(
        **env.common(), product_id=PRODUCT, bundle_path=str(bundle), group_id=f"{env.prefix}-teacher",
        **FAST_GROUP), "teacher").start()  # fmt: skip
    dash.worker = worker  # type: ignore[attr-defined]
    yield dash
    for service in (teacher, alerter, worker):
        service.join()
        assert service.error is None, service.error
    stop_dashboard(dash)


@pytest.fixture(scope="module")
def page(stack):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM} (bootstrap installs Debian's; or set DDAD_CHROMIUM)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield logged_in_page(browser, stack.url, timeout_ms=60000)
        browser.close()


class Camera:
    """cam1 on product p1: sends frames in order (the alerter sees each camera's results in order)."""

    def __init__(self, dash) -> None:
        self.env = dash.env
        self.producer = make_producer(self.env.kafka)
        self.seq = 0

    def send(self, image) -> str:
        self.seq += 1
        frame = png_frame(image, self.seq, product_id=PRODUCT)
        self.producer.send(self.env.topics.frames, key=b"cam1", value=frame.to_bytes())
        self.producer.flush()
        return alert_id_for(frame.frame_id)


def _row(page, alert_id: str):
    return page.locator(f'#feed tr[data-alert-id="{alert_id}"]')


def _worker_follows(stack, version: int) -> None:
    """The worker has picked the version up (it checks every 0.2 s here, before its next batch)."""
    assert wait_for(lambda: stack.worker.loops[0].overlay.version == version, 30)


def _teaching_says(page, text: str) -> None:
    page.wait_for_function("t => document.getElementById('d-teaching').textContent.includes(t)", arg=text)


def test_mark_see_the_version_change_and_the_pattern_stop_alerting_then_undo(page, stack):
    camera = Camera(stack)
    part = synthetic_textures(1, 64, seed=42)[0]
    defect = camera.send(recapture(square(part), 1))
    flagged = camera.send(ring(part))
    _row(page, defect).wait_for()
    _row(page, defect).click()
    page.click("#a-confirm")
    _row(page, flagged).wait_for()
    _row(page, flagged).click()
    _teaching_says(page, "Overlay of p1: none yet")
    page.click("#a-false")
    _teaching_says(page, "Taught")
    assert "overlay v1" in page.locator("#d-teaching").inner_text()
    assert page.locator("#a-undo").is_visible()

    _worker_follows(stack, 1)
    later = camera.send(recapture(ring(part), 2))  # the same pattern, a later frame
    control = camera.send(recapture(square(part, x=40, y=8), 3))  # an unrelated defect, sent after it
    _row(page, control).wait_for()  # the alerter got past the later frame too (per-camera order)
    assert _row(page, later).count() == 0
    page.wait_for_function(
        "() => document.querySelector('.tile[data-camera=\"cam1\"] .tile-overlay').textContent.includes('v1')"
    )
    _row(page, control).click()
    page.wait_for_function("() => document.getElementById('d-fields').textContent.includes('v1')")

    _row(page, flagged).click()
    _teaching_says(page, "Taught")
    page.click("#a-undo")
    _teaching_says(page, "Overlay of p1: v2")
    assert page.locator("#a-undo").is_hidden()
    _worker_follows(stack, 2)
    again = camera.send(recapture(ring(part), 4))
    _row(page, again).wait_for()
