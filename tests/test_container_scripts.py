"""``scripts/build-images.sh`` and ``scripts/e2e-cluster.sh`` on a machine that lacks what they need: one line on
stderr naming it and how to provide it, exit 2, nothing started.

Flow step: deployment (images, cluster). The scripts run for real with a PATH from which one command is hidden
(every other command of the machine stays reachable), so they fail where that command is first needed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(60)


def path_without(tmp_path: Path, *hidden: str) -> str:
    """A PATH of links to every command of the machine's usual folders except ``hidden``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if not Path(folder).is_dir():
            continue
        for entry in Path(folder).iterdir():
            link = bin_dir / entry.name
            if entry.name not in hidden and not link.exists() and os.access(entry, os.X_OK):
                link.symlink_to(entry)
    return str(bin_dir)


def run_script(script: str, *args: str, path: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path, "DDAD_HOME": str(tmp_path / "home")}
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args], env=env, capture_output=True, text=True,
                          timeout=50)


def test_build_images_without_podman_names_it_in_one_line(tmp_path: Path) -> None:
    done = run_script("build-images.sh", path=path_without(tmp_path, "podman"), tmp_path=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0] == "build-images: needs podman, not found on PATH: install Debian's podman (apt-get install podman)"


def test_build_images_refuses_an_unknown_image(tmp_path: Path) -> None:
    done = run_script("build-images.sh", "dashboard", path=os.environ["PATH"], tmp_path=tmp_path)
    assert done.returncode == 1 and done.stderr.strip() == (
        "build-images: unknown image 'dashboard': services, worker, deps (= kafka redis s3proxy), kafka, redis or "
        "s3proxy")


def test_build_images_deps_without_the_jars_names_them_in_one_line(tmp_path: Path) -> None:
    done = run_script("build-images.sh", "deps", path=os.environ["PATH"], tmp_path=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and not done.stdout, done.stdout + done.stderr
    assert lines[0] == (f"build-images: needs the Kafka 4.1.1 jars in {tmp_path}/home/kafka/4.1.1/libs: fetch them "
                        "with `DDAD_SETUP=demo bash scripts/bootstrap.sh` (Maven Central) or name a folder of them "
                        "with DDAD_KAFKA_LIBS")


def test_the_cluster_check_without_etcd_names_it_in_one_line(tmp_path: Path) -> None:
    done = run_script("e2e-cluster.sh", "check", path=path_without(tmp_path, "etcd"), tmp_path=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    if os.geteuid() == 0:
        assert lines[0] == ("e2e-cluster: cannot run a Kubernetes node here: etcd not found (needs Debian's "
                            "etcd-server (apt-get install etcd-server))"), lines[0]
    else:  # the first check a non-root user meets
        assert lines[0].startswith("e2e-cluster: cannot run a Kubernetes node here: not root"), lines[0]
    assert not (tmp_path / "home" / "cluster").exists()  # nothing half-started
