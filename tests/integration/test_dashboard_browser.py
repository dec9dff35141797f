"""The operators' dashboard end to end in headless Chromium (Debian's, driven by Playwright; no browser download).

Real Kafka and S3 server from the harness, a Redis of this module's own (so it can be stopped and restarted), the real
dashboard service on a thread. One browser session for the module. Screenshots of the feed and the detail view are
saved under pytest's tmp dir; ``DDAD_UPDATE_SCREENSHOTS=1`` (or a missing file) also copies them to docs/dashboard/.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from devtools import localstack
from services.contracts.feedback import FeedbackRecord
from tests.services._helpers import TopicReader, wait_for
from tests.services.dashboard._harness import TOKEN, logged_in_page, make_env, start_dashboard, stop_dashboard

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("DDAD_CHROMIUM", "/usr/bin/chromium")
XSS = '<img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dashboard-screenshots")


def _keep(shots: Path, page, name: str) -> Path:
    path = shots / name
    page.screenshot(path=str(path), full_page=True)
    docs = REPO / "docs" / "dashboard" / name
    if os.environ.get("DDAD_UPDATE_SCREENSHOTS") == "1" or not docs.exists():
        docs.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, docs)
    return path


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    handle = localstack.start_redis(tmp_path_factory.mktemp("dashboard-redis"), persistent=True)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def dash(kafka_bootstrap_servers, own_redis, s3_client_kwargs):
    env = make_env(kafka_bootstrap_servers, own_redis.url, s3_client_kwargs)
    env.redis_url = own_redis.url
    d = start_dashboard(env, redis_url=own_redis.url, stale_after_s=5.0)
    yield d
    stop_dashboard(d)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM} (bootstrap installs Debian's; or set DDAD_CHROMIUM)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, dash):
    pg = logged_in_page(browser, dash.url)
    yield pg
    pg.context.close()


# The page's Content-Security-Policy forbids eval: every wait_for_function predicate is a function, not a string
# expression (Playwright evaluates those with eval while polling).


def _row(page, alert_id: str):
    return page.locator(f'#feed tr[data-alert-id="{alert_id}"]')


def test_a_published_defect_appears_without_reload_opens_with_its_overlay_and_stays_acknowledged(page, dash, shots):
    for i in range(3):  # camera tiles with a few results each (a sparkline that goes up and down)
        for s in range(12):
            dash.result(f"cam-{i + 1}", 0.25 + 0.1 * i + 0.12 * ((s * (i + 3)) % 5) / 4, s)
    page.evaluate("window.__sameDocument = 'yes'")
    older = dash.alert(camera_id="cam-2", score=0.62)
    _row(page, older.alert_id).wait_for()
    alert = dash.alert(camera_id="cam-1", score=0.91, source="line-1/cam-1")  # returns once Kafka acknowledged it
    t0 = time.monotonic()
    _row(page, alert.alert_id).wait_for()
    print(f"acknowledged by Kafka -> row in the feed: {time.monotonic() - t0:.2f} s")
    assert time.monotonic() - t0 < 10
    assert page.evaluate("window.__sameDocument") == "yes"  # pushed into the page, not reloaded
    ids = page.locator("#feed tbody tr").evaluate_all("rows => rows.map(r => r.dataset.alertId)")
    assert ids.index(alert.alert_id) < ids.index(older.alert_id)  # newest first
    row = _row(page, alert.alert_id)
    assert "cam-1" in row.locator(".camera").inner_text() and "0.910 / 0.500" in row.inner_text()
    assert "high" in row.inner_text()
    page.locator('.tile[data-camera="cam-3"]').wait_for()
    page.locator(f'#history tr[data-alert-id="{alert.alert_id}"]').wait_for()  # history's first page follows
    _keep(shots, page, "feed.png")

    row.click()
    page.wait_for_function("""() => ['layer-frame', 'layer-heatmap', 'layer-outline'].every(id => {
        const img = document.getElementById(id); return img.complete && img.naturalWidth > 0; })""")
    # the pixels, not only the tags: the outline layer has opaque red boundary pixels, the heatmap is not flat
    pixels = page.evaluate("""() => {
        const read = id => { const img = document.getElementById(id), c = document.createElement('canvas');
            c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d');
            g.drawImage(img, 0, 0); return g.getImageData(0, 0, c.width, c.height).data; };
        const o = read('layer-outline'), h = read('layer-heatmap'); let red = 0, clear = 0;
        for (let i = 0; i < o.length; i += 4) {
            if (o[i + 3] === 255 && o[i] > 200) red++;
            if (o[i + 3] === 0) clear++; }
        const hv = new Set(); for (let i = 0; i < h.length; i += 4) hv.add(h[i] + ',' + h[i + 1] + ',' + h[i + 2]);
        return {red, clear, heatColours: hv.size}; }""")
    assert pixels["red"] > 100 and pixels["clear"] > pixels["red"] and pixels["heatColours"] > 20, pixels
    fields = page.locator("#d-fields").inner_text()
    assert "0.9100" in fields and "1.8200" in fields and "m-test" in fields
    noise = page.locator("#d-fields dt:text-is('noise level (start step)') + dd").inner_text()
    assert noise == "120"  # from the worker's result hash in Redis
    assert "s3://" not in page.content()  # images come through the service only
    page.uncheck("#t-heatmap")
    assert page.locator("#layer-heatmap").is_hidden()
    page.check("#t-heatmap")
    page.click("#zoom-in")
    assert "scale(1.5)" in page.locator("#stage").get_attribute("style")
    page.click("#zoom-reset")
    _keep(shots, page, "detail.png")

    reader = TopicReader(dash.env, dash.env.topics.feedback)
    try:
        page.click("#a-ack")
        page.wait_for_function("() => document.getElementById('d-status').textContent.includes('acknowledge by alice')")
        page.reload()
        _row(page, alert.alert_id).wait_for()
        assert "acknowledge by alice" in _row(page, alert.alert_id).locator(".status").inner_text()
        recs = reader.read_until(lambda rs: any(FeedbackRecord.from_bytes(r.value).alert_id == alert.alert_id
                                                for r in rs), 30)
    finally:
        reader.close()
    rec = next(FeedbackRecord.from_bytes(r.value) for r in recs
               if FeedbackRecord.from_bytes(r.value).alert_id == alert.alert_id)
    assert (rec.action, rec.actor, rec.camera_id) == ("acknowledge", "alice", "cam-1")


def test_markup_in_a_record_renders_as_text(page, dash):
    dash.publish(dash.env.topics.defects, "cam-x", dash.alert(publish=False).model_dump_json().replace(
        '"camera_id":"cam-1"', '"camera_id":"<b>cam</b>"').encode())  # refused by the contract, skipped
    alert = dash.alert(camera_id="cam-4", source=XSS, model_version="<b>bold</b><script>window.__xss=2</script>")
    row = _row(page, alert.alert_id)
    row.wait_for()
    assert row.locator(".source").inner_text() == XSS
    row.click()
    page.wait_for_function("() => document.getElementById('d-fields').textContent.includes('bold')")
    assert "<b>bold</b><script>window.__xss=2</script>" in page.locator("#d-fields").inner_text()
    assert page.evaluate("window.__xss") is None
    assert page.locator('img[src="x"]').count() == 0 and page.locator("#d-fields b").count() == 0
    assert page.locator("text=<b>cam</b>").count() == 0


def test_unauthenticated_page_stream_image_and_action_are_refused(browser, page, dash):
    alert = dash.alert(camera_id="cam-1", score=0.7)
    _row(page, alert.alert_id).wait_for()
    base = f"{dash.url}/api/alerts/{alert.alert_id}"
    anon = browser.new_context()
    try:
        resp = anon.new_page().goto(dash.url + "/")
        assert resp.status == 401
        for url in (dash.url + "/api/stream", base + "/image/frame", base + "/image/thumb", dash.url + "/api/alerts"):
            assert anon.request.get(url).status == 401, url
        assert anon.request.post(base + "/feedback", data={"action": "false_alarm"}).status == 401
    finally:
        anon.close()
    # logged in, but without the page's CSRF token: refused too
    assert page.context.request.post(base + "/feedback", data={"action": "false_alarm"}).status == 403
    assert TOKEN not in page.content()


def test_disconnected_banner_while_redis_is_stopped_and_cleared_after(page, dash, own_redis):
    banner = page.locator("#banner")
    assert banner.is_hidden()
    own_redis.stop()
    try:
        page.wait_for_function("() => !document.getElementById('banner').hidden && "
                               "document.getElementById('banner').textContent.includes('Redis')", timeout=20000)
        assert "disconnected" in banner.inner_text()
    finally:
        own_redis.restart()
    page.wait_for_function("() => document.getElementById('banner').hidden", timeout=30000)
    alert = dash.alert(camera_id="cam-2", score=0.8)  # and the feed still flows
    _row(page, alert.alert_id).wait_for(timeout=30000)
    with dash.client() as c:
        assert wait_for(lambda: c.get(f"/api/alerts/{alert.alert_id}").status_code == 200, 20)
