"""The ``feedback`` record: an operator's verdict on one alert (acknowledged, false alarm, confirmed defect).

Flow step: dashboard -> Kafka ``feedback`` (and the Redis hash ``feedback:{alert_id}``) -> ``python -m services.alerter
calibrate``, which turns false alarms and confirmed defects into a proposed per-camera threshold. These marks are the
only labels a plant produces, so the record carries what a later calibration needs without a join: the alert's
normalised and raw scores and the threshold that raised it. The latest record of an alert wins (an operator may
correct a mark); ``feedback_id`` is unique per action. Encoding: UTF-8 JSON.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import ConfigDict, Field

from services.contracts.frames import Identifier, JsonRecord, UtcDatetime
from services.contracts.topics import FEEDBACK_SCHEMA_VERSION

#: ``acknowledge``: seen, no verdict; ``false_alarm``: no defect on the part; ``confirm_defect``: a real defect;
#: ``withdraw``: takes back the operator's earlier verdict on the alert (undo: no verdict from then on).
FeedbackAction = Literal["acknowledge", "false_alarm", "confirm_defect", "withdraw"]
FEEDBACK_ACTIONS: tuple[str, ...] = ("acknowledge", "false_alarm", "confirm_defect", "withdraw")


def new_feedback_id() -> str:
    """A fresh id for one operator action."""
    return str(uuid.uuid4())


class FeedbackRecord(JsonRecord):
    """One operator action on one alert.

    Example:
        >>> from datetime import UTC, datetime
        >>> r = FeedbackRecord(feedback_id="f1", alert_id="a1", frame_id="cam1-1", camera_id="cam1", line_id="l1",
        ...                    action="false_alarm", actor="alice", at=datetime(2026, 1, 1, tzinfo=UTC),
        ...                    pred_score=0.61, pred_score_raw=1.2, threshold=0.5, model_version="m")
        >>> FeedbackRecord.from_bytes(r.to_bytes()) == r
        True
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    schema_version: Literal[1] = FEEDBACK_SCHEMA_VERSION
    feedback_id: str = Field(min_length=1, max_length=64, description="Unique per action.")
    alert_id: str = Field(min_length=1, max_length=64)
    frame_id: Identifier
    camera_id: Identifier
    line_id: Identifier
    product_id: Identifier | None = None
    action: FeedbackAction
    actor: str = Field(min_length=1, max_length=64, description="Who marked it (the operator's login name).")
    at: UtcDatetime = Field(description="When it was marked.")
    note: str = Field("", max_length=500)
    pred_score: float = Field(description="The alert's normalised score (0.5 = calibrated threshold).")
    pred_score_raw: float
    threshold: float = Field(description="Normalised threshold the alert rule applied when the alert was raised.")
    model_version: str


def latest_verdicts(records: list[FeedbackRecord]) -> dict[str, FeedbackRecord]:
    """Alert id -> the latest verdict (``false_alarm`` or ``confirm_defect``) of every alert that still has one:
    ``acknowledge`` is no verdict, ``withdraw`` takes the earlier one back; among records of one alert the latest
    ``at`` wins (a tie: the later record)."""
    latest: dict[str, FeedbackRecord] = {}
    for rec in records:
        if rec.action != "acknowledge" and (rec.alert_id not in latest or rec.at >= latest[rec.alert_id].at):
            latest[rec.alert_id] = rec
    return {alert_id: rec for alert_id, rec in latest.items() if rec.action != "withdraw"}
