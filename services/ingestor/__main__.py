"""``python -m services.ingestor`` / ``inspection-ingestor``: one camera (or folder/video) -> Kafka ``frames``.

Flow step: process lifecycle around camera -> frame -> ``frames``. The capture loop runs on the main thread at the
capped frame rate; a sender thread drains the bounded buffer into the producer (``publish.py``). SIGTERM stops the
capture, lets the sender empty the buffer, and flushes the producer.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from datetime import UTC, datetime

from services import _observability as obs
from services._config import run_main
from services._kafka import make_producer
from services._object_store import open_object_store
from services.contracts.topics import Topics
from services.ingestor.camera import RateLimiter, open_source
from services.ingestor.config import IngestorSettings
from services.ingestor.publish import SERVICE, Captured, FrameBuffer, FramePublisher, encode_image, sender_loop


def serve(settings: IngestorSettings, check_only: bool = False, stop: threading.Event | None = None,
          clock_wall=time.time) -> int:
    """Capture and publish until the source ends, ``max_frames`` is reached, or ``stop`` is set."""
    log = obs.configure_logging(SERVICE, settings.log_level, settings.log_json).bind(camera_id=settings.camera_id)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    source = open_source(settings.source, settings.source_kind, settings.loop, settings.camera_id,
                         settings.reconnect_initial_s, settings.reconnect_max_s, log)
    store = open_object_store(settings.object_store_url, settings.s3_client_kwargs())
    if check_only:
        source.close()
        return 0
    health = obs.Health()
    server = obs.start_http_server(health, settings.http_port)
    producer = make_producer(settings.kafka_kwargs(SERVICE), linger_ms=10,
                             max_request_size=settings.inline_limit_bytes + 64 * 1024,
                             max_block_ms=settings.send_timeout_ms)
    publisher = FramePublisher(producer, Topics(settings.topic_prefix).frames, store, settings.camera_id,
                               settings.line_id, settings.product_id, settings.inline_limit_bytes, log)
    buffer = FrameBuffer(settings.buffer_frames, settings.drop_policy)
    sender_stop = threading.Event()
    sender = threading.Thread(target=sender_loop, args=(buffer, publisher, sender_stop), name="sender", daemon=True)
    sender.start()
    limiter = RateLimiter(settings.fps)
    # Frame ids: camera, start time of this run, sequence. Unique across ingestor restarts (sequence restarts at 0).
    run_id = format(int(clock_wall() * 1000), "x")
    seq = 0
    health.set_ready(True)
    log.info("ingestor_started", source=settings.source, fps=settings.fps)
    try:
        while not stop.is_set() and (settings.max_frames == 0 or seq < settings.max_frames):
            health.beat()
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
        producer.flush(timeout=30)
        producer.close(timeout=10)
        if server is not None:
            server.shutdown()
    log.info("ingestor_stopped", captured=seq, sent=publisher.sent, send_failed=publisher.failed,
             buffer_dropped=buffer.dropped)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    return run_main(IngestorSettings, lambda s, check: serve(s, check), argv,
                    "Inspection ingestor: camera/video/folder -> frames topic")


if __name__ == "__main__":
    sys.exit(main())
