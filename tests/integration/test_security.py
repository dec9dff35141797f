"""Security against real servers of this module's own (marker ``integration``).

* Kafka SASL (SCRAM-SHA-512) over TLS: the broker gets a second listener with a keytool certificate; ingestor, worker
  and alerter reach it only through their settings (``*_KAFKA_SECURITY_PROTOCOL``, ``*_KAFKA_SASL_*``,
  ``*_KAFKA_SSL_CAFILE``), end to end; a wrong password fails start-up with one line naming Kafka.
* Redis AUTH with an ACL user given apart from the URL (``*_REDIS_USERNAME`` / ``*_REDIS_PASSWORD``, as a mounted
  secret would be); a wrong one fails start-up naming Redis.
* Object-store credentials come only from settings (real signature checks on the S3 server); a claim check cannot
  smuggle credentials or another bucket in its URI.
* No secret in logs, metrics, result and alert records, Redis, or ``--print-config``: grepped in the captured output
  of the whole run.
* Model bundles: a tampered tensor file is refused before loading (recorded SHA-256), and no code path unpickles
  (every ``torch.load`` passes ``weights_only=True``).
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from devtools import localstack as ls
from services._kafka import make_consumer
from services._object_store import open_object_store
from services._redis import connect
from tests.integration._fault_harness import (
    REPO,
    ServiceProcess,
    alerter_settings,
    image_folder,
    ingestor_settings,
    service_env,
    worker_settings,
)
from tests.services._helpers import FAST_GROUP, StreamEnv

pytestmark = [pytest.mark.integration]

KAFKA_USER, KAFKA_PASSWORD = "inspector", f"kafka-{uuid.uuid4().hex}"
REDIS_USER, REDIS_PASSWORD = "inspection-svc", f"redis-{uuid.uuid4().hex}"
DEFAULT_PASSWORD = f"default-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    work = tmp_path_factory.mktemp("secure-servers")
    kafka = ls.start_kafka(work / "kafka", num_partitions=2, sasl_users={KAFKA_USER: KAFKA_PASSWORD})
    try:
        redis = ls.start_redis(work / "redis", password=DEFAULT_PASSWORD, users={REDIS_USER: REDIS_PASSWORD})
    except BaseException:
        kafka.stop()
        raise
    yield kafka, redis
    kafka.stop()
    redis.stop()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from ddad_core.testing import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("secure-bundle") / "tiny", image_size=64, seed=0)


def secure(env: StreamEnv, kafka: ls.KafkaHandle, s3: dict, **kw) -> dict:
    """Settings that reach Kafka only over SASL_SSL and Redis only with the ACL user."""
    return {"kafka_bootstrap_servers": kafka.sasl_ssl_bootstrap, "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_username": KAFKA_USER,
            "kafka_sasl_password": KAFKA_PASSWORD, "kafka_ssl_cafile": kafka.ca_file,
            "redis_url": env.redis_url, "redis_username": REDIS_USER, "redis_password": REDIS_PASSWORD,
            "s3_access_key_id": s3["aws_access_key_id"], "s3_secret_access_key": s3["aws_secret_access_key"], **kw}


def _sasl_consumer(kafka: ls.KafkaHandle, env: StreamEnv, topic: str):
    consumer = make_consumer({"bootstrap_servers": [kafka.sasl_ssl_bootstrap], "security_protocol": "SASL_SSL",
                              "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": KAFKA_USER,
                              "sasl_plain_password": KAFKA_PASSWORD, "ssl_cafile": kafka.ca_file,
                              "client_id": "security-check"}, f"{env.prefix}-check", **FAST_GROUP)
    consumer.subscribe([topic])
    return consumer


@pytest.mark.timeout(300)
def test_sasl_tls_kafka_and_redis_acl_end_to_end_with_no_secret_anywhere(servers, bundle, s3_client_kwargs,
                                                                         tmp_path):
    kafka, redis_server = servers
    bucket = f"sec-{uuid.uuid4().hex[:8]}"
    open_object_store(f"s3://{bucket}", s3_client_kwargs, create_bucket=True)
    env = StreamEnv(kafka.bootstrap_servers, redis_server.url, f"s3://{bucket}/objects", s3_client_kwargs)
    env.create_topics()  # admin over the PLAINTEXT listener; the services below only ever see SASL_SSL
    s3 = dict(s3_client_kwargs)
    frames = 8
    folder = image_folder(tmp_path / "frames", frames)
    worker = ServiceProcess("worker", {**worker_settings(env, bundle), **secure(env, kafka, s3)},
                            tmp_path / "worker.log")
    alerter = ServiceProcess("alerter", {**alerter_settings(env, bundle), **secure(env, kafka, s3)},
                             tmp_path / "alerter.log")
    # cam-s sends claim checks through S3 (inline limit 500 bytes): the object-store credentials are exercised too
    ingestor = ServiceProcess("ingestor", {**ingestor_settings(env, "cam-s", folder, fps=0, max_frames=frames,
                                                               inline_limit_bytes=500),
                                           **secure(env, kafka, s3)}, tmp_path / "ingestor.log")
    consumer = _sasl_consumer(kafka, env, env.topics.results)
    records, metrics = [], {}
    try:
        worker.start()
        alerter.start()
        worker.wait_ready(180)
        alerter.wait_ready(60)
        ingestor.start()
        assert ingestor.wait(120) == 0, ingestor.log_tail()
        import time

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len({json.loads(r.value)["frame_id"] for r in records}) < frames:
            for recs in consumer.poll(timeout_ms=1000).values():
                records.extend(recs)
        metrics = {p.name: p.http("/metrics")[1] for p in (worker, alerter)}
    finally:
        consumer.close()
        for p in (worker, alerter):
            p.terminate()
    assert len({json.loads(r.value)["frame_id"] for r in records}) == frames, worker.log_tail()
    assert worker.proc.returncode == 0 and alerter.proc.returncode == 0, (worker.log_tail(), alerter.log_tail())

    # --print-config of each service with the same secrets in its environment
    printed = []
    for service, settings in (("worker", worker.settings), ("alerter", alerter.settings),
                              ("ingestor", ingestor.settings)):
        done = subprocess.run([sys.executable, "-m", f"services.{service}", "--print-config"], cwd=REPO,
                              env=service_env(service, settings), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        assert shown["kafka_sasl_password"] == shown["redis_password"] == shown["s3_secret_access_key"] == "**********"
        printed.append(done.stdout + done.stderr)

    redis_dump = []
    client = connect(f"redis://:{DEFAULT_PASSWORD}@{redis_server.url.removeprefix('redis://')}")
    for key in client.scan_iter(match=f"{env.prefix}:*", count=1000):
        kind = client.type(key)
        redis_dump.append(json.dumps(client.hgetall(key)) if kind == "hash" else
                          json.dumps(client.xrange(key)) if kind == "stream" else key)
    assert redis_dump, "nothing was written to Redis"

    captured = {
        "logs": "\n".join(p.text() for p in (worker, alerter, ingestor)),
        "metrics": "\n".join(metrics.values()),
        "results": "\n".join(r.value.decode() for r in records),
        "redis": "\n".join(redis_dump),
        "print-config": "\n".join(printed),
    }
    assert captured["logs"] and captured["metrics"] and captured["results"]
    for secret in (KAFKA_PASSWORD, REDIS_PASSWORD, DEFAULT_PASSWORD, s3["aws_secret_access_key"]):
        for where, text in captured.items():
            assert secret not in text, f"a secret leaked into {where}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("wrong", "dependency"), [
    ({"kafka_sasl_password": "not-the-password"}, "kafka"),
    ({"kafka_ssl_cafile": None}, "kafka"),  # TLS against the system trust store: the self-signed broker is refused
    ({"redis_password": "not-the-password"}, "redis"),
    ({"s3_secret_access_key": "not-the-secret"}, "object store"),
])
def test_wrong_credentials_fail_start_up_with_one_line(servers, s3_client_kwargs, tmp_path, wrong, dependency):
    kafka, redis_server = servers
    bucket = f"sec-{uuid.uuid4().hex[:8]}"
    open_object_store(f"s3://{bucket}", s3_client_kwargs, create_bucket=True)
    env = StreamEnv(kafka.bootstrap_servers, redis_server.url, f"s3://{bucket}/objects", s3_client_kwargs)
    folder = image_folder(tmp_path / "frames", 1)
    settings = {**ingestor_settings(env, "cam-x", folder), **secure(env, kafka, dict(s3_client_kwargs)),
                "connect_timeout_s": 5, **wrong}
    if dependency == "redis":  # the ingestor needs no Redis: the alerter checks it
        settings = {**alerter_settings(env, Path("/nonexistent")), **secure(env, kafka, dict(s3_client_kwargs)),
                    "bundle_path": None, "connect_timeout_s": 5, **wrong}
    service = "alerter" if dependency == "redis" else "ingestor"
    done = subprocess.run([sys.executable, "-m", f"services.{service}"], cwd=REPO,
                          env=service_env(service, {**settings, "http_port": -1}), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{service}: {dependency}:"), line
    for secret in (KAFKA_PASSWORD, REDIS_PASSWORD, "not-the-password", "not-the-secret"):
        assert secret not in done.stderr + done.stdout


def test_claim_check_uri_cannot_carry_credentials_or_another_bucket(s3_client_kwargs):
    from services._object_store import ObjectRefusedError

    bucket = f"sec-{uuid.uuid4().hex[:8]}"
    store = open_object_store(f"s3://{bucket}/objects", s3_client_kwargs, create_bucket=True)
    uri = store.put("frames/c/f.jpg", b"jpeg")
    assert store.get(uri) == b"jpeg"
    for hostile in (f"s3://AKIA:secret@{bucket}/objects/frames/c/f.jpg", f"s3://{bucket}.evil/objects/frames/c/f.jpg",
                    f"s3://{bucket}/objects/frames/c/f.jpg?versionId=1", "file:///etc/passwd",
                    f"https://{bucket}.s3.amazonaws.com/objects/frames/c/f.jpg"):
        with pytest.raises(ObjectRefusedError):
            store.get(hostile)


@pytest.mark.timeout(180)
def test_tampered_bundle_is_refused_before_loading(bundle, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    victim = sorted(tampered.glob("*.safetensors"))[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last tensor's data: still a loadable safetensors file
    victim.write_bytes(bytes(data))
    done = subprocess.run([sys.executable, "-m", "services.worker", "--check"], cwd=REPO,
                          env=service_env("worker", {"bundle_path": str(tampered), "device": "cpu", "warmup": False,
                                                     "kafka_bootstrap_servers": "127.0.0.1:9", "connect_timeout_s": 1,
                                                     "object_store_url": f"file://{tmp_path / 'objects'}",
                                                     "redis_url": "redis://127.0.0.1:9/0", "http_port": -1}),
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 2
    model_line = next(line for line in done.stdout.splitlines() if "check: model" in line)
    assert "FAILED" in model_line and victim.name in model_line and "SHA-256 mismatch" in model_line, model_line


def test_no_code_path_unpickles_weights():
    """Every ``torch.load`` in the product passes ``weights_only=True``; bundles are safetensors only."""
    calls = []
    for path in [*(REPO / "ddad_core").rglob("*.py"), *(REPO / "services").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("torch", "pickle"):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", node.func.value.id, safe))
    assert calls, "found no torch.load at all: the check itself is broken"
    unsafe = [c for c in calls if not c[2]]
    assert not unsafe, f"unpickling loads: {unsafe}"
    bundle_src = (REPO / "ddad_core" / "bundle.py").read_text()
    assert "safetensors" in bundle_src and "torch.load" not in bundle_src
