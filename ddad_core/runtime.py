"""CPU threading defaults for every entry point: passive OpenMP waiting and one thread per usable core.

Flow step: none (process start-up). Why: with OpenMP's default (active) waiting, idle worker threads spin on the
cores between parallel regions; on a machine whose cores another process also uses, the spinning threads and the
other process take turns, and a batch of 8 at 64 px took 18.7-21.7 s instead of 0.43-0.45 s with
``OMP_WAIT_POLICY=PASSIVE``. Thread counts larger than the cores the process may run on (CPU affinity, a container's
cgroup CPU quota) oversubscribe in the same way.

``configure_cpu_threads()`` sets, unless the variable is already set (the user's own environment always wins):

* ``OMP_WAIT_POLICY=PASSIVE``;
* ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` to ``usable_cpus()``: the CPUs in this process's affinity mask, capped
  by the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``), rounded down, at least 1.

OpenMP and MKL read these when the library initialises, so call it before ``import torch`` (and before numpy, whose
OpenBLAS reads ``OMP_NUM_THREADS``). Child processes inherit the variables. This module imports nothing heavy.

Example:
    >>> env = {"OMP_NUM_THREADS": "3"}
    >>> sorted(configure_cpu_threads(env, cpus=2))
    ['MKL_NUM_THREADS', 'OMP_WAIT_POLICY']
    >>> env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"], env["OMP_WAIT_POLICY"]
    ('3', '2', 'PASSIVE')
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroups(proc_self_cgroup: Path) -> tuple[str | None, dict[str, str]]:
    """``(v2 path, {v1 controller: path})`` from ``/proc/self/cgroup`` lines ``id:controllers:path``."""
    v2, v1 = None, {}
    for line in (_read(proc_self_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        for controller in controllers.split(","):
            if controller:
                v1[controller] = path
    return v2, v1


def _candidates(mount: Path, path: str | None) -> list[Path]:
    # The process's own cgroup and each parent up to the mount: a parent's quota limits its children too. Inside a
    # container the path may name a host cgroup that is not mounted; the mount point itself is then the container's.
    dirs = []
    if path:
        current = mount / path.lstrip("/")
        while current != mount and mount in current.parents:
            dirs.append(current)
            current = current.parent
    dirs.append(mount)
    return dirs


def cgroup_cpu_limit(
    cgroup_root: Path = Path("/sys/fs/cgroup"), proc_self_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """CPUs the cgroup CPU quota allows this process (e.g. 1.5), or None when there is no quota or no cgroup info.

    Reads cgroup v2 ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``) and cgroup v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1 = none), in the process's own cgroup and its parents;
    the smallest quota wins.
    """
    v2_path, v1_paths = _own_cgroups(proc_self_cgroup)
    limits: list[float] = []
    for directory in _candidates(cgroup_root, v2_path):
        fields = (_read(directory / "cpu.max") or "").split()
        if len(fields) == 2 and fields[0] != "max":
            try:
                limits.append(int(fields[0]) / int(fields[1]))
            except (ValueError, ZeroDivisionError):
                pass
    for mount_name in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
        mount = cgroup_root / mount_name
        if not mount.is_dir():
            continue
        for directory in _candidates(mount, v1_paths.get("cpu")):
            quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
            try:
                if quota is not None and period is not None and int(quota) > 0:
                    limits.append(int(quota) / int(period))
            except (ValueError, ZeroDivisionError):
                pass
        break
    return min(limits) if limits else None


def usable_cpus(
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    proc_self_cgroup: Path = Path("/proc/self/cgroup"),
    affinity: int | None = None,
) -> int:
    """Cores this process may use: its CPU affinity, capped by the cgroup quota (rounded down), at least 1."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(cgroup_root, proc_self_cgroup)
    cpus = affinity if limit is None else min(affinity, math.floor(limit))
    return max(1, cpus)


def configure_cpu_threads(environ: MutableMapping[str, str] | None = None, cpus: int | None = None) -> dict[str, str]:
    """Set passive OpenMP waiting and the thread counts, leaving every variable the user already set alone.

    Args:
        environ: The environment to change (default ``os.environ``; tests pass a dict).
        cpus: Thread count to use (default ``usable_cpus()``).

    Returns:
        The variables this call set, with their values (empty when the user had set them all).
    """
    env = os.environ if environ is None else environ
    wanted = {"OMP_WAIT_POLICY": "PASSIVE"}
    if any(name not in env for name in THREAD_VARIABLES):
        n = str(cpus if cpus is not None else usable_cpus())
        wanted.update({name: n for name in THREAD_VARIABLES})
    applied = {name: value for name, value in wanted.items() if name not in env}
    env.update(applied)
    torch = sys.modules.get("torch")
    if environ is None and torch is not None and "OMP_NUM_THREADS" in applied:
        # Called too late for OpenMP to read the variable (torch is already imported): set the count directly.
        torch.set_num_threads(int(applied["OMP_NUM_THREADS"]))
    return applied
