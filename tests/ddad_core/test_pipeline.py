"""DDADPipeline on a tiny fitted bundle: outputs, determinism, batch invariance, thresholds, refusal cases; new
settings over shared weights (``with_settings``) on a production-recipe bundle."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from ddad_core.bundle import BundleError
from ddad_core.features import BackboneMismatchError
from ddad_core.outputs import InspectionOutput
from ddad_core.pipeline import DDADPipeline
from ddad_core.preprocess import preprocess
from ddad_core.testing import synthetic_textures

from ._helpers import tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def pipe(bundle):
    return DDADPipeline.from_bundle(bundle)


@pytest.fixture(scope="module")
def frames():
    images = synthetic_textures(8, 64, seed=5)
    images[3] = images[3].copy()
    images[3][20:36, 20:36] = 255  # a planted defect
    return images


def test_output_fields_and_shapes(pipe, frames):
    start = time.perf_counter()
    out = pipe(frames[:3])
    wall_ms = (time.perf_counter() - start) * 1000.0
    assert isinstance(out, InspectionOutput) and len(out) == 3
    assert out.anomaly_map.shape == (3, 64, 64) and out.pred_mask.dtype == torch.bool
    assert out.pred_label.dtype == torch.bool and out.noise_step.dtype == torch.long
    assert ((out.pred_score >= 0) & (out.pred_score <= 1)).all()
    torch.testing.assert_close(out.pred_score_raw, out.anomaly_map.flatten(1).amax(1))
    assert set(out.noise_step.tolist()) <= {20, 30, 40, 50, 60, 70, 80}
    stages = ("preprocess", "encode", "noise_level", "denoise", "decode", "features", "anomaly_map", "score")
    assert set(stages) <= set(out.timings_ms)
    assert all(math.isfinite(out.timings_ms[stage]) and out.timings_ms[stage] > 0 for stage in stages), out.timings_ms
    # Consecutive laps inside the call, in milliseconds: together they cannot exceed the call's own wall time.
    assert sum(out.timings_ms.values()) <= wall_ms, (out.timings_ms, wall_ms)
    assert pipe.image_size == 64 and pipe.model_version and len(pipe.bundle_hash) == 64


def test_threshold_maps_to_half_and_labels_consistent(pipe, frames):
    out = pipe(frames)
    assert torch.equal(out.pred_label, out.pred_score > 0.5)
    assert torch.equal(out.pred_label, out.pred_mask.flatten(1).any(1))  # matching thresholds
    raw_thr = pipe.threshold["image_threshold"]
    assert torch.equal(out.pred_label, out.pred_score_raw > raw_thr)


def test_deterministic(pipe, frames):
    a, b = pipe(frames[:2]), pipe(frames[:2])
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.noise_step, b.noise_step)


def test_frame_scores_the_same_alone_or_in_a_batch(pipe, frames):
    batch = pipe(frames)
    for i in (0, 3, 7):
        alone = pipe(frames[i])
        assert alone.noise_step.item() == batch.noise_step[i].item()
        torch.testing.assert_close(alone.anomaly_map[0], batch.anomaly_map[i], atol=1e-4, rtol=1e-4)


def test_preprocess_parity(pipe, frames):
    via_call = pipe(frames[:2])
    via_tensor = pipe.run_tensor(preprocess(frames[:2], image_size=64))
    torch.testing.assert_close(via_call.anomaly_map, via_tensor.anomaly_map)


def test_sensitivity(pipe, frames):
    low = pipe(frames, sensitivity=0.0)
    high = pipe(frames, sensitivity=1.0)
    assert low.pred_label.sum() <= high.pred_label.sum()
    # Sensitivity 1 moves the decision to normalised 0, i.e. raw threshold - (max - min) / 2.
    c = pipe.calibration
    expected = high.pred_score_raw > c.image_threshold - 0.5 * (c.image_max - c.image_min)
    assert torch.equal(high.pred_label, expected)
    original = pipe.sensitivity
    pipe.sensitivity = 0.7
    assert pipe.threshold["normalized_threshold"] == pytest.approx(0.3)
    pipe.sensitivity = original
    with pytest.raises(ValueError):
        pipe(frames[:1], sensitivity=2.0)


def test_input_variants_and_warmup(pipe):
    gray = np.full((50, 70), 100, np.uint8)
    batch = np.zeros((2, 64, 64, 3), np.uint8)
    assert len(pipe(gray)) == 1 and len(pipe(batch)) == 2 and len(pipe([gray, batch[0]])) == 2
    assert len(pipe.warmup(2)) == 2
    with pytest.raises(TypeError):
        pipe(np.zeros((64, 64, 3), np.float32))


def test_backbone_mismatch_and_missing_calibration(bundle, tmp_path):
    DDADPipeline.from_bundle(bundle, backbone="test_resnet")
    with pytest.raises(BackboneMismatchError, match="test_resnet.*resnet34"):
        DDADPipeline.from_bundle(bundle, backbone="resnet34")
    import shutil

    broken = tmp_path / "nocal"
    shutil.copytree(bundle, broken)
    cfg = json.loads((broken / "bundle.json").read_text())
    cfg["calibration"] = None
    (broken / "bundle.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="calibration"):
        DDADPipeline.from_bundle(broken)


def test_bundle_records_backbone_and_noise_level(bundle):
    cfg = json.loads((bundle / "bundle.json").read_text())
    assert cfg["backbone"]["name"] == "test_resnet" and cfg["backbone"]["strides"] == [4, 8, 16]
    assert set(cfg["files"]) == {"unet", "autoencoder", "backbone", "noise_level"}
    assert cfg["calibration"]["normalization"]["latent_max"] > cfg["calibration"]["normalization"]["latent_min"]
    assert cfg["metadata"]["da_losses"]  # domain adaptation ran and was recorded


def test_with_settings_shares_weights_and_refuses_refit_fields(production_bundle):
    pipe = DDADPipeline.from_bundle(production_bundle)
    other = pipe.with_settings(guidance=0.0, max_noise_step=150)
    assert other.unet is pipe.unet and other.patch_knn is pipe.patch_knn
    assert other.config.guidance == 0.0 and pipe.config.guidance != 0.0
    block2 = pipe.features(torch.zeros(2, 3, 64, 64))[1]
    assert set(other.noise_level(block2).tolist()) <= set(range(20, 151, 10))
    with pytest.raises(ValueError, match="refitting"):
        pipe.with_settings(knn_k=5)
    with pytest.raises(ValueError, match="omega"):
        pipe.with_settings(omega=2.0)
