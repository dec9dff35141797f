"""The teacher's rules, one mark at a time, on a real Redis and a local object store (no Kafka needed here; the
stream path is tests/integration/test_teach.py): what each action does, what is refused and why, replays,
another product's marks, and two writers racing for a version."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import cv2
import pytest
import structlog

from ddad_core.pipeline import DDADPipeline
from ddad_core.testing import make_tiny_bundle, synthetic_textures
from services._object_store import LocalObjectStore, frame_object_key
from services._overlays import OverlayConflict, OverlayStore
from services._redis import connect
from services.contracts.feedback import FeedbackRecord
from services.teacher.loop import Teacher
from tests.ddad_core._helpers import recapture, ring, square

PRODUCT = "p1"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return DDADPipeline.from_bundle(
        make_tiny_bundle(tmp_path_factory.mktemp("b") / "fast", num_images=20, recipe="fast")
    )


@pytest.fixture
def setup(redis_url, tmp_path, pipe):
    store = LocalObjectStore(tmp_path / "objects")
    overlays = OverlayStore(connect(redis_url), store, f"t{uuid.uuid4().hex[:8]}")
    return store, overlays, Teacher(pipe, overlays, store, PRODUCT, "mask", structlog.get_logger())


def keep(store, frame_id: str, image) -> None:
    store.put(frame_object_key("cam1", frame_id, "png"), cv2.imencode(".png", image[..., ::-1])[1].tobytes())


def mark(alert_id: str, action: str, product_id: str = PRODUCT) -> FeedbackRecord:
    return FeedbackRecord(
        feedback_id=uuid.uuid4().hex,
        alert_id=alert_id,
        frame_id=f"f-{alert_id}",
        camera_id="cam1",
        line_id="l1",
        product_id=product_id,
        action=action,
        actor="alice",
        at=datetime.now(UTC),
        pred_score=0.8,
        pred_score_raw=2.0,
        threshold=0.5,
        model_version="m",
    )


def test_each_action_and_replays(setup):
    store, overlays, teacher = setup
    part = synthetic_textures(1, 64, seed=42)[0]
    keep(store, "f-ring", ring(part))
    assert teacher.apply(mark("ring", "acknowledge")).result == "unchanged"  # no verdict
    assert teacher.apply(mark("ring", "false_alarm", product_id="p2")).result == "other_product"
    assert overlays.version(PRODUCT) is None
    taught = teacher.apply(mark("ring", "false_alarm"))
    assert (taught.result, taught.version) == ("taught", 1)
    assert overlays.teaching(PRODUCT, "ring")["taught"]["actor"] == "alice"
    assert teacher.apply(mark("ring", "false_alarm")).result == "unchanged"  # a replay teaches nothing twice
    assert teacher.apply(mark("ring", "acknowledge")).version == 1
    undone = teacher.apply(mark("ring", "withdraw"))
    assert (undone.result, undone.version) == ("undone", 2) and overlays.record(PRODUCT)["entries"] == 0
    assert teacher.apply(mark("ring", "withdraw")).result == "unchanged"  # nothing left to undo


def test_refusals_name_the_confirmed_defects_and_frames_that_are_not_kept(setup):
    store, overlays, teacher = setup
    part = synthetic_textures(1, 64, seed=42)[0]
    assert teacher.apply(mark("gone", "false_alarm")).reason.startswith("the frame is not kept")
    keep(store, "f-defect", recapture(square(part), 1))
    assert teacher.apply(mark("defect", "confirm_defect")).result == "confirmed"
    keep(store, "f-lookalike", recapture(square(part), 2))
    refused = teacher.apply(mark("lookalike", "false_alarm"))
    assert (refused.result, refused.missed, refused.version) == ("refused", ["defect"], 0)
    assert overlays.refusal(PRODUCT, "lookalike")["missed"] == ["defect"]
    # A confirmed defect whose frame is not kept cannot be checked: every change is refused, naming it.
    teacher.apply(mark("unseen", "confirm_defect"))
    keep(store, "f-ring", ring(part))
    assert teacher.apply(mark("ring", "false_alarm")).missed == ["unseen"]
    teacher.apply(mark("unseen", "withdraw"))
    assert teacher.apply(mark("ring", "false_alarm")).result == "taught"
    assert overlays.refusal(PRODUCT, "ring") is None  # the earlier refusal is cleared by the accepted change
    # The taught look confirmed later as a defect: the model does not flag it now, so no change can silence it and
    # it blocks none (only what the overlay in force flags is guarded).
    keep(store, "f-ringdef", recapture(ring(part), 9))
    teacher.apply(mark("ringdef", "confirm_defect"))
    keep(store, "f-ring2", ring(part, cx=40, cy=20))
    assert teacher.apply(mark("ring2", "false_alarm")).result == "taught"


def test_a_second_writer_cannot_publish_over_the_first(setup, pipe):
    store, overlays, teacher = setup
    part = synthetic_textures(1, 64, seed=42)[0]
    other = Teacher(pipe, overlays, store, PRODUCT, "mask", structlog.get_logger())
    keep(store, "f-a", ring(part))
    keep(store, "f-b", ring(part, cx=40, cy=20))
    assert teacher.apply(mark("a", "false_alarm")).version == 1
    with pytest.raises(OverlayConflict):
        other.apply(mark("b", "false_alarm"))  # made on version 0
    assert other.apply(mark("b", "false_alarm")).version == 2  # redone on top of version 1
    assert [e.alert_id for e in overlays.load(PRODUCT).entries] == ["a", "b"]


def test_start_up_checks_and_a_bundle_that_cannot_take_an_overlay(
    kafka_bootstrap_servers, redis_url, tmp_path, pipe, capsys
):
    from services._config import StartupError
    from services.teacher.__main__ import serve
    from services.teacher.config import TeacherSettings

    common = dict(
        kafka_bootstrap_servers=kafka_bootstrap_servers,
        redis_url=redis_url,
        http_port=-1,
        object_store_url=f"file://{tmp_path / 'objects'}",
        product_id=PRODUCT,
        log_level="WARNING",
    )
    fast = make_tiny_bundle(tmp_path / "fast", num_images=20, recipe="fast")
    assert serve(TeacherSettings(**common, bundle_path=str(fast)), check_only=True) == 0
    assert "overlay version 0" in capsys.readouterr().out
    paper = make_tiny_bundle(tmp_path / "paper")
    with pytest.raises(StartupError, match="no patch k-NN term; an overlay cannot teach it; check TEACHER_BUNDLE_PATH"):
        serve(TeacherSettings(**common, bundle_path=str(paper)))
