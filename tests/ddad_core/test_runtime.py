"""CPU threading defaults: core count from affinity and cgroup quotas (fake cgroup trees), the user's settings win."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ddad_core.runtime import cgroup_cpu_limit, configure_cpu_threads, usable_cpus


def _tree(tmp_path: Path, files: dict[str, str], self_cgroup: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(self_cgroup)
    return root, proc


def test_cgroup_v2_quota_in_own_cgroup_and_parents(tmp_path):
    root, proc = _tree(
        tmp_path,
        {
            "cpu.max": "max 100000\n",
            "kubepods/cpu.max": "250000 100000\n",  # the parent allows 2.5 CPUs ...
            "kubepods/pod1/cpu.max": "max 100000\n",  # ... the pod itself sets no limit
        },
        "0::/kubepods/pod1\n",
    )
    assert cgroup_cpu_limit(root, proc) == 2.5
    assert usable_cpus(root, proc, affinity=8) == 2  # rounded down: a third thread would be throttled
    assert usable_cpus(root, proc, affinity=1) == 1  # affinity is the tighter bound


def test_cgroup_v2_container_root_and_unlimited(tmp_path):
    root, proc = _tree(tmp_path, {"cpu.max": "50000 100000\n"}, "0::/\n")
    assert cgroup_cpu_limit(root, proc) == 0.5
    assert usable_cpus(root, proc, affinity=4) == 1  # never 0
    root2, proc2 = _tree(tmp_path / "b", {"cpu.max": "max 100000\n"}, "0::/\n")
    assert cgroup_cpu_limit(root2, proc2) is None
    assert usable_cpus(root2, proc2, affinity=6) == 6


def test_cgroup_v1_cfs_quota(tmp_path):
    root, proc = _tree(
        tmp_path,
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
    )
    assert cgroup_cpu_limit(root, proc) == 3.0
    assert usable_cpus(root, proc, affinity=16) == 3


def test_cgroup_v1_host_path_not_mounted_uses_the_mount_root(tmp_path):
    # Without a cgroup namespace the path names the host's cgroup; the container sees its own at the mount root.
    root, proc = _tree(
        tmp_path, {"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu:/docker/0123\n"
    )
    assert cgroup_cpu_limit(root, proc) == 1.5


def test_no_cgroup_information(tmp_path):
    root, proc = _tree(tmp_path, {}, "")
    assert cgroup_cpu_limit(root, proc) is None
    assert usable_cpus(root, proc, affinity=3) == 3
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)  # the real machine


def test_user_settings_are_never_overridden():
    env = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7", "MKL_NUM_THREADS": "5"}
    assert configure_cpu_threads(env, cpus=2) == {}
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7", "MKL_NUM_THREADS": "5"}
    env = {}
    assert configure_cpu_threads(env, cpus=2) == {
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
    }


def test_entry_points_set_the_variables_before_torch():
    # A fresh interpreter without the variables: the worker's entry module sets them on import, and torch (imported
    # afterwards) runs with the usable core count.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    code = (
        "import os, services.worker.__main__, torch; "
        "print(os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'], torch.get_num_threads())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    policy, omp, torch_threads = out.stdout.split()
    assert policy == "PASSIVE" and omp == str(usable_cpus()) and torch_threads == omp
