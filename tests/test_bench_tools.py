"""The benchmark tools refuse bad settings before fitting anything (one line, exit 2, nothing written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--sweeps", "omega", "--set", "omega=0,2"], "sweep omega: value 2 is not valid"),
        (["--sweeps", "fastest"], "unknown sweep(s) ['fastest']; choose from"),
        (["--sweeps", "guidance", "--set", "guidance=-1"], "sweep guidance: value -1 is not valid"),
    ],
)
def test_ablations_reject_bad_sweeps_before_fitting(tmp_path, args, expected):
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ablations.py"), "--work", str(work), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0]
    assert not work.exists()
