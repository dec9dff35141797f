"""The topic definitions (``services/contracts/topics.yaml``) and the topic Job that applies them, against real Kafka.

Flow step: deployment. The same file feeds the chart's hook Job, the compose file and the local stack; the Job
(``deploy/kafka/ensure_topics.py``) must create, grow and re-configure topics idempotently and reject bad input
with the field named.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from services._kafka import default_topic_specs, load_topic_specs
from services.contracts.topics import BASE_TOPICS, TOPICS_FILE, Topics, read_topic_definitions

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "deploy" / "kafka" / "ensure_topics.py"

pytestmark = pytest.mark.timeout(120)


def _write(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(TOPICS_FILE.read_text())
    mutate(data)
    path = tmp_path / f"topics-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _job(bootstrap: str, prefix: str, *args: str, timeout_s: str = "10") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPICS_")}
    env.update(TOPICS_KAFKA_BOOTSTRAP_SERVERS=bootstrap, TOPICS_TOPIC_PREFIX=prefix, TOPICS_CONNECT_TIMEOUT_S=timeout_s)
    return subprocess.run([sys.executable, str(JOB), *args], env=env, capture_output=True, text=True, timeout=90)


def test_the_file_defines_every_topic_of_the_product() -> None:
    defs = read_topic_definitions()
    assert sorted(defs.topics) == sorted(BASE_TOPICS)
    assert defs.topics["frames"].partitions >= 2 and defs.replicas >= defs.min_insync_replicas
    # frames: short-lived; dlq must hold any frame the topic accepted
    assert defs.topics["frames"].retention_ms <= 24 * 3600 * 1000
    assert defs.topics["frames.dlq"].max_message_bytes >= defs.topics["frames"].max_message_bytes
    local = default_topic_specs(Topics("p"))
    cluster = load_topic_specs(Topics("p"))
    assert set(local) == set(cluster) == {f"p.{t}" for t in BASE_TOPICS}
    assert all(s.replicas == -1 and "min.insync.replicas" not in s.configs() for s in local.values())
    assert all(s.replicas == defs.replicas for s in cluster.values())
    assert cluster["p.frames"].configs()["min.insync.replicas"] == str(defs.min_insync_replicas)
    assert default_topic_specs(Topics(), 9)["frames"].partitions == 9


@pytest.mark.parametrize(("mutate", "named"), [
    (lambda d: d["topics"]["frames"].update(partitions=0), "topics.frames.partitions"),
    (lambda d: d["topics"]["results"]["config"].update({"retention.ms": 5}), "quoted strings"),
    (lambda d: d["topics"].pop("defects"), "missing: defects"),
    (lambda d: d.update(minInsyncReplicas=4), "minInsyncReplicas (4) must not exceed replicas (3)"),
    (lambda d: d.update(replica=2), "replica"),
])
def test_a_bad_definitions_file_is_rejected_with_the_field_named(tmp_path: Path, mutate, named: str) -> None:
    with pytest.raises(ValueError, match="invalid topic definitions") as err:
        read_topic_definitions(_write(tmp_path, mutate))
    assert named in str(err.value)


def test_the_job_creates_grows_reconfigures_and_is_idempotent(kafka_bootstrap_servers: str, tmp_path: Path) -> None:
    prefix = f"job{uuid.uuid4().hex[:6]}"
    first = _job(kafka_bootstrap_servers, prefix, "--local")
    assert first.returncode == 0, first.stderr
    assert sorted(line.split()[-1] for line in first.stdout.splitlines() if " created " in line) == \
        sorted(f"{prefix}.{t}" for t in BASE_TOPICS)

    again = _job(kafka_bootstrap_servers, prefix, "--local")
    assert again.returncode == 0 and "all topics up to date" in again.stdout, again.stdout + again.stderr

    def scale(d):
        d["topics"]["frames"]["partitions"] = 8
        d["topics"]["frames"]["config"]["retention.ms"] = "1800000"
    grown = _job(kafka_bootstrap_servers, prefix, "--local", "--file", str(_write(tmp_path, scale)))
    assert grown.returncode == 0, grown.stderr
    assert f"grew {prefix}.frames from 6 to 8 partitions" in grown.stdout
    assert f"set retention.ms on {prefix}.frames" in grown.stdout

    admin = KafkaAdminClient(bootstrap_servers=[kafka_bootstrap_servers], client_id="test-topic-job")
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics([f"{prefix}.frames"])}
        assert described == {f"{prefix}.frames": 8}
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, f"{prefix}.frames")],
                                         config_filter="all")
        values = next(iter(configs.values()))[f"{prefix}.frames"]
        assert values["retention.ms"]["value"] == "1800000"
    finally:
        admin.close()

    shrink = _job(kafka_bootstrap_servers, prefix, "--local", "--file",
                  str(_write(tmp_path, lambda d: d["topics"]["frames"].update(partitions=2))))
    assert shrink.returncode == 0, shrink.stderr
    assert f"kept {prefix}.frames at 8 partitions (wanted 2" in shrink.stdout


def test_the_job_refuses_more_replicas_than_brokers(kafka_bootstrap_servers: str) -> None:
    prefix = f"rep{uuid.uuid4().hex[:6]}"
    done = _job(kafka_bootstrap_servers, prefix)  # the file's replicas: 3, the test broker is one
    assert done.returncode == 2
    assert "need 3 replicas but the cluster has 1 broker(s)" in done.stderr


def test_the_job_names_an_unreachable_cluster_and_a_bad_setting() -> None:
    done = _job("127.0.0.1:1", "x", "--local", timeout_s="2")
    assert done.returncode == 2 and "no answer from Kafka at 127.0.0.1:1 within 2 s" in done.stderr
    env = {**os.environ, "TOPICS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    bad = subprocess.run([sys.executable, str(JOB)], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "SASL" in bad.stderr
