"""``python -m services.worker`` / ``inspection-worker``: start-up and shutdown of one worker process.

Flow step: process lifecycle around ``services.worker.loop``. Order matters: the health server starts first (so a
startup probe can see "loading"), then Kafka, Redis and the object store are checked (each bounded by
``WORKER_CONNECT_TIMEOUT_S``), then the model is loaded and warmed up at ``max_batch_size``; readiness is reported
only after that, and SIGTERM starts a drain (finish queued frames, flush, commit, leave the group). A start-up
failure is one line on stderr and exit status 2 (``services._config.StartupChecks``).
"""

from __future__ import annotations

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()  # passive OpenMP waiting, one thread per usable core; before numpy and torch load

import os
import sys
import threading
from typing import Any

from services import _observability as obs
from services._config import StartupError, run_main
from services._kafka import TOPICS_HINT, check_kafka, make_consumer, make_producer
from services._memory import freeze_start_up_heap
from services._object_store import open_checked
from services._overlays import OverlayStore
from services._redis import InspectionStore, connect_checked
from services._registry import BundleRegistry, RegistryError
from services._serve import begin_serve
from services.worker.bundles import BundleFollower
from services.worker.config import WorkerSettings
from services.worker.inference import load_detector, warm_up
from services.worker.loop import SERVICE, WorkerLoop
from services.worker.overlay import OverlayFollower


def _load_model(settings: WorkerSettings, detector: Any, bundle_path: str) -> tuple[tuple[Any, float | None], str]:
    """The ``model`` start-up step: load the bundle (unless given) and warm up; returns the warm-up time too."""
    detector = detector or load_detector(bundle_path, settings.device, settings.dtype,
                                         compile=settings.compile, max_batch_size=settings.max_batch_size)
    warmup_s = warm_up(detector, settings.max_batch_size) if settings.warmup else None
    detail = f"{bundle_path}: model {detector.model_version}"
    if warmup_s is not None:
        detail += f", warm-up batch of {settings.max_batch_size} in {warmup_s:.2f} s"
    return (detector, warmup_s), detail


def _bundle_step(settings: WorkerSettings, redis_client: Any, store: Any) -> tuple[tuple[str, str | None], str]:
    """The ``bundle`` start-up step: ``(bundle directory, registry version)``; with ``bundle_alias``, the version the
    alias points at, fetched and checked against its hash."""
    if not settings.bundle_alias:
        return (settings.bundle_path, None), f"{settings.bundle_path} (no alias)"
    if redis_client is None or store is None:
        raise StartupError("the registry needs Redis and the object store")
    registry = BundleRegistry(redis_client, store, settings.redis_key_prefix)
    try:
        version, path = registry.resolve(settings.bundle_alias, settings.bundle_cache_dir)
    except RegistryError as exc:
        raise StartupError(str(exc)) from None
    return (str(path), version), f"{settings.bundle_alias} -> {version} ({path})"


def _overlay_step(settings: WorkerSettings, model: tuple[Any, float | None] | None, redis_client: Any,
                  store: Any, log: Any) -> tuple[tuple[OverlayFollower | None, Any], str]:
    """The ``overlay`` start-up step: with ``overlay_product`` set, check that the bundle can take an overlay and
    load the version in force, so the first frame is already scored with it."""
    detector = model[0] if model is not None else None
    if not settings.overlay_product or detector is None or redis_client is None or store is None:
        return (None, detector), "none (WORKER_OVERLAY_PRODUCT unset)"
    from ddad_core.overlay import OverlayError

    try:
        detector.with_overlay(None)
    except OverlayError as exc:
        raise StartupError(f"bundle {settings.bundle_path}: {exc}") from None
    follower = OverlayFollower(OverlayStore(redis_client, store, settings.redis_key_prefix), settings.overlay_product,
                               settings.overlay_refresh_s, log)
    detector = follower.follow(detector) or detector
    return (follower, detector), f"product {settings.overlay_product}: version {follower.version}"


def serve(settings: WorkerSettings, check_only: bool = False, stop: threading.Event | None = None,
          detector: Any = None, health: obs.Health | None = None, on_loop: Any = None) -> int:
    """Run the worker until ``stop`` is set (or SIGTERM/SIGINT when run as the main thread).

    Args:
        settings: Resolved settings.
        check_only: Connect to Kafka, Redis and the object store, load and warm up the model, report each, return 0
            (``--check``).
        stop: Set it to drain and stop (signals set it when running in the main thread).
        detector: An already loaded pipeline (tests and the demo share one between in-process workers).
        health: Health state to report into (default: a new one).
        on_loop: Called with the ``WorkerLoop`` before it runs (tests inspect it).

    Raises:
        StartupError: a dependency is unreachable or the bundle is missing or broken (one line, see run_main).
    """
    start = begin_serve(SERVICE, settings, check_only, stop, health)
    log, health, stop, topics, kafka, timeout, checks = (
        start.log, start.health, start.stop, start.topics, start.kafka, start.timeout, start.checks)
    server = None if check_only else checks.run(
        "http", "http_port", lambda: (obs.start_http_server(health, settings.http_port), ""))
    missing_topics = checks.run("kafka", "kafka_bootstrap_servers",
                                lambda: check_kafka(kafka, timeout, [topics.frames, topics.results, topics.frames_dlq]))
    redis_client = checks.run("redis", "redis_url", lambda: connect_checked(settings.redis_url, timeout))
    store = checks.run("object store", "object_store_url",
                       lambda: open_checked(settings.object_store_url, settings.s3_client_kwargs(), timeout))
    health.set_ready(False, "loading model")
    bundle = checks.run("bundle", "bundle_alias", lambda: _bundle_step(settings, redis_client, store))
    model = checks.run("model", "bundle_path",
                       lambda: _load_model(settings, detector, bundle[0] if bundle else settings.bundle_path))
    follower, detector = checks.run("overlay", "overlay_product",
                                    lambda: _overlay_step(settings, model, redis_client, store, log)) or (None, None)
    checks.finish()
    if check_only:
        return 0
    warmup_s = model[1]
    if missing_topics:
        log.warning("kafka_topics_missing", topics=missing_topics, hint=TOPICS_HINT)
    max_frame_age_ms = settings.frame_age_limit_ms(warmup_s)
    log = log.bind(model_version=detector.model_version)
    obs.MODEL_INFO.labels(detector.model_version, detector.bundle_hash).set(1)
    log.info("model_ready", bundle=settings.bundle_path, bundle_hash=detector.bundle_hash,
             max_batch_size=settings.max_batch_size,
             warmup_ms=None if warmup_s is None else round(warmup_s * 1000.0, 1), max_frame_age_ms=max_frame_age_ms,
             threads={k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")})

    consumer = make_consumer(kafka, settings.group_id, assignor=settings.kafka_assignor,
                             group_instance_id=settings.group_instance_id,
                             max_poll_records=2 * settings.max_batch_size,
                             session_timeout_ms=settings.session_timeout_ms,
                             heartbeat_interval_ms=settings.heartbeat_interval_ms,
                             max_poll_interval_ms=settings.max_poll_interval_ms)
    producer = make_producer(kafka)
    bundles = None
    if settings.bundle_alias:
        bundles = BundleFollower(BundleRegistry(redis_client, store, settings.redis_key_prefix), settings.bundle_alias,
                                 settings.bundle_cache_dir, lambda path: _load_model(settings, None, str(path))[0][0],
                                 bundle[1], settings.bundle_refresh_s, log)
    loop = WorkerLoop(settings, consumer, producer, detector, store,
                      InspectionStore(redis_client, settings.result_ttl_s, settings.stream_maxlen,
                                      settings.redis_key_prefix), log, health, max_frame_age_ms=max_frame_age_ms,
                      overlay=follower, bundles=bundles)
    loop.subscribe()
    if on_loop is not None:
        on_loop(loop)
    if start.main_thread:  # its own process (tests and the demo run serve on threads)
        log.info("start_up_heap_frozen", objects=freeze_start_up_heap())
    health.set_ready(True, "ready")
    try:
        loop.run(stop)
    finally:
        health.set_ready(False, "stopped")
        producer.close(timeout=10)
        if server is not None:
            server.shutdown()
    log.info("stopped", batches=loop.batches_run, frames_inferred=loop.frames_inferred, frames_stale=loop.frames_stale)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    return run_main(WorkerSettings, lambda s, check: serve(s, check), argv,
                    "Inspection worker: frames -> micro-batched D3AD -> results", SERVICE)


if __name__ == "__main__":
    sys.exit(main())
