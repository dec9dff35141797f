"""Waiting out an outage of Kafka, Redis or the object store: retry the write, hold the commit, say so.

Flow step: none (cross-cutting, used by the worker and alerter loops). A write that fails because a dependency is
down (``dependency_of``) is retried with capped exponential backoff until it succeeds, never skipped, so the
caller's offsets stay uncommitted meanwhile. While any dependency is down the service's ``/readyz`` answers 503
with e.g. ``redis unavailable``, ``inspection_dependency_up{service,dependency}`` is 0, one
``dependency_unavailable`` error line is logged (then one ``dependency_still_unavailable`` warning per 10 s, and
``dependency_recovered`` with the outage length at the end). The guard keeps beating ``/healthz``: a service
waiting for Redis is alive, and restarting it would only turn an outage into a crash loop. An error no dependency
explains (a bug) is raised at once, and so is any error once stop was asked for (the caller exits uncommitted and
the work is replayed after the restart).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from kafka.errors import KafkaError

from services import _observability as obs
from services._object_store import ObjectStoreUnavailable

DEPENDENCIES = ("kafka", "redis", "object_store")
RETRY_MAX_S = 5.0
LOG_INTERVAL_S = 10.0

T = TypeVar("T")


def dependency_of(exc: BaseException) -> str | None:
    """Which dependency an error blames (``kafka``, ``redis``, ``object_store``), or None for anything else."""
    if isinstance(exc, KafkaError):
        return "kafka"
    if isinstance(exc, redis.RedisError):
        return "redis"
    if isinstance(exc, ObjectStoreUnavailable):
        return "object_store"
    return None


class DependencyGuard:
    """Retries writes through outages and reports them (readiness, metric, log lines).

    Args:
        service: Metric label.
        health: The service's health state (readiness reason names the dependencies that are down).
        log: structlog logger.
        clock / sleep: Injectable for tests.
    """

    def __init__(self, service: str, health: obs.Health, log: Any, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.service = service
        self.health = health
        self.log = log
        self.stop: threading.Event | None = None  # set by the loop's run(); once set, failures are raised
        self._clock = clock
        self._sleep = sleep
        self._down: dict[str, tuple[float, float]] = {}  # dependency -> (down since, next log line)
        self._lock = threading.RLock()  # the worker's loop and writer threads both report
        for dependency in DEPENDENCIES:
            obs.DEPENDENCY_UP.labels(service, dependency).set(1)

    @property
    def down(self) -> list[str]:
        """Dependencies currently failing."""
        return sorted(self._down)

    def until_ok(self, dependency: str, write: Callable[[], T]) -> T:
        """Run ``write`` until it succeeds, waiting out an outage (``dependency`` is marked up on success).

        Raises:
            Exception: an error no dependency explains, or any error once ``stop`` is set.
        """
        attempt = 0
        while True:
            try:
                value = write()
            except Exception as exc:
                blamed = dependency_of(exc)
                if blamed is None or (self.stop is not None and self.stop.is_set()):
                    raise
                attempt += 1
                self.mark_down(blamed, exc, attempt)
                self.health.beat()  # alive and waiting, not stuck
                self._sleep(min(RETRY_MAX_S, 0.2 * 2 ** min(attempt, 5)))
                continue
            self.mark_up(dependency)
            return value

    def mark_down(self, dependency: str, exc: BaseException, attempt: int = 1) -> None:
        with self._lock:
            self._mark_down(dependency, exc, attempt)

    def _mark_down(self, dependency: str, exc: BaseException, attempt: int) -> None:
        now = self._clock()
        since, next_log = self._down.get(dependency, (now, now))
        if dependency not in self._down:
            self.log.error("dependency_unavailable", dependency=dependency, error=repr(exc)[:300],
                           hint="waiting for it: the work is retried, not skipped, and no offset moves past it")
            next_log = now + LOG_INTERVAL_S
            obs.DEPENDENCY_UP.labels(self.service, dependency).set(0)
        elif now >= next_log:
            self.log.warning("dependency_still_unavailable", dependency=dependency, for_s=round(now - since, 1),
                             attempts=attempt, error=repr(exc)[:300])
            next_log = now + LOG_INTERVAL_S
        self._down[dependency] = (since, next_log)
        self.health.set_ready(False, "; ".join(f"{d} unavailable" for d in sorted(self._down)))

    def mark_up(self, dependency: str) -> None:
        with self._lock:
            self._mark_up(dependency)

    def _mark_up(self, dependency: str) -> None:
        if dependency not in self._down:
            return
        since, _ = self._down.pop(dependency)
        obs.DEPENDENCY_UP.labels(self.service, dependency).set(1)
        self.log.warning("dependency_recovered", dependency=dependency, outage_s=round(self._clock() - since, 1))
        if self._down:
            self.health.set_ready(False, "; ".join(f"{d} unavailable" for d in sorted(self._down)))
        else:
            self.health.set_ready(True, "ready")
