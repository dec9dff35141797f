"""Health/readiness/metrics endpoints and the JSON logger."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from services import _observability as obs


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_health_ready_and_metrics_endpoints():
    t = [0.0]
    health = obs.Health(stall_after_s=10, clock=lambda: t[0])
    server = obs.start_http_server(health, 0, host="127.0.0.1")
    port = server.server_address[1]
    try:
        assert _get(port, "/healthz")[0] == 200
        assert _get(port, "/readyz") == (503, "starting\n")
        health.set_ready(True, "ready")
        assert _get(port, "/readyz")[0] == 200
        obs.FRAMES_DROPPED.labels("worker", "stale").inc()
        code, body = _get(port, "/metrics")
        assert code == 200 and 'inspection_frames_dropped_total{reason="stale",service="worker"}' in body
        t[0] = 11.0  # the loop stopped beating: not live, so not ready either
        assert _get(port, "/healthz")[0] == 503 and _get(port, "/readyz")[0] == 503
        assert _get(port, "/nope")[0] == 404
    finally:
        server.shutdown()
    assert obs.start_http_server(health, -1) is None


def test_json_logs_carry_bound_ids(capsys):
    log = obs.configure_logging("worker", "INFO", json=True)
    log.bind(camera_id="cam1", frame_id="f1", batch_id="b1").info("batch_done", frames=3)
    log.debug("hidden")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["event"] == "batch_done" and record["service"] == "worker"
    assert (record["camera_id"], record["frame_id"], record["batch_id"], record["frames"]) == ("cam1", "f1", "b1", 3)


def test_expected_kafka_client_noise_is_dropped_and_real_warnings_kept(capsys):
    import logging

    obs.configure_logging("worker", "INFO", json=True)
    logging.getLogger("kafka.cluster").warning("No partition metadata for topic frames")
    logging.getLogger("kafka.net.selector").warning("Task <x> ran for 0.274s (>0.100s threshold). It is blocking the "
                                                    "event loop -- likely a tight sync loop inside a coroutine.")
    logging.getLogger("kafka.net.manager").warning("Bootstrap connection to bootstrap-0 failed: ECONNREFUSED")
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert [r["event"] for r in lines] == ["Bootstrap connection to bootstrap-0 failed: ECONNREFUSED"]
