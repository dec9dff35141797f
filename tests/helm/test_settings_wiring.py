"""The chart and the compose file set only settings the services have, with values they accept.

Flow step: deployment. Every environment variable a rendered pod or a compose service gets is loaded with the
service's own settings class (``load_settings``: an unknown ``<PREFIX>_*`` name or a bad value raises), with
Secret references replaced by stand-ins; the compose file uses the same names as the chart for the shared
Kafka, Redis, object-store and topic settings. ``compose.local-deps.yaml``, which swaps the public Kafka, Redis and
MinIO images for the ones ``scripts/build-images.sh deps`` builds, is checked against both: what it replaces, and
that it replaces it the same way under Docker Compose and under podman-compose 1.0.3.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from services._config import CommonSettings, load_settings
from services.alerter.config import AlerterSettings
from services.dashboard.config import DashboardSettings
from services.ingestor.config import IngestorSettings
from services.worker.config import WorkerSettings
from tests.helm._chart import REPO, by_kind, containers, pod_specs, render
from tests.helm.test_chart import VARIANTS

pytestmark = [pytest.mark.helm, pytest.mark.timeout(120)]

COMPOSE = REPO / "deploy" / "compose" / "compose.yaml"
LOCAL_DEPS = REPO / "deploy" / "compose" / "compose.local-deps.yaml"


def _script_class(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return getattr(module, name)


SETTINGS = {
    "WORKER_": WorkerSettings, "INGESTOR_": IngestorSettings, "ALERTER_": AlerterSettings,
    "DASHBOARD_": DashboardSettings,
    "TOPICS_": _script_class(REPO / "deploy" / "kafka" / "ensure_topics.py", "TopicJobSettings"),
    "BUNDLE_": _script_class(REPO / "deploy" / "bundle" / "fetch_bundle.py", "BundleFetchSettings"),
}
COMMON = {name.upper() for name in CommonSettings.model_fields}


def _load(prefix: str, env: dict[str, str], monkeypatch, where: str):
    for name in [k for k in os.environ if k.upper().startswith(prefix)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        return load_settings(SETTINGS[prefix])
    except ValueError as exc:
        pytest.fail(f"{where}: {exc}")


def _stand_in(name: str, tmp_path: Path) -> str:
    if name.endswith("KAFKA_SASL_USERNAME"):
        return "inspection"
    return "stand-in-secret-value-0123456789"  # long enough for DASHBOARD_TOKEN


def _pod_env(container: dict, docs: list[dict], tmp_path: Path) -> dict[str, str]:
    configmaps = {cm["metadata"]["name"]: cm["data"] for cm in by_kind(docs, "ConfigMap")}
    env = {}
    for entry in container.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "secretKeyRef" in entry["valueFrom"]:
            env[entry["name"]] = _stand_in(entry["name"], tmp_path)
        else:
            ref = entry["valueFrom"]["configMapKeyRef"]
            env[entry["name"]] = configmaps[ref["name"]][ref["key"]]
    for name, value in env.items():
        if name.endswith("KAFKA_SSL_CAFILE"):  # mounted from the CA Secret in the pod; a real file here
            ca = tmp_path / Path(value).name
            ca.write_text("-----BEGIN CERTIFICATE-----\n")
            env[name] = str(ca)
    return env


def _prefix_of(env: dict[str, str]) -> str:
    prefixes = {p for p in SETTINGS if any(k.startswith(p) for k in env)}
    assert len(prefixes) == 1, f"one settings prefix per container, got {prefixes}"
    return prefixes.pop()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_rendered_env_var_is_a_setting_of_its_service(variant: str, monkeypatch, tmp_path: Path) -> None:
    docs = render(*VARIANTS[variant])
    seen = set()
    for name, spec in pod_specs(docs):
        for c in containers(spec):
            env = _pod_env(c, docs, tmp_path)
            prefix = _prefix_of(env)
            seen.add(prefix)
            settings = _load(prefix, env, monkeypatch, f"{name}/{c['name']}")
            if prefix != "BUNDLE_":
                assert settings.http_port == 8080 or prefix == "TOPICS_"
            if variant == "production" and prefix not in ("BUNDLE_",):
                assert settings.kafka_security_protocol == "SASL_SSL"
                assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512" and settings.kafka_ssl_cafile
            if variant == "production" and prefix in ("WORKER_", "ALERTER_", "DASHBOARD_"):
                assert settings.redis_password is not None and settings.topic_prefix == "plant1"
    expected = {"WORKER_", "ALERTER_", "TOPICS_"}
    if variant == "single-node-cpu":  # no camera there (frames are published from the node), a dashboard
        expected |= {"BUNDLE_", "DASHBOARD_"}
    elif variant != "default":
        expected |= {"INGESTOR_", "BUNDLE_"} | ({"DASHBOARD_"} if variant == "production" else set())
    assert seen == expected


def _compose_env(service: dict, example: dict[str, str]) -> dict[str, str]:
    def sub(value: str) -> str:
        return re.sub(r"\$\{(\w+)(?::[?-]([^}]*))?\}", lambda m: example.get(m[1]) or "", str(value))
    return {k: sub(v) for k, v in (service.get("environment") or {}).items()}


def _example_env() -> dict[str, str]:
    lines = (REPO / "deploy" / "compose" / "example.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_compose_services_use_settings_the_services_have(monkeypatch) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    example = _example_env()
    checked = set()
    for name, service in compose["services"].items():
        env = _compose_env(service, example)
        prefixes = {p for p in SETTINGS if any(k.startswith(p) for k in env)}
        if not prefixes:
            continue  # kafka, redis, minio: the servers
        settings = _load(prefixes.pop(), env, monkeypatch, f"compose service {name}")
        assert settings.kafka_bootstrap_servers == "kafka:9092"
        checked.add(name)
    assert checked == {"setup", "worker", "alerter", "ingestor", "dashboard"}


def test_compose_and_chart_set_the_shared_settings_by_the_same_names() -> None:
    chart: dict[str, set[str]] = {}
    for args in VARIANTS.values():
        for _, spec in pod_specs(render(*args)):
            for c in spec["containers"]:
                names = {e["name"] for e in c.get("env") or []}
                prefix = next(p for p in SETTINGS if any(n.startswith(p) for n in names))
                chart.setdefault(prefix, set()).update(n[len(prefix):] for n in names if n.startswith(prefix))
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    for service, prefix in (("worker", "WORKER_"), ("alerter", "ALERTER_"), ("ingestor", "INGESTOR_"),
                            ("dashboard", "DASHBOARD_")):
        shared = {n[len(prefix):] for n in compose[service]["environment"]} & COMMON
        assert shared and shared <= chart[prefix], (service, shared - chart[prefix])


def test_compose_runs_kafka_in_kraft_mode_with_pinned_images_and_topics_from_the_file() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    kafka = compose["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller" and "CONTROLLER" in kafka["KAFKA_LISTENERS"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for name, service in compose.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), (name, image)
    setup = " ".join(compose["setup"]["command"])
    # no --file: the definitions the image's services package carries (services/contracts/topics.yaml)
    assert "python /app/deploy/kafka/ensure_topics.py --local &&" in setup
    for name in ("worker", "alerter", "ingestor", "dashboard"):
        assert compose[name]["read_only"] is True and compose[name]["cap_drop"] == ["ALL"], name
        assert compose[name]["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert compose["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # secrets come from the (uncommitted) .env file, never from compose.yaml itself
    text = COMPOSE.read_text()
    for key in ("REDIS_PASSWORD", "S3_SECRET_ACCESS_KEY", "DASHBOARD_TOKEN"):
        assert re.search(rf"\$\{{{key}:\?", text), key
    assert (REPO / "deploy" / "compose" / ".gitignore").read_text().split() == [".env"]


def _server_image_tags() -> dict[str, str]:
    """The tags ``scripts/build-images.sh`` gives the three server images, the pinned versions filled in."""
    from devtools.localstack.common import KAFKA_VERSION, S3PROXY_VERSION

    script = (REPO / "scripts" / "build-images.sh").read_text()
    tags = dict(re.findall(r'^(KAFKA|REDIS|S3PROXY)_IMAGE="\$\{\1_IMAGE:-([^}]+)\}"$', script, re.M))
    return {name: tag.replace("$KAFKA_VERSION", KAFKA_VERSION).replace("$S3PROXY_VERSION", S3PROXY_VERSION)
            for name, tag in tags.items()}


def _clashes(base, override, path: tuple = ()) -> list[tuple]:
    """Where the two files disagree on a value's type, or both hold a list: podman-compose 1.0.3 refuses the first and
    appends the second file's list to the first's, where Docker Compose replaces it."""
    if isinstance(base, dict) and isinstance(override, dict):
        return [c for key in base.keys() & override.keys() for c in _clashes(base[key], override[key], (*path, key))]
    return [path] if type(base) is not type(override) or isinstance(base, list) else []


def _merge(base, override):
    """A second compose file over the first, as both tools do it when no list meets a list: mappings merged."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: _merge(base.get(key), value) for key, value in override.items()}}
    return override


def _image_healthcheck(dockerfile: str) -> list[str]:
    text = re.sub(r"\\\n\s*", " ", (REPO / "deploy" / "docker" / dockerfile).read_text())
    return json.loads(re.search(r"^HEALTHCHECK .*? CMD (\[.*\])$", text, re.M)[1])


def test_the_local_deps_file_swaps_exactly_the_three_servers_for_the_images_build_images_makes() -> None:
    override = yaml.safe_load(LOCAL_DEPS.read_text())
    assert set(override) == {"services"}
    images = {name: service["image"] for name, service in override["services"].items()}
    tags = _server_image_tags()
    assert images == {"kafka": tags["KAFKA"], "redis": tags["REDIS"], "minio": tags["S3PROXY"]}


def test_the_local_deps_file_replaces_values_the_same_way_under_both_compose_tools() -> None:
    assert _clashes(yaml.safe_load(COMPOSE.read_text()), yaml.safe_load(LOCAL_DEPS.read_text())) == []


def test_the_local_servers_get_what_their_images_read() -> None:
    example = _example_env()
    merged = _merge(yaml.safe_load(COMPOSE.read_text()), yaml.safe_load(LOCAL_DEPS.read_text()))["services"]
    # s3proxy stands in for MinIO: it needs its credentials, and they are the ones every service signs with
    entrypoint = (REPO / "deploy" / "docker" / "deps" / "s3proxy-entrypoint.sh").read_text()
    required = set(re.findall(r'^: "\$\{(\w+):\?', entrypoint, re.M))
    s3 = _compose_env(merged["minio"], example)
    assert required == {"S3PROXY_IDENTITY", "S3PROXY_CREDENTIAL"} and required <= set(s3)
    for name in ("setup", "worker", "ingestor", "dashboard"):
        env = _compose_env(merged[name], example)
        prefix = _prefix_of(env)
        assert (env[f"{prefix}S3_ACCESS_KEY_ID"], env[f"{prefix}S3_SECRET_ACCESS_KEY"]) == \
            (s3["S3PROXY_IDENTITY"], s3["S3PROXY_CREDENTIAL"]), name
        assert env[f"{prefix}S3_ENDPOINT_URL"] == "http://minio:9000"
    assert merged["minio"]["command"] == "/data" and "minio-data:/data" in merged["minio"]["volumes"]
    # the health checks are the images' own, and Kafka keeps every KAFKA_* setting compose.yaml gives it
    assert shlex.split(merged["kafka"]["healthcheck"]["test"]) == _image_healthcheck("kafka.Dockerfile")
    assert shlex.split(merged["minio"]["healthcheck"]["test"]) == _image_healthcheck("s3proxy.Dockerfile")
    assert merged["kafka"]["environment"] == yaml.safe_load(COMPOSE.read_text())["services"]["kafka"]["environment"]
    # every service of the product is left as compose.yaml has it
    product = {n: v for n, v in yaml.safe_load(COMPOSE.read_text())["services"].items()
               if n not in ("kafka", "redis", "minio")}
    assert all(merged[n] == v for n, v in product.items())


def test_compose_files_use_only_substitutions_podman_compose_understands() -> None:
    # podman-compose 1.0.3 leaves ${VAR:-} (an empty default) in place, so a service would get the text itself
    for path in (COMPOSE, LOCAL_DEPS):
        for ref in re.findall(r"\$\{[^}]*\}", path.read_text()):
            assert re.fullmatch(r"\$\{\w+(:-[^}]+|:\?[^}]+)?\}", ref), (path.name, ref)
