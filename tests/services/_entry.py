"""Run a service's real console entry point as a subprocess (what a user types), with a clean service environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def entry(service: str) -> list[str]:
    """``inspection-<service>`` next to this Python (the installed console script), else ``python -m``.

    ``stack`` is the development command ``inspection-stack`` (``devtools.stack``); the others are services.
    """
    script = Path(sys.executable).parent / f"inspection-{service}"
    module = "devtools.stack" if service == "stack" else f"services.{service}"
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any service setting, plus ``settings`` (one thread: a light test)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "ALERTER_", "INGESTOR_"))}
    return {**base, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", **settings}


def run_service(service: str, env: dict[str, str], *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``inspection-<service> [args]`` with only ``env`` as its service settings; returns the finished process."""
    return subprocess.run([*entry(service), *args], env=clean_env(**env), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def error_lines(log: str) -> list[str]:
    """Lines of a service's stderr at error level, or from a Python traceback."""
    return [line for line in log.splitlines()
            if '"level": "error"' in line or '"level": "critical"' in line or "Traceback" in line]


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed start (asserts exit status 2 and exactly one non-empty line)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{proc.stderr}"
    return lines[0]
