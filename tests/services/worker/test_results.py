"""Result assembly: one frame's ``InspectionResult`` from its frame, inference output, URIs, batch and model."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np

from services.contracts.frames import Frame
from services.worker.inference import FrameOutput
from services.worker.results import BatchInfo, ModelInfo, inspection_result


def test_inspection_result_carries_the_frame_output_batch_and_model_fields():
    captured = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    processed = datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)
    frame = Frame(frame_id="cam2-000007", camera_id="cam2", line_id="line-3", product_id="p1", sequence=7,
                  source="cam2.mp4", encoding="jpeg", width=64, height=32, image=b"jpeg", captured_at=captured)
    mask = np.zeros((16, 16), bool)
    mask[4:8, 8:12] = True  # 16 of 256 mask pixels: one box, scaled x4 horizontally and x2 vertically
    mask[0, 0] = True  # a speck below min_box_area_fraction: no box
    out = FrameOutput(pred_score=0.75, pred_score_raw=1.5, pred_label=True, noise_step=20,
                      anomaly_map=np.zeros((16, 16), np.float32), pred_mask=mask)
    batch = BatchInfo(batch_id="b1", batch_size=3, started=100.5, processed_at=processed,
                      timings_ms={"decode": 1.23456, "infer": 10.0001234, "pipeline.denoise": 2.0})
    model = ModelInfo(model_version="m1", bundle_hash="h" * 64, threshold=0.5, threshold_raw=1.0, overlay_version=3)

    def result(out):
        return inspection_result(frame, out, mask_uri="file:///m.png", heatmap_uri=None, enqueued_at=100.2,
                                 batch=batch, model=model, min_box_area_fraction=0.01)

    assert result(out).model_dump() == {
        "schema_version": 2, "kind": "inspected",
        "frame_id": "cam2-000007", "camera_id": "cam2", "line_id": "line-3", "product_id": "p1", "sequence": 7,
        "source": "cam2.mp4", "captured_at": captured, "processed_at": processed,
        "pred_score": 0.75, "pred_score_raw": 1.5, "pred_label": True, "noise_step": 20,
        "threshold": 0.5, "threshold_raw": 1.0, "model_version": "m1", "bundle_hash": "h" * 64,
        "overlay_version": 3, "mask_uri": "file:///m.png", "heatmap_uri": None,
        "defect_regions": [{"x": 32, "y": 8, "width": 16, "height": 8, "area_fraction": 0.0625}],
        "timings_ms": {"decode": 1.235, "infer": 10.0, "pipeline.denoise": 2.0},
        "batch_id": "b1", "batch_size": 3, "queue_wait_ms": 300.0,
    }
    assert result(replace(out, pred_label=False)).defect_regions == []  # boxes only for a positive verdict
