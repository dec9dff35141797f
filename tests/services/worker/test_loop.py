"""WorkerLoop with recording fakes: the commit never precedes the flush, the DLQ path, stale drops, revokes.

The ordering tests run both ways: pipelined (``pipeline_depth=1``, the default: writes on the writer thread while the
next batch infers) and sequential (``pipeline_depth=0``).

These fakes stand in only for pure-logic ordering checks; the same loop runs against real Kafka, Redis and S3 in
tests/integration/test_streaming.py.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest
import structlog
import torch
from kafka import TopicPartition
from prometheus_client import REGISTRY

from ddad_core.outputs import InspectionOutput
from services._object_store import LocalObjectStore
from services.contracts.frames import Frame, FrameDecodeError
from services.contracts.results import DroppedFrame, InspectionResult, parse_results_record
from services.worker.config import WorkerSettings
from services.worker.loop import WorkerLoop
from tests.services._helpers import make_frame, record


class Events(list):
    pass


class FakeFuture:
    def get(self, timeout=None):
        return None


class FakeProducer:
    def __init__(self, events):
        self.events = events
        self.sent = []

    def send(self, topic, key=None, value=None, headers=None):
        headers = dict(headers or [])
        # what the record is about: the DLQ'd record's source, or the frame id of a result / dropped record
        about = headers["dlq.source"].decode() if "dlq.source" in headers else parse_results_record(value).frame_id
        self.events.append(("send", topic, about))
        self.sent.append((topic, key, value, headers))
        return FakeFuture()

    def flush(self, timeout=None):
        self.events.append(("flush",))


class FakeConsumer:
    def __init__(self, events, batches):
        self.events = events
        self.batches = list(batches)
        self.committed = {}
        self.listener = None
        self.polled = []

    def subscribe(self, topics, listener=None):
        self.listener = listener

    def assignment(self):
        return {TopicPartition("frames", 0), TopicPartition("frames", 1)}

    def poll(self, timeout_ms=0, max_records=None):
        if not self.batches:
            return {}
        recs = self.batches.pop(0)
        self.polled.append(recs)
        out = {}
        for r in recs:
            out.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        return out

    def commit(self, offsets, timeout_ms=None):
        self.events.append(("commit", {tp.partition: om.offset for tp, om in offsets.items()}))
        for tp, om in offsets.items():
            self.committed[tp.partition] = om.offset

    def commit_async(self, offsets, callback=None):
        self.commit(offsets)
        if callback is not None:
            callback(offsets, None)

    def end_offsets(self, tps, timeout_ms=None):
        return {tp: 0 for tp in tps}

    def position(self, tp, timeout_ms=None):
        return 0

    def close(self):
        self.events.append(("close",))


class FakeStore:
    def __init__(self, events):
        self.events = events
        self.results: dict[str, InspectionResult] = {}

    def write(self, results):
        self.events.append(("redis", len(results)))
        for r in results:
            self.results[r.frame_id] = r


class FakeDetector:
    """Scores a frame by its brightest pixel: the planted white square is the 'defect'."""

    model_version = "fake-1"
    bundle_hash = "0" * 64
    threshold = 0.9

    def __init__(self, poison_value: int | None = None):
        self.calls = []
        self.poison_value = poison_value

    def __call__(self, images):
        self.calls.append(len(images))
        if self.poison_value is not None and any(int(im[0, 0, 0]) == self.poison_value for im in images):
            raise RuntimeError("poison")
        maps = torch.stack([torch.from_numpy(cv2.resize(im.mean(axis=2).astype(np.float32) / 255.0, (16, 16)))
                            for im in images])
        raw = maps.amax(dim=(1, 2))
        return InspectionOutput(pred_score=raw / 1.8, pred_score_raw=raw, pred_label=raw >= self.threshold,
                                anomaly_map=maps, pred_mask=maps >= self.threshold,
                                noise_step=torch.full((len(images),), 20), timings_ms={"denoise": 1.0})


def _loop(tmp_path, consumer, producer, store, detector=None, **settings):
    cfg = WorkerSettings(_env_file=None, max_batch_size=settings.pop("max_batch_size", 4),
                         max_queue_delay_ms=settings.pop("max_queue_delay_ms", 0), http_port=-1, **settings)
    return WorkerLoop(cfg, consumer, producer, detector or FakeDetector(), LocalObjectStore(tmp_path), store,
                      structlog.get_logger())


def _step(loop):
    """One loop iteration, then the writes it left in flight finished (and committed)."""
    loop.step()
    loop.finish_writes()


def _assert_commit_after_flush(events, consumer):
    """No commit moves past a frame whose records (result, dropped or DLQ) were not flushed before it."""
    where = {}  # what a record is about -> (partition, offset) of its frame
    for recs in consumer.polled:
        for r in recs:
            where[f"{r.topic}/{r.partition}/{r.offset}"] = (r.partition, r.offset)
            try:
                where[Frame.from_bytes(r.value).frame_id] = (r.partition, r.offset)
            except FrameDecodeError:
                pass
    sent, flushed, commits = [], set(), 0
    for i, ev in enumerate(events):
        if ev[0] == "send":
            sent.append(where[ev[2]])
        elif ev[0] == "flush":
            flushed.update(sent)
        elif ev[0] == "commit":
            commits += 1
            for partition, nxt in ev[1].items():
                unflushed = [o for p, o in sent if p == partition and o < nxt and (p, o) not in flushed]
                assert not unflushed, f"commit {ev} at {i} before the flush of offsets {unflushed}: {events}"
    assert commits, events


depths = pytest.mark.parametrize("depth", [1, 0], ids=["pipelined", "sequential"])


@depths
def test_commit_only_after_sinks_and_flush(tmp_path, depth):
    events = Events()
    frames = [make_frame(i, camera_id=f"cam{i % 2}", defect=(i == 3)) for i in range(8)]
    consumer = FakeConsumer(events, [[record(f.to_bytes(), offset=i, partition=i % 2) for i, f in enumerate(frames)]])
    store = FakeStore(events)
    loop = _loop(tmp_path, consumer, FakeProducer(events), store, pipeline_depth=depth)
    _step(loop)
    _assert_commit_after_flush(events, consumer)
    kinds = [e[0] for e in events]
    # per batch: redis write, then 4 sends, then flush, then commit
    first = kinds.index("commit")
    assert kinds[:first] == ["redis", "send", "send", "send", "send", "flush"]
    assert kinds.count("commit") == 2 and kinds[-1] == "commit"  # one commit per batch, in order
    assert consumer.committed == {0: 7, 1: 8}  # partition 0 holds offsets 0,2,4,6; partition 1 holds 1,3,5,7
    assert set(store.results) == {f.frame_id for f in frames}
    assert [r.frame_id for r in store.results.values() if r.pred_label] == ["cam1-000003"]
    assert store.results["cam1-000003"].defect_regions  # boxes from the mask
    mask_uri = store.results["cam1-000003"].mask_uri
    assert mask_uri.startswith("file://") and (tmp_path / "masks/cam1/cam1-000003.png").exists()
    assert loop.detector.calls == [4, 4]


@depths
def test_corrupt_frames_go_to_dlq_and_the_rest_carry_on(tmp_path, depth):
    events = Events()
    good = [make_frame(i) for i in range(3)]
    bad_jpeg = make_frame(9).model_copy(update={"image": b"\xff\xd8 not really a jpeg"})
    wrong_shape = make_frame(10).model_copy(update={"width": 32})
    values = [good[0].to_bytes(), b"garbage", good[1].to_bytes(), bad_jpeg.to_bytes(), wrong_shape.to_bytes(),
              good[2].to_bytes()]
    consumer = FakeConsumer(events, [[record(v, offset=i) for i, v in enumerate(values)]])
    producer = FakeProducer(events)
    store = FakeStore(events)
    loop = _loop(tmp_path, consumer, producer, store, max_batch_size=8, max_queue_delay_ms=0, pipeline_depth=depth)
    _step(loop)
    dlq = [(h["dlq.reason"], h["dlq.source"]) for topic, _, _, h in producer.sent if topic == "frames.dlq"]
    assert sorted(dlq) == [(b"bad_envelope", b"frames/0/1"), (b"shape_mismatch", b"frames/0/4"),
                           (b"undecodable", b"frames/0/3")]
    assert sorted(store.results) == sorted(f.frame_id for f in good)
    assert consumer.committed == {0: 6}
    _assert_commit_after_flush(events, consumer)


def test_poison_frame_is_isolated(tmp_path):
    events = Events()
    frames = [make_frame(i) for i in range(4)]
    poison_value = int(cv2.imdecode(np.frombuffer(frames[2].image, np.uint8), cv2.IMREAD_COLOR)[0, 0, 2])
    consumer = FakeConsumer(events, [[record(f.to_bytes(), offset=i) for i, f in enumerate(frames)]])
    producer = FakeProducer(events)
    store = FakeStore(events)
    detector = FakeDetector(poison_value=poison_value)
    loop = _loop(tmp_path, consumer, producer, store, detector=detector)
    _step(loop)
    reasons = [h["dlq.reason"] for topic, _, _, h in producer.sent if topic == "frames.dlq"]
    assert reasons.count(b"inference_error") >= 1
    assert len(store.results) + len(reasons) == 4
    assert consumer.committed == {0: 4}


@depths
def test_stale_frames_are_announced_logged_counted_and_committed_not_inferred(tmp_path, depth):
    events = Events()
    old = [make_frame(i, captured_at=datetime.now(UTC) - timedelta(seconds=30)) for i in range(3)]
    fresh = make_frame(9)
    consumer = FakeConsumer(events, [[record(f.to_bytes(), i) for i, f in enumerate([*old, fresh])]])
    store = FakeStore(events)
    producer = FakeProducer(events)
    loop = _loop(tmp_path, consumer, producer, store, max_frame_age_ms=5000, pipeline_depth=depth)
    before = REGISTRY.get_sample_value("inspection_frames_dropped_total", {"service": "worker", "reason": "stale"})
    with structlog.testing.capture_logs() as logs:
        _step(loop)
    assert list(store.results) == [fresh.frame_id]  # only the fresh frame was inspected ...
    assert consumer.committed == {0: 4}  # ... and the stale ones are finished all the same
    records = [parse_results_record(value) for topic, _, value, _ in producer.sent if topic == "results"]
    dropped = [r for r in records if isinstance(r, DroppedFrame)]
    assert sorted(r.frame_id for r in dropped) == sorted(f.frame_id for f in old)
    assert all(r.reason == "stale" and r.age_ms > 29000 and r.max_frame_age_ms == 5000 for r in dropped)
    _assert_commit_after_flush(events, consumer)  # the dropped records are flushed before the commit, like results
    warnings = [e for e in logs if e["event"] == "frames_dropped_stale"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert warnings[0]["frames"] == 3 and warnings[0]["per_camera"] == {"cam1": 3}
    after = REGISTRY.get_sample_value("inspection_frames_dropped_total", {"service": "worker", "reason": "stale"})
    assert after - (before or 0.0) == 3


@pytest.mark.parametrize("catch_up_ms", [30000, 0])
def test_the_backlog_of_a_rebalance_is_inspected_not_shed(tmp_path, catch_up_ms):
    # Frames that queued in Kafka while the group re-formed (20 s ago, beyond the 5 s limit) are inspected after an
    # assignment; a backlog older than limit + catch-up (60 s) is still dropped; with the grace off both are.
    events = Events()
    paused = [make_frame(i, captured_at=datetime.now(UTC) - timedelta(seconds=20)) for i in range(3)]
    ancient = make_frame(7, captured_at=datetime.now(UTC) - timedelta(seconds=60))
    consumer = FakeConsumer(events, [[record(f.to_bytes(), i) for i, f in enumerate([ancient, *paused])]])
    store = FakeStore(events)
    loop = _loop(tmp_path, consumer, FakeProducer(events), store, max_frame_age_ms=5000,
                 rebalance_catch_up_ms=catch_up_ms)  # fmt: skip
    loop.subscribe()
    consumer.listener.on_partitions_assigned({TopicPartition("frames", 0)})
    _step(loop)
    inspected = sorted(f.frame_id for f in paused) if catch_up_ms else []
    assert sorted(store.results) == inspected
    assert loop.frames_stale == 4 - len(inspected)
    assert consumer.committed == {0: 4}


def test_stale_warnings_come_once_per_interval_with_counts(tmp_path):
    events = Events()
    now = [1000.0]
    frames = [make_frame(i, captured_at=datetime.fromtimestamp(900.0, UTC)) for i in range(4)]
    consumer = FakeConsumer(events, [[record(frames[0].to_bytes(), 0)], [record(frames[1].to_bytes(), 1)],
                                     [record(frames[2].to_bytes(), 2)], [record(frames[3].to_bytes(), 3)]])
    cfg = WorkerSettings(_env_file=None, max_batch_size=1, max_queue_delay_ms=0, http_port=-1,
                         max_frame_age_ms=1000, stale_log_interval_s=10)
    loop = WorkerLoop(cfg, consumer, FakeProducer(events), FakeDetector(), LocalObjectStore(tmp_path),
                      FakeStore(events), structlog.get_logger(), clock=lambda: now[0], wall_clock=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        for t in (1000.0, 1001.0, 1002.0, 1011.0):  # three drops inside one interval, one after it
            now[0] = t
            _step(loop)
    counts = [e["frames"] for e in logs if e["event"] == "frames_dropped_stale"]
    assert counts == [1, 3]  # the first at once, then one line with the three that came within the next interval
    assert loop.frames_stale == 4


def test_frame_age_limit_auto_follows_the_measured_batch_time():
    cfg = WorkerSettings(_env_file=None, max_queue_delay_ms=50, http_port=-1)
    assert cfg.max_frame_age_ms == "auto"
    assert cfg.frame_age_limit_ms(0.45) == 4550.0  # delay + 10 batches
    assert cfg.frame_age_limit_ms(20.0) == 200050.0  # a slow (contended) machine gets a lenient limit
    assert cfg.frame_age_limit_ms(0.01) == 1000.0  # never below a second
    assert cfg.frame_age_limit_ms(None) == 0.0  # nothing measured (no warm-up): off
    assert WorkerSettings(_env_file=None, max_frame_age_ms=0, http_port=-1).frame_age_limit_ms(0.45) == 0.0


def test_revoke_abandons_waiting_frames_uncommitted(tmp_path):
    events = Events()
    frames = [make_frame(i) for i in range(3)]
    consumer = FakeConsumer(events, [[record(f.to_bytes(), offset=i, partition=1) for i, f in enumerate(frames)]])
    store = FakeStore(events)
    loop = _loop(tmp_path, consumer, FakeProducer(events), store, max_batch_size=8, max_queue_delay_ms=60000)
    loop.subscribe()
    loop.step()  # queued, waiting for company
    assert len(loop.batcher) == 3 and not store.results
    consumer.listener.on_partitions_revoked({TopicPartition("frames", 1)})
    assert len(loop.batcher) == 0
    loop.drain()
    assert "commit" not in [e[0] for e in events] and not store.results


def test_drain_finishes_pending_frames(tmp_path):
    events = Events()
    frames = [make_frame(i) for i in range(3)]
    consumer = FakeConsumer(events, [[record(f.to_bytes(), offset=i) for i, f in enumerate(frames)]])
    store = FakeStore(events)
    loop = _loop(tmp_path, consumer, FakeProducer(events), store, max_batch_size=8, max_queue_delay_ms=60000)
    loop.step()
    assert not store.results
    loop.drain()
    loop.close()
    assert len(store.results) == 3 and consumer.committed == {0: 3}
    assert events[-1] == ("close",)
    _assert_commit_after_flush(events, consumer)


def test_sink_error_no_dependency_explains_is_raised_at_once_and_nothing_is_committed(tmp_path):
    # A builtin ConnectionError is not a redis/Kafka/object-store error: the outage guard does not wait it out
    # (services/_outage.py), so the first failed write ends the step and the batch stays uncommitted.
    events = Events()
    frames = [make_frame(i) for i in range(2)]
    consumer = FakeConsumer(events, [[record(f.to_bytes(), offset=i) for i, f in enumerate(frames)]])
    writes = []

    class FailingStore(FakeStore):
        def write(self, results):
            writes.append([r.frame_id for r in results])
            raise ConnectionError("redis down")

    loop = _loop(tmp_path, consumer, FakeProducer(events), FailingStore(events), max_batch_size=2)
    with pytest.raises(ConnectionError, match="redis down"):
        _step(loop)
    assert writes == [[f.frame_id for f in frames]]  # one attempt, no retry
    assert loop.guard.down == []  # not taken for an outage
    assert "commit" not in [e[0] for e in events] and consumer.committed == {}


class SlowStore(FakeStore):
    """Redis writes that take a while, recording when each one starts and ends (thread-safe list appends)."""

    def __init__(self, events, seconds=0.3):
        super().__init__(events)
        self.seconds = seconds

    def write(self, results):
        self.events.append(("redis_start", results[0].frame_id))
        time.sleep(self.seconds)
        super().write(results)
        self.events.append(("redis_end", results[0].frame_id))


class TimedDetector(FakeDetector):
    def __init__(self, events):
        super().__init__()
        self.events = events

    def __call__(self, images):
        self.events.append(("infer_start", len(self.calls)))
        out = super().__call__(images)
        time.sleep(0.3)
        self.events.append(("infer_end", len(self.calls) - 1))
        return out


def test_pipelined_writes_of_one_batch_overlap_the_next_inference_and_commit_in_order(tmp_path):
    events = Events()
    frames = [make_frame(i) for i in range(12)]
    consumer = FakeConsumer(events, [[record(f.to_bytes(), offset=i) for i, f in enumerate(frames)]])
    store = SlowStore(events)
    loop = _loop(tmp_path, consumer, FakeProducer(events), store, detector=TimedDetector(events), pipeline_depth=1)
    _step(loop)
    at = {ev: i for i, ev in enumerate(events) if ev[0] in ("infer_start", "infer_end", "redis_start", "redis_end")}
    # batch 0's Redis write runs while batch 1 is inferred, and batch 1's while batch 2 is
    assert at[("infer_start", 1)] < at[("redis_end", frames[0].frame_id)]
    assert at[("infer_start", 2)] < at[("redis_end", frames[4].frame_id)]
    commits = [e[1] for e in events if e[0] == "commit"]
    assert commits == [{0: 4}, {0: 8}, {0: 12}]  # in order, one per batch, each after that batch's flush
    _assert_commit_after_flush(events, consumer)
    assert loop.batches_run == 3 and loop.frames_inferred == 12


@depths
def test_a_failed_write_holds_back_the_commits_of_later_batches(tmp_path, depth):
    events = Events()
    frames = [make_frame(i) for i in range(4)]
    consumer = FakeConsumer(events, [[record(f.to_bytes(), offset=i) for i, f in enumerate(frames)]])

    class FirstWriteFails(FakeStore):
        def write(self, results):
            if results[0].frame_id == frames[0].frame_id:
                raise ValueError("a bug, not an outage")
            super().write(results)

    loop = _loop(tmp_path, consumer, FakeProducer(events), FirstWriteFails(events), max_batch_size=2,
                 pipeline_depth=depth)
    with pytest.raises(ValueError):
        _step(loop)
    assert "commit" not in [e[0] for e in events]


def test_revoke_waits_for_writes_in_flight_and_commits_them_first(tmp_path):
    events = Events()
    frames = [make_frame(i) for i in range(4)]
    consumer = FakeConsumer(events, [[record(f.to_bytes(), offset=i, partition=1) for i, f in enumerate(frames)]])
    store = SlowStore(events, seconds=0.5)
    loop = _loop(tmp_path, consumer, FakeProducer(events), store, pipeline_depth=1)
    loop.subscribe()
    loop.step()
    assert loop._writes and not consumer.committed  # the batch's write is still running
    consumer.listener.on_partitions_revoked({TopicPartition("frames", 1)})
    assert consumer.committed == {1: 4}  # written and committed while still the owner (from the listener)
    loop.finish_writes()  # the loop thread reaps the same write later: nothing more to commit
    assert [e[0] for e in events].count("commit") == 1
    _assert_commit_after_flush(events, consumer)
