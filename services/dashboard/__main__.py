"""``python -m services.dashboard`` / ``inspection-dashboard``: the operators' live alert dashboard.

Flow step: process lifecycle around ``consumer.py`` (Kafka thread) and ``app.py`` (uvicorn, one process). Start-up
(token, Redis, object store, Kafka, the port) fails with one line and exit status 2; ``--check`` reports each step.
SIGTERM ends the streams, stops the server and leaves the consumer group.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable

import uvicorn

from services._config import StartupError, run_main
from services._kafka import TOPICS_HINT, check_kafka, make_consumer, make_producer
from services._object_store import open_checked
from services._redis import AlertStore, connect_checked
from services._serve import begin_serve
from services.dashboard.app import DashboardContext, create_app
from services.dashboard.auth import Authenticator
from services.dashboard.config import DashboardSettings
from services.dashboard.consumer import SERVICE, DashboardConsumer
from services.dashboard.live import Hub, LiveState
from services.dashboard.store import FeedbackStore


def _bind(host: str, port: int) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock, f"http://{host}:{sock.getsockname()[1]}/"


def serve(settings: DashboardSettings, check_only: bool = False, stop: threading.Event | None = None,
          on_ready: Callable[[int], None] | None = None) -> int:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT in the main thread); ``on_ready(port)`` once listening.

    Raises:
        StartupError: missing token, Redis, object store or Kafka unreachable, port taken (one line, see run_main).
    """
    # Signals are handled only from just before uvicorn runs (below), as the dashboard always did.
    start = begin_serve(SERVICE, settings, check_only, stop, signals=False)
    log, health, stop, topics, kafka, timeout, checks = (
        start.log, start.health, start.stop, start.topics, start.kafka, start.timeout, start.checks)
    token = checks.run("token", "token", lambda: (settings.require_token(), "set"))
    redis_client = checks.run("redis", "redis_url", lambda: connect_checked(settings.redis_url, timeout))
    store = checks.run("object store", "object_store_url",
                       lambda: open_checked(settings.object_store_url, settings.s3_client_kwargs(), timeout))
    missing = checks.run("kafka", "kafka_bootstrap_servers",
                         lambda: check_kafka(kafka, timeout, [topics.defects, topics.results]))
    sock, url = (None, "") if check_only else checks.run(
        "http", "http_port", lambda: (_bind(settings.bind_host, settings.http_port), "")) or (None, "")
    checks.finish()
    if check_only:
        return 0
    if missing:
        log.warning("kafka_topics_missing", topics=missing, hint=TOPICS_HINT)
    live = LiveState(settings.sparkline_points, settings.stale_after_s)
    live.set_dependency("redis", True)
    live.set_dependency("kafka", True)
    hub = Hub()
    ctx = DashboardContext(Authenticator(token, settings.session_ttl_s), redis_client, store, live, hub, health, log,
                           key_prefix=settings.redis_key_prefix, alert_ttl_s=settings.alert_ttl_s,
                           feedback_ttl_s=settings.feedback_ttl_s, feed_size=settings.feed_size,
                           page_size=settings.page_size, scan_limit=settings.history_scan_limit,
                           tick_s=settings.tick_s, cookie_secure=settings.cookie_secure)
    consumer = DashboardConsumer(
        make_consumer(kafka, settings.group_id, auto_offset_reset=settings.start_from, max_poll_records=256,
                      session_timeout_ms=settings.session_timeout_ms,
                      heartbeat_interval_ms=settings.heartbeat_interval_ms),
        make_producer(kafka, max_block_ms=5000),  # a send during a broker outage fails in 5 s, not 60
        topics, AlertStore(redis_client, settings.alert_ttl_s, settings.redis_key_prefix),
        FeedbackStore(redis_client, settings.feedback_ttl_s, settings.redis_key_prefix), live, hub, log, health)
    consumer.subscribe()
    kafka_thread = threading.Thread(target=consumer.run, args=(stop,), name="dashboard-kafka", daemon=True)
    kafka_thread.start()

    server = uvicorn.Server(uvicorn.Config(create_app(ctx), log_config=None, access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=3, ws="none"))
    start.handle_signals()

    def watch() -> None:
        if consumer.assigned.wait(timeout=120) and not stop.is_set():
            health.set_ready(True)
            log.info("dashboard_ready", url=url, group_id=settings.group_id)
            if on_ready is not None:
                on_ready(sock.getsockname()[1])
        stop.wait()
        hub.close()
        server.should_exit = True

    health.set_ready(False, "joining the consumer group")
    threading.Thread(target=watch, name="dashboard-watch", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
        kafka_thread.join(timeout=15)
        sock.close()
    log.info("stopped")
    return 1 if consumer.failed else 0


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    return run_main(DashboardSettings, lambda s, check: serve(s, check), argv,
                    "Inspection dashboard: live alerts, camera tiles, operator feedback", SERVICE)


if __name__ == "__main__":
    sys.exit(main())
