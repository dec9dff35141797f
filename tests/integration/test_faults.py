"""Fault suite: crashes and outages against real servers of this module's own (marker ``integration``).

One Kafka, persistent Redis and s3proxy are started for the module (``FaultStack``; not the session's, so stopping
the broker here breaks no other test) and every service runs as a real subprocess. Judged by behaviour only (see
``_fault_harness.py``): every frame that was sent ends with a result record and exactly one Redis record; replays may
duplicate records on ``results``, never in Redis; nothing acknowledged is lost.

Budget on the 2-core reference machine: about 4-5 minutes in all, most of it the three 30 s outages, which share one
worker and alerter (``DDAD_FAULT_OUTAGE_S`` shortens them for a quick local run).
"""

from __future__ import annotations

import os

import pytest

from tests.integration._fault_harness import FaultStack, Pipeline, outage, rebalance, sigkill_worker

pytestmark = [pytest.mark.integration]

OUTAGE_S = float(os.environ.get("DDAD_FAULT_OUTAGE_S", "30"))
BATCH = 4  # the harness's max_batch_size


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = FaultStack(tmp_path_factory.mktemp("fault-servers")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from ddad_core.testing import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("fault-bundle") / "tiny", image_size=64, seed=0)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("fault-logs")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("phase", ["inference", "sinks"])
def test_worker_sigkill_mid_batch_then_restart_every_frame_once(stack, bundle, logs, phase):
    o = sigkill_worker(stack, bundle, logs, phase, per_camera=10, cameras=4)
    assert o.extra["batches_before_kill"] >= 2
    assert o.extra["records_before_restart"] < o.sent, "the worker finished before it was killed"
    assert o.lost == 0, o
    assert o.recorded == o.sent, o  # one Redis hash per frame id ...
    assert o.extra["redis_stream_duplicates"] == 0, o  # ... and one stream entry
    # Only the uncommitted batch(es) in flight at the kill are replayed (a batch being inferred, or written).
    assert o.duplicated <= 2 * BATCH, o
    assert o.extra["restart_exit"] == 0


@pytest.fixture(scope="module")
def pipeline(stack, bundle, logs):
    p = Pipeline.start(stack, bundle, logs)
    yield p
    exits = p.stop()
    assert exits == {"worker": 0, "alerter": 0}, (exits, p.worker.log_tail(), p.alerter.log_tail())
    # a process of its own: the start-up heap (imports, the model) left the collector's generations
    assert p.worker.events("start_up_heap_frozen")[0]["objects"] > 100_000, p.worker.log_tail()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("server", ["redis", "s3", "kafka"])
def test_server_outage_loses_nothing_and_is_reported(stack, pipeline, logs, server):
    o = outage(stack, pipeline, server, logs, outage_s=OUTAGE_S)
    tails = "\n".join(p.log_tail(15) for p in (pipeline.worker, pipeline.alerter))
    assert o.extra["same_pids"], f"a service crashed or restarted:\n{tails}"
    assert o.extra["ingestor_exit"] == 0, o
    assert o.extra["ingestor"]["unacknowledged"] == 0, o
    # Every captured frame was acknowledged or dropped by a counted, documented reason ...
    assert o.extra["captured"] == o.extra["ingestor"]["sent"] + o.dropped, o
    # ... and every acknowledged one has exactly one result record in Redis (and at least one on `results`).
    assert o.lost == 0 and o.recorded == o.sent, (o, tails)
    assert o.extra["redis_stream_duplicates"] == 0, o
    if server != "kafka":
        assert o.dropped == 0, o  # the broker was up: the ingestor had no reason to drop anything
    else:  # 30 s without acknowledgements overflow the (deliberately small) ingestor buffers: drops, all counted
        counts = o.extra["ingestor"]
        assert o.dropped > 0 and counts["send_failed"] == counts["claim_check_failed"] == 0, o
        assert counts["buffer_dropped"] > 0, o
    # Health endpoints: the worker says which dependency is down, and is ready again afterwards.
    assert o.extra["readyz_503_during"]["worker"], (o, tails)
    assert o.extra["readyz_200_after"]["worker"] and o.extra["readyz_200_after"]["alerter"], (o, tails)
    if server == "kafka":
        assert o.extra["readyz_503_during"]["ingestor"] and o.extra["readyz_503_during"]["alerter"], (o, tails)
    if server == "s3":
        assert o.extra["claim_check_frames"] > 0
    assert o.recovery_s is not None and o.recovery_s < 90, o


@pytest.mark.timeout(360)
def test_rebalance_under_load_join_leave_and_sigkill(stack, bundle, logs):
    o = rebalance(stack, bundle, logs, rate_fps=6.0, phase_s=5.0)
    assert o.lost == 0 and o.recorded == o.sent, o
    assert o.extra["redis_stream_duplicates"] == 0, o  # replays after the SIGKILL overwrite, never duplicate
    settle = o.extra["settle"]
    assert all(v is not None for v in settle.values()), o
    assert settle["leave_s"] < 30 and settle["sigkill_s"] < 30, o  # a SIGKILL costs about one session timeout
    inferred = o.extra["inferred_by"]
    assert inferred["worker-a"] > 0 and inferred["worker-b"] > 0, o  # the joiner really took partitions
