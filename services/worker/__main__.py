"""``python -m services.worker`` / ``inspection-worker``: start-up and shutdown of one worker process.

Flow step: process lifecycle around ``services.worker.loop``. Order matters: the health server starts first (so a
startup probe can see "loading"), readiness is reported only after the model is loaded and warmed up at
``max_batch_size``, and SIGTERM starts a drain (finish queued frames, flush, commit, leave the group).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from services import _observability as obs
from services._config import run_main
from services._kafka import make_consumer, make_producer
from services._object_store import open_object_store
from services._redis import InspectionStore, connect
from services.worker.config import WorkerSettings
from services.worker.inference import load_detector, warm_up
from services.worker.loop import SERVICE, WorkerLoop


def serve(settings: WorkerSettings, check_only: bool = False, stop: threading.Event | None = None,
          detector: Any = None, health: obs.Health | None = None, on_loop: Any = None) -> int:
    """Run the worker until ``stop`` is set (or SIGTERM/SIGINT when run as the main thread).

    Args:
        settings: Resolved settings.
        check_only: Load, warm up and connect, then return 0 (``--check``).
        stop: Set it to drain and stop (signals set it when running in the main thread).
        detector: An already loaded pipeline (tests and the demo share one between in-process workers).
        health: Health state to report into (default: a new one).
        on_loop: Called with the ``WorkerLoop`` before it runs (tests inspect it).
    """
    log = obs.configure_logging(SERVICE, settings.log_level, settings.log_json)
    health = health or obs.Health()
    server = None if check_only else obs.start_http_server(health, settings.http_port)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())

    health.set_ready(False, "loading model")
    detector = detector or load_detector(settings.bundle_path, settings.device, settings.dtype)
    log = log.bind(model_version=detector.model_version)
    obs.MODEL_INFO.labels(detector.model_version, detector.bundle_hash).set(1)
    if settings.warmup:
        health.set_ready(False, "warming up")
        warm_up(detector, settings.max_batch_size)
    redis_client = connect(settings.redis_url)
    redis_client.ping()
    store = open_object_store(settings.object_store_url, settings.s3_client_kwargs())
    log.info("model_ready", bundle=settings.bundle_path, bundle_hash=detector.bundle_hash,
             max_batch_size=settings.max_batch_size)
    if check_only:
        return 0

    kafka = settings.kafka_kwargs(SERVICE)
    consumer = make_consumer(kafka, settings.group_id, assignor=settings.kafka_assignor,
                             group_instance_id=settings.group_instance_id,
                             max_poll_records=2 * settings.max_batch_size,
                             session_timeout_ms=settings.session_timeout_ms,
                             heartbeat_interval_ms=settings.heartbeat_interval_ms,
                             max_poll_interval_ms=settings.max_poll_interval_ms)
    producer = make_producer(kafka)
    loop = WorkerLoop(settings, consumer, producer, detector, store,
                      InspectionStore(redis_client, settings.result_ttl_s, settings.stream_maxlen,
                                      settings.redis_key_prefix), log, health)
    loop.subscribe()
    if on_loop is not None:
        on_loop(loop)
    health.set_ready(True, "ready")
    try:
        loop.run(stop)
    finally:
        health.set_ready(False, "stopped")
        producer.close(timeout=10)
        if server is not None:
            server.shutdown()
    log.info("stopped", batches=loop.batches_run)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    return run_main(WorkerSettings, lambda s, check: serve(s, check), argv,
                    "Inspection worker: frames -> micro-batched D3AD -> results")


if __name__ == "__main__":
    sys.exit(main())
