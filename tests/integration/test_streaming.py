"""End-to-end streaming against the real Kafka, Redis and S3 servers (marker ``integration``).

ingestor -> Kafka ``frames`` -> worker (tiny real D3AD bundle, image size 64) -> S3/local store + Redis + ``results``
-> alerter -> ``defects``. Services run in threads of this process, each test on its own topic prefix, key prefix
and consumer groups. Nothing here is faked: the only intervention is an injected crash (an exception right before
the offset commit) in the restart test.
"""

from __future__ import annotations

import collections
import uuid

import cv2
import numpy as np
import pytest

from services._object_store import open_object_store
from services._redis import AlertStore, InspectionStore, connect
from services.alerter.__main__ import serve as alerter_serve
from services.contracts.defects import DefectAlert
from services.contracts.results import InspectionResult
from services.ingestor.__main__ import serve as ingestor_serve
from tests.services._helpers import (
    ServiceThread,
    StreamEnv,
    TopicReader,
    make_frame,
    produce_frames,
    start_worker,
    texture,
    wait_for,
)

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from ddad_core.testing import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", image_size=64, seed=0)


@pytest.fixture(scope="module")
def detector(bundle):
    from services.worker.inference import load_detector

    return load_detector(str(bundle), "cpu")


@pytest.fixture
def env(kafka_bootstrap_servers, redis_url, tmp_path):
    e = StreamEnv(kafka_bootstrap_servers, redis_url, f"file://{tmp_path / 'objects'}")
    e.create_topics()
    return e


def _results(records) -> list[InspectionResult]:
    return [InspectionResult.from_bytes(r.value) for r in records]


def _distinct(records) -> set[str]:
    return {r.frame_id for r in _results(records)}


def test_frames_in_results_out_and_defects_alerted(kafka_bootstrap_servers, redis_url, s3_client_kwargs, tmp_path,
                                                   detector, bundle):
    # masks go to the real S3 server here; the other tests use the local store
    bucket = f"it-{uuid.uuid4().hex[:10]}"
    open_object_store(f"s3://{bucket}", s3_client_kwargs, create_bucket=True)
    env = StreamEnv(kafka_bootstrap_servers, redis_url, f"s3://{bucket}/objects", s3_client_kwargs)
    env.create_topics()
    cameras, per_camera, planted = ["cam-a", "cam-b", "cam-c"], 6, {2, 5}
    for cam in cameras:  # one folder per camera; the ingestor reads it once
        folder = tmp_path / cam
        folder.mkdir()
        for i in range(per_camera):
            cv2.imwrite(str(folder / f"{'defect' if i in planted else 'good'}_{i:03d}.png"),
                        texture(hash((cam, i)) % 1000, 64, defect=i in planted))
    n = len(cameras) * per_camera

    worker = start_worker(env, detector, "worker")
    alerter = ServiceThread(alerter_serve, env.alerter_settings(bundle_path=str(bundle)), "alerter").start()
    # cam-b sends lossless PNG; cam-c's frames exceed its inline limit and travel as claim checks through S3
    ingestors = [ServiceThread(ingestor_serve, env.ingestor_settings(
        camera_id=cam, source=str(tmp_path / cam), inline_limit_bytes=500 if cam == "cam-c" else 900_000,
        encoding="png" if cam == "cam-b" else "jpeg"),
        f"ingestor-{cam}").start() for cam in cameras]
    results, defects = TopicReader(env, env.topics.results), TopicReader(env, env.topics.defects)
    try:
        for t in ingestors:
            t.thread.join(60)
            assert t.error is None, t.error
        records = results.read_until(lambda recs: len(_distinct(recs)) >= n)
        got = _results(records)
        assert len(got) == n and len(_distinct(records)) == n  # exactly N, no duplicates
        expected_alerts = {r.frame_id for r in got if r.pred_score >= 0.5}
        alerts = [DefectAlert.from_bytes(r.value) for r in
                  defects.read_until(lambda recs: len(recs) >= len(expected_alerts), timeout_s=30)]
    finally:
        for t in (worker, alerter):
            t.join()
        results.close()
        defects.close()
    assert worker.error is None and alerter.error is None

    # every record is complete and where it should be
    store = open_object_store(f"s3://{bucket}/objects", s3_client_kwargs)
    redis_store = InspectionStore(connect(redis_url), prefix=env.prefix)
    for r in got:
        assert r.model_version == detector.model_version and r.bundle_hash == detector.bundle_hash
        assert redis_store.get(r.camera_id, r.frame_id)["frame_id"] == r.frame_id
        mask = cv2.imdecode(np.frombuffer(store.get(r.mask_uri), np.uint8), cv2.IMREAD_GRAYSCALE)
        assert mask.shape[0] == mask.shape[1] and set(np.unique(mask)) <= {0, 255}
        assert r.heatmap_uri and r.source and r.timings_ms["infer"] > 0
    assert sorted(redis_store.recent("cam-a", 100), key=lambda e: e["id"])[0]["frame_id"].startswith("cam-a-")
    claim_checks = store.client.list_objects_v2(Bucket=bucket, Prefix="objects/frames/cam-c/")
    assert claim_checks.get("KeyCount") == per_camera

    # alerts: exactly the frames over the threshold, recorded in Redis, with boxes from the mask
    assert {a.frame_id for a in alerts} == expected_alerts
    alert_store = AlertStore(connect(redis_url), prefix=env.prefix)
    for a in alerts:
        assert alert_store.get(a.alert_id) == a
        assert a.boxes and a.latency_ms > 0
    # planted defects: every one of them alerted, and they score above the good frames
    planted_ids = {r.frame_id for r in got if r.source.startswith("defect_")}
    good_scores = [r.pred_score for r in got if r.frame_id not in planted_ids]
    planted_scores = [r.pred_score for r in got if r.frame_id in planted_ids]
    assert len(planted_ids) == len(cameras) * len(planted)
    assert min(planted_scores) > np.median(good_scores)
    assert planted_ids <= expected_alerts, "a planted defect was not alerted"


def test_worker_crash_before_commit_then_restart_loses_and_duplicates_nothing(env, detector, redis_url):
    frames = [make_frame(i, camera_id=f"cam{i % 4}") for i in range(28)]
    produce_frames(env, frames)

    def crash_after_two_batches(loop):
        finish = loop._finish

        def crashing(done, flushed=False):
            # The results of this batch are written and flushed; dying now, before the commit, is the worst case.
            if loop.batches_run >= 2 and done:
                raise RuntimeError("injected crash between flush and commit")
            return finish(done, flushed)

        loop._finish = crashing

    first = start_worker(env, detector, "worker-1", on_loop=crash_after_two_batches)
    first.thread.join(120)
    assert isinstance(first.error, RuntimeError), first.error  # it crashed mid-stream, uncommitted

    reader = TopicReader(env, env.topics.results)
    partial = reader.read_until(lambda recs: len(recs) >= 8, timeout_s=30)
    assert 8 <= len(_distinct(partial)) < len(frames)

    second = start_worker(env, detector, "worker-2")
    try:
        records = reader.read_until(lambda recs: len(_distinct(recs)) >= len(frames))
    finally:
        second.join()
        reader.close()
    assert second.error is None
    assert _distinct(records) == {f.frame_id for f in frames}  # nothing lost
    dupes = [fid for fid, c in collections.Counter(r.frame_id for r in _results(records)).items() if c > 1]
    assert len(dupes) <= 4  # at most the one uncommitted batch was replayed ...
    store = InspectionStore(connect(redis_url), prefix=env.prefix)
    keys = list(store.client.scan_iter(match=f"{env.prefix}:insp:*", count=1000))
    assert len(keys) == len(frames)  # ... and its replay overwrote the same Redis records
    assert all(len(store.recent(f"cam{c}", 100)) == 7 for c in range(4))  # no duplicate stream entries


def test_graceful_restart_mid_stream_exactly_once_output(env, detector):
    frames = [make_frame(i, camera_id=f"cam{i % 3}") for i in range(24)]
    reader = TopicReader(env, env.topics.results)
    first = start_worker(env, detector, "worker-1", max_batch_size=2)
    produce_frames(env, frames)
    reader.read_until(lambda recs: len(recs) >= 6, timeout_s=120)
    first.join()  # SIGTERM path: drain, flush, commit, leave the group
    assert first.error is None
    second = start_worker(env, detector, "worker-2", max_batch_size=2)
    try:
        records = reader.read_until(lambda recs: len(recs) >= len(frames))
    finally:
        second.join()
        reader.close()
    ids = [r.frame_id for r in _results(records)]
    assert sorted(ids) == sorted(f.frame_id for f in frames)  # every frame once, none twice
    assert first.loops[0].frames_inferred > 0 and second.loops[0].frames_inferred > 0


def test_corrupt_frames_go_to_dlq_and_the_rest_are_processed(env, detector):
    frames = [make_frame(i, camera_id="cam1") for i in range(10)]
    corrupt_jpeg = make_frame(99, camera_id="cam1").model_copy(update={"image": b"\xff\xd8\xff\xe0 truncated"})
    produce_frames(env, frames[:5], [(b"cam1", b"definitely not a frame"), (b"cam1", corrupt_jpeg.to_bytes())])
    produce_frames(env, frames[5:])
    worker = start_worker(env, detector)
    results, dlq = TopicReader(env, env.topics.results), TopicReader(env, env.topics.frames_dlq)
    try:
        got = results.read_until(lambda recs: len(recs) >= len(frames))
        dead = dlq.read_until(lambda recs: len(recs) >= 2, timeout_s=30)
    finally:
        worker.join()
        results.close()
        dlq.close()
    assert worker.error is None
    assert sorted(r.frame_id for r in _results(got)) == sorted(f.frame_id for f in frames)
    reasons = sorted(dict(r.headers)["dlq.reason"] for r in dead)
    assert reasons == [b"bad_envelope", b"undecodable"]
    assert {r.value for r in dead} == {b"definitely not a frame", corrupt_jpeg.to_bytes()}


def test_two_workers_in_one_group_split_the_partitions(env, detector):
    a = start_worker(env, detector, "worker-a")
    b = start_worker(env, detector, "worker-b")
    try:
        assert wait_for(lambda: a.loops and b.loops and a.loops[0].consumer.assignment()
                        and b.loops[0].consumer.assignment(), timeout_s=90), "both workers never got partitions"
        assert wait_for(lambda: len(a.loops[0].consumer.assignment()) + len(b.loops[0].consumer.assignment())
                        == env.frames_partitions, timeout_s=60)
        parts_a = {tp.partition for tp in a.loops[0].consumer.assignment()}
        parts_b = {tp.partition for tp in b.loops[0].consumer.assignment()}
        assert parts_a.isdisjoint(parts_b) and parts_a | parts_b == set(range(env.frames_partitions))
        frames = [make_frame(i, camera_id=f"cam{i % 8}") for i in range(32)]
        produce_frames(env, frames)
        reader = TopicReader(env, env.topics.results)
        records = reader.read_until(lambda recs: len(recs) >= len(frames))
        reader.close()
    finally:
        a.join()
        b.join()
    assert a.error is None and b.error is None
    assert sorted(r.frame_id for r in _results(records)) == sorted(f.frame_id for f in frames)
    assert a.loops[0].frames_inferred > 0 and b.loops[0].frames_inferred > 0
    assert a.loops[0].frames_inferred + b.loops[0].frames_inferred == len(frames)
