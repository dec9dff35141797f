"""The ``results`` record: one inspected frame, in anomalib's vocabulary.

Flow step: worker -> Kafka ``results`` (and the same fields in the Redis hash ``insp:{camera_id}:{frame_id}``).
Fields mirror ``ddad_core.outputs.InspectionOutput`` (``pred_score`` normalised so 0.5 is the calibrated threshold,
``pred_score_raw``, ``pred_label``, ``noise_step``); maps never travel on Kafka, only their object-store URIs.
Encoding: UTF-8 JSON (``model_dump_json``), small enough that readability wins over a binary format.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.contracts.frames import Identifier, JsonRecord, UtcDatetime
from services.contracts.topics import SCHEMA_VERSION


class BoundingBox(BaseModel):
    """Axis-aligned box of one connected defect region, in pixels of the original frame."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x: int = Field(ge=0, description="Left edge.")
    y: int = Field(ge=0, description="Top edge.")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    area_fraction: float = Field(ge=0, le=1, description="Share of the frame covered by the region's mask pixels.")


class InspectionResult(JsonRecord):
    """The outcome of inspecting one frame.

    ``threshold`` is the raw-score threshold of the bundle's calibration (``pred_score_raw > threshold`` is the
    model's own ``pred_label``); the alerter may apply a per-camera sensitivity on top.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    schema_version: Literal[1] = SCHEMA_VERSION
    frame_id: Identifier
    camera_id: Identifier
    line_id: Identifier
    product_id: Identifier | None = None
    sequence: int = Field(ge=0)
    source: str | None = None
    captured_at: UtcDatetime
    processed_at: UtcDatetime
    pred_score: float = Field(description="Normalised image score; 0.5 is the calibrated threshold.")
    pred_score_raw: float = Field(description="Raw image score (max of the blended anomaly map).")
    pred_label: bool = Field(description="Model's decision at the calibrated threshold.")
    noise_step: int = Field(ge=0, description="Start timestep chosen by the dynamic noise level.")
    threshold: float = Field(description="Raw-score threshold of the calibration used.")
    model_version: str
    bundle_hash: str
    mask_uri: str | None = Field(None, description="PNG of pred_mask (0/255) in the object store.")
    heatmap_uri: str | None = Field(None, description="Colour PNG of the anomaly map in the object store.")
    defect_regions: list[BoundingBox] = Field(default_factory=list, description="Connected regions of pred_mask.")
    timings_ms: dict[str, float] = Field(default_factory=dict, description="Per-stage times of the frame's batch.")
    batch_id: str
    batch_size: int = Field(gt=0)
    queue_wait_ms: float = Field(ge=0, description="Time the frame waited in the micro-batcher.")

    @property
    def latency_ms(self) -> float:
        """Capture -> result latency."""
        return (self.processed_at - self.captured_at).total_seconds() * 1000.0
