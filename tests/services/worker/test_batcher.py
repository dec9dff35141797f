"""MicroBatcher timing and fairness with a fake clock (Triton dynamic-batcher semantics)."""

from __future__ import annotations

import pytest

from services.worker.batcher import MicroBatcher


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return FakeClock()


def _batcher(clock, size=4, delay_ms=100, age_ms=0):
    return MicroBatcher(size, delay_ms, age_ms, clock=clock, wall_clock=clock)


def test_full_batch_is_released_at_once(clock):
    b = _batcher(clock)
    for i in range(4):
        assert not b.ready()
        b.add(i, "cam1", clock.t)
    assert b.ready() and b.time_to_ready() == 0.0
    assert [p.item for p in b.take().items] == [0, 1, 2, 3]
    assert len(b) == 0 and b.time_to_ready() is None


def test_queue_delay_counts_from_first_frame(clock):
    b = _batcher(clock, delay_ms=100)
    b.add("a", "cam1", clock.t)
    clock.t += 0.06
    b.add("b", "cam1", clock.t)  # a later frame does not restart the timer
    assert b.time_to_ready() == pytest.approx(0.04)
    clock.t += 0.039
    assert not b.ready()
    clock.t += 0.002
    assert b.ready()
    assert [p.item for p in b.take().items] == ["a", "b"]


def test_leftover_frames_keep_their_own_wait(clock):
    b = _batcher(clock, size=2, delay_ms=100)
    for i in range(3):
        b.add(i, "cam1", clock.t)
    assert [p.item for p in b.take().items] == [0, 1]
    # frame 2 arrived at t0: it has waited 0 s so far and becomes ready 100 ms after its own arrival
    assert b.time_to_ready() == pytest.approx(0.1)
    clock.t += 0.1
    assert b.ready()


def test_zero_delay_releases_immediately(clock):
    b = _batcher(clock, delay_ms=0)
    b.add("a", "cam1", clock.t)
    assert b.ready()


def test_stale_frames_are_dropped_and_returned(clock):
    b = _batcher(clock, size=8, delay_ms=0, age_ms=500)
    b.add("old", "cam1", captured_ts=clock.t - 0.6)
    b.add("fresh", "cam1", captured_ts=clock.t - 0.1)
    batch = b.take()
    assert [p.item for p in batch.items] == ["fresh"]
    assert [p.item for p in batch.stale] == ["old"]


def test_catch_up_widens_the_age_limit_for_a_while(clock):
    b = _batcher(clock, size=8, delay_ms=0, age_ms=500)
    b.catch_up(10.0)  # partitions assigned: a 10 s window in which frames up to 10.5 s old are kept
    b.add("paused", "cam1", captured_ts=clock.t - 8.0)
    b.add("ancient", "cam1", captured_ts=clock.t - 11.0)
    batch = b.take()
    assert [p.item for p in batch.items] == ["paused"] and [p.item for p in batch.stale] == ["ancient"]
    clock.t += 10.0  # the window is over: the plain limit again
    b.add("late", "cam1", captured_ts=clock.t - 0.6)
    assert [p.item for p in b.take().stale] == ["late"]
    with pytest.raises(ValueError):
        b.catch_up(-1.0)


def test_round_robin_across_cameras(clock):
    b = _batcher(clock, size=4, delay_ms=0)
    for i in range(6):
        b.add(f"A{i}", "A", clock.t)  # a fast camera with a backlog
    b.add("B0", "B", clock.t)
    b.add("B1", "B", clock.t)
    b.add("C0", "C", clock.t)
    assert [p.item for p in b.take().items] == ["A0", "B0", "C0", "A1"]
    # B was served less recently than A: the next batch starts with it
    assert [p.item for p in b.take().items] == ["B1", "A2", "A3", "A4"]
    assert [p.item for p in b.take().items] == ["A5"]


def test_remove_on_revoke(clock):
    b = _batcher(clock, size=10)
    for i in range(5):
        b.add(i, "A" if i % 2 else "B", clock.t)
    removed = b.remove(lambda item: item % 2 == 0)
    assert sorted(p.item for p in removed) == [0, 2, 4]
    assert len(b) == 2
    assert sorted(p.item for p in b.take().items) == [1, 3]


def test_invalid_arguments():
    with pytest.raises(ValueError):
        MicroBatcher(0, 10)
    with pytest.raises(ValueError):
        MicroBatcher(1, -1)
