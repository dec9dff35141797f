"""The chart installed with ``helm install`` into a real Kubernetes API server (Debian's etcd + kube-apiserver
built by ``scripts/bootstrap.sh``), with the KEDA and Prometheus Operator CRDs installed first.

Flow step: deployment. Admission and the server's own validation (field formats, quantities, label and name
rules, NetworkPolicy ports, CRD structural schemas and their CEL rules, unknown fields reported by the server's
field validation) happen here, not on a customer's cluster. The API server runs without a scheduler or
controllers: objects are admitted and stored, no pod runs.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devtools.localstack import free_port
from tests.helm._chart import CHART, CRD_MODULES, PRODUCTION, _go_module_dir, ddad_home, run, tool

pytestmark = [pytest.mark.helm, pytest.mark.timeout(300)]

TOKEN = "ddad-test-admin-token"


def _binary(name: str) -> str:
    """``$DDAD_<NAME>``, then the bootstrap's GOBIN, then PATH."""
    built = ddad_home() / "go" / "bin" / name
    path = os.environ.get(f"DDAD_{name.upper().replace('-', '_')}") or (str(built) if built.is_file() else None) \
        or shutil.which(name)
    if not path or not Path(path).is_file():
        pytest.fail(f"{name} not found (DDAD_{name.upper().replace('-', '_')}, {built}, PATH): run "
                    "`bash scripts/bootstrap.sh` (kube-apiserver is built with Go, etcd is Debian's etcd-server)")
    return path


def _wait(url: str, timeout_s: float, headers: dict | None = None) -> None:
    ctx = ssl._create_unverified_context()
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
                if r.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout_s} s: {last}")


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("apiserver")
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    logs = []
    etcd_log = open(root / "etcd.log", "w")
    logs.append(etcd_log)
    etcd = subprocess.Popen([_binary("etcd"), "--data-dir", str(root / "etcd"),
                             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-cluster", f"default=http://127.0.0.1:{peer_port}"],
                            stdout=etcd_log, stderr=subprocess.STDOUT)
    api = None
    try:
        _wait(f"http://127.0.0.1:{etcd_port}/health", 30)
        subprocess.run(["openssl", "genrsa", "-out", str(root / "sa.key"), "2048"], check=True, capture_output=True)
        (root / "tokens.csv").write_text(f'{TOKEN},admin,admin,"system:masters"\n')
        api_log = open(root / "apiserver.log", "w")
        logs.append(api_log)
        api = subprocess.Popen([_binary("kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                                f"--secure-port={api_port}", "--bind-address=127.0.0.1",
                                f"--cert-dir={root / 'certs'}", "--service-cluster-ip-range=10.0.0.0/24",
                                "--service-account-issuer=https://kubernetes.default.svc",
                                f"--service-account-key-file={root / 'sa.key'}",
                                f"--service-account-signing-key-file={root / 'sa.key'}",
                                f"--token-auth-file={root / 'tokens.csv'}", "--authorization-mode=RBAC",
                                "--allow-privileged=false"],
                               stdout=api_log, stderr=subprocess.STDOUT)
        _wait(f"https://127.0.0.1:{api_port}/readyz", 120, {"Authorization": f"Bearer {TOKEN}"})
        config = root / "kubeconfig"
        config.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": f"https://127.0.0.1:{api_port}",
                                                      "insecure-skip-tls-verify": True}}],
            "users": [{"name": "admin", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}]}))
        config.chmod(0o600)
        yield config
    finally:
        for proc in (api, etcd):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for log in logs:
            log.close()


def _helm(kubeconfig: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env_args = ("--kubeconfig", str(kubeconfig))
    return run(tool("helm"), *args, *env_args, timeout=timeout)


def _crd_chart(root: Path) -> Path:
    chart = root / "crds"
    (chart / "crds").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: test-crds\nversion: 0.1.0\n")
    wanted = {"keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml",
              "monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml"}
    for module, folder in CRD_MODULES.items():
        for file in (_go_module_dir(module) / folder).glob("*.yaml"):
            if file.name in wanted:
                shutil.copy(file, chart / "crds" / file.name)
    assert len(list((chart / "crds").iterdir())) == len(wanted)
    return chart


@pytest.fixture(scope="module")
def installed(kubeconfig: Path, tmp_path_factory) -> subprocess.CompletedProcess:
    """The CRDs, then the chart with the production values (``--no-hooks``: see the hook test)."""
    crds = _helm(kubeconfig, "install", "crds", str(_crd_chart(tmp_path_factory.mktemp("crds"))), "--namespace",
                 "default", "--wait")
    assert crds.returncode == 0, crds.stderr
    return _helm(kubeconfig, "install", "insp", str(CHART), "-f", str(PRODUCTION), "--namespace", "inspection",
                 "--create-namespace", "--no-hooks")


def test_the_chart_installs_into_a_real_api_server(installed: subprocess.CompletedProcess, kubeconfig: Path) -> None:
    assert installed.returncode == 0, installed.stderr
    assert "unknown field" not in installed.stderr, installed.stderr  # the server's field validation warnings
    listed = _helm(kubeconfig, "get", "manifest", "insp", "--namespace", "inspection")
    kinds = {d["kind"] for d in yaml.safe_load_all(listed.stdout) if d}
    assert {"Deployment", "ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule",
            "NetworkPolicy", "PodDisruptionBudget", "Ingress"} <= kinds
    status = _helm(kubeconfig, "status", "insp", "--namespace", "inspection", "-o", "json")
    assert json.loads(status.stdout)["info"]["status"] == "deployed"


def _api_get(kubeconfig: Path, path: str) -> dict:
    config = yaml.safe_load(kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    req = urllib.request.Request(server + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10, context=ssl._create_unverified_context()) as response:
        return json.loads(response.read())


def test_the_stored_objects_keep_what_the_chart_guarantees(installed, kubeconfig: Path) -> None:
    # Read back what the server stored (its defaults applied).
    worker = _api_get(kubeconfig, "/apis/apps/v1/namespaces/inspection/deployments/insp-ddad-inspection-worker")
    pod = worker["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["initContainers"][0]["name"] == "fetch-bundle"
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    scaled = _api_get(kubeconfig,
                      "/apis/keda.sh/v1alpha1/namespaces/inspection/scaledobjects/insp-ddad-inspection-worker")
    assert scaled["spec"]["maxReplicaCount"] == 12
    policies = _api_get(kubeconfig, "/apis/networking.k8s.io/v1/namespaces/inspection/networkpolicies")["items"]
    assert len(policies) == 4  # the topic Job's policy is a hook (installed in the test below)


def test_the_hook_resources_are_admitted_too(installed, kubeconfig: Path, tmp_path: Path) -> None:
    # `--no-hooks` above: the topic Job would wait for a completion that needs controllers. Its ConfigMap, Job and
    # NetworkPolicy go in here as plain resources of a second chart (hook annotations dropped).
    hooks = []
    for template in ("templates/topics-job.yaml", "templates/networkpolicies.yaml"):
        done = run(tool("helm"), "template", "insp", str(CHART), "-f", str(PRODUCTION), "--namespace", "inspection",
                   "--show-only", template)
        assert done.returncode == 0, done.stderr
        for doc in yaml.safe_load_all(done.stdout):
            if doc and "helm.sh/hook" in (doc["metadata"].get("annotations") or {}):
                doc["metadata"]["annotations"] = {k: v for k, v in doc["metadata"]["annotations"].items()
                                                  if not k.startswith("helm.sh/hook")}
                doc["metadata"]["name"] += "-check"
                hooks.append(doc)
    assert {d["kind"] for d in hooks} == {"ConfigMap", "Job", "NetworkPolicy"}
    chart = tmp_path / "hooks"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: hooks-check\nversion: 0.1.0\n")
    # The rendered objects hold no template syntax except Prometheus' own {{ }}, which these kinds do not carry.
    (chart / "templates" / "hooks.yaml").write_text(yaml.safe_dump_all(hooks))
    done = _helm(kubeconfig, "install", "hooks-check", str(chart), "--namespace", "inspection")
    assert done.returncode == 0 and "unknown field" not in done.stderr, done.stderr
    job = _api_get(kubeconfig, "/apis/batch/v1/namespaces/inspection/jobs/insp-ddad-inspection-topics-check")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][1] == "/app/deploy/kafka/ensure_topics.py"


def test_the_server_reports_what_the_schemas_let_through(installed, kubeconfig: Path, tmp_path: Path) -> None:
    # Negative control: the server's validation really runs. A quantity that no JSON schema checks is refused,
    # and an unknown field is reported in helm's output.
    chart = tmp_path / "bad"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: bad\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe, labels: {app: ok}}\ndata: {a: b}\nbogus: 1\n")
    warned = _helm(kubeconfig, "install", "warned", str(chart), "--namespace", "inspection")
    assert "unknown field" in warned.stderr and "bogus" in warned.stderr, warned.stderr
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: probe}\nspec:\n  containers:\n  - name: c\n    image: x:1\n"
        "    resources: {limits: {memory: 12 gigs}}\n")
    refused = _helm(kubeconfig, "install", "refused", str(chart), "--namespace", "inspection")
    assert refused.returncode != 0 and "quantities must match the regular expression" in refused.stderr, \
        refused.stderr
