"""The Helm chart ``helm/ddad-inspection``: linted, rendered and schema-checked with the real tools, and the
properties a platform team reviews asserted on the rendered manifests.

Flow step: deployment. Two value sets: the defaults and ``values-production.yaml`` (GPU, KEDA, TLS + SASL,
ServiceMonitor, PrometheusRule, NetworkPolicies, dashboard with Ingress), plus an HPA variant.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from services.contracts.topics import TOPICS_FILE, read_topic_definitions
from tests.helm._chart import (
    CHART,
    PRODUCTION,
    SINGLE_NODE_CPU,
    by_kind,
    containers,
    crd_schema_dir,
    helm_template,
    kubeconform,
    kubernetes_schema_dir,
    pod_specs,
    render,
    run,
    tool,
)

pytestmark = [pytest.mark.helm, pytest.mark.timeout(300)]

VARIANTS = {
    "default": [],
    "production": ["-f", str(PRODUCTION)],
    "hpa": ["-f", str(PRODUCTION), "--set", "worker.autoscaling.type=hpa", "--set", "dashboard.enabled=false"],
    "single-node-cpu": ["-f", str(SINGLE_NODE_CPU)],
}
# The variants of values-production.yaml (digests, SASL, 12 partitions); single-node-cpu loads its images locally.
PRODUCTION_LIKE = ("production", "hpa")
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.I)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(*args) for name, args in VARIANTS.items()}


@pytest.fixture(scope="module")
def schema_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("schemas")
    return kubernetes_schema_dir(root / "kubernetes"), crd_schema_dir(root / "crds")


@pytest.mark.parametrize("variant", ["default", "production"])
def test_helm_lint_strict(variant: str) -> None:
    done = run(tool("helm"), "lint", "--strict", CHART, *VARIANTS[variant])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_manifest_is_valid_for_kubeconform_strict(variant: str, rendered, schema_dirs, tmp_path: Path) -> None:
    docs = rendered[variant]
    manifests = tmp_path / f"{variant}.yaml"
    manifests.write_text(yaml.safe_dump_all(docs))
    done = kubeconform(manifests, *schema_dirs)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["summary"]["invalid"] == 0 and report["summary"]["errors"] == 0, \
        json.dumps(report["resources"], indent=1)
    assert report["summary"]["valid"] == len(docs) and report["summary"]["skipped"] == 0
    kinds = {d["kind"] for d in docs}
    if variant == "production":
        assert {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule", "NetworkPolicy",
                "Ingress", "Job"} <= kinds
    if variant == "hpa":
        assert "HorizontalPodAutoscaler" in kinds and "ScaledObject" not in kinds


@pytest.mark.parametrize(("kind", "path", "field"), [
    ("Deployment", ["spec", "template", "spec", "containers", 0], "imagePullPolicyy"),
    ("ScaledObject", ["spec"], "maxReplicas"),          # the KEDA field is maxReplicaCount
    ("ServiceMonitor", ["spec", "endpoints", 0], "scrapeInterval"),  # it is `interval`
])
def test_kubeconform_rejects_an_unknown_field(kind, path, field, rendered, schema_dirs, tmp_path: Path) -> None:
    # The validation above can fail: a typo in a built-in or a custom resource is caught.
    doc = json.loads(json.dumps(by_kind(rendered["production"], kind)[0]))
    node = doc
    for step in path:
        node = node[step]
    node[field] = 1
    manifests = tmp_path / "bad.yaml"
    manifests.write_text(yaml.safe_dump(doc))
    done = kubeconform(manifests, *schema_dirs)
    assert done.returncode != 0 and field in done.stdout, done.stdout


@pytest.mark.parametrize("variant", ["default", "production"])
def test_workers_request_gpus_and_land_on_gpu_nodes(variant: str, rendered) -> None:
    worker = next(d for d in by_kind(rendered[variant], "Deployment") if d["metadata"]["name"].endswith("-worker"))
    spec = worker["spec"]["template"]["spec"]
    main = next(c for c in spec["containers"] if c["name"] == "worker")
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    if variant == "production":
        assert spec["runtimeClassName"] == "nvidia" and spec["affinity"]["podAntiAffinity"]
        assert spec["topologySpreadConstraints"]
    for other in by_kind(rendered[variant], "Deployment"):
        if other is not worker:  # the CPU components never take a GPU
            assert all("nvidia.com/gpu" not in (c.get("resources", {}).get("limits") or {})
                       for c in other["spec"]["template"]["spec"]["containers"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_no_container_runs_as_root_or_privileged(variant: str, rendered) -> None:
    pods = pod_specs(rendered[variant])
    assert len(pods) >= 3
    for name, spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 1) != 0, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False, (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), (name, c["name"])
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", (name, c["name"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_no_secret_value_is_rendered_into_a_configmap_or_an_env_literal(variant: str, rendered) -> None:
    docs = rendered[variant]
    assert not by_kind(docs, "Secret")  # the chart only references Secrets that exist
    secret_refs = 0
    for name, spec in pod_specs(docs):
        for c in containers(spec):
            for env in c.get("env") or []:
                if SECRETISH.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], (name, env)
                    secret_refs += 1
                elif "value" in env:
                    # no URL with credentials in it (redis://user:pw@, rtsp://user:pw@, s3 keys)
                    assert not re.search(r"://[^/@\s]*:[^/@\s]+@", env["value"]), (name, env)
    if variant in PRODUCTION_LIKE:
        assert secret_refs >= 10  # SASL user/password, S3 keys, Redis password, dashboard token
    elif variant == "single-node-cpu":
        assert secret_refs >= 5  # S3 keys of the bundle fetch and the services, dashboard token
    for cm in by_kind(docs, "ConfigMap"):
        text = json.dumps(cm["data"])
        assert not re.search(r"(password|secret|token)\W*[:=]", text, re.I), cm["metadata"]["name"]


@pytest.mark.parametrize(("settings", "named"), [
    # (helm reports a wrong location for propertyNames errors, but names the property)
    (["--set", "worker.env.WORKER_S3_SECRET_ACCESS_KEY=abc"], "invalid propertyName 'WORKER_S3_SECRET_ACCESS_KEY'"),
    (["--set", "redis.url=redis://:hunter2@redis:6379/0"], "/redis/url"),
    (["--set", "dashboard.env.DASHBOARD_TOKEN=0123456789abcdef"], "invalid propertyName 'DASHBOARD_TOKEN'"),
])
def test_secret_values_cannot_be_given_as_plain_values(settings, named: str) -> None:
    done = helm_template(*settings)
    assert done.returncode != 0 and named in done.stderr, done.stderr


def _frames_partitions(docs: list[dict]) -> int:
    cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-topics"))
    return yaml.safe_load(cm["data"]["topics.yaml"])["topics"]["frames"]["partitions"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_worker_replicas_never_exceed_the_partitions_of_frames(variant: str, rendered) -> None:
    docs = rendered[variant]
    partitions = _frames_partitions(docs)
    worker = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-worker"))
    for scaled in by_kind(docs, "ScaledObject"):
        assert scaled["spec"]["minReplicaCount"] >= 1  # a warm GPU pod stays
        assert scaled["spec"]["maxReplicaCount"] <= partitions
        trigger = scaled["spec"]["triggers"][0]
        assert trigger["type"] == "kafka" and trigger["metadata"]["allowIdleConsumers"] == "false"
        assert trigger["metadata"]["topic"] == "plant1.frames"
        behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 600
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["maxReplicas"] <= partitions and hpa["spec"]["minReplicas"] >= 1
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 600
    if not (by_kind(docs, "ScaledObject") or by_kind(docs, "HorizontalPodAutoscaler")):
        assert 1 <= worker["spec"]["replicas"] <= partitions
    else:
        assert "replicas" not in worker["spec"]  # the autoscaler owns it


@pytest.mark.parametrize(("settings", "message"), [
    (["--set", "worker.replicas=7"], "worker.replicas (7) exceeds the 6 partitions of frames"),
    (["-f", str(PRODUCTION), "--set", "worker.autoscaling.maxReplicas=13"],
     "worker.autoscaling.maxReplicas (13) exceeds the 12 partitions of frames"),
    (["--set", "topics.overrides.framez.partitions=8"], "invalid propertyName 'framez'"),
    (["--set", "worker.terminationGracePeriodSeconds=40"], "must exceed preStopSleepSeconds + drainTimeoutSeconds"),
    (["--set", "dashboard.enabled=true"], "dashboard.tokenSecret is required"),
    (["--set", "kafka.securityProtocol=SASL_SSL"], "kafka.sasl.existingSecret is required"),
    (["--set", "worker.bundle.source=objectStore"], "worker.bundle.objectStore.uri and"),
])
def test_inconsistent_values_fail_at_render_time_with_the_value_named(settings, message: str) -> None:
    done = helm_template(*settings)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_more_partitions_allow_more_workers() -> None:
    docs = render("--set", "topics.overrides.frames.partitions=8", "--set", "worker.replicas=8")
    assert _frames_partitions(docs) == 8


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_topic_job_applies_the_single_topic_definitions_file(variant: str, rendered, tmp_path: Path) -> None:
    docs = rendered[variant]
    cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-topics"))
    job = by_kind(docs, "Job")[0]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    weight = int(cm["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert weight < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])  # the ConfigMap exists first
    assert "ensure_topics.py" in " ".join(job["spec"]["template"]["spec"]["containers"][0]["command"])
    # What the Job reads is valid for the Job's own parser, and equals the packaged topics.yaml plus the overrides.
    path = tmp_path / "topics.yaml"
    path.write_text(cm["data"]["topics.yaml"])
    job_defs = read_topic_definitions(path)
    file_defs = read_topic_definitions(TOPICS_FILE)
    expected = {name: d.partitions for name, d in file_defs.topics.items()}
    if variant in PRODUCTION_LIKE:
        expected.update(frames=12, results=12)
    assert {name: d.partitions for name, d in job_defs.topics.items()} == expected
    assert job_defs.topics["frames"].config == file_defs.topics["frames"].config
    assert (CHART / "files" / "topics.yaml").resolve() == TOPICS_FILE.resolve()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_probes_drain_and_rollout_settings(variant: str, rendered) -> None:
    for d in by_kind(rendered[variant], "Deployment"):
        spec = d["spec"]["template"]["spec"]
        for c in spec["containers"]:
            assert c["startupProbe"]["httpGet"]["path"] == "/readyz", d["metadata"]["name"]
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", d["metadata"]["name"]
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", d["metadata"]["name"]
            assert c["ports"][0]["containerPort"] == 8080
        if d["metadata"]["name"].endswith("-worker"):
            main = spec["containers"][0]
            startup = main["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model load + warm-up
            assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
            env = {e["name"]: e.get("value") for e in main["env"]}
            pre_stop = main["lifecycle"]["preStop"]["sleep"]["seconds"]
            assert spec["terminationGracePeriodSeconds"] > pre_stop + float(env["WORKER_DRAIN_TIMEOUT_S"]) + 10
        if "-ingestor-" in d["metadata"]["name"]:
            assert d["spec"]["strategy"]["type"] == "Recreate" and d["spec"]["replicas"] == 1
    pdbs = {p["metadata"]["name"].rsplit("-", 1)[-1]: p["spec"]
            for p in by_kind(rendered[variant], "PodDisruptionBudget")}
    assert pdbs["worker"]["maxUnavailable"] == 1 and "alerter" in pdbs


def test_production_bundle_comes_from_the_object_store_through_a_verifying_init_container(rendered) -> None:
    worker = next(d for d in by_kind(rendered["production"], "Deployment") if d["metadata"]["name"].endswith("-worker"))
    spec = worker["spec"]["template"]["spec"]
    init = spec["initContainers"][0]
    assert init["command"][-1].endswith("deploy/bundle/fetch_bundle.py")
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert re.fullmatch(r"[0-9a-f]{64}", env["BUNDLE_SHA256"]) and env["BUNDLE_OBJECT_STORE_URL"].startswith("s3://")
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["bundle"]["readOnly"] is True
    default_worker = next(d for d in by_kind(rendered["default"], "Deployment")
                          if d["metadata"]["name"].endswith("-worker"))
    volume = default_worker["spec"]["template"]["spec"]["volumes"][0]
    assert volume["persistentVolumeClaim"]["readOnly"] is True


def test_network_policies_let_workers_reach_only_kafka_redis_and_the_object_store(rendered) -> None:
    policies = {p["metadata"]["name"].rsplit("-", 1)[-1]: p["spec"]
                for p in by_kind(rendered["production"], "NetworkPolicy")}
    worker = policies["worker"]
    assert set(worker["policyTypes"]) == {"Ingress", "Egress"}
    egress_ports = sorted(p["port"] for rule in worker["egress"] for p in rule["ports"])
    assert egress_ports == sorted([53, 53, 9093, 6380, 9000])  # DNS (UDP+TCP), Kafka, Redis, object store
    assert all(rule.get("to") for rule in worker["egress"])  # every rule names its peers
    assert worker["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == \
        {"kubernetes.io/metadata.name": "monitoring"}
    assert 554 not in egress_ports and 554 in [p["port"] for r in policies["ingestor"]["egress"] for p in r["ports"]]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_image_is_pinned(variant: str, rendered) -> None:
    for name, spec in pod_specs(rendered[variant]):
        for c in containers(spec):
            image = c["image"]
            repo, _, tag = image.split("@")[0].rpartition(":")
            assert repo and tag and tag != "latest" and "/" in repo, (name, image)
            if variant in PRODUCTION_LIKE:
                assert re.search(r"@sha256:[0-9a-f]{64}$", image), (name, image)


@pytest.mark.parametrize("tag", ["latest", ""])
def test_an_unpinned_image_tag_is_rejected(tag: str) -> None:
    done = helm_template("--set-string", f"images.worker.tag={tag}")
    assert done.returncode != 0 and "/images/worker/tag" in done.stderr, done.stderr


@pytest.mark.parametrize(("values", "named"), [
    ({"worker": {"replicass": 2}}, "additional properties 'replicass' not allowed"),
    ({"kafka": {"securityProtocol": "TLS"}}, "/kafka/securityProtocol"),
    ({"worker": {"gpu": {"count": 0}}}, "/worker/gpu/count"),
    ({"containerSecurityContext": {"runAsNonRoot": False}}, "/containerSecurityContext/runAsNonRoot"),
    ({"ingestor": {"cameras": [{"id": "Cam_1", "source": "rtsp://cam"}]}}, "/ingestor/cameras/0/id"),
])
def test_a_values_file_that_violates_the_schema_is_rejected(values: dict, named: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(yaml.safe_dump(values))
    for cmd in (helm_template("-f", str(bad)), run(tool("helm"), "lint", "--strict", CHART, "-f", str(bad))):
        out = cmd.stdout + cmd.stderr
        assert cmd.returncode != 0, out
        assert "values don't meet the specifications of the schema" in out and named in out, out


def test_the_packaged_chart_carries_the_linked_definition_files(tmp_path: Path) -> None:
    # files/topics.yaml and files/prometheus-rules.yaml link into deploy/; a packaged chart holds their content.
    import tarfile

    done = run(tool("helm"), "package", CHART, "--destination", tmp_path)
    assert done.returncode == 0, done.stderr
    with tarfile.open(next(tmp_path.glob("ddad-inspection-*.tgz"))) as archive:
        topics = archive.extractfile("ddad-inspection/files/topics.yaml").read()
        rules = archive.extractfile("ddad-inspection/files/prometheus-rules.yaml").read()
        names = archive.getnames()
    assert topics == TOPICS_FILE.read_bytes()
    assert rules == (CHART.parents[1] / "deploy" / "prometheus" / "rules.yaml").read_bytes()
    assert "ddad-inspection/values.schema.json" in names and "ddad-inspection/templates/NOTES.txt" in names
