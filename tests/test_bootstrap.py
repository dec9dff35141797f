"""Set-up: ``scripts/demo.sh`` installs only what the demo runs, ``scripts/test.sh`` everything the tests need.

Checked with the bootstrap's plan mode (``DDAD_SETUP_PLAN=1``: it prints which steps would run and stops), from an
empty ``$DDAD_HOME`` and a ``PATH`` without the servers and tools, so nothing is downloaded or installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash") or "/bin/bash"
TEST_TOOLS = ("helm", "kubeconform", "promtool", "kube-apiserver", "chromium", "etcd")
#: Commands hidden from the bootstrap, so that each step is planned as on a machine without them.
HIDDEN = {*TEST_TOOLS, "redis-server", "go", "java", "mvn"}
#: Variables that point the bootstrap at existing servers or binaries (they would change the plan).
OVERRIDES = (
    "DDAD_SETUP", "DDAD_SETUP_PLAN", "DDAD_HELM", "DDAD_KUBECONFORM", "DDAD_PROMTOOL", "DDAD_KUBE_APISERVER",
    "DDAD_ETCD", "DDAD_CHROMIUM", "KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "S3_ENDPOINT_URL", "JAVA_HOME",
)  # fmt: skip


@pytest.fixture(scope="module")
def bare_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ``PATH`` with every command of this one except ``HIDDEN`` (links in one folder)."""
    bin_dir = tmp_path_factory.mktemp("bin")
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            link = bin_dir / entry.name
            if entry.name in HIDDEN or link.exists() or link.is_symlink():
                continue
            if entry.is_file() and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    return str(bin_dir)


def plan(tmp_path: Path, bare_path: str, script: str, **env: str) -> tuple[dict[str, str], subprocess.CompletedProcess]:
    """Run ``script`` in plan mode with an empty ``$DDAD_HOME``; return step -> planned action, and the process."""
    environ = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    environ.update(DDAD_HOME=str(tmp_path / "home"), PATH=bare_path, DDAD_SETUP_PLAN="1", **env)
    proc = subprocess.run([BASH, script], cwd=REPO, env=environ, capture_output=True, text=True, timeout=60)
    steps = {}
    for line in proc.stdout.splitlines():
        if line.startswith("[bootstrap] plan ") and not line.startswith("[bootstrap] plan for "):
            step, _, action = line.removeprefix("[bootstrap] plan ").partition(" ")
            steps[step] = action.strip()
    return steps, proc


def test_demo_plans_only_what_the_demo_runs(tmp_path, bare_path):
    steps, proc = plan(tmp_path, bare_path, "scripts/demo.sh", DDAD_SETUP="test")  # demo.sh sets its own
    assert proc.returncode == 0, proc.stderr
    assert "DDAD_SETUP=demo" in proc.stdout
    assert steps["venv"].startswith("create and install")
    assert steps["kafka"].startswith("fetch") and steps["s3proxy"].startswith("fetch")
    assert steps["redis"] == "install (Debian redis-server)"
    for tool in TEST_TOOLS:
        assert steps[tool] == "skip (tests only)", tool
    assert steps["prerequisites"].split() == ["python3.11+", "java17+", "mvn"]  # no go
    # Plan mode installs nothing and does not go on to the demo.
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["logs", "stamps"]
    assert all(line.startswith("[bootstrap] plan ") for line in proc.stdout.splitlines()), proc.stdout


@pytest.mark.parametrize("script", ["scripts/test.sh", "scripts/bootstrap.sh"])
def test_tests_plan_the_test_tools_too(tmp_path, bare_path, script):
    steps, proc = plan(tmp_path, bare_path, script)
    assert proc.returncode == 0, proc.stderr
    assert "DDAD_SETUP=test" in proc.stdout
    assert steps["venv"].startswith("create and install")
    assert steps["kafka"].startswith("fetch") and steps["s3proxy"].startswith("fetch")
    assert steps["redis"] == "install (Debian redis-server)"
    for tool in ("helm", "kubeconform", "promtool", "kube-apiserver"):
        assert steps[tool].startswith("build (") and steps[tool].endswith(", Go)"), tool
    assert steps["chromium"] == "install (Debian chromium fonts-dejavu-core)"
    assert steps["etcd"] == "install (Debian etcd-server)"
    assert steps["prerequisites"].split() == ["python3.11+", "java17+", "mvn", "go"]
    # Plan mode installs nothing and stops before pytest.
    assert all(line.startswith("[bootstrap] plan ") for line in proc.stdout.splitlines()), proc.stdout
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["logs", "stamps"]


def test_test_plan_counts_what_is_there(tmp_path, bare_path):
    """Cached Go builds (binary + version stamp), and binaries named by the override variables, are not rebuilt."""
    home = tmp_path / "home"
    (home / "go" / "bin").mkdir(parents=True)
    (home / "stamps").mkdir()
    helm = home / "go" / "bin" / "helm"
    helm.write_text("#!/bin/sh\n")
    helm.chmod(0o755)
    version = next(
        line.split('"')[1] for line in (REPO / "devtools" / "localstack" / "common.py").read_text().splitlines()
        if line.startswith("HELM_VERSION = ")
    )  # fmt: skip
    (home / "stamps" / "helm").write_text(version + "\n")
    steps, proc = plan(tmp_path, bare_path, "scripts/test.sh", DDAD_CHROMIUM="/opt/chromium", DDAD_PROMTOOL="/x/pt")
    assert proc.returncode == 0, proc.stderr
    assert steps["helm"] == f"cached ({version})"
    assert steps["chromium"] == "external (DDAD_CHROMIUM=/opt/chromium)"
    assert steps["promtool"] == "external (DDAD_PROMTOOL=/x/pt)"
    assert steps["kubeconform"].startswith("build") and steps["etcd"].startswith("install")
    assert "go" in steps["prerequisites"].split()  # kubeconform and kube-apiserver are still to build


def test_unknown_set_up_is_one_line(tmp_path, bare_path):
    _, proc = plan(tmp_path, bare_path, "scripts/bootstrap.sh", DDAD_SETUP="everything")
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "DDAD_SETUP=everything" in lines[0] and "demo" in lines[0] and "test" in lines[0]
