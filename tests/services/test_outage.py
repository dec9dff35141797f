"""The outage guard: dependency errors are waited out and reported, anything else is raised at once."""

from __future__ import annotations

import threading

import pytest
import redis
from kafka.errors import KafkaTimeoutError

from services import _observability as obs
from services._object_store import ObjectStoreUnavailable
from services._outage import DependencyGuard, dependency_of


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def error(self, event: str, **kw) -> None:
        self.lines.append((event, kw))

    warning = error


def _guard():
    t = [0.0]
    health = obs.Health(clock=lambda: t[0])
    health.set_ready(True, "ready")
    log = _Log()

    def sleep(s: float) -> None:
        t[0] += s

    return DependencyGuard("test", health, log, clock=lambda: t[0], sleep=sleep), health, log, t


def test_dependency_of():
    assert dependency_of(KafkaTimeoutError()) == "kafka"
    assert dependency_of(redis.ConnectionError()) == "redis"
    assert dependency_of(ObjectStoreUnavailable("x")) == "object_store"
    assert dependency_of(ValueError()) is None


def test_outage_is_retried_reported_and_recovered():
    guard, health, log, t = _guard()
    calls = []

    def write():
        calls.append(t[0])
        if len(calls) < 12:
            raise redis.ConnectionError("refused")
        assert not health.ready and health.reason == "redis unavailable"
        return "done"

    assert guard.until_ok("redis", write) == "done"
    assert len(calls) == 12 and max(b - a for a, b in zip(calls, calls[1:], strict=False)) <= 5.0  # capped backoff
    events = [e for e, _ in log.lines]
    assert events[0] == "dependency_unavailable" and events[-1] == "dependency_recovered"
    assert "dependency_still_unavailable" in events and events.count("dependency_unavailable") == 1
    assert health.ready and health.reason == "ready"
    assert obs.DEPENDENCY_UP.labels("test", "redis")._value.get() == 1


def test_a_bug_is_raised_at_once_and_stop_ends_the_wait():
    guard, health, _, _ = _guard()
    with pytest.raises(ZeroDivisionError):
        guard.until_ok("redis", lambda: 1 / 0)
    assert health.ready
    guard.stop = threading.Event()
    attempts = []

    def failing():
        attempts.append(1)
        if len(attempts) == 3:
            guard.stop.set()
        raise KafkaTimeoutError("down")

    with pytest.raises(KafkaTimeoutError):
        guard.until_ok("kafka", failing)
    assert len(attempts) == 3 and not health.ready and "kafka unavailable" in health.reason
