"""The dashboard service over HTTP on the harness's real Kafka, Redis and S3 server: access control, the alert flow,
images, feedback to Redis and the ``feedback`` topic, history filters, camera tiles, bad records."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest

from services.contracts.feedback import FeedbackRecord
from services.dashboard.auth import COOKIE_NAME
from services.dashboard.store import FeedbackStore
from tests.services._helpers import TopicReader, wait_for
from tests.services.dashboard._harness import TOKEN, make_env, start_dashboard, stop_dashboard

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def dash(kafka_bootstrap_servers, redis_url, s3_client_kwargs):
    env = make_env(kafka_bootstrap_servers, redis_url, s3_client_kwargs)
    d = start_dashboard(env)
    yield d
    stop_dashboard(d)


def _listed(dash, alert_id: str, timeout_s: float = 20.0, **params) -> bool:
    with dash.client() as c:
        return wait_for(lambda: alert_id in [a["alert_id"] for a in c.get("/api/alerts", params=params).json()
                                             ["items"]], timeout_s)


def _login(dash, name: str = "alice"):
    c = dash.client(auth=False, follow_redirects=False)
    r = c.post("/login", content=f"name={name}&token={TOKEN}",
               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 303, r.text
    return c, r


def test_every_page_stream_image_and_action_is_refused_without_the_token(dash):
    alert = dash.alert()
    assert _listed(dash, alert.alert_id)
    base = f"/api/alerts/{alert.alert_id}"
    for c in (dash.client(auth=False), dash.client(auth=False, headers={"Authorization": "Bearer wrong-token"})):
        with c:
            page = c.get("/")
            assert page.status_code == 401 and 'action="/login"' in page.text  # the login form, no data
            assert alert.alert_id not in page.text
            for path in ("/api/stream", "/api/alerts", base, f"{base}/image/thumb", f"{base}/image/frame",
                         "/api/cameras", "/static/app.js"):
                assert c.get(path).status_code == 401, path
            assert c.post(f"{base}/feedback", json={"action": "acknowledge"}).status_code == 401
        with dash.client() as ok:
            assert ok.get(f"{base}/image/thumb").status_code == 200
    with dash.client(auth=False) as c:  # probes stay open
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_login_session_needs_csrf_for_actions_and_never_shows_the_token(dash, capsys):
    alert = dash.alert(camera_id="cam-csrf")
    assert _listed(dash, alert.alert_id)
    with dash.client(auth=False) as c:
        bad = c.post("/login", content="name=mallory&token=nope", headers={
            "Content-Type": "application/x-www-form-urlencoded"})
        assert bad.status_code == 401
    c, r = _login(dash)
    try:
        cookie = r.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and TOKEN not in cookie
        page = c.get("/")
        assert page.status_code == 200 and TOKEN not in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]
        assert len(csrf) > 20
        url = f"/api/alerts/{alert.alert_id}/feedback"
        assert c.post(url, json={"action": "acknowledge"}).status_code == 403  # no CSRF token
        assert c.post(url, json={"action": "acknowledge"}, headers={"X-CSRF-Token": "forged"}).status_code == 403
        assert c.post(url, json={"action": "acknowledge"}, headers={
            "X-CSRF-Token": csrf, "Origin": "http://evil.example"}).status_code == 403
        ok = c.post(url, json={"action": "acknowledge"}, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 200 and ok.json()["status_by"] == "alice"
        assert c.post(url, json={"action": "delete_everything"}, headers={"X-CSRF-Token": csrf}).status_code == 422
        # a forged or tampered cookie is no session
        forged = c.cookies[COOKIE_NAME][:-3] + "abc"
        c.cookies.clear()
        c.cookies.set(COOKIE_NAME, forged)
        assert c.get("/api/alerts").status_code == 401
    finally:
        c.close()
    with dash.client() as c:
        assert TOKEN not in c.get("/metrics").text
    logs = capsys.readouterr().err
    assert '"login"' in logs and '"login_refused"' in logs and TOKEN not in logs


def test_a_published_defect_is_listed_streamed_and_served_with_its_images(dash):
    with dash.client() as c, c.stream("GET", "/api/stream") as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        alert = dash.alert(camera_id="cam-flow", score=0.93, source="line-1/cam-flow")
        seen, event = [], None
        deadline = time.monotonic() + 20
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "alert":
                seen.append(json.loads(line[6:]))
                if any(a["alert_id"] == alert.alert_id for a in seen):
                    break
            assert time.monotonic() < deadline, "the alert never came on the stream"
    pushed = next(a for a in seen if a["alert_id"] == alert.alert_id)
    assert pushed["camera_id"] == "cam-flow" and pushed["pred_score"] == pytest.approx(0.93)
    assert _listed(dash, alert.alert_id)
    with dash.client() as c:
        d = c.get(f"/api/alerts/{alert.alert_id}").json()
        assert d["pred_score_raw"] == pytest.approx(1.86) and d["model_version"] == "m-test" and d["has_frame"]
        assert d["noise_step"] == 120
        assert "s3://" not in json.dumps(d)  # no bucket URLs reach the page
        layers = {}
        for layer in ("frame", "heatmap", "outline", "thumb"):
            r = c.get(f"/api/alerts/{alert.alert_id}/image/{layer}")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", layer
            layers[layer] = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
        outline = layers["outline"]
        assert outline.shape == (256, 256, 4)
        red = (outline[..., 3] == 255) & (outline[..., 2] > 200)
        ys, xs = np.nonzero(red)
        # the 16x16 mask square at (16, 16) of a 64x64 mask, drawn at 4x: its boundary, not its inside
        assert 60 <= ys.min() <= 68 and 124 <= ys.max() <= 132 and 60 <= xs.min() <= 68 and 124 <= xs.max() <= 132
        assert not red[90:100, 90:100].any()
        assert layers["thumb"].shape[1] == 128
        assert c.get(f"/api/alerts/{alert.alert_id}/image/secrets").status_code == 404
        assert c.get("/api/alerts/no-such-alert").status_code == 404


def test_feedback_is_stored_with_who_and_when_and_published_on_the_feedback_topic(dash):
    alert = dash.alert(camera_id="cam-fb", score=0.71)
    assert _listed(dash, alert.alert_id)
    reader = TopicReader(dash.env, dash.env.topics.feedback)
    try:
        with dash.client() as c:
            r = c.post(f"/api/alerts/{alert.alert_id}/feedback", json={"action": "false_alarm", "note": "glare"})
            assert r.status_code == 200, r.text
        recs = reader.read_until(lambda rs: any(FeedbackRecord.from_bytes(x.value).alert_id == alert.alert_id
                                                for x in rs), 30)
    finally:
        reader.close()
    rec = next(FeedbackRecord.from_bytes(x.value) for x in recs
               if FeedbackRecord.from_bytes(x.value).alert_id == alert.alert_id)
    assert (rec.action, rec.actor, rec.note, rec.schema_version) == ("false_alarm", "api", "glare", 1)
    assert rec.pred_score == pytest.approx(0.71) and rec.camera_id == "cam-fb"
    assert abs((datetime.now(UTC) - rec.at).total_seconds()) < 60
    import redis

    client = redis.Redis.from_url(dash.env.redis_url, decode_responses=True)
    fb = FeedbackStore(client, prefix=dash.env.prefix)
    state = fb.get(alert.alert_id)
    assert state["action"] == "false_alarm" and state["actor"] == "api" and state["at"]
    assert wait_for(lambda: not fb.pending(), 10)  # the outbox empties once Kafka acknowledged


def test_history_filters_by_camera_time_and_status_with_pages(dash):
    t0 = datetime.now(UTC) - timedelta(hours=2)
    made = [dash.alert(camera_id=f"cam-h{i % 2}", captured_at=t0 + timedelta(minutes=i)) for i in range(6)]
    for a in made:
        assert _listed(dash, a.alert_id, camera=a.camera_id)
    with dash.client() as c:
        c.post(f"/api/alerts/{made[0].alert_id}/feedback", json={"action": "confirm_defect"})
        page1 = c.get("/api/alerts", params={"camera": "cam-h0", "page_size": 2}).json()
        page2 = c.get("/api/alerts", params={"camera": "cam-h0", "page_size": 2, "page": 2}).json()
        assert page1["total"] == 3 and [a["alert_id"] for a in page1["items"]] == [made[4].alert_id, made[2].alert_id]
        assert [a["alert_id"] for a in page2["items"]] == [made[0].alert_id]
        window = c.get("/api/alerts", params={"since": (t0 + timedelta(minutes=1.5)).isoformat(),
                                              "until": (t0 + timedelta(minutes=3.5)).isoformat()}).json()
        assert {a["alert_id"] for a in window["items"]} == {made[2].alert_id, made[3].alert_id}
        confirmed = c.get("/api/alerts", params={"camera": "cam-h0", "status": "confirm_defect"}).json()
        assert [a["alert_id"] for a in confirmed["items"]] == [made[0].alert_id]
        assert confirmed["items"][0]["status_by"] == "api"
        opened = c.get("/api/alerts", params={"camera": "cam-h0", "status": "open"}).json()
        assert opened["total"] == 2
        assert c.get("/api/alerts", params={"status": "bogus"}).status_code == 400
        assert c.get("/api/alerts", params={"since": "yesterday-ish"}).status_code == 400


def test_camera_tiles_show_rate_score_threshold_sparkline_and_go_stale(dash):
    for i in range(5):
        dash.result("cam-tile", 0.2 + 0.1 * i, i)
    with dash.client() as c:
        def tile():
            return next((t for t in c.get("/api/cameras").json()["cameras"] if t["camera_id"] == "cam-tile"), None)

        assert wait_for(lambda: (tile() or {}).get("last_score") == pytest.approx(0.6), 20)
        t = tile()
        assert t["fps"] == pytest.approx(5 / 60, abs=1e-3) and t["scores"] == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6])
        assert t["threshold"] == 0.5 and t["threshold_source"] == "model calibration" and t["sensitivity"] == 0.5
        assert not t["stale"]
        assert wait_for(lambda: tile()["stale"], 10)  # stale_after_s is 3 s in the harness


def test_records_that_break_the_contract_are_skipped_and_counted(dash):
    topic = dash.env.topics.defects
    good = dash.alert(camera_id="cam-ok", publish=False)
    bad = json.loads(good.model_dump_json())
    bad["camera_id"] = "<img src=x onerror=alert(1)>"
    dash.publish(topic, "cam-ok", json.dumps(bad).encode())
    dash.publish(topic, "cam-ok", b"\x00 not json")
    dash.publish(topic, "cam-ok", good.to_bytes())
    assert _listed(dash, good.alert_id)
    with dash.client() as c:
        metrics = c.get("/metrics").text
        line = next(m for m in metrics.splitlines()
                    if m.startswith("inspection_dashboard_records_total") and f'topic="{topic}"' in m
                    and 'outcome="invalid"' in m)
        assert float(line.rsplit(" ", 1)[1]) >= 2
        assert "<img" not in json.dumps(c.get("/api/alerts").json())
