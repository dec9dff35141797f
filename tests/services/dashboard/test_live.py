"""Camera tiles (frames/s over the last minute, sparkline, threshold in force, stale warning) and the SSE format."""

from __future__ import annotations

from datetime import UTC, datetime

from services.contracts.results import InspectionResult
from services.dashboard.live import LiveState, sse


def _result(cam: str, score: float, i: int) -> InspectionResult:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    return InspectionResult(frame_id=f"{cam}-{i}", camera_id=cam, line_id="l1", sequence=i, captured_at=t,
                            processed_at=t, pred_score=score, pred_score_raw=score, pred_label=score > 0.5,
                            noise_step=0, threshold=0.5, threshold_raw=1.0, model_version="m", bundle_hash="h",
                            batch_id="b", batch_size=1, queue_wait_ms=0)


def test_tiles_rate_sparkline_threshold_source_and_staleness():
    now = [1000.0]
    live = LiveState(sparkline_points=3, stale_after_s=10, clock=lambda: now[0])
    for i, s in enumerate((0.1, 0.2, 0.3, 0.4)):
        now[0] = 1000.0 + i
        live.on_result(_result("cam1", s, i))
    (tile,) = live.snapshot()
    assert tile["fps"] == round(4 / 60, 3) and tile["scores"] == [0.2, 0.3, 0.4] and tile["last_score"] == 0.4
    assert (tile["threshold"], tile["threshold_source"], tile["stale"]) == (0.5, "model calibration", False)
    (tile,) = live.snapshot(overrides={"cam1": {"sensitivity": 0.3}}, alerts_last_hour={"cam1": 7})
    assert (tile["threshold"], tile["sensitivity"], tile["threshold_source"]) == (0.7, 0.3, "override")
    assert tile["alerts_last_hour"] == 7
    now[0] = 1003.0 + 61
    (tile,) = live.snapshot()
    assert tile["fps"] == 0 and tile["stale"] and tile["seconds_since_frame"] == 61.0
    # a camera known only from Redis (alerts, no frames seen yet) is stale with no frame
    cams = {t["camera_id"]: t for t in live.snapshot(alerts_last_hour={"cam2": 1})}
    assert cams["cam2"]["stale"] and cams["cam2"]["seconds_since_frame"] is None


def test_sse_event_is_one_json_line():
    assert sse("alert", {"camera_id": "<b>x</b>\nnext"}) == 'event: alert\ndata: {"camera_id":"<b>x</b>\\nnext"}\n\n'
