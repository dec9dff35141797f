"""The per-frame ``results`` records: ``InspectionResult`` of an inferred frame, ``DroppedFrame`` of a stale one.

Flow step: frame + inference output (+ mask/heatmap URIs) -> record, which ``services._redis`` and
``services.worker.sinks`` then write (Redis hash and stream, Kafka ``results``). Pure logic, no I/O: this module
builds the records, the sinks write them, so each field can be checked without a store or a broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from services.contracts.frames import Frame
from services.contracts.results import DroppedFrame, InspectionResult
from services.worker.inference import FrameOutput, mask_to_boxes


@dataclass(frozen=True)
class ModelInfo:
    """What every record of a worker says about its model (read from the detector at start-up, and again when the
    worker swaps to a new overlay version)."""

    model_version: str
    bundle_hash: str
    threshold: float  # normalised-score decision point of pred_label
    threshold_raw: float  # the same point on the raw score
    overlay_version: int | None = None  # the product's nominal overlay in force (services.worker.overlay)


@dataclass(frozen=True)
class BatchInfo:
    """What the inspected records of one micro-batch share."""

    batch_id: str
    batch_size: int  # frames inferred in the batch
    started: float  # monotonic seconds when the batch was taken from the batcher
    processed_at: datetime
    timings_ms: dict[str, float]  # per-stage times of the batch, unrounded


def inspection_result(frame: Frame, out: FrameOutput, *, mask_uri: str | None, heatmap_uri: str | None,
                      enqueued_at: float, batch: BatchInfo, model: ModelInfo,
                      min_box_area_fraction: float) -> InspectionResult:
    """The record of one inferred frame.

    Args:
        frame: The frame as consumed (identity fields, and the size the defect boxes are scaled to).
        out: Its inference output.
        mask_uri / heatmap_uri: Where its mask and heatmap PNGs were written (``MaskSink.write``).
        enqueued_at: Monotonic seconds when the frame entered the batcher (queue wait = ``batch.started`` minus
            this).
        batch: The batch it was inferred in.
        model: The model that inferred it.
        min_box_area_fraction: Mask regions smaller than this share of the mask get no defect box.
    """
    return InspectionResult(
        frame_id=frame.frame_id, camera_id=frame.camera_id, line_id=frame.line_id, product_id=frame.product_id,
        sequence=frame.sequence, source=frame.source, captured_at=frame.captured_at, processed_at=batch.processed_at,
        pred_score=out.pred_score, pred_score_raw=out.pred_score_raw, pred_label=out.pred_label,
        noise_step=out.noise_step, threshold=model.threshold, threshold_raw=model.threshold_raw,
        model_version=model.model_version, bundle_hash=model.bundle_hash, overlay_version=model.overlay_version,
        mask_uri=mask_uri, heatmap_uri=heatmap_uri,
        defect_regions=mask_to_boxes(out.pred_mask, frame.width, frame.height, min_box_area_fraction)
        if out.pred_label else [],
        timings_ms={k: round(v, 3) for k, v in batch.timings_ms.items()}, batch_id=batch.batch_id,
        batch_size=batch.batch_size, queue_wait_ms=round(max(0.0, batch.started - enqueued_at) * 1000.0, 3))


def dropped_frame(frame: Frame, *, now: float, age_ms: float, max_frame_age_ms: float,
                  model_version: str) -> DroppedFrame:
    """The ``stale`` record of a frame dropped instead of inferred.

    Args:
        frame: The frame as consumed.
        now: POSIX seconds of the drop.
        age_ms: Capture -> drop time (at least 0).
        max_frame_age_ms: The age limit in force.
        model_version: The worker's model.
    """
    return DroppedFrame(
        frame_id=frame.frame_id, camera_id=frame.camera_id, line_id=frame.line_id, product_id=frame.product_id,
        sequence=frame.sequence, source=frame.source, captured_at=frame.captured_at,
        dropped_at=datetime.fromtimestamp(now, UTC), reason="stale", age_ms=round(age_ms, 3),
        max_frame_age_ms=max_frame_age_ms, model_version=model_version)
