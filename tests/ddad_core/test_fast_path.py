"""The serving fast path (``DDADPipeline.optimize``) changes no result: channels-last weights, compiled batch sizes
with padding, and ``torch.compile`` itself give the scores and maps of the plain pipeline within float rounding."""

from __future__ import annotations

import copy

import pytest
import torch

from ddad_core.pipeline import DDADPipeline
from ddad_core.testing import synthetic_textures

from ._helpers import tiny_bundle


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> DDADPipeline:
    return DDADPipeline.from_bundle(tiny_bundle(tmp_path_factory.mktemp("fast")))


@pytest.fixture(scope="module")
def frames():
    return synthetic_textures(5, size=64, seed=11)


def _close(a, b) -> None:
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.pred_score_raw, b.pred_score_raw, rtol=1e-4, atol=1e-5)
    assert a.noise_step.tolist() == b.noise_step.tolist()


def test_batch_plan_pads_up_and_splits(pipe):
    fast = copy.copy(pipe)
    fast.compiled_batch_sizes = (2, 4)
    assert fast._batch_plan(1) == [(0, 1, 2)]
    assert fast._batch_plan(3) == [(0, 3, 4)]
    assert fast._batch_plan(4) == [(0, 4, 4)]
    assert fast._batch_plan(9) == [(0, 4, 4), (4, 8, 4), (8, 9, 2)]
    assert pipe._batch_plan(7) == [(0, 7, 7)]


def test_padded_batches_score_like_unpadded(pipe, frames):
    fast = copy.copy(pipe)
    fast.compiled_batch_sizes = (4,)  # 5 frames: a chunk of 4 and a chunk of 1 padded to 4
    plain, padded = pipe(frames), fast(frames)
    assert padded.anomaly_map.shape[0] == len(frames)
    _close(plain, padded)


def test_channels_last_default_scores_like_nchw(pipe, frames):
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)  # the default
    nchw = copy.deepcopy(pipe).optimize(channels_last=False)
    assert nchw.unet.conv_in.weight.is_contiguous()
    assert not nchw.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    _close(pipe(frames), nchw(frames))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_pipeline_scores_like_the_plain_pipeline(pipe, frames):
    fast = copy.deepcopy(pipe).optimize(compile=True, batch_sizes=(4,))
    fast.warmup()
    _close(pipe(frames[:3]), fast(frames[:3]))
