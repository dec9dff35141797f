"""The ``results`` records: one per frame, either inspected (``InspectionResult``) or not (``DroppedFrame``).

Flow step: worker -> Kafka ``results`` (and the inspected results' fields in the Redis hash
``insp:{camera_id}:{frame_id}``). ``InspectionResult`` mirrors ``ddad_core.outputs.InspectionOutput`` in anomalib's
vocabulary (``pred_score`` normalised so 0.5 is the calibrated threshold, ``pred_score_raw``, ``pred_label``,
``noise_step``); maps never travel on Kafka, only their object-store URIs. A frame the worker did not inspect (too old
when its batch formed) gets a ``DroppedFrame`` instead, so "not inspected" can never be mistaken for "passed".
``kind`` tells the two apart; ``parse_results_record`` reads either.

Field names mean the same on every topic and in Redis: ``threshold`` is always on the normalised score scale (the
decision point of ``pred_label`` here, of the alert rule in ``defects``), ``threshold_raw`` the same point on the raw
score scale. Encoding: UTF-8 JSON (``model_dump_json``), small enough that readability wins over a binary format.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, model_validator

from services.contracts.frames import Identifier, JsonRecord, UtcDatetime
from services.contracts.topics import RESULTS_SCHEMA_VERSION


class BoundingBox(BaseModel):
    """Axis-aligned box of one connected defect region, in pixels of the original frame."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x: int = Field(ge=0, description="Left edge.")
    y: int = Field(ge=0, description="Top edge.")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    area_fraction: float = Field(ge=0, le=1, description="Share of the frame covered by the region's mask pixels.")


class FrameRecord(JsonRecord):
    """What every ``results`` record says about its frame (the identity fields of ``frames``' header)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    schema_version: Literal[2] = RESULTS_SCHEMA_VERSION
    frame_id: Identifier
    camera_id: Identifier
    line_id: Identifier
    product_id: Identifier | None = None
    sequence: int = Field(ge=0)
    source: str | None = None
    captured_at: UtcDatetime


class InspectionResult(FrameRecord):
    """The outcome of inspecting one frame.

    ``pred_label`` is ``pred_score > threshold`` (equivalently ``pred_score_raw > threshold_raw``); the alerter may
    apply a per-camera sensitivity on top. Records of schema 1, where ``threshold`` held the raw threshold, are read
    as schema 2.
    """

    kind: Literal["inspected"] = "inspected"
    processed_at: UtcDatetime
    pred_score: float = Field(description="Normalised image score; 0.5 is the calibrated threshold.")
    pred_score_raw: float = Field(description="Raw image score (max of the blended anomaly map).")
    pred_label: bool = Field(description="Model's decision at the calibrated threshold.")
    noise_step: int = Field(ge=0, description="Start timestep chosen by the dynamic noise level.")
    threshold: float = Field(
        description="Normalised-score decision point of pred_label: 1 - the calibration's "
        "sensitivity, 0.5 at the calibrated threshold."
    )
    threshold_raw: float = Field(description="The same decision point on the raw score (pred_score_raw).")
    model_version: str
    bundle_hash: str
    overlay_version: int | None = Field(
        None, ge=0, description="Version of the product's nominal overlay the frame was scored with (None: none)."
    )
    mask_uri: str | None = Field(None, description="PNG of pred_mask (0/255) in the object store.")
    heatmap_uri: str | None = Field(None, description="Colour PNG of the anomaly map in the object store.")
    defect_regions: list[BoundingBox] = Field(default_factory=list, description="Connected regions of pred_mask.")
    timings_ms: dict[str, float] = Field(default_factory=dict, description="Per-stage times of the frame's batch.")
    batch_id: str
    batch_size: int = Field(gt=0)
    queue_wait_ms: float = Field(ge=0, description="Time the frame waited in the micro-batcher.")

    @model_validator(mode="before")
    @classmethod
    def _upgrade_schema_1(cls, data: Any) -> Any:
        # Schema 1 carried the raw threshold as `threshold` (workers of a rolling upgrade may still write it).
        if isinstance(data, dict) and data.get("schema_version") == 1:
            data = {
                **data,
                "schema_version": RESULTS_SCHEMA_VERSION,
                "threshold": 0.5,
                "threshold_raw": data.get("threshold"),
            }
        return data

    def to_bytes(self) -> bytes:
        """JSON record value; ``overlay_version`` only when set, so that readers from before the field existed (they
        refuse unknown fields) still read every record of workers that follow no overlay."""
        exclude = {"overlay_version"} if self.overlay_version is None else None
        return self.model_dump_json(exclude=exclude).encode("utf-8")

    @property
    def latency_ms(self) -> float:
        """Capture -> result latency."""
        return (self.processed_at - self.captured_at).total_seconds() * 1000.0


class DroppedFrame(FrameRecord):
    """A frame the worker did not inspect; produced to ``results`` in place of its ``InspectionResult``.

    ``reason`` ``stale``: the frame was captured more than ``max_frame_age_ms`` before its batch formed (the worker
    is behind; a late verdict on a part that left the camera is worthless, and inferring it would delay fresh ones).
    """

    kind: Literal["dropped"] = "dropped"
    dropped_at: UtcDatetime
    reason: Literal["stale"]
    age_ms: float = Field(ge=0, description="Capture -> drop time.")
    max_frame_age_ms: float = Field(gt=0, description="The age limit that was in force.")
    model_version: str


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("kind", "inspected")  # schema 1 knew only inspected results
    return getattr(value, "kind", "inspected")


_RESULTS_RECORD: TypeAdapter[InspectionResult | DroppedFrame] = TypeAdapter(
    Annotated[
        Annotated[InspectionResult, Tag("inspected")] | Annotated[DroppedFrame, Tag("dropped")], Discriminator(_kind)
    ]
)


def parse_results_record(data: bytes | str) -> InspectionResult | DroppedFrame:
    """Read one ``results`` record value, whichever kind it is.

    Raises:
        pydantic.ValidationError: not a valid record of either kind.
    """
    return _RESULTS_RECORD.validate_json(data)
