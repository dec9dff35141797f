"""``python -m services.ingestor`` / ``inspection-ingestor``: one camera (or folder/video) -> Kafka ``frames``.

Flow step: process lifecycle around camera -> frame -> ``frames``. The capture loop runs on the main thread at the
capped frame rate; a sender thread drains the bounded buffer into the producer (``publish.py``). SIGTERM stops the
capture, lets the sender empty the buffer, and flushes the producer. Start-up (source, object store, Kafka) fails with
one line and exit status 2.
"""

from __future__ import annotations

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()  # passive OpenMP waiting, one thread per usable core; before numpy and OpenCV load

import sys
import threading
import time
from datetime import UTC, datetime

from kafka.errors import KafkaError, KafkaTimeoutError

from services import _observability as obs
from services._config import StartupError, run_main
from services._kafka import TOPICS_HINT, check_kafka, make_producer
from services._object_store import open_checked
from services._outage import DependencyGuard
from services._serve import begin_serve
from services.ingestor.camera import CameraSource, FrameSource, RateLimiter, open_source
from services.ingestor.config import IngestorSettings
from services.ingestor.publish import SERVICE, Captured, FrameBuffer, FramePublisher, encode_image, sender_loop


def _open_source_step(settings: IngestorSettings, log, check_only: bool) -> tuple[FrameSource, str]:
    """The ``source`` start-up step. A camera that does not answer yet is retried while serving (cameras reboot),
    but fails ``--check``."""
    try:
        source = open_source(settings.source, settings.source_kind, settings.loop, settings.camera_id,
                             settings.reconnect_initial_s, settings.reconnect_max_s, log)
    except (OSError, ValueError) as exc:
        raise StartupError(str(exc)) from None
    if isinstance(source, CameraSource) and not (source.cap is not None and source.cap.isOpened()):
        if check_only:
            source.close()
            raise StartupError(f"camera or stream {settings.source!r} does not open")
        return source, f"camera {settings.source} (not open yet; retried with backoff)"
    return source, f"{type(source).__name__.removesuffix('Source').lower()} {settings.source}"


def serve(settings: IngestorSettings, check_only: bool = False, stop: threading.Event | None = None,
          clock_wall=time.time) -> int:
    """Capture and publish until the source ends, ``max_frames`` is reached, or ``stop`` is set.

    Raises:
        StartupError: bad source, object store or Kafka unreachable (one line, see run_main).
    """
    start = begin_serve(SERVICE, settings, check_only, stop)
    log, health, stop, topics, kafka, timeout, checks = (
        start.log, start.health, start.stop, start.topics, start.kafka, start.timeout, start.checks)
    log = log.bind(camera_id=settings.camera_id)
    source = checks.run("source", "source", lambda: _open_source_step(settings, log, check_only))
    try:
        store = checks.run("object store", "object_store_url", lambda: open_checked(
            settings.object_store_url, settings.s3_client_kwargs(), timeout))
        missing_topics = checks.run("kafka", "kafka_bootstrap_servers",
                                    lambda: check_kafka(kafka, timeout, [topics.frames]))
        server = None if check_only else checks.run(
            "http", "http_port", lambda: (obs.start_http_server(health, settings.http_port), ""))
        checks.finish()
    except StartupError:
        if source is not None:
            source.close()
        raise
    if check_only:
        source.close()
        return 0
    if missing_topics:
        log.warning("kafka_topics_missing", topics=missing_topics, hint=TOPICS_HINT)
    producer = make_producer(kafka, linger_ms=10,
                             max_request_size=settings.inline_limit_bytes + 64 * 1024,
                             max_block_ms=settings.send_timeout_ms)
    publisher = FramePublisher(producer, topics.frames, store, settings.camera_id,
                               settings.line_id, settings.product_id, settings.inline_limit_bytes, log,
                               settings.max_inflight_frames, settings.send_timeout_ms / 1000.0)
    buffer = FrameBuffer(settings.buffer_frames, settings.drop_policy)
    sender_stop = threading.Event()
    sender = threading.Thread(target=sender_loop, args=(buffer, publisher, sender_stop), name="sender", daemon=True)
    sender.start()
    limiter = RateLimiter(settings.fps)
    # Frame ids: camera, start time of this run, sequence. Unique across ingestor restarts (sequence restarts at 0).
    run_id = format(int(clock_wall() * 1000), "x")
    seq = 0
    health.set_ready(True)
    guard = DependencyGuard(SERVICE, health, log)
    stall_s = settings.send_timeout_ms / 1000.0
    log.info("ingestor_started", source=settings.source, fps=settings.fps)
    try:
        while not stop.is_set() and (settings.max_frames == 0 or seq < settings.max_frames):
            health.beat()
            # The broker's health as the capture loop sees it: frames waiting without any acknowledgement.
            stalled = publisher.stalled_s()
            if stalled > stall_s:
                guard.mark_down("kafka", KafkaTimeoutError(f"no acknowledgement for {stalled:.0f} s, "
                                                           f"{publisher.inflight} frames waiting"))
            else:
                guard.mark_up("kafka")
            limiter.wait()
            got = source.read()
            if got is None:
                break
            image, name = got
            captured_at = datetime.fromtimestamp(clock_wall(), UTC)
            obs.FRAMES_IN.labels(SERVICE).inc()
            data = encode_image(image, settings.encoding, settings.jpeg_quality)
            buffer.put(Captured(f"{settings.camera_id}-{run_id}-{seq:08d}", seq, captured_at, data,
                                image.shape[1], image.shape[0], name, settings.encoding))
            seq += 1
    finally:
        source.close()
        sender_stop.set()
        sender.join(timeout=60)
        try:
            producer.flush(timeout=30)
        except KafkaError as exc:
            # The broker is still away at shutdown: nothing more can be sent; the frames still waiting are counted
            # as unacknowledged in the summary below instead of ending the process with a traceback.
            log.warning("final_flush_failed", error=repr(exc), unacknowledged=publisher.inflight)
        try:
            producer.close(timeout=10)
        except KafkaError as exc:
            log.warning("producer_close_failed", error=repr(exc))
        if server is not None:
            server.shutdown()
    # Every captured frame is in exactly one of these: captured = sent + the four drop counts (+ unacknowledged).
    log.info("ingestor_stopped", captured=seq, sent=publisher.sent, send_failed=publisher.failed,
             buffer_dropped=buffer.dropped, claim_check_failed=publisher.not_staged, broker_timeout=publisher.blocked,
             unacknowledged=publisher.inflight)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    return run_main(IngestorSettings, lambda s, check: serve(s, check), argv,
                    "Inspection ingestor: camera/video/folder -> frames topic", SERVICE)


if __name__ == "__main__":
    sys.exit(main())
