"""The ``defects`` record: an alert the alerter raised for a frame.

Flow step: alerter -> Kafka ``defects`` (and the Redis hash ``alert:{alert_id}``). ``alert_id`` is derived from the
frame id, so reprocessing the same result after a restart rewrites the same alert instead of inventing a new one.
Encoding: UTF-8 JSON.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import ConfigDict, Field

from services.contracts.frames import Identifier, JsonRecord, UtcDatetime
from services.contracts.results import BoundingBox
from services.contracts.topics import DEFECTS_SCHEMA_VERSION

_ALERT_NAMESPACE = uuid.UUID("8f6a1f3e-6a43-4e53-9d3b-2f0d1c7e5a11")

Severity = Literal["low", "medium", "high"]


def alert_id_for(frame_id: str) -> str:
    """Deterministic alert id of a frame (uuid5), so replays overwrite rather than duplicate."""
    return str(uuid.uuid5(_ALERT_NAMESPACE, frame_id))


class DefectAlert(JsonRecord):
    """A defect alert for one frame, after per-camera thresholds, debounce and cooldown."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    schema_version: Literal[1] = DEFECTS_SCHEMA_VERSION
    alert_id: str
    frame_id: Identifier
    camera_id: Identifier
    line_id: Identifier
    product_id: Identifier | None = None
    source: str | None = None
    captured_at: UtcDatetime
    raised_at: UtcDatetime
    pred_score: float
    pred_score_raw: float
    threshold: float = Field(description="Normalised-score threshold the alert rule applied to pred_score "
                                         "(1 - sensitivity, or min_score; 0.5 = the calibrated threshold).")
    sensitivity: float = Field(ge=0, le=1)
    severity: Severity
    debounce: str = Field(description="'hits/window' of the N-of-M rule when the alert fired, e.g. '2/3'.")
    mask_uri: str | None = None
    heatmap_uri: str | None = None
    boxes: list[BoundingBox] = Field(default_factory=list)
    model_version: str

    @property
    def latency_ms(self) -> float:
        """Capture -> alert latency."""
        return (self.raised_at - self.captured_at).total_seconds() * 1000.0
