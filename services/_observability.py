"""Logs, metrics and health endpoints shared by every service.

Flow step: none (cross-cutting). structlog renders one JSON object per line with the ids bound by the loops
(camera_id, frame_id, batch_id, model_version). Prometheus metrics use the ``inspection_`` prefix, base units and
``_total`` counters; no frame- or batch-level labels (unbounded cardinality). A tiny HTTP server serves
``/healthz`` (the loop is alive), ``/readyz`` (model loaded and warmed up / connected) and ``/metrics``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from services._config import StartupError

# ----------------------------------------------------------------------------------------------- metrics
# Defined once at import: a second definition of the same name in the default registry raises, and the demo and
# tests run several services in one process.

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)

FRAMES_IN = Counter("inspection_frames_consumed_total", "Frames read from Kafka or a camera.", ["service"])
FRAMES_PUBLISHED = Counter("inspection_frames_published_total", "Frames produced to the frames topic.",
                           ["camera_id"])
FRAMES_DROPPED = Counter("inspection_frames_dropped_total", "Frames not inferred, by reason.", ["service", "reason"])
MAX_FRAME_AGE = Gauge("inspection_max_frame_age_seconds",
                      "Age limit in force: older frames are dropped as stale, not inferred (0 = off).", ["service"])
DLQ_RECORDS = Counter("inspection_dlq_records_total", "Records sent to a dead-letter topic, by reason.",
                      ["service", "reason"])
RESULTS_OUT = Counter("inspection_results_produced_total", "Inspection results produced.", ["service"])
DEFECTS_OUT = Counter("inspection_defects_total", "Defect alerts raised.", ["camera_id", "severity"])
BATCH_SIZE = Histogram("inspection_batch_size", "Frames per inferred micro-batch.",
                       buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128))
QUEUE_WAIT = Histogram("inspection_batch_queue_wait_seconds", "Time a frame waited in the micro-batcher.",
                       buckets=_LATENCY_BUCKETS)
STAGE_DURATION = Histogram("inspection_stage_duration_seconds", "Duration of one stage for one batch.", ["stage"],
                           buckets=_LATENCY_BUCKETS)
END_TO_END = Histogram("inspection_end_to_end_latency_seconds", "Capture -> output latency.", ["output"],
                       buckets=_LATENCY_BUCKETS)
ANOMALY_SCORE = Histogram("inspection_anomaly_score", "Normalised image scores (0.5 = threshold), for drift.",
                          buckets=(0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 1.0, 2.0))
CONSUMER_LAG = Gauge("inspection_consumer_lag", "Records behind the end of the assigned partitions.",
                     ["service", "topic"])
DEPENDENCY_UP = Gauge("inspection_dependency_up", "0 while writes to a dependency fail and are being retried.",
                      ["service", "dependency"])
COMMIT_FAILURES = Counter("inspection_commit_failures_total", "Offset commits that failed (rebalance, broker).",
                          ["service"])
MODEL_INFO = Gauge("inspection_model_info", "The model in force (value 1; 0: swapped out by a bundle alias).",
                   ["model_version", "bundle_hash"])
BUFFER_DEPTH = Gauge("inspection_buffer_frames", "Frames waiting in an in-process buffer.", ["service"])
CAMERA_RECONNECTS = Counter("inspection_camera_reconnects_total", "Times a source was reopened.", ["camera_id"])


# ----------------------------------------------------------------------------------------------- logging

class _StderrLogger:
    """Writes each line to the *current* ``sys.stderr`` (a logger bound once must survive stream swaps in tests)."""

    def __init__(self, *_args: object) -> None:
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _ExpectedKafkaNoise(logging.Filter):
    """Drops two kafka-python warnings that are expected and say nothing a user can act on.

    "No partition metadata for topic ..." comes once per topic at every start (the first metadata fetch is still in
    flight; a topic that is really missing is named by our own start-up check). "... blocking the event loop" comes
    whenever the client's IO thread waited more than 0.1 s for a CPU (a busy machine, not a bug).
    """

    EXPECTED = ("No partition metadata for topic", "It is blocking the event loop")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("kafka") and any(e in record.getMessage() for e in self.EXPECTED))


def configure_logging(service: str, level: str = "INFO", json: bool = True) -> structlog.stdlib.BoundLogger:
    """Configure structlog (JSON lines on stderr) and return a logger bound with ``service``.

    Standard-library logging (kafka-python, botocore) is routed through the same renderer at WARNING and above,
    so one line format reaches the log shipper.
    """
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_StderrLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processors=[
        structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer], foreign_pre_chain=shared))
    handler.addFilter(_ExpectedKafkaNoise())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    return structlog.get_logger().bind(service=service)


# ----------------------------------------------------------------------------------------------- health server

class Health:
    """Liveness and readiness state of a service.

    ``beat()`` is called by the main loop every iteration; the service is live while the last beat is younger than
    ``stall_after_s`` (a stuck loop is restarted by the orchestrator). Readiness is set explicitly (worker: after the
    model is loaded and warmed up at max batch size).
    """

    def __init__(self, stall_after_s: float = 120.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._last_beat = clock()
        self._ready = threading.Event()
        self.reason = "starting"

    def beat(self) -> None:
        self._last_beat = self._clock()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        self.reason = reason or ("ready" if ready else "not ready")
        if ready:
            self._ready.set()
        else:
            self._ready.clear()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def live(self) -> bool:
        return self._clock() - self._last_beat < self.stall_after_s


def start_http_server(health: Health, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer | None:
    """Serve /healthz, /readyz and /metrics on a daemon thread; port 0 picks a free port, negative disables.

    Returns:
        The server (its ``server_address`` has the real port), or None when disabled.

    Raises:
        StartupError: the port is taken (or not ours to bind).
    """
    if port < 0:
        return None

    class _Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path.startswith("/metrics"):
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif self.path.startswith("/healthz"):
                ok = health.live
                self._send(200 if ok else 503, b"ok\n" if ok else b"loop stalled\n")
            elif self.path.startswith("/readyz"):
                ok = health.ready and health.live
                self._send(200 if ok else 503, f"{health.reason}\n".encode())
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: keep logs quiet
            return

    try:
        server = ThreadingHTTPServer((host, port), _Handler)
    except OSError as exc:
        raise StartupError(f"cannot serve health and metrics on {host}:{port}: {exc.strerror or exc}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health-http", daemon=True).start()
    return server
