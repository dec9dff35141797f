"""The built images run: a container started with an unreachable dependency exits 2 with one line naming it, and a
running container passes its image's HEALTHCHECK.

Flow step: deployment (images). Needs podman and the images of ``scripts/build-images.sh``; skipped, with the
reason, where either is missing (building them takes minutes and downloads torch, so the default run never does).
The containers run as the compose file and the chart run them (read-only root, no capabilities), on the host's
network so the session's real Kafka and Redis on loopback are reachable. The three server images of
``compose.local-deps.yaml`` (``scripts/build-images.sh deps``) run as users run them: ``podman-compose`` with
``compose.yaml`` and that file, Kafka, Redis and s3proxy only, on the project's own network; skipped likewise where
podman-compose (Debian's package) or an image is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import yaml

from devtools.containers import (
    CONTAINER_OPTIONS,
    SERVICES_IMAGE,
    WORKER_IMAGE,
    ContainersUnavailable,
    podman_env,
    require_images,
)
from devtools.localstack import free_port
from services._kafka import default_topic_specs, ensure_topics
from services.contracts.topics import Topics
from tests.helm._chart import REPO

pytestmark = pytest.mark.timeout(120)
CLOSED = "127.0.0.1:9"  # the discard port: nothing listens there on a test machine


def need(image: str) -> str:
    """The image's name; the test is skipped, with what to run, when podman or the image is missing."""
    try:
        require_images((image,))
    except ContainersUnavailable as exc:
        pytest.skip(str(exc))
    return image


def podman(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **podman_env(), **(env or {})}
    return subprocess.run(["podman", *args], env=full_env, capture_output=True, text=True, timeout=timeout)


def run_image(image: str, command: str, env: dict[str, str], *options: str) -> subprocess.CompletedProcess:
    """Run to the end; stderr is the container's own (no periodic health checks: podman would log on a machine
    without systemd that it cannot schedule them)."""
    names = [arg for key in env for arg in ("--env", key)]  # values pass through the environment, not argv
    return podman("run", "--rm", "--no-healthcheck", *CONTAINER_OPTIONS, *names, *options, image, command, env=env)


def one_line_exit_2(done: subprocess.CompletedProcess, service: str, names: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{service}: {names}"), done.stderr


def test_the_alerter_container_without_redis_exits_2_with_one_line() -> None:
    env = {"ALERTER_KAFKA_BOOTSTRAP_SERVERS": CLOSED, "ALERTER_REDIS_URL": f"redis://{CLOSED}/0"}
    one_line_exit_2(run_image(need(SERVICES_IMAGE), "inspection-alerter", env), "alerter", "redis:")


def test_the_alerter_container_without_kafka_exits_2_with_one_line(redis_url) -> None:
    env = {"ALERTER_KAFKA_BOOTSTRAP_SERVERS": CLOSED, "ALERTER_REDIS_URL": redis_url}
    one_line_exit_2(run_image(need(SERVICES_IMAGE), "inspection-alerter", env), "alerter", "kafka:")


def test_the_ingestor_container_without_its_object_store_exits_2_with_one_line(tmp_path) -> None:
    import cv2
    import numpy as np

    frames = tmp_path / "frames"
    frames.mkdir(mode=0o755)
    cv2.imwrite(str(frames / "a.png"), np.zeros((64, 64, 3), np.uint8))
    (frames / "a.png").chmod(0o644)
    env = {"INGESTOR_KAFKA_BOOTSTRAP_SERVERS": CLOSED, "INGESTOR_CAMERA_ID": "cam-1", "INGESTOR_SOURCE": "/frames",
           "INGESTOR_OBJECT_STORE_URL": "s3://b/o", "INGESTOR_S3_ENDPOINT_URL": f"http://{CLOSED}",
           "INGESTOR_S3_ACCESS_KEY_ID": "k", "INGESTOR_S3_SECRET_ACCESS_KEY": "s"}
    done = run_image(need(SERVICES_IMAGE), "inspection-ingestor", env, "--volume", f"{frames}:/frames:ro")
    one_line_exit_2(done, "ingestor", "object store:")


def test_the_worker_container_names_a_missing_bundle_in_one_line() -> None:
    env = {"WORKER_KAFKA_BOOTSTRAP_SERVERS": CLOSED, "WORKER_REDIS_URL": f"redis://{CLOSED}/0",
           "WORKER_OBJECT_STORE_URL": "s3://b/o", "WORKER_DEVICE": "cpu"}
    one_line_exit_2(run_image(need(WORKER_IMAGE), "inspection-worker", env), "worker", "")


@contextlib.contextmanager
def running(image: str, command: str, env: dict[str, str]) -> Iterator[str]:
    name = f"ddad-test-{uuid.uuid4().hex[:8]}"
    names = [arg for key in env for arg in ("--env", key)]
    started = podman("run", "--detach", "--name", name, *CONTAINER_OPTIONS, *names, image, command, env=env)
    assert started.returncode == 0, started.stderr
    try:
        yield name
    finally:
        podman("rm", "--force", "--time", "5", name)


def test_the_alerter_container_becomes_ready_and_passes_its_healthcheck(kafka_bootstrap_servers, redis_url) -> None:
    port = free_port()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    ensure_topics({"bootstrap_servers": [kafka_bootstrap_servers]}, default_topic_specs(Topics(prefix), 1))
    env = {"ALERTER_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers, "ALERTER_REDIS_URL": redis_url,
           "ALERTER_HTTP_PORT": str(port), "ALERTER_TOPIC_PREFIX": prefix, "ALERTER_REDIS_KEY_PREFIX": prefix}
    with running(need(SERVICES_IMAGE), "inspection-alerter", env) as name:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and status != 200:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                    status = response.status
            time.sleep(0.5)
        logs = podman("logs", name).stderr
        assert status == 200, logs
        health = podman("healthcheck", "run", name)
        assert health.returncode == 0, health.stdout + health.stderr + logs
    # and with nothing listening on its port, the same check fails (the check can fail)
    with running(SERVICES_IMAGE, "sleep", {}) as idle:
        assert podman("healthcheck", "run", idle).returncode != 0


COMPOSE_DIR = REPO / "deploy" / "compose"


def _compose_variables() -> dict[str, str]:
    """compose.yaml's variables as podman-compose sees them: example.env's, then a deploy/compose/.env's over them
    (podman-compose reads that file, where one exists, over the environment)."""
    found: dict[str, str] = {}
    for name in ("example.env", ".env"):
        if (COMPOSE_DIR / name).exists():
            lines = (COMPOSE_DIR / name).read_text().splitlines()
            found.update(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return found


@pytest.mark.timeout(300)
def test_the_local_server_images_start_with_podman_compose_and_pass_their_health_checks() -> None:
    servers = yaml.safe_load((COMPOSE_DIR / "compose.local-deps.yaml").read_text())["services"]
    for service in servers.values():
        need(service["image"])
    need(SERVICES_IMAGE)  # signs the S3 requests from inside the project's network
    if shutil.which("podman-compose") is None:
        pytest.skip("podman-compose not found: apt-get install podman-compose")
    project = f"ddad-test-{uuid.uuid4().hex[:8]}"
    variables = _compose_variables()
    env = {**os.environ, **podman_env(), **variables}
    compose = ["podman-compose", "-p", project, "-f", "compose.yaml", "-f", "compose.local-deps.yaml"]

    def run_compose(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*compose, *args], cwd=COMPOSE_DIR, env=env, capture_output=True, text=True,
                              timeout=timeout)

    try:
        up = run_compose("up", "-d", "--no-build", *servers)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        pending, deadline = set(servers), time.monotonic() + 150
        while pending and time.monotonic() < deadline:
            pending = {s for s in pending if podman("healthcheck", "run", f"{project}_{s}_1").returncode != 0}
            time.sleep(1)
        logs = {s: podman("logs", "--tail", "20", f"{project}_{s}_1").stdout for s in pending}
        assert not pending, logs
        # Kafka took compose.yaml's settings; s3proxy checks signatures with the credentials the services use
        props = podman("exec", f"{project}_kafka_1", "cat", "/tmp/kafka/server.properties").stdout.split()
        assert "auto.create.topics.enable=false" in props and "advertised.listeners=PLAINTEXT://kafka:9092" in props
        s3 = {key: variables[key] for key in ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")}
        script = (
            "import boto3, os; e = os.environ; s3 = boto3.client('s3', endpoint_url='http://minio:9000', "
            "region_name='us-east-1', aws_access_key_id=e['S3_ACCESS_KEY_ID'], "
            "aws_secret_access_key=e['S3_SECRET_ACCESS_KEY']);"
            "s3.create_bucket(Bucket='probe'); s3.put_object(Bucket='probe', Key='k', Body=b'ok');"
            "print(s3.get_object(Bucket='probe', Key='k')['Body'].read().decode())")
        names = [arg for key in s3 for arg in ("--env", key)]
        done = podman("run", "--rm", "--no-healthcheck", "--network", f"{project}_default", *names, SERVICES_IMAGE,
                      "python", "-c", script, env=s3)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    finally:
        run_compose("down", "-v", timeout=180)
        podman("network", "rm", f"{project}_default")
