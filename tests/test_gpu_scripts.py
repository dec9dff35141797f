"""The prepared GPU scripts run end to end in their smoke mode (``--smoke``: the same commands on the CPU with toy
sizes), so that a first run on a GPU machine does not fail on an argument, an import or the output."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash") or "/bin/bash"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """A stand-in for the folder the scripts take their weights from: TAEF2-format files with random weights
    (generated, so the smoke runs need nothing outside the repository)."""
    from tests.ddad_core.test_autoencoders import _write_taef2

    root = tmp_path_factory.mktemp("shared")
    _write_taef2(root / "weights" / "taef2")
    return root


def smoke(script: str, shared: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DDAD_PY": sys.executable, "DDAD_SHARED": str(shared)}
    env.pop("SMOKE", None)
    proc = subprocess.run(
        [BASH, script, "--smoke", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


@pytest.mark.timeout(600)
def test_gpu_bench_model_smoke(tmp_path, shared):
    out = tmp_path / "out"
    proc = smoke("bench/gpu_bench_model.sh", shared, str(out))
    assert "no CUDA device" not in proc.stderr
    # One `ratio:` line and one score check per side-by-side run (TAEF2, SD-VAE-sized), then the scaling rows.
    assert len(re.findall(r"^ratio: \d+\.\d+ \(batch 4\)$", proc.stdout, re.M)) == 2, proc.stdout
    assert len(re.findall(r"^scores match: (yes|NO)$", proc.stdout, re.M)) == 2
    assert len(re.findall(r"^FLOPs per image \d+\.\d+ G; achieved", proc.stdout, re.M)) == 2
    assert re.search(r"^batch   1: serving +\d+\.\d+ images/s$", proc.stdout, re.M)
    assert re.search(r"^batch   2: serving +\d+\.\d+ images/s$", proc.stdout, re.M)
    for ae in ("taef2", "sd-random"):
        report = json.loads((out / f"{ae}.json").read_text())
        assert report["device"] == "cpu" and report["dtype"] == "bf16" and report["autoencoder"] == ae
        (row,) = report["batches"]
        assert row["batch"] == 4 and row["images"] == 8 and row["ratio"] > 0
        assert report["flops_per_image"] > 0
    scaling = json.loads((out / "scaling.json").read_text())
    assert [row["batch"] for row in scaling["batches"]] == [1, 2]
    assert all(row["serving_images_per_s"] > 0 for row in scaling["batches"])


@pytest.mark.timeout(600)
def test_gpu_paper_preset_smoke(tmp_path, shared):
    from tests.ddad_core._helpers import write_mvtec

    data = write_mvtec(tmp_path / "parts", n_train=24, n_good=8, n_bad=8)
    out = tmp_path / "out"
    proc = smoke("bench/gpu_paper_preset.sh", shared, str(data), str(out))
    assert "no CUDA device" not in proc.stderr
    assert "## Report half" in proc.stdout
    results = json.loads((out / "bench_results.json").read_text())
    settings, methods = results["settings"], set(results["results"])
    assert settings["device"] == "cpu" and settings["preset"] == "cpu" and settings["image_size"] == "64"
    assert settings["autoencoder"].startswith("tae:")
    assert "parts/kNN baseline" in methods
    for recipe in ("paper", "production"):
        assert any(m.startswith(f"parts/{recipe}: ") for m in methods), methods
        bundle = json.loads((out / "bundles" / f"parts_{recipe}" / "bundle.json").read_text())
        assert bundle["autoencoder"]["kind"] == "tae"  # the offline TAEF2 weights, not a trained ConvAutoencoder
    table = (out / "bench_results.md").read_text()
    assert "## Report half" in table and "## Tune half" in table
