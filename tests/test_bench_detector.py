"""``bench/bench_detector.py`` end to end on generated parts (its ``--quick`` mode): the baseline and fitted
``fast`` bundles (square input, and the parts' own aspect ratio, which the default ``--aspect auto`` keeps for these
narrow parts) side by side, all calibrated by the same
out-of-sample rule, with intervals and paired differences on the report half and the tune half's figures beside
them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.ddad_core._helpers import machined_parts, plant_part_defect

REPO = Path(__file__).resolve().parents[1]


def _write_parts(root: Path) -> Path:
    """Generated parts, cropped to 40 x 64 (width x height): narrower than the square the baseline sees."""
    from PIL import Image

    def save(path: Path, array: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(array[:, 12:52])).save(path)

    for i, image in enumerate(machined_parts(30, 64, seed=0)):
        save(root / "train" / "good" / f"{i:03d}.png", image)
    for i, image in enumerate(machined_parts(12, 64, seed=1)):
        save(root / "test" / "good" / f"{i:03d}.png", image)
    rng = np.random.default_rng(2)
    for i, image in enumerate(machined_parts(12, 64, seed=3)):
        bad, mask = plant_part_defect(image, rng)
        save(root / "test" / "scratch" / f"{i:03d}.png", bad)
        save(root / "ground_truth" / "scratch" / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    return root


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_run_reports_both_methods_under_one_protocol(tmp_path):
    data = _write_parts(tmp_path / "parts")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_detector.py"), "--data", str(data), "--recipes",
         "fast:aspect=square", "fast", "--backbone", "test_resnet:random", "--quick", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "bench_results.json").read_text())["results"]
    plain = {name for name in results if "--select" not in name}
    recipes = ["fast (zero-padded patches)", "fast (zero-padded patches, 48 x 80 input)"]
    assert plain == {"parts/kNN baseline"} | {
        f"parts/{recipe}: patch term, {norm}" for recipe in recipes for norm in ("position", "minmax")
    }
    picks = sorted(name.split(" -> ")[0] for name in results if "--select" in name)
    assert picks == sorted(
        f"parts/{recipe}: --select on {f} synthetic defects" for recipe in recipes for f in ("classic", "subtle")
    )
    for name, res in results.items():
        report, tune = res["report"], res["tune"]
        assert report["n_images"] == tune["n_images"] == 12  # 6 good + 6 defective per half
        assert res["calibration"]["rule"] == "conformal" and res["calibration"]["n_good"] == 24
        for key in ("image_auroc", "aupro", "recall_at_1pct_fpr"):
            ci = report["ci95"][key]
            assert ci["low"] <= ci["value"] <= ci["high"]
        assert "false_alarm_rate_ci95" in report["at_threshold"]
        if name != "parts/kNN baseline":
            assert set(report["vs_baseline"]) == {"image_auroc", "aupro", "recall_at_1pct_fpr"}
    table = (out / "bench_results.md").read_text()
    assert "## Report half" in table and "## Tune half" in table
    assert table.count("| parts |") == 2 * (1 + 4 * len(recipes))  # baseline, two variants and two picks per recipe


def test_recipe_strings_reach_the_config_the_training_and_the_geometry(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from bench_detector import bundle_path, parse_recipe, split_overrides

    name, overrides = parse_recipe("production:timestep_max=400,da_teacher=0.1,aspect=keep,knn_features=expanded")
    assert name == "production"
    ddad, training, aspect = split_overrides(overrides)
    assert ddad == {"da_teacher": 0.1, "knn_features": "expanded"}
    assert training == {"timestep_max": 400} and aspect == "keep"
    assert split_overrides({})[2] == "auto"
    assert bundle_path(Path("/b"), Path("/data/tile"), "fast:aspect=keep,knn_zero_pad=true") == Path(
        "/b/tile_fast_aspect-keep_knn_zero_pad-true"
    )
