"""Wire contracts: round trips, validation, claim check and the binary envelope's failure reasons."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from services.contracts import (
    DefectAlert,
    DroppedFrame,
    Frame,
    FrameDecodeError,
    InspectionResult,
    Topics,
    parse_results_record,
)
from services.contracts.defects import alert_id_for
from services.contracts.results import BoundingBox

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _frame(**kw) -> Frame:
    fields = dict(frame_id="cam1-000001", camera_id="cam1", sequence=1, encoding="jpeg", width=640, height=480,
                  image=b"\xff\xd8jpeg-bytes", captured_at=NOW)
    fields.update(kw)
    return Frame(**fields)


def test_frame_binary_round_trip_inline_and_claim_check():
    inline = _frame(product_id="p-7", source="img_001.png")
    assert Frame.from_bytes(inline.to_bytes()) == inline
    claim = _frame(image=None, image_uri="s3://bucket/frames/cam1/cam1-000001.jpg")
    decoded = Frame.from_bytes(claim.to_bytes())
    assert decoded.image is None and decoded.image_uri == claim.image_uri
    # inline bytes are not base64-inflated: the record is the image plus a small header
    assert len(inline.to_bytes()) < len(inline.image) + 400


def test_frame_requires_exactly_one_payload_and_aware_time():
    with pytest.raises(ValidationError, match="exactly one"):
        _frame(image=None)
    with pytest.raises(ValidationError, match="exactly one"):
        _frame(image_uri="file:///x.jpg")
    with pytest.raises(ValidationError, match="timezone-aware"):
        _frame(captured_at=datetime(2026, 1, 1))
    with pytest.raises(ValidationError):
        _frame(camera_id="../etc")  # ids become keys and paths


@pytest.mark.parametrize(("value", "reason"), [
    (b"", "bad_envelope"),
    (b"not a frame at all", "bad_envelope"),
    (b"DDF\x07" + b"\x00\x00\x00\x02{}", "unsupported_schema"),
    (b"DDF\x01" + b"\x00\x00\xff\xff{}", "bad_envelope"),
    (b"DDF\x01" + b"\x00\x00\x00\x02{}", "invalid_frame"),
    (b"DDF\x01" + b"\x00\x00\x00\x03{x}", "bad_envelope"),
])
def test_frame_decode_reasons(value, reason):
    with pytest.raises(FrameDecodeError) as err:
        Frame.from_bytes(value)
    assert err.value.reason == reason


def test_result_and_alert_round_trip():
    result = InspectionResult(
        frame_id="f1", camera_id="cam1", line_id="line-1", sequence=3, captured_at=NOW,
        processed_at=NOW + timedelta(milliseconds=250), pred_score=0.7, pred_score_raw=1.3, pred_label=True,
        noise_step=40, threshold=0.5, threshold_raw=1.0, model_version="m1", bundle_hash="abc",
        mask_uri="file:///m.png",
        defect_regions=[BoundingBox(x=1, y=2, width=3, height=4, area_fraction=0.01)],
        timings_ms={"infer": 12.5}, batch_id="b1", batch_size=4, queue_wait_ms=3.0)
    assert InspectionResult.from_bytes(result.to_bytes()) == result
    assert result.latency_ms == pytest.approx(250.0)
    alert = DefectAlert(alert_id=alert_id_for("f1"), frame_id="f1", camera_id="cam1", line_id="line-1",
                        captured_at=NOW, raised_at=NOW + timedelta(seconds=1), pred_score=0.7, pred_score_raw=1.3,
                        threshold=0.5, sensitivity=0.5, severity="medium", debounce="2/3", model_version="m1",
                        boxes=result.defect_regions)
    assert DefectAlert.from_bytes(alert.to_bytes()) == alert
    assert alert_id_for("f1") == alert.alert_id != alert_id_for("f2")  # deterministic: replays overwrite
    with pytest.raises(ValidationError):
        InspectionResult.model_validate({**result.model_dump(), "unknown": 1})  # extra fields are refused


def _result(**kw) -> InspectionResult:
    fields = dict(frame_id="f1", camera_id="cam1", line_id="line-1", sequence=3, captured_at=NOW, processed_at=NOW,
                  pred_score=0.7, pred_score_raw=1.3, pred_label=True, noise_step=40, threshold=0.5,
                  threshold_raw=1.0, model_version="m1", bundle_hash="abc", batch_id="b1", batch_size=4,
                  queue_wait_ms=3.0)
    return InspectionResult(**{**fields, **kw})


def test_results_topic_tells_inspected_from_dropped():
    inspected = _result()
    dropped = DroppedFrame(frame_id="f2", camera_id="cam1", line_id="line-1", sequence=4, captured_at=NOW,
                           dropped_at=NOW + timedelta(seconds=12), reason="stale", age_ms=12000.0,
                           max_frame_age_ms=4550.0, model_version="m1")
    assert parse_results_record(inspected.to_bytes()) == inspected
    assert parse_results_record(dropped.to_bytes()) == dropped
    assert (inspected.kind, dropped.kind, inspected.schema_version, dropped.schema_version) == (
        "inspected", "dropped", 2, 2)
    # a dropped frame has no verdict at all: it can never be read as "inspected and passed"
    assert not {"pred_score", "pred_label", "threshold"} & set(dropped.model_dump())
    with pytest.raises(ValidationError):
        parse_results_record(b'{"kind": "skipped"}')


def test_schema_1_results_are_read_with_todays_field_meanings():
    # Schema 1 put the raw threshold under `threshold`; a rolling upgrade may still deliver such records.
    v1 = {**_result().model_dump(mode="json", exclude={"kind", "threshold_raw"}), "schema_version": 1,
          "threshold": 0.674}
    got = parse_results_record(json.dumps(v1))
    assert (got.schema_version, got.threshold, got.threshold_raw) == (2, 0.5, 0.674)


def test_threshold_means_the_normalised_threshold_in_results_and_alerts():
    for model in (InspectionResult, DefectAlert):
        assert "ormalised" in model.model_fields["threshold"].description
    assert "raw" in InspectionResult.model_fields["threshold_raw"].description


def test_topics_prefix():
    assert Topics().all() == ["frames", "frames.dlq", "results", "defects", "feedback"]
    assert Topics("stg").results == "stg.results"


def test_latest_verdicts_acknowledge_is_none_withdraw_takes_one_back_and_the_latest_wins():
    from services.contracts.feedback import FeedbackRecord, latest_verdicts

    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def mark(alert_id: str, action: str, minutes: int) -> FeedbackRecord:
        return FeedbackRecord(feedback_id=f"{alert_id}-{minutes}", alert_id=alert_id, frame_id=f"f-{alert_id}",
                              camera_id="cam1", line_id="l1", action=action, actor="alice",
                              at=t0 + timedelta(minutes=minutes), pred_score=0.7, pred_score_raw=1.0, threshold=0.5,
                              model_version="m")

    records = [mark("a", "false_alarm", 1), mark("a", "acknowledge", 2),  # still a false alarm
               mark("b", "false_alarm", 1), mark("b", "withdraw", 2),  # no verdict any more
               mark("c", "confirm_defect", 3), mark("c", "false_alarm", 2),  # the later `at` wins, not the order
               mark("d", "withdraw", 1), mark("d", "confirm_defect", 2)]  # a verdict after a withdrawal counts
    assert {k: r.action for k, r in latest_verdicts(records).items()} == {
        "a": "false_alarm", "c": "confirm_defect", "d": "confirm_defect"}


def test_overlay_version_is_on_the_wire_only_when_set():
    plain = InspectionResult(
        frame_id="f1", camera_id="cam1", line_id="line-1", sequence=3, captured_at=NOW, processed_at=NOW,
        pred_score=0.7, pred_score_raw=1.3, pred_label=True, noise_step=40, threshold=0.5, threshold_raw=1.0,
        model_version="m1", bundle_hash="abc", batch_id="b1", batch_size=4, queue_wait_ms=3.0)  # fmt: skip
    assert plain.overlay_version is None and b"overlay_version" not in plain.to_bytes()  # readers before it: unchanged
    taught = plain.model_copy(update={"overlay_version": 4})
    assert json.loads(taught.to_bytes())["overlay_version"] == 4
    assert InspectionResult.from_bytes(taught.to_bytes()) == taught
    assert InspectionResult.from_bytes(plain.to_bytes()).overlay_version is None
