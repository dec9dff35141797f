"""Start-up failures a user can cause end in one clear line and exit status 2 (no server needed for these).

Each case runs the real console entry point as a subprocess. Unreachable servers are loopback ports nobody listens
on; the cases that need a reachable server next to the broken one are in tests/integration/test_startup_checks.py.
"""

from __future__ import annotations

import socket
import time

import cv2
import numpy as np
import pytest

from devtools.localstack import free_port
from tests.services._entry import one_line_error, run_service


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "000.png"), np.full((32, 32, 3), 128, np.uint8))
    return images


def test_ingestor_bad_source(tmp_path):
    line = one_line_error(run_service("ingestor", {"INGESTOR_SOURCE": str(tmp_path / "no-such-folder")}))
    assert line.startswith("ingestor: source: ") and "no-such-folder" in line and "INGESTOR_SOURCE" in line
    (tmp_path / "empty").mkdir()
    line = one_line_error(run_service("ingestor", {"INGESTOR_SOURCE": str(tmp_path / "empty")}))
    assert "no images" in line and "INGESTOR_SOURCE" in line


def test_alerter_missing_bundle(tmp_path):
    line = one_line_error(run_service("alerter", {"ALERTER_BUNDLE_PATH": str(tmp_path / "no-bundle")}))
    assert line.startswith("alerter: rules: model bundle ") and "ALERTER_BUNDLE_PATH" in line
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bundle.json").write_text("{not json")
    line = one_line_error(run_service("alerter", {"ALERTER_BUNDLE_PATH": str(broken)}))
    assert "cannot read" in line and "bundle.json" in line


def test_bad_redis_url_and_unreachable_redis():
    line = one_line_error(run_service("alerter", {"ALERTER_REDIS_URL": "http://redis.example:6379"}))
    assert line.startswith("alerter: redis: bad Redis URL") and "ALERTER_REDIS_URL" in line
    port = free_port()
    t0 = time.monotonic()
    line = one_line_error(run_service("alerter", {"ALERTER_REDIS_URL": f"redis://127.0.0.1:{port}/0"}))
    assert "did not answer PING" in line and "Connection refused" in line and f"127.0.0.1:{port}" in line
    assert time.monotonic() - t0 < 30


def test_unreachable_kafka_is_one_line_within_the_connect_timeout():
    port = free_port()
    t0 = time.monotonic()
    proc = run_service("worker", {"WORKER_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
                                  "WORKER_CONNECT_TIMEOUT_S": "2", "WORKER_HTTP_PORT": "-1"})
    elapsed = time.monotonic() - t0
    line = one_line_error(proc)
    assert line.startswith("worker: kafka: no answer from Kafka at ") and "within 2 s" in line
    assert "ECONNREFUSED" in line and f"WORKER_KAFKA_BOOTSTRAP_SERVERS (now 127.0.0.1:{port})" in line
    assert elapsed < 30  # the client's own default would retry for 30-60 s, logging each attempt


def test_unreachable_object_store(folder):
    port = free_port()
    env = {"INGESTOR_SOURCE": str(folder), "INGESTOR_OBJECT_STORE_URL": "s3://frames/claim-checks",
           "INGESTOR_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "INGESTOR_S3_ACCESS_KEY_ID": "k",
           "INGESTOR_S3_SECRET_ACCESS_KEY": "s", "INGESTOR_CONNECT_TIMEOUT_S": "2"}
    line = one_line_error(run_service("ingestor", env))
    assert line.startswith("ingestor: object store: S3 bucket 'frames' at http://127.0.0.1:")
    assert "INGESTOR_OBJECT_STORE_URL" in line
    line = one_line_error(run_service("ingestor", {**env, "INGESTOR_OBJECT_STORE_URL": "ftp://host/dir"}))
    assert "unsupported object store URL" in line


def test_taken_http_port():
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_error(run_service("worker", {"WORKER_HTTP_PORT": str(port)}))
    assert line.startswith(f"worker: http: cannot serve health and metrics on 0.0.0.0:{port}")


def test_check_reports_every_dependency_and_fails_on_any():
    redis_port, kafka_port = free_port(), free_port()
    proc = run_service("alerter", {"ALERTER_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                                   "ALERTER_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
                                   "ALERTER_CONNECT_TIMEOUT_S": "2"}, "--check")
    line = one_line_error(proc)
    assert line == "alerter: 2 of 3 start-up checks failed: redis, kafka"
    report = proc.stdout.splitlines()
    assert [r.split()[2:4] for r in report] == [["rules", "ok"], ["redis", "FAILED"], ["kafka", "FAILED"]]
    assert "ECONNREFUSED" in report[2]
