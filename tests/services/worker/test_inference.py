"""Worker-side helpers: decoding with header checks, claim-check fetch, thresholds, PNG encoding, boxes."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from services._object_store import LocalObjectStore
from services.worker.inference import (
    InvalidFrameError,
    decision_thresholds,
    decode_frame,
    encode_heatmap_png,
    encode_mask_png,
    mask_to_boxes,
    raw_threshold,
)
from tests.services._helpers import make_frame


def test_decode_inline_and_claim_check(tmp_path):
    frame = make_frame(1, size=48)
    pixels = decode_frame(frame, None, 10**7)
    assert pixels.shape == (48, 48, 3) and pixels.dtype == np.uint8
    store = LocalObjectStore(tmp_path)
    uri = store.put("frames/cam1/x.jpg", frame.image)
    claim = frame.model_copy(update={"image": None, "image_uri": uri})
    assert np.array_equal(decode_frame(claim, store, 10**7), pixels)


@pytest.mark.parametrize(("update", "reason"), [
    ({"image": b"\x89PNG broken"}, "undecodable"),
    ({"width": 47}, "shape_mismatch"),
    ({"image": None, "image_uri": "file:///nonexistent/x.jpg"}, "claim_check_refused"),  # outside the store root
])
def test_decode_rejections(tmp_path, update, reason):
    frame = make_frame(1, size=48).model_copy(update=update)
    with pytest.raises(InvalidFrameError) as err:
        decode_frame(frame, LocalObjectStore(tmp_path), 10**7)
    assert err.value.reason == reason


def test_too_large():
    with pytest.raises(InvalidFrameError, match="too_large"):
        decode_frame(make_frame(1, size=48), None, max_pixels=100)


def test_raw_threshold_shapes():
    class P:
        threshold = {"image_threshold": 0.79, "pixel_threshold": 0.5}

    class Q:
        threshold = 1.5

    assert raw_threshold(P()) == 0.79 and raw_threshold(Q()) == 1.5
    assert np.isnan(raw_threshold(object()))


def test_decision_thresholds_normalised_and_raw():
    class Calibrated:  # the shape of DDADPipeline.threshold
        threshold = {"image_threshold": 0.674, "image_min": 0.2, "image_max": 1.0, "sensitivity": 0.5,
                     "normalized_threshold": 0.5}

    class Sensitive:
        threshold = {**Calibrated.threshold, "sensitivity": 0.75, "normalized_threshold": 0.25}

    assert decision_thresholds(Calibrated()) == (0.5, 0.674)  # the calibrated threshold normalises to 0.5
    thr, raw = decision_thresholds(Sensitive())
    assert thr == 0.25 and raw == pytest.approx(0.674 - 0.25 * 0.8)  # same decision point on both scales


def test_pngs_and_boxes():
    mask = np.zeros((16, 16), bool)
    mask[2:5, 3:9] = True
    mask[12:14, 12:14] = True
    png = cv2.imdecode(np.frombuffer(encode_mask_png(mask), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(png)) == {0, 255} and (png > 0).sum() == mask.sum()
    heat = cv2.imdecode(np.frombuffer(encode_heatmap_png(mask.astype(np.float32), 0.5), np.uint8), cv2.IMREAD_COLOR)
    assert heat.shape == (16, 16, 3)
    boxes = mask_to_boxes(mask, width=160, height=80)  # frame is 160x80, mask 16x16: x*10, y*5
    assert [(b.x, b.y, b.width, b.height) for b in boxes] == [(30, 10, 60, 15), (120, 60, 20, 10)]
    assert mask_to_boxes(np.zeros((4, 4), bool), 4, 4) == []


def test_boxes_need_a_minimum_area():
    mask = np.zeros((64, 64), bool)
    mask[10:12, 5:45] = True  # a thin scratch: 80 pixels
    mask[50, 50] = mask[60, 3] = mask[30, 60] = True  # specks of a noisy map: one pixel each
    boxes = mask_to_boxes(mask, 64, 64, min_area_fraction=0.001)  # 0.1 % of 4096 = 4 pixels
    assert [(b.x, b.y, b.width, b.height) for b in boxes] == [(5, 10, 40, 2)]  # the scratch's own extent
    assert boxes[0].area_fraction == round(80 / 4096, 6)
    assert len(mask_to_boxes(mask, 64, 64, min_area_fraction=0.0)) == 4  # 0: every region, specks included
    assert mask_to_boxes(mask, 64, 64, min_area_fraction=0.05) == []  # 5 % = 205 pixels: nothing that large
    # specks never merge into one big box spanning the frame: each region is boxed on its own
    many = np.zeros((64, 64), bool)
    many[::8, ::8] = True
    assert len(mask_to_boxes(many, 64, 64, min_area_fraction=0.0, max_regions=16)) == 16


def test_compiled_batch_sizes_cover_every_batch_up_to_the_cap():
    from services.worker.inference import compiled_batch_sizes

    assert compiled_batch_sizes(1) == (1,)
    assert compiled_batch_sizes(8) == (1, 2, 4, 8)
    assert compiled_batch_sizes(12) == (1, 2, 4, 8, 12)


def test_warm_up_of_a_compiled_detector_times_one_batch_after_compiling_every_size(monkeypatch):
    from services.worker import inference
    from services.worker.inference import warm_up

    clock = [0.0]
    monkeypatch.setattr(inference, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    class Compiled:
        compiled_batch_sizes = (1, 2, 4)
        image_size = 8

        def __init__(self):
            self.calls = []

        def warmup(self, batch_size):
            self.calls.append(("warmup", batch_size))
            clock[0] += 60.0  # compiling every batch size: slow, and not what the frame-age limit should see

        def __call__(self, frames):
            self.calls.append(("batch", len(frames)))
            clock[0] += 0.25

    det = Compiled()
    assert warm_up(det, 4) == 0.25  # the one plain batch, without the compile pass
    assert det.calls == [("warmup", 4), ("batch", 4)]  # compile pass once, then exactly one timed batch
