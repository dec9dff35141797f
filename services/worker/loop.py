"""The worker loop: consume -> micro-batch -> decode -> infer -> sinks -> produce -> flush -> commit.

Flow step: Kafka ``frames`` -> micro-batch -> ddad_core -> object store / Redis / Kafka ``results`` -> commit.

Delivery is at-least-once (quix-streams' checkpoint order): offsets are committed only after everything a batch
produced is durable, so a crash anywhere before the commit replays the batch, and because every write is keyed by
frame id and inference is deterministic, the replay overwrites instead of duplicating. ``run_batch`` spells the
steps out; read it first.

Pipelining (``WORKER_PIPELINE_DEPTH``, default 1): three batches are in flight at once. While the loop thread runs
inference on batch n, the decode pool already decodes batch n+1 and the writer thread writes batch n-1's masks,
Redis hashes and results and flushes them. The writer runs one batch at a time in order, so batches finish in the
order they were inferred; the loop thread commits a batch's offsets only when its writes have finished (the offset
tracker never lets a commit pass a frame still in flight). With depth 0 every step of a batch runs in turn.

Threading: one loop thread owns the consumer, the batcher and the commit; the writer thread owns nothing but its
batch (its producer sends and flushes are safe beside the loop thread's DLQ sends: ``ResultsProducer`` locks).
kafka-python 3 calls the rebalance listener on its IO thread (during the loop thread's ``poll()``), so the listener
touches only locked state. On a revoke it waits (bounded) for the writes in flight and commits, without blocking,
what they finished for the revoked partitions while this worker still owns them ("settle"), so their new owner
does not replay finished batches; frames still waiting in the batcher for those partitions are dropped
uncommitted ("abandon") so the new owner processes them.

Outages: a write that fails because Kafka, Redis or the object store is down is retried until it succeeds, never
skipped, so the batch's offsets stay uncommitted meanwhile (``services/_outage.py``: readiness, metric and log
lines). SIGTERM during an outage exits uncommitted (the batch is replayed).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from services import _observability as obs
from services._kafka import DeadLetterPublisher, OffsetTracker, commit_offsets, commit_offsets_async, consumer_lag
from services._object_store import ObjectStore, ObjectStoreUnavailable
from services._outage import DependencyGuard
from services._redis import InspectionStore
from services.contracts.frames import Frame, FrameDecodeError
from services.contracts.topics import Topics
from services.worker.batcher import Batch, MicroBatcher, Pending
from services.worker.bundles import BundleFollower
from services.worker.config import WorkerSettings
from services.worker.inference import (
    FrameOutput,
    InvalidFrameError,
    decision_thresholds,
    decode_frame,
    raw_threshold,
    split_output,
)
from services.worker.overlay import OverlayFollower
from services.worker.results import BatchInfo, ModelInfo, dropped_frame, inspection_result
from services.worker.sinks import MaskSink, ResultsProducer

SERVICE = "worker"
_IDLE_POLL_MS = 500  # long enough that a group join completes inside one poll (kafka-python 3.0.12)
_UNASSIGNED_POLL_MS = 1000
_KAFKA_CALL_TIMEOUT_MS = 10_000  # commit and lag requests: a dead broker must not hold the loop for long
_WRITES_POLL_MS = 50  # poll timeout while writes are in flight: their commit follows soon after they finish
_REVOKE_SETTLE_S = 5.0  # a revoke waits at most this long for in-flight writes (a healthy one takes < 1 s); it
# blocks kafka-python's IO thread, heartbeats included, so it is also kept below a third of the session timeout


@dataclass
class _Item:
    """A parsed frame waiting in the batcher, with where it came from (for the DLQ and the commit)."""

    record: ConsumerRecord
    frame: Frame
    tp: TopicPartition


@dataclass
class _Prepared:
    """A batch taken from the batcher: stale frames announced, decodes running in the pool."""

    batch_id: str
    started: float
    items: list[Pending[_Item]]
    decodes: list[Future]
    done: list[tuple[TopicPartition, int]]  # finished once this batch's writes are flushed
    stale: int


@dataclass
class _Write:
    """Sink writes of one batch queued on the writer thread."""

    future: Future
    done: list[tuple[TopicPartition, int]]
    inferred: int


class _RebalanceListener(ConsumerRebalanceListener):
    """Abandons waiting frames of partitions that leave this worker (see the module docstring)."""

    def __init__(self, loop: WorkerLoop) -> None:
        self.loop = loop

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.loop.settle(revoked)
        self.loop.abandon(revoked, "revoked")

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.loop.log.info("partitions_assigned", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))
        self.loop.catch_up()

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.loop.abandon(lost, "lost")


class WorkerLoop:
    """Owns the consumer, the micro-batcher and the commit of one worker process.

    Args:
        settings: Worker settings (batching, thread counts, pipelining).
        consumer: A ``KafkaConsumer`` made by ``services._kafka.make_consumer`` (auto-commit off).
        producer: An idempotent ``KafkaProducer`` (results and DLQ).
        detector: The loaded ``DDADPipeline`` (or anything with its call signature).
        store: Object store for masks, heatmaps and claim-check frames.
        inspection_store: Redis result store.
        log: A structlog logger.
        health: Liveness/readiness state (``beat`` per iteration).
        max_frame_age_ms: The stale-drop limit in force (``WorkerSettings.frame_age_limit_ms``; default: the
            configured one, off for "auto" without a measured batch time).
        clock / wall_clock: Injectable clocks (monotonic / POSIX seconds).
        overlay: Follows the product's nominal overlay (``WORKER_OVERLAY_PRODUCT``), swapping the detector between
            batches; None: the bundle's bank alone.
        bundles: Follows a bundle alias (``WORKER_BUNDLE_ALIAS``): a new version loads and warms up beside the
            detector in force and is swapped in between batches; None: the bundle loaded at start-up.
    """

    def __init__(self, settings: WorkerSettings, consumer: Any, producer: Any, detector: Any, store: ObjectStore,
                 inspection_store: InspectionStore, log: Any, health: obs.Health | None = None,
                 max_frame_age_ms: float | None = None,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 overlay: OverlayFollower | None = None, bundles: BundleFollower | None = None) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.store = store
        self.inspection_store = inspection_store
        self.topics = Topics(settings.topic_prefix)
        self.log = log.bind(model_version=getattr(detector, "model_version", "?"))
        self.health = health or obs.Health()
        self._clock = clock
        self._wall = wall_clock
        self.max_frame_age_ms = settings.frame_age_limit_ms(None) if max_frame_age_ms is None else max_frame_age_ms
        obs.MAX_FRAME_AGE.labels(SERVICE).set(self.max_frame_age_ms / 1000.0)
        self.batcher: MicroBatcher[_Item] = MicroBatcher(settings.max_batch_size, settings.max_queue_delay_ms,
                                                         self.max_frame_age_ms, clock=clock, wall_clock=wall_clock)
        self.tracker = OffsetTracker()
        self.dlq = DeadLetterPublisher(producer, self.topics.frames_dlq, SERVICE)
        self.guard = DependencyGuard(SERVICE, self.health, self.log)
        self._until_ok = self.guard.until_ok
        self._commit_due = False
        self.results = ResultsProducer(producer, self.topics.results)
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self._sink_pool = ThreadPoolExecutor(settings.sink_threads, thread_name_prefix="sink")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="writer")  # one at a time: batches finish in order
        self._writes: deque[_Write] = deque()  # in submission order, at most ``pipeline_depth``
        self._writes_lock = threading.Lock()  # the deque vs. the rebalance listener's snapshot
        self.masks = MaskSink(store, self._sink_pool, settings.write_heatmaps, settings.keep_flagged_frames)
        self.overlay = overlay
        self.bundles = bundles
        self._use(detector)
        self._stale = Counter()  # stale drops per camera since the last warning line
        self._stale_oldest_ms = 0.0
        self._next_stale_log = 0.0
        self.frames_stale = 0
        self._lock = threading.Lock()  # batcher + tracker vs. the rebalance listener (IO thread)
        self._dlq_done: list[tuple[TopicPartition, int]] = []  # DLQ'd at parse time, done after the next flush
        self._consecutive_frame_failures = 0
        self._next_lag = 0.0
        self.batches_run = 0
        self.frames_inferred = 0

    # ------------------------------------------------------------------------------------------- consuming

    def subscribe(self) -> None:
        """Join the group on the frames topic with the rebalance listener."""
        self.consumer.subscribe([self.topics.frames], listener=_RebalanceListener(self))

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, then drain (finish what is pending, commit, leave the group)."""
        self.guard.stop = stop
        try:
            while not stop.is_set():
                self.step()
            self.drain()
        except BaseException:
            stop.set()  # a write still waiting out an outage on the writer thread gives up: the process goes down
            raise
        finally:
            self.close()

    def step(self) -> None:
        """One iteration: poll, queue, run every ready batch, commit parse-time DLQ records."""
        self.health.beat()
        self._follow()
        records = self.consumer.poll(timeout_ms=self._poll_timeout_ms(), max_records=self._poll_max_records())
        for tp_records in records.values():
            for record in tp_records:
                self._accept(record)
        self._reap()
        current = self._take_ready()
        while current is not None:
            # Decode of the next batch (already taken: its frames are not waiting for company any more) overlaps
            # the inference of this one, and this one's writes overlap the next one's inference.
            ahead = self._take_ready() if self.settings.pipeline_depth else None
            self._follow()
            self.run_batch(current)
            current = ahead if ahead is not None else self._take_ready()
            self._reap()
        if (self._dlq_done or self._commit_due) and not self._writes:
            self._finish([])
        self._log_stale()
        if self._clock() >= self._next_lag:
            self._next_lag = self._clock() + self.settings.lag_interval_s
            self._update_lag()

    def _use(self, detector: Any) -> None:
        """Infer the next batches with ``detector`` (records and heatmaps follow it from that batch on)."""
        self.detector = detector
        threshold, threshold_raw = decision_thresholds(detector)
        self.heatmap_threshold = raw_threshold(detector)  # the heatmaps' mid-scale
        self.model = ModelInfo(model_version=str(getattr(detector, "model_version", "unknown")),
                               bundle_hash=str(getattr(detector, "bundle_hash", "unknown")),
                               threshold=threshold, threshold_raw=threshold_raw,
                               overlay_version=getattr(detector, "overlay_version", None))

    def _follow(self) -> None:
        """Between two batches: swap to the alias's new bundle once it is loaded and warm, and to the product's new
        overlay version, if either was published."""
        ready = self.bundles.poll() if self.bundles is not None else None
        if ready is not None:
            obs.MODEL_INFO.labels(self.model.model_version, self.model.bundle_hash).set(0)  # no longer in force
            self._use(ready[1])
            obs.MODEL_INFO.labels(self.model.model_version, self.model.bundle_hash).set(1)
            self.log.info("bundle_swapped", version=ready[0], model_version=self.model.model_version,
                          bundle_hash=self.model.bundle_hash)
            if self.overlay is not None:
                self.overlay.reset()
        swapped = self.overlay.follow(self.detector) if self.overlay is not None else None
        if swapped is not None:
            self._use(swapped)

    def _poll_timeout_ms(self) -> int:
        if not self.consumer.assignment():
            # Not in the group yet: poll in long rounds and do nothing else, or kafka-python 3.0.12 may drop the
            # join (seen with short poll timeouts and work between polls).
            return _UNASSIGNED_POLL_MS
        longest = _WRITES_POLL_MS if self._writes else _IDLE_POLL_MS
        wait = self.batcher.time_to_ready()
        if wait is None:
            return longest
        return int(min(longest, max(1.0, wait * 1000.0)))

    def _poll_max_records(self) -> int:
        # Fetch at most about a batch beyond what waits: anything more would sit in memory uncommitted.
        return max(1, 2 * self.settings.max_batch_size - len(self.batcher))

    def _accept(self, record: ConsumerRecord) -> None:
        tp = TopicPartition(record.topic, record.partition)
        obs.FRAMES_IN.labels(SERVICE).inc()
        with self._lock:
            self.tracker.add(tp, record.offset)
        size = len(record.value) if record.value is not None else 0
        if size > self.settings.max_record_bytes:
            self._dead_letter(record, "too_large", f"record of {size} bytes exceeds WORKER_MAX_RECORD_BYTES "
                                                   f"({self.settings.max_record_bytes})")
            self._dlq_done.append((tp, record.offset))
            return
        try:
            frame = Frame.from_bytes(record.value)
        except FrameDecodeError as exc:
            self._dead_letter(record, exc.reason, exc.detail)
            self._dlq_done.append((tp, record.offset))
            return
        with self._lock:
            self.batcher.add(_Item(record, frame, tp), frame.camera_id, frame.captured_ts)

    def _dead_letter(self, record: ConsumerRecord, reason: str, detail: str) -> None:
        self.results.send(**self.dlq.build(record, reason, detail))  # delivery checked by the next flush
        obs.DLQ_RECORDS.labels(SERVICE, reason).inc()
        obs.FRAMES_DROPPED.labels(SERVICE, reason).inc()
        self.log.warning("frame_dead_lettered", reason=reason, detail=detail[:200],
                         source=f"{record.topic}/{record.partition}/{record.offset}")

    def catch_up(self) -> None:
        """After an assignment: the frames that waited in Kafka while the group re-formed are inspected, not shed
        (``MicroBatcher.catch_up``, for ``rebalance_catch_up_ms``)."""
        with self._lock:
            self.batcher.catch_up(self.settings.rebalance_catch_up_ms / 1000.0)

    def settle(self, revoked: set[TopicPartition]) -> None:
        """Before a revoke: wait (bounded) for the writes in flight, then commit what they finished of ``revoked``.

        Runs on kafka-python's IO thread, so the commit is the non-blocking one; the loop thread reaps the same
        writes later as usual (finishing an offset twice is harmless).
        """
        with self._writes_lock:
            writes = list(self._writes)
        if not writes:
            return
        timeout_s = min(_REVOKE_SETTLE_S, self.settings.session_timeout_ms / 3000.0)
        wait_futures([w.future for w in writes], timeout=timeout_s)
        finished = [w for w in writes if w.future.done() and w.future.exception() is None]
        with self._lock:
            for w in finished:
                for tp, offset in w.done:
                    if tp in revoked:
                        self.tracker.done(tp, offset)
            offsets = {tp: off for tp, off in self.tracker.committable().items() if tp in revoked}
        try:
            commit_offsets_async(self.consumer, offsets, callback=self._settle_committed)
        except Exception as exc:  # noqa: BLE001 - the new owner then replays them (idempotent overwrites)
            self.log.warning("settle_commit_failed", error=repr(exc)[:300])
        if len(finished) < len(writes):
            self.log.warning("revoke_before_writes_finished", batches=len(writes) - len(finished),
                             hint="their frames are replayed by the partitions' new owner (idempotent overwrites)")

    def _settle_committed(self, offsets: Any, response: Any) -> None:
        if isinstance(response, Exception):
            self.log.warning("settle_commit_failed", error=repr(response)[:300])

    def abandon(self, partitions: set[TopicPartition], why: str) -> None:
        """Drop waiting frames of partitions this worker no longer owns; they stay uncommitted for the new owner."""
        parts = set(partitions)
        with self._lock:
            dropped = self.batcher.remove(lambda item: item.tp in parts)
            self.tracker.forget(parts)
            self._dlq_done = [(tp, off) for tp, off in self._dlq_done if tp not in parts]
        self.log.info("partitions_" + why, partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in parts),
                      abandoned_frames=len(dropped))

    # ------------------------------------------------------------------------------------------- one batch

    def _take_ready(self) -> _Prepared | None:
        """Take the next ready batch and start it, or None when no batch is ready."""
        with self._lock:
            batch = self.batcher.take() if self.batcher.ready() else None
        return None if batch is None else self._prepare(batch)

    def _prepare(self, batch: Batch[_Item]) -> _Prepared:
        """Announce the batch's stale frames and submit its decodes to the pool (they run while we infer)."""
        started = self._clock()
        done: list[tuple[TopicPartition, int]] = []
        for p in batch.stale:
            # A verdict on a part that already left the camera is worthless: not inferred, but never silent either
            # (a `dropped` record on results, the metric, a warning line per interval), and committed.
            self._drop_stale(p)
            done.append((p.item.tp, p.item.record.offset))
        # Claim-check fetch + JPEG/PNG decode release the GIL: a thread pool scales.
        decodes = [self._decode_pool.submit(decode_frame, p.item.frame, self.store, self.settings.max_image_pixels)
                   for p in batch.items]
        return _Prepared(uuid.uuid4().hex[:12], started, batch.items, decodes, done, len(batch.stale))

    def run_batch(self, prep: _Prepared) -> None:
        """Decode and infer one micro-batch on this thread, then hand its writes to the writer thread.

        Steps (repeated as comments in the body):

        1. decode and validate (submitted to the pool by ``_prepare``; bad frames go to the DLQ, the rest carry
           on);
        2. infer: one batched pipeline call for all good frames (mixed noise levels in one batch);

        then on the writer thread (``_write_batch``, while the next batch is inferred):

        3. write masks and heatmaps to the object store;
        4. write the Redis result hashes and per-camera streams (one transaction);
        5. produce the results (and a ``dropped`` record per stale frame);
        6. flush the producer (results, dropped and DLQ records acknowledged by the brokers);

        and back on this thread once those writes are done (``_reap``):

        7. commit offsets (only of frames that are finished; stale drops count as finished).
        """
        done = prep.done
        if not prep.items:
            # Only stale drops: flush their `dropped` records (and DLQ records from earlier steps).
            self._submit_write(self._flush, done, inferred=0)
            return
        obs.BATCH_SIZE.observe(len(prep.items))
        for p in prep.items:
            obs.QUEUE_WAIT.observe(max(0.0, prep.started - p.enqueued_at))
        timings: dict[str, float] = {}

        # 1. decode and validate: wait for the pool (about nothing when the decodes overlapped the last inference)
        t0 = self._clock()
        good, images = [], []
        for p, fut in zip(prep.items, prep.decodes, strict=True):
            try:
                images.append(self._decoded(p, fut))
                good.append(p)
            except InvalidFrameError as exc:
                self._dead_letter(p.item.record, exc.reason, exc.detail)
                done.append((p.item.tp, p.item.record.offset))
        timings["decode"] = (self._clock() - t0) * 1000.0

        # 2. infer: one batched call; a failing batch is retried frame by frame to isolate a poison frame
        t0 = self._clock()
        outputs, pipeline_timings = self._infer(images) if images else ([], {})
        timings["infer"] = (self._clock() - t0) * 1000.0
        timings.update({f"pipeline.{k}": float(v) for k, v in pipeline_timings.items()})
        for stage, ms in timings.items():  # decode, infer and the pipeline's own stages (encode, denoise, ...)
            obs.STAGE_DURATION.labels(stage.removeprefix("pipeline.")).observe(ms / 1000.0)
        inferred = []
        for p, out in zip(good, outputs, strict=True):
            if isinstance(out, InvalidFrameError):
                self._dead_letter(p.item.record, out.reason, out.detail)
                done.append((p.item.tp, p.item.record.offset))
            else:
                inferred.append((p, out))
        done.extend((p.item.tp, p.item.record.offset) for p, _ in inferred)
        model = (self.model, self.heatmap_threshold)  # what inferred this batch, whatever is swapped in next
        self._submit_write(lambda: self._write_batch(prep, inferred, timings, model), done, inferred=len(inferred))

    def _write_batch(self, prep: _Prepared, inferred: list[tuple[Any, FrameOutput]],
                     timings: dict[str, float], model: tuple[ModelInfo, float]) -> None:
        """Steps 3-6 of ``run_batch`` (writer thread)."""
        log = self.log.bind(batch_id=prep.batch_id)
        # Steps 3-6 write only idempotent, frame-keyed data; each one is retried until it succeeds (an outage
        # holds the commit back, see the module docstring).
        self._write_outputs(inferred, prep.batch_id, timings, prep.started, log, model)
        log.info("batch_done", frames=len(prep.items), stale=prep.stale, inferred=len(inferred),
                 ms=round((self._clock() - prep.started) * 1000.0, 1), infer_ms=round(timings.get("infer", 0.0), 1))

    def _submit_write(self, write: Callable[[], None], done: list[tuple[TopicPartition, int]], inferred: int) -> None:
        """Queue a batch's writes on the writer thread (waiting while ``pipeline_depth`` are in flight)."""
        done = [*done, *self._take_dlq_done()]  # DLQ records sent before these writes are covered by their flush
        if not self.settings.pipeline_depth:
            write()
            self._finished(done, inferred)
            return
        while len(self._writes) >= self.settings.pipeline_depth:
            self._reap(wait_first=True)
        with self._writes_lock:
            self._writes.append(_Write(self._writer.submit(write), done, inferred))

    def _take_dlq_done(self) -> list[tuple[TopicPartition, int]]:
        """The parse-time DLQ'd offsets so far, handed to the flush that will cover their records."""
        with self._lock:
            taken, self._dlq_done = self._dlq_done, []
        return taken

    def _reap(self, wait_first: bool = False) -> None:
        """Finish the writes that are done, in order: their offsets become committable and are committed.

        Raises:
            Exception: the error of a failed write (it stays first in line, so nothing behind it is committed).
        """
        while self._writes and (wait_first or self._writes[0].future.done()):
            self._writes[0].future.result()
            with self._writes_lock:
                write = self._writes.popleft()
            self._finished(write.done, write.inferred)
            wait_first = False

    def finish_writes(self) -> None:
        """Wait for every write in flight and commit what they finished (raises a failed write's error)."""
        while self._writes:
            self._reap(wait_first=True)

    def _finished(self, done: list[tuple[TopicPartition, int]], inferred: int) -> None:
        # 7. commit offsets (everything the batch's writes produced is durable now)
        t0 = self._clock()
        self._finish(done, flushed=True)
        obs.STAGE_DURATION.labels("commit").observe(self._clock() - t0)
        self.batches_run += 1
        self.frames_inferred += inferred

    def _drop_stale(self, p: Pending[_Item]) -> None:
        f = p.item.frame
        now = self._wall()
        age_ms = max(0.0, (now - f.captured_ts) * 1000.0)
        self.results.add(dropped_frame(f, now=now, age_ms=age_ms, max_frame_age_ms=self.max_frame_age_ms,
                                       model_version=self.model.model_version))
        obs.FRAMES_DROPPED.labels(SERVICE, "stale").inc()
        self._stale[f.camera_id] += 1
        self._stale_oldest_ms = max(self._stale_oldest_ms, age_ms)
        self.frames_stale += 1

    def _log_stale(self, force: bool = False) -> None:
        """One warning line per ``stale_log_interval_s`` with the stale drops since the previous line."""
        if not self._stale or (not force and self._clock() < self._next_stale_log):
            return
        self.log.warning("frames_dropped_stale", frames=sum(self._stale.values()), per_camera=dict(self._stale),
                         oldest_age_ms=round(self._stale_oldest_ms, 1), max_frame_age_ms=self.max_frame_age_ms,
                         total=self.frames_stale,
                         hint="not inspected: the worker is behind the cameras (fewer frames/s, more workers, "
                              "or a higher WORKER_MAX_FRAME_AGE_MS; 0 = never drop)")
        self._stale.clear()
        self._stale_oldest_ms = 0.0
        self._next_stale_log = self._clock() + self.settings.stale_log_interval_s

    def _write_outputs(self, inferred: list[tuple[Any, FrameOutput]], batch_id: str, timings: dict[str, float],
                       started: float, log: Any, model: tuple[ModelInfo, float]) -> None:
        # 3. write masks and heatmaps, keep flagged inline frames (object keys by frame id: a replay overwrites)
        t0 = self._clock()
        info, heatmap_threshold = model
        uris = self._until_ok("object_store", lambda: self.masks.write(
            [(p.item.frame, out) for p, out in inferred], heatmap_threshold))
        obs.STAGE_DURATION.labels("sink_masks").observe(self._clock() - t0)
        batch = BatchInfo(batch_id, len(inferred), started, datetime.fromtimestamp(self._wall(), UTC), timings)
        results = [inspection_result(p.item.frame, out, mask_uri=mask_uri, heatmap_uri=heat_uri,
                                     enqueued_at=p.enqueued_at, batch=batch, model=info,
                                     min_box_area_fraction=self.settings.min_box_area_fraction)
                   for (p, out), (mask_uri, heat_uri) in zip(inferred, uris, strict=True)]
        # 4. write Redis (one MULTI/EXEC per batch)
        t0 = self._clock()
        self._until_ok("redis", lambda: self.inspection_store.write(results))
        obs.STAGE_DURATION.labels("sink_redis").observe(self._clock() - t0)
        # 5. produce results (key camera id: per-camera order for the alerter's debounce)
        for r in results:
            self.results.add(r)
        # 6. flush the producer: results and any DLQ records of this batch are acknowledged (acks=all)
        t0 = self._clock()
        self._flush()
        obs.STAGE_DURATION.labels("produce_flush").observe(self._clock() - t0)
        now = self._wall()
        for r in results:
            obs.END_TO_END.labels("result").observe(max(0.0, now - r.captured_at.timestamp()))
            obs.ANOMALY_SCORE.observe(r.pred_score)
        obs.RESULTS_OUT.labels(SERVICE).inc(len(results))

    def _flush(self) -> None:
        self._until_ok("kafka", lambda: self.results.flush(timeout_s=30.0))

    def _decoded(self, p: Pending[_Item], fut: Any) -> Any:
        """The decoded image of a frame; a claim check the store cannot serve right now is waited for."""
        try:
            return fut.result()
        except ObjectStoreUnavailable:
            return self._until_ok("object_store", lambda: decode_frame(p.item.frame, self.store,
                                                                       self.settings.max_image_pixels))

    def _infer(self, images: list[Any]) -> tuple[list[FrameOutput | InvalidFrameError], dict[str, float]]:
        try:
            output = self.detector(images)
            self._consecutive_frame_failures = 0
            return split_output(output), dict(getattr(output, "timings_ms", {}) or {})
        except Exception as batch_exc:  # noqa: BLE001 - decide below whether it is one frame or the whole worker
            self.log.warning("batch_inference_failed", error=repr(batch_exc), frames=len(images))
        outputs: list[FrameOutput | InvalidFrameError] = []
        for image in images:
            try:
                outputs.append(split_output(self.detector([image]))[0])
                self._consecutive_frame_failures = 0
            except Exception as exc:  # noqa: BLE001
                self._consecutive_frame_failures += 1
                # Many failures in a row is a broken model or device, not poison frames: exit uncommitted rather
                # than dead-letter the whole stream.
                if self._consecutive_frame_failures > max(8, 2 * self.settings.max_batch_size):
                    raise
                outputs.append(InvalidFrameError("inference_error", repr(exc)))
        return outputs, {}

    def _finish(self, done: list[tuple[TopicPartition, int]], flushed: bool = False) -> None:
        """Mark frames finished and commit what became committable (after a flush, never before).

        ``flushed=True``: the caller flushed everything ``done`` produced. Otherwise this flushes first, and the
        parse-time DLQ records sent so far are finished with it.
        """
        if not flushed:
            done = [*done, *self._take_dlq_done()]
            self._flush()
        with self._lock:
            for tp, offset in done:
                self.tracker.done(tp, offset)
            offsets = self.tracker.committable()
        if not offsets:
            return
        try:
            commit_offsets(self.consumer, offsets, timeout_ms=_KAFKA_CALL_TIMEOUT_MS)
            with self._lock:
                self.tracker.mark_committed(offsets)
            self._commit_due = False
            self.guard.mark_up("kafka")
        except KafkaError as exc:
            # The group rebalanced under us (the partitions' new owner replays from the last commit, and our
            # frame-keyed writes make that replay harmless) or the broker is down (retried on the next step).
            obs.COMMIT_FAILURES.labels(SERVICE).inc()
            self.log.warning("commit_failed", error=repr(exc))
            self._commit_due = True

    def _update_lag(self) -> None:
        try:
            for topic, lag in consumer_lag(self.consumer, timeout_ms=_KAFKA_CALL_TIMEOUT_MS).items():
                obs.CONSUMER_LAG.labels(SERVICE, topic).set(lag)
            self.guard.mark_up("kafka")
        except KafkaError as exc:  # the periodic lag request doubles as the broker health check of an idle worker
            self.guard.mark_down("kafka", exc)
        except Exception as exc:  # noqa: BLE001 - metrics must never stop the loop
            self.log.debug("lag_failed", error=repr(exc))

    # ------------------------------------------------------------------------------------------- shutdown

    def drain(self) -> None:
        """Finish frames already queued (up to ``drain_timeout_s``), commit, and stop consuming."""
        deadline = self._clock() + self.settings.drain_timeout_s
        drained = 0
        while len(self.batcher) and self._clock() < deadline:
            with self._lock:
                batch = self.batcher.take()
            drained += len(batch.items)
            self.run_batch(self._prepare(batch))
        self.finish_writes()
        self._finish([])
        self._log_stale(force=True)
        self.log.info("drained", frames=drained, left_uncommitted=len(self.batcher), stale_total=self.frames_stale)

    def close(self) -> None:
        """Leave the group (an immediate rebalance, not a session timeout) and release the pools."""
        try:
            self.consumer.close()
        finally:
            self._writer.shutdown(wait=False)
            self._decode_pool.shutdown(wait=False)
            self._sink_pool.shutdown(wait=False)
