"""``bench/bench_model.py``: the restated reference flow scores exactly like the serving pipeline (so a measured
speed-up is not bought with a different result), and the side-by-side run reports what the issue asks for."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
from pathlib import Path

import pytest

from ddad_core.pipeline import DDADPipeline
from ddad_core.preprocess import preprocess
from ddad_core.testing import make_tiny_bundle, synthetic_textures

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_model():
    spec = importlib.util.spec_from_file_location("bench_model", REPO / "bench" / "bench_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_model"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return DDADPipeline.from_bundle(make_tiny_bundle(tmp_path_factory.mktemp("bm") / "b"), channels_last=False)


def test_reference_flow_scores_like_the_serving_pipeline(bench_model, pipe):
    x = preprocess(synthetic_textures(6, 64, seed=4), image_size=64)
    ref = bench_model.ReferenceFlow(pipe)
    scores, steps = ref(x, bench_model._Timer(pipe.device))
    out = copy.deepcopy(pipe).optimize(channels_last=True).run_tensor(x)
    assert steps == out.noise_step.tolist()
    assert scores == pytest.approx(out.pred_score_raw.tolist(), rel=1e-4, abs=1e-6)
    assert ref.finish().shape == (6, 64, 64)  # the test-set min-max pass over every kept map


def test_side_by_side_row_has_ratio_breakdown_memory_and_check(bench_model, pipe):
    x = preprocess(synthetic_textures(4, 64, seed=5), image_size=64)
    serve = copy.deepcopy(pipe).optimize(channels_last=True)
    row = bench_model.run_batch(argparse.Namespace(rounds=1), serve, bench_model.ReferenceFlow(pipe), x, 2)
    assert row["images"] == 4 and row["ratio"] > 0 and len(row["pair_ratios"]) == 1
    for stage in ("encode", "noise_level", "denoise", "decode", "features", "anomaly_map"):
        assert row["reference_ms_per_image"][stage] >= 0 and row["serving_ms_per_image"][stage] >= 0
    assert row["same_noise_steps"] == "4/4"
    assert row["max_relative_score_difference"] < 1e-4
    assert set(row["peak_memory_mb"]) == {"reference", "serving"}
