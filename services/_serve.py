"""The start of every service's ``serve()``: logger, health state, stop event and signals, topics, Kafka settings and
the start-up checks, made the same way for the ingestor, the worker, the alerter and the dashboard.

Flow step: none (process lifecycle). Each service's ``serve()`` begins with ``begin_serve`` and then runs its own
start-up steps through ``ServeStart.checks`` (``services._config.StartupChecks``).
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from typing import Any

from services import _observability as obs
from services._config import CommonSettings, StartupChecks
from services._kafka import TOPICS_HINT
from services.contracts.topics import Topics


@dataclass
class ServeStart:
    """What ``begin_serve`` made for one ``serve()`` call.

    Attributes:
        log: structlog logger bound with the service name.
        health: the health state ``/healthz`` and ``/readyz`` report.
        stop: set it (or send SIGTERM/SIGINT to a service running on the main thread) to stop serving.
        topics: the topic names with the configured prefix.
        kafka: kafka-python connection kwargs of the service.
        timeout: ``connect_timeout_s``, the bound of every start-up connection.
        checks: the start-up steps (``report`` with ``--check``).
        main_thread: ``serve()`` runs on the main thread (its own process; tests and the demo run it on threads).
    """

    log: Any
    health: obs.Health
    stop: threading.Event
    topics: Topics
    kafka: dict[str, Any]
    timeout: float
    checks: StartupChecks
    main_thread: bool

    def finish(self, check_only: bool, missing_topics: list[str] | None) -> bool:
        """End the start-up steps (raises when one failed): False with ``--check`` (all reported, nothing to
        serve), else True after a warning about topics that do not exist yet."""
        self.checks.finish()
        if check_only:
            return False
        if missing_topics:
            self.log.warning("kafka_topics_missing", topics=missing_topics, hint=TOPICS_HINT)
        return True

    def handle_signals(self) -> None:
        """SIGTERM and SIGINT set ``stop``; only on the main thread (Python delivers signals there alone)."""
        if self.main_thread:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop.set())


def begin_serve(
    service: str,
    settings: CommonSettings,
    check_only: bool,
    stop: threading.Event | None = None,
    health: obs.Health | None = None,
    signals: bool = True,
) -> ServeStart:
    """Configure logging and make the pieces every ``serve()`` starts with.

    Args:
        service: the service name (logs, metrics, Kafka client id, start-up lines).
        settings: the service's resolved settings.
        check_only: ``--check``: the start-up steps report each result instead of stopping at the first failure.
        stop: the caller's stop event (default: a new one).
        health: the caller's health state (default: a new one).
        signals: install the SIGTERM/SIGINT handlers now; False leaves it to the caller (``handle_signals``).
    """
    start = ServeStart(
        log=obs.configure_logging(service, settings.log_level, settings.log_json),
        health=health or obs.Health(),
        stop=stop or threading.Event(),
        topics=Topics(settings.topic_prefix),
        kafka=settings.kafka_kwargs(service),
        timeout=settings.connect_timeout_s,
        checks=StartupChecks(service, settings, report=check_only),
        main_thread=threading.current_thread() is threading.main_thread(),
    )
    if signals:
        start.handle_signals()
    return start


def run_steps(loop: Any, stop: threading.Event) -> None:
    """Call ``loop.step()`` until ``stop`` is set (its outage guard gives up waiting then), then close its consumer."""
    loop.guard.stop = stop
    try:
        while not stop.is_set():
            loop.step()
    finally:
        loop.consumer.close()
