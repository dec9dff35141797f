"""Operators teach the model, against the real Kafka, Redis and S3 servers (marker ``integration``).

frames -> worker (tiny ``fast`` bundle, following product p1's overlay) -> ``results``; marks on ``feedback`` (as the
dashboard writes them) -> teacher -> overlay version in S3 + Redis -> the worker swaps between batches. Checked: a
false-alarm mark makes the same pattern on a later frame pass, labelled with the new overlay version, while a
defect still alerts; a mark whose overlay would silence a confirmed defect is refused with that alert's id; undo
brings the alert back; the frames the marks need were kept by the worker (inline frames, not claim checks).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest

from ddad_core.evaluation.evaluate import evaluate
from ddad_core.testing import make_tiny_bundle, synthetic_textures
from services._kafka import make_producer
from services._object_store import open_object_store, stored_frame
from services._overlays import OverlayStore
from services._redis import connect
from services.alerter.feedback import read_feedback
from services.contracts.defects import alert_id_for
from services.contracts.feedback import FeedbackRecord, new_feedback_id
from services.contracts.results import InspectionResult
from services.teacher.__main__ import serve as teacher_serve
from services.teacher.config import TeacherSettings
from services.teacher.export import export_labelled_set
from tests.ddad_core._helpers import recapture, ring, square
from tests.services._helpers import (
    FAST_GROUP,
    ServiceThread,
    StreamEnv,
    TopicReader,
    png_frame,
    start_worker,
    wait_for,
)

pytestmark = [pytest.mark.integration]

PRODUCT = "p1"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "fast", num_images=20, recipe="fast")


@pytest.fixture(scope="module")
def detector(bundle):
    from services.worker.inference import load_detector

    return load_detector(str(bundle), "cpu")


class Line:
    """Frames in, results out, marks in: the product line as the tests drive it."""

    def __init__(self, env: StreamEnv) -> None:
        self.env = env
        self.producer = make_producer(env.kafka)
        self.results = TopicReader(env, env.topics.results)
        self.seq = 0

    def inspect(self, *images: np.ndarray) -> list[InspectionResult]:
        frames = []
        for image in images:
            self.seq += 1
            frames.append(png_frame(image, self.seq, product_id=PRODUCT))
            self.producer.send(self.env.topics.frames, key=b"cam1", value=frames[-1].to_bytes())
        self.producer.flush()
        wanted = {f.frame_id for f in frames}
        records = self.results.read_until(
            lambda rs: wanted <= {InspectionResult.from_bytes(r.value).frame_id for r in rs}, timeout_s=60
        )
        by_id = {r.frame_id: r for r in map(lambda r: InspectionResult.from_bytes(r.value), records)}
        return [by_id[f.frame_id] for f in frames]

    def mark(self, result: InspectionResult, action: str) -> str:
        alert_id = alert_id_for(result.frame_id)
        record = FeedbackRecord(
            feedback_id=new_feedback_id(),
            alert_id=alert_id,
            frame_id=result.frame_id,
            camera_id=result.camera_id,
            line_id=result.line_id,
            product_id=PRODUCT,
            action=action,
            actor="alice",
            at=datetime.now(UTC),
            pred_score=result.pred_score,
            pred_score_raw=result.pred_score_raw,
            threshold=result.threshold,
            model_version=result.model_version,
        )
        self.producer.send(self.env.topics.feedback, key=b"cam1", value=record.to_bytes())
        self.producer.flush()
        return alert_id


def test_marks_teach_guard_and_undo_on_the_live_stream(
    kafka_bootstrap_servers, redis_url, s3_client_kwargs, bundle, detector, tmp_path
):
    bucket = f"teach-{uuid.uuid4().hex[:10]}"
    open_object_store(f"s3://{bucket}", s3_client_kwargs, create_bucket=True)
    env = StreamEnv(kafka_bootstrap_servers, redis_url, f"s3://{bucket}/objects", s3_client_kwargs)
    env.create_topics()
    store = open_object_store(env.object_store_url, s3_client_kwargs)
    overlays = OverlayStore(connect(redis_url), store, env.prefix)
    worker = start_worker(env, detector, overlay_product=PRODUCT, overlay_refresh_s=0.2)
    teacher = ServiceThread(teacher_serve, TeacherSettings(
        **env.common(), product_id=PRODUCT, bundle_path=str(bundle), group_id=f"{env.prefix}-teacher",
        **FAST_GROUP), "teacher").start()  # fmt: skip
    line = Line(env)
    part = synthetic_textures(1, 64, seed=42)[0]
    try:
        # Before any mark: the harmless ring alerts (a false alarm), so does the defect; no overlay yet.
        flagged, defect = line.inspect(ring(part), recapture(square(part), 1))
        assert flagged.pred_label and defect.pred_label
        assert flagged.overlay_version is None and defect.overlay_version is None
        assert stored_frame(store, "cam1", flagged.frame_id) is not None  # the worker kept the flagged inline frame

        # The operator confirms the defect and marks the ring a false alarm: version 1 goes live on the worker.
        confirmed = line.mark(defect, "confirm_defect")
        marked_at = time.monotonic()
        taught = line.mark(flagged, "false_alarm")
        assert wait_for(lambda: overlays.version(PRODUCT) == 1, 60, interval_s=0.02)
        published_s = time.monotonic() - marked_at
        assert wait_for(lambda: worker.loops[0].overlay.version == 1, 30)  # checked every 0.2 s, between batches
        picked_s = time.monotonic() - marked_at
        record = overlays.record(PRODUCT)
        assert record["alert_id"] == taught and record["actor"] == "alice" and record["entries"] == 1
        later, other = line.inspect(recapture(ring(part), 2), recapture(square(part, x=40, y=8), 3))
        effect_s = time.monotonic() - marked_at
        assert later.overlay_version == 1 and not later.pred_label  # the same pattern no longer alerts
        assert other.overlay_version == 1 and other.pred_label  # an unrelated defect still does
        print(
            f"mark -> version published: {published_s:.2f} s, picked up by the worker: {picked_s:.2f} s, "
            f"first result scored with it: {effect_s:.2f} s"
        )
        assert effect_s < 30

        # A false-alarm mark on a look of the confirmed defect is refused, naming it; nothing goes live.
        lookalike = line.inspect(recapture(square(part), 4))[0]
        assert lookalike.pred_label
        refused = line.mark(lookalike, "false_alarm")
        assert wait_for(lambda: overlays.refusal(PRODUCT, refused) is not None, 60)
        assert overlays.refusal(PRODUCT, refused)["missed"] == [confirmed]
        assert overlays.version(PRODUCT) == 1

        # Undo (the operator withdraws the false-alarm verdict): version 2, and the ring alerts again.
        line.mark(flagged, "acknowledge")  # seen: no verdict, nothing changes
        line.mark(flagged, "withdraw")
        assert wait_for(lambda: overlays.version(PRODUCT) == 2, 60)
        assert overlays.record(PRODUCT)["entries"] == 0
        assert wait_for(lambda: line.inspect(recapture(ring(part), 5))[0].overlay_version == 2, 30)
        again = line.inspect(recapture(ring(part), 6))[0]
        assert again.pred_label and again.overlay_version == 2

        # The labelled set: the latest verdicts (the withdrawn one is gone, the refused false alarm stays a good
        # part), with the kept frames' bytes, in a layout `ddad eval` runs on.
        records, invalid = read_feedback(env.kafka, env.topics.feedback)
        labels = export_labelled_set(records, PRODUCT, store, tmp_path / "labelled")
        assert invalid == 0 and labels["skipped"] == {}
        assert {f: v["alert_id"] for f, v in labels["files"].items()} == {
            f"test/good/{lookalike.frame_id}.png": refused,
            f"test/defect/{defect.frame_id}.png": confirmed,
        }
        assert (tmp_path / "labelled" / "test" / "good" / f"{lookalike.frame_id}.png").read_bytes() == stored_frame(
            store, "cam1", lookalike.frame_id
        )
        with pytest.warns(UserWarning, match="1 defective test image"):  # operators do not outline defects
            figures = evaluate(bundle, tmp_path / "labelled", log=None)
        assert figures["n_images"] == 2 and figures["at_threshold"]["false_alarms"] == 1
        assert figures["at_threshold"]["misses"] == 0
        with pytest.raises(FileExistsError):
            export_labelled_set(records, PRODUCT, store, tmp_path / "labelled")
    finally:
        teacher.join()
        worker.join()
        line.results.close()
        line.producer.close()
    assert teacher.error is None and worker.error is None
