"""Redis stores against the real server: result hash + capped stream + latest, replay dedupe, alerts, overrides."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services._redis import AlertStore, InspectionStore, OverrideStore, connect
from services.contracts.defects import DefectAlert, alert_id_for
from services.contracts.results import BoundingBox, InspectionResult

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def client(redis_url):
    c = connect(redis_url)
    yield c
    c.close()


def _result(i: int, camera: str = "cam1", score: float = 0.2) -> InspectionResult:
    return InspectionResult(frame_id=f"{camera}-{i}", camera_id=camera, line_id="l1", sequence=i,
                            captured_at=T0 + timedelta(seconds=i),
                            processed_at=T0 + timedelta(seconds=i, milliseconds=300),
                            pred_score=score, pred_score_raw=score * 2, pred_label=score > 0.5, noise_step=30,
                            threshold=0.5, threshold_raw=1.0, model_version="m1", bundle_hash="h", mask_uri=f"file:///m/{i}.png",
                            defect_regions=[BoundingBox(x=0, y=0, width=2, height=2, area_fraction=0.1)],
                            batch_id="b", batch_size=2, queue_wait_ms=1.0)


def test_inspection_store_write_and_replay(client):
    prefix = uuid.uuid4().hex[:8]
    store = InspectionStore(client, ttl_s=60, stream_maxlen=100, prefix=prefix)
    batch = [_result(i) for i in range(5)]
    store.write(batch)
    got = store.get("cam1", "cam1-3")
    assert got["pred_score"] == "0.2" and got["mask_uri"] == "file:///m/3.png" and float(got["latency_ms"]) == 300.0
    # the same names and meanings as the results topic: the normalised threshold, the raw one under its own name
    assert (got["threshold"], got["threshold_raw"], got["schema_version"]) == ("0.5", "1.0", "2")
    assert 0 < client.ttl(store.result_key("cam1", "cam1-3")) <= 60
    assert 0 < client.ttl(store.stream_key("cam1")) <= 60
    # the worker replays a batch after a crash: same hashes, no duplicate stream entries, latest does not regress
    store.write(batch[1:3])
    assert len(store.recent("cam1")) == 5
    assert store.latest("cam1")["frame_id"] == "cam1-4"
    assert [e["frame_id"] for e in store.recent("cam1", 2)] == ["cam1-4", "cam1-3"]


def test_stream_is_capped(client):
    store = InspectionStore(client, ttl_s=60, stream_maxlen=10, prefix=uuid.uuid4().hex[:8])
    for i in range(0, 300, 50):
        store.write([_result(j) for j in range(i, i + 50)])
    # MAXLEN ~ trims in whole macro-nodes, so the cap is approximate but bounded
    assert client.xlen(store.stream_key("cam1")) < 150


def test_alert_store_is_idempotent(client):
    store = AlertStore(client, ttl_s=60, prefix=uuid.uuid4().hex[:8])
    alert = DefectAlert(alert_id=alert_id_for("f1"), frame_id="f1", camera_id="cam1", line_id="l1", captured_at=T0,
                        raised_at=T0 + timedelta(seconds=1), pred_score=0.8, pred_score_raw=1.6, threshold=0.5,
                        sensitivity=0.5, severity="medium", debounce="1/1", model_version="m1")
    store.record([alert])
    store.record([alert])
    assert store.for_camera("cam1") == [alert.alert_id]
    assert store.get(alert.alert_id) == alert


def test_overrides_with_audit(client):
    store = OverrideStore(client, prefix=uuid.uuid4().hex[:8])
    store.set("cam1", actor="alice", reason="glare", sensitivity=0.7)
    store.set("cam1:pA", actor="bob", min_score=0.9)
    assert store.all() == {"cam1": {"sensitivity": 0.7}, "cam1:pA": {"min_score": 0.9}}
    store.set("cam1", actor="alice", sensitivity=None)
    assert store.all() == {"cam1:pA": {"min_score": 0.9}}
    audit = store.audit()
    assert [a["actor"] for a in audit] == ["alice", "bob", "alice"]
    assert audit[-1]["reason"] == "glare"
    with pytest.raises(ValueError):
        store.set("cam1", actor="x", sensitivity=3)
    with pytest.raises(ValueError):
        store.set("cam1", actor="x", bogus=0.1)
