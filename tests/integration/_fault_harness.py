"""Fault scenarios against real servers: SIGKILLed workers, broker/Redis/S3 outages, rebalances under load.

Used by ``tests/integration/test_faults.py`` (small volumes, bounded in time) and ``bench/faults.py`` /
``bench/soak.py`` (larger volumes, the README's figures). Everything is judged by behaviour only, so the checks keep
guarding a reworked (pipelined) worker loop: every frame that was sent ends with a result record on ``results`` and
exactly one Redis hash and stream entry per frame id; duplicates on the topic are counted (at-least-once replays),
never required to be zero.

The servers are this harness's own (``FaultStack``), not the test session's: stopping the broker here must not
break other tests. The services run as real subprocesses (``python -m services.<name>``) so they can be SIGKILLed
and their health endpoints, logs and memory read from outside, as an operator would.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2

from devtools import localstack as ls
from services._kafka import make_consumer, make_producer
from services._object_store import open_object_store
from services._redis import InspectionStore, connect
from services.contracts.frames import Frame
from services.contracts.results import InspectionResult, parse_results_record
from tests.services._helpers import FAST_GROUP, StreamEnv, jpeg, make_frame, texture

REPO = Path(__file__).resolve().parents[2]
PREFIXES = {"worker": "WORKER_", "alerter": "ALERTER_", "ingestor": "INGESTOR_"}


# ----------------------------------------------------------------------------------------------- servers


def bench_workspace(prefix: str, bundle: Path | None) -> tuple[Path, Path, Path, FaultStack]:
    """What ``bench/faults.py`` and ``bench/soak.py`` start from: a temp dir, its log dir, the bundle (a tiny 64 px
    one fitted there when None) and started servers (the caller stops them)."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=prefix))
    if bundle is None:
        from ddad_core.testing import make_tiny_bundle

        bundle = make_tiny_bundle(work / "bundle", image_size=64, seed=0)
    return work, work / "logs", bundle, FaultStack(work / "servers").start()


class FaultStack:
    """Kafka, a persistent Redis and s3proxy of our own, each restartable on the same port with its data."""

    def __init__(self, workdir: Path, frames_partitions: int = 4) -> None:
        self.workdir = Path(workdir)
        self.frames_partitions = frames_partitions
        self.bucket = "faults"
        self.kafka: ls.KafkaHandle | None = None
        self.redis: ls.RedisHandle | None = None
        self.s3: ls.S3Handle | None = None

    def start(self) -> FaultStack:
        # Started one after the other from the calling (main) thread: PR_SET_PDEATHSIG ties each server's life to
        # the thread that started it.
        try:
            self.kafka = ls.start_kafka(self.workdir / "kafka", num_partitions=self.frames_partitions)
            self.redis = ls.start_redis(self.workdir / "redis", persistent=True)
            self.s3 = ls.start_s3(self.workdir / "s3")
            self.s3.create_bucket(self.bucket)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for h in (self.kafka, self.s3, self.redis):
            if h is not None:
                h.stop()

    def server(self, name: str) -> ls.ServerHandle:
        return {"kafka": self.kafka, "redis": self.redis, "s3": self.s3}[name]

    def env(self, frames_partitions: int | None = None) -> StreamEnv:
        """A fresh topic prefix / key prefix / bucket prefix on these servers, topics created."""
        env = StreamEnv(self.kafka.bootstrap_servers, self.redis.url, "", self.s3.client_kwargs(),
                        frames_partitions=frames_partitions or self.frames_partitions)
        env.object_store_url = f"s3://{self.bucket}/{env.prefix}"
        env.create_topics()
        return env

    def log_tail(self) -> str:
        return "\n".join(h.log_tail(15) for h in (self.kafka, self.redis, self.s3) if h is not None)


# ----------------------------------------------------------------------------------------------- services


def service_env(service: str, settings: dict[str, Any]) -> dict[str, str]:
    """The process environment of a service: ``<PREFIX>_<FIELD>`` for each setting, other service vars removed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(PREFIXES.values()))}
    for name, value in settings.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, dict | list):
            value = json.dumps(value)
        env[f"{PREFIXES[service]}{name.upper()}"] = str(value)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def common_settings(env: StreamEnv) -> dict[str, Any]:
    return {**env.common(), "log_level": "INFO", "log_json": True, "connect_timeout_s": 10}


def worker_settings(env: StreamEnv, bundle: Path, **kw: Any) -> dict[str, Any]:
    return {**common_settings(env), "bundle_path": str(bundle), "group_id": f"{env.prefix}-worker",
            "max_batch_size": 4, "max_queue_delay_ms": 50, "max_frame_age_ms": 0, "warmup": False, "device": "cpu",
            "decode_threads": 2, "sink_threads": 2, "lag_interval_s": 2, **FAST_GROUP, **kw}


def alerter_settings(env: StreamEnv, bundle: Path, **kw: Any) -> dict[str, Any]:
    return {**common_settings(env), "bundle_path": str(bundle), "group_id": f"{env.prefix}-alerter",
            "overrides_refresh_s": 1.0, **FAST_GROUP, **kw}


def ingestor_settings(env: StreamEnv, camera_id: str, source: Path, **kw: Any) -> dict[str, Any]:
    return {**common_settings(env), "camera_id": camera_id, "source": str(source), **kw}


class ServiceProcess:
    """One service as a subprocess (its own process group), with its HTTP port, log file and memory readings."""

    def __init__(self, service: str, settings: dict[str, Any], log_path: Path, name: str | None = None) -> None:
        self.service = service
        self.name = name or service
        self.port = ls.free_port()
        self.settings = {**settings, "http_port": self.port}
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", f"services.{self.service}"], cwd=REPO,
                                         env=service_env(self.service, self.settings), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def http(self, path: str, timeout_s: float = 2.0) -> tuple[int | None, str]:
        """``(status, body)`` of a GET on the service's HTTP port; ``(None, error)`` when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout_s) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (OSError, urllib.error.URLError) as exc:
            return None, repr(exc)

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Seconds until ``/readyz`` answered 200 (raises with the log tail if the process died or timed out)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.http("/readyz")[0] == 200:
                return time.monotonic() - self.started_at
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready within {timeout_s:.0f} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no drain, no commit, no goodbye to the group."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (drain, commit, leave the group); SIGKILL after ``timeout_s``. Returns the exit status."""
        if self.proc is None:
            return None
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def rss_kb(self) -> int:
        """Resident memory of the process now (``VmRSS``), 0 once it is gone."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines (optionally only those with ``event == name``)."""
        out = []
        for line in self.text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if name is None or rec.get("event") == name:
                out.append(rec)
        return out

    def log_tail(self, lines: int = 30) -> str:
        return f"--- {self.log_path} ---\n" + "\n".join(self.text().splitlines()[-lines:])


# ----------------------------------------------------------------------------------------------- frames and checks


def frames_for(cameras: Iterable[str], per_camera: int, tag: str, size: int = 64) -> list[Frame]:
    """Distinct, valid frames (ids carry ``tag``), interleaved across cameras."""
    cams = list(cameras)
    return [Frame(frame_id=f"{cam}-{tag}-{i:05d}", camera_id=cam, sequence=i, encoding="jpeg", width=size,
                  height=size, image=jpeg(texture(i * 7 + j, size)), captured_at=datetime.now(UTC))
            for i in range(per_camera) for j, cam in enumerate(cams)]


def produce(env: StreamEnv, frames: list[Frame], rate_fps: float = 0.0) -> None:
    """Produce frames (key camera id), optionally paced, then flush."""
    producer = make_producer(env.kafka)
    period = 1.0 / rate_fps if rate_fps > 0 else 0.0
    start = time.monotonic()
    for i, f in enumerate(frames):
        if period:
            time.sleep(max(0.0, start + i * period - time.monotonic()))
        producer.send(env.topics.frames, key=f.camera_id.encode(), value=f.to_bytes())
    producer.flush(60)
    producer.close()


def image_folder(path: Path, count: int, size: int = 64) -> Path:
    """A folder of ``count`` PNG textures for an ingestor."""
    path.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(path / f"good_{i:04d}.png"), texture(1000 + i, size))
    return path


class ResultsLog:
    """Every record of ``results`` from the beginning (own group), accumulated across calls."""

    def __init__(self, env: StreamEnv, topic: str | None = None) -> None:
        self.consumer = make_consumer(env.kafka, f"{env.prefix}-check-{uuid.uuid4().hex[:6]}", **FAST_GROUP)
        self.consumer.subscribe([topic or env.topics.results])
        self.records: list[Any] = []

    def read(self, until: Callable[[list[Any]], bool], timeout_s: float) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not until(self.records):
            for recs in self.consumer.poll(timeout_ms=500).values():
                self.records.extend(recs)
        return self.records

    def frame_ids(self, match: Callable[[str], bool] = lambda _: True) -> collections.Counter:
        ids = collections.Counter()
        for r in self.records:
            result = parse_results_record(r.value)
            if isinstance(result, InspectionResult) and match(result.frame_id):
                ids[result.frame_id] += 1
        return ids

    def close(self) -> None:
        self.consumer.close()


@dataclass
class Outcome:
    """One scenario's figures (the README's table rows)."""

    scenario: str
    sent: int  # frames acknowledged by the brokers
    recorded: int = 0  # distinct frame ids with a result on `results` and one Redis record
    lost: int = 0  # sent, but no result record
    duplicated: int = 0  # result records on `results` beyond one per frame id (replays; Redis holds one)
    dlq: int = 0
    dropped: int = 0  # dropped by a documented policy (the ingestor's buffer, ...), each counted
    recovery_s: float | None = None  # fault over (server back / worker restarted) -> every sent frame recorded
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return asdict(self)


def redis_check(env: StreamEnv, ids_by_camera: dict[str, set[str]]) -> tuple[int, int]:
    """``(frames with a Redis hash, duplicate stream entries)`` over the given frame ids."""
    store = InspectionStore(connect(env.redis_url), prefix=env.prefix)
    hashes = sum(1 for cam, ids in ids_by_camera.items() for fid in ids if store.get(cam, fid))
    dupes = 0
    for cam, ids in ids_by_camera.items():
        seen = collections.Counter(e["frame_id"] for e in store.recent(cam, 100_000) if e["frame_id"] in ids)
        dupes += sum(c - 1 for c in seen.values())
    store.client.close()
    return hashes, dupes


def judge(name: str, env: StreamEnv, log: ResultsLog, expected: dict[str, set[str]], since: float,
          timeout_s: float, **extra: Any) -> Outcome:
    """Read results until every expected frame id has one (or ``timeout_s``), then count, check Redis, and time.

    ``since``: monotonic time the fault ended; ``recovery_s`` runs from there to the moment the last expected result
    was read.
    """
    wanted = {fid for ids in expected.values() for fid in ids}
    log.read(lambda _: wanted <= set(log.frame_ids()), timeout_s)
    got = log.frame_ids(lambda fid: fid in wanted)
    done = time.monotonic()
    hashes, stream_dupes = redis_check(env, expected)
    outcome = Outcome(name, sent=len(wanted), recorded=min(len(got), hashes), lost=len(wanted - set(got)),
                      duplicated=sum(c - 1 for c in got.values()),
                      recovery_s=round(done - since, 1) if wanted <= set(got) else None,
                      extra={"redis_hashes": hashes, "redis_stream_duplicates": stream_dupes, **extra})
    return outcome


def ids_by_camera(frames: Iterable[Frame]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = collections.defaultdict(set)
    for f in frames:
        out[f.camera_id].add(f.frame_id)
    return dict(out)


# ----------------------------------------------------------------------------------------------- scenarios


def wait_events(proc: ServiceProcess, name: str, count: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(proc.events(name)) >= count:
            return True
        if not proc.alive:
            return False
        time.sleep(0.01)
    return False


def sigkill_worker(stack: FaultStack, bundle: Path, logs: Path, phase: str, per_camera: int = 12,
                   cameras: int = 4, timeout_s: float = 180.0) -> Outcome:
    """SIGKILL the worker in the middle of a batch, restart it, and check every frame got exactly one result.

    ``phase``: ``inference`` (killed a few ms after a batch finished, while the next one is in the model) or
    ``sinks`` (the object store is frozen with SIGSTOP, so the batch in flight hangs in its mask writes; killed
    there, then the store is thawed).
    """
    env = stack.env()
    frames = frames_for([f"k{c}" for c in range(cameras)], per_camera, f"kill-{phase}")
    produce(env, frames)
    log = ResultsLog(env)
    first = ServiceProcess("worker", worker_settings(env, bundle), logs / f"worker-kill-{phase}-1.log").start()
    try:
        if not wait_events(first, "batch_done", 2, timeout_s):
            raise RuntimeError(f"worker never finished two batches:\n{first.log_tail()}")
        if phase == "sinks":
            stack.s3.pause()
            time.sleep(2.0)  # the next batch infers (~0.1-0.5 s) and then hangs in its first mask write
            batches_before = len(first.events("batch_done"))
            first.kill()
            stack.s3.resume()
        else:
            time.sleep(0.03)
            batches_before = len(first.events("batch_done"))
            first.kill()
    finally:
        if stack.s3.running:
            stack.s3.resume()
        first.kill()
    killed_at = time.monotonic()
    partial = len(log.read(lambda _: False, 2.0))
    second = ServiceProcess("worker", worker_settings(env, bundle), logs / f"worker-kill-{phase}-2.log").start()
    try:
        outcome = judge(f"worker SIGKILL during {phase}", env, log, ids_by_camera(frames), killed_at, timeout_s,
                        batches_before_kill=batches_before, records_before_restart=partial)
    finally:
        second.terminate()
        log.close()
    outcome.extra["restart_exit"] = second.proc.returncode
    return outcome


@dataclass
class Pipeline:
    """A worker and an alerter running on one env (shared by the outage scenarios)."""

    env: StreamEnv
    worker: ServiceProcess
    alerter: ServiceProcess

    @classmethod
    def start(cls, stack: FaultStack, bundle: Path, logs: Path, ready_timeout_s: float = 120.0,
              **worker_kw: Any) -> Pipeline:
        env = stack.env()
        p = cls(env, ServiceProcess("worker", worker_settings(env, bundle, **worker_kw), logs / "worker-outages.log"),
                ServiceProcess("alerter", alerter_settings(env, bundle), logs / "alerter-outages.log"))
        p.worker.start()
        p.alerter.start()
        try:
            p.worker.wait_ready(ready_timeout_s)
            p.alerter.wait_ready(ready_timeout_s)
        except BaseException:
            p.stop()  # a service left running would outlive the servers it was started against
            raise
        return p

    def stop(self) -> dict[str, int | None]:
        return {"worker": self.worker.terminate(), "alerter": self.alerter.terminate()}


class HealthWatch:
    """Polls ``/readyz`` of some services every 0.5 s on a thread; keeps ``(t, name, status, body)``."""

    def __init__(self, services: list[ServiceProcess]) -> None:
        self.services = services
        self.samples: list[tuple[float, str, int | None, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="health-watch")

    def _run(self) -> None:
        while not self._stop.is_set():
            for s in self.services:
                code, body = s.http("/readyz", timeout_s=1.0)
                self.samples.append((time.monotonic(), s.name, code, body.strip()))
            self._stop.wait(0.5)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def saw(self, name: str, t0: float, t1: float, code: int | None, text: str = "") -> bool:
        return any(n == name and t0 <= t <= t1 and c == code and text in b for t, n, c, b in self.samples)


#: Ingestor limits during the broker outage: small enough that 30 s without acknowledgements fill them, so the
#: capture buffer's drop policy really runs (and every drop must be counted).
SMALL_INGESTOR_BUFFERS = {"max_inflight_frames": 16, "buffer_frames": 8, "send_timeout_ms": 1000}


def outage(stack: FaultStack, pipeline: Pipeline, server: str, logs: Path, outage_s: float = 30.0,
           fps: float = 4.0, lead_s: float = 3.0, tail_s: float = 4.0, timeout_s: float = 120.0,
           claim_checks: int = 8) -> Outcome:
    """Stop one server for ``outage_s`` while an ingestor streams, restart it, and check nothing acknowledged was lost.

    The ingestor runs for ``lead_s + outage_s + tail_s`` at ``fps`` (with ``SMALL_INGESTOR_BUFFERS`` when the broker
    is the one stopped). For the object-store outage, ``claim_checks`` frames whose images are in the bucket are
    produced just before the store goes away, so the worker has to fetch claim checks during the outage too.
    Returns the figures, the health observations and the ingestor's counts.
    """
    env, cam = pipeline.env, f"o-{server}-{uuid.uuid4().hex[:4]}"
    folder = image_folder(logs / f"frames-{cam}", 16)
    total = int(fps * (lead_s + outage_s + tail_s))
    limits = SMALL_INGESTOR_BUFFERS if server == "kafka" else {}
    ingestor = ServiceProcess("ingestor", ingestor_settings(env, cam, folder, loop=True, fps=fps, max_frames=total,
                                                            encoding="png", **limits), logs / f"ingestor-{cam}.log")
    claim_frames: list[Frame] = []
    if server == "s3" and claim_checks:
        store = open_object_store(env.object_store_url, {k: v for k, v in stack.s3.client_kwargs().items()})
        for i in range(claim_checks):
            f = frames_for([f"{cam}-cc"], 1, f"cc{i}")[0]
            uri = store.put(f"frames/{f.camera_id}/{f.frame_id}.jpg", f.image, "image/jpeg")
            claim_frames.append(f.model_copy(update={"image": None, "image_uri": uri}))
    handle = stack.server(server)
    log = ResultsLog(env)
    pids = (pipeline.worker.pid, pipeline.alerter.pid)
    with HealthWatch([pipeline.worker, pipeline.alerter, ingestor]) as watch:
        ingestor.start()
        ingestor.wait_ready(60)
        time.sleep(lead_s)
        if claim_frames:
            produce(env, claim_frames)
        down_at = time.monotonic()
        handle.stop()
        time.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
        handle.restart()
        up_at = time.monotonic()
        ingestor.wait(lead_s + outage_s + tail_s + 120)
        stopped = (ingestor.events("ingestor_stopped") or [{}])[-1]
        sent = int(stopped.get("sent", 0))
        ingestor_ids = {cam: set()}  # the ingestor's ids are known only from results: judged by count below
        wanted = sent + len(claim_frames)
        log.read(lambda _: len(log.frame_ids(lambda fid: fid.startswith(cam))) >= wanted, timeout_s)
        caught_up = time.monotonic()
        # Readiness may follow the data by one periodic broker check (WORKER_LAG_INTERVAL_S): wait for it, bounded.
        ready_by = caught_up + 30.0
        while time.monotonic() < ready_by and not all(
                any(n == name and t >= caught_up and c == 200 for t, n, c, _ in watch.samples)
                for name in ("worker", "alerter")):
            time.sleep(0.5)
        time.sleep(1.0)  # one more health sample after recovery
    got = log.frame_ids(lambda fid: fid.startswith(cam))
    log.read(lambda _: False, 1.0)
    got = log.frame_ids(lambda fid: fid.startswith(cam))
    for fid in got:
        ingestor_ids.setdefault(fid.rsplit("-", 2)[0] if fid.startswith(f"{cam}-cc") else cam, set()).add(fid)
    ingestor_ids = {c: ids for c, ids in ingestor_ids.items() if ids}
    hashes, stream_dupes = redis_check(env, ingestor_ids)
    dropped = sum(int(stopped.get(k, 0)) for k in ("buffer_dropped", "send_failed", "claim_check_failed",
                                                   "broker_timeout"))
    reported = {name: watch.saw(name, down_at, up_at + 5.0, 503) for name in ("worker", "alerter", "ingestor")}
    recovered = {name: any(n == name and t >= caught_up and c == 200 for t, n, c, _ in watch.samples)
                 for name in ("worker", "alerter")}
    lost = max(0, wanted - len(got))
    return Outcome(
        f"{server} down {outage_s:.0f} s", sent=wanted, recorded=min(len(got), hashes), lost=lost,
        duplicated=sum(c - 1 for c in got.values()), dropped=dropped,
        recovery_s=round(caught_up - up_at, 1) if not lost else None,
        extra={"captured": int(stopped.get("captured", -1)), "ingestor": {k: stopped.get(k) for k in (
            "sent", "buffer_dropped", "send_failed", "claim_check_failed", "broker_timeout", "unacknowledged")},
            "ingestor_exit": ingestor.proc.returncode, "claim_check_frames": len(claim_frames),
            "redis_hashes": hashes, "redis_stream_duplicates": stream_dupes, "readyz_503_during": reported,
            "readyz_200_after": recovered,
            "same_pids": (pipeline.worker.pid, pipeline.alerter.pid) == pids and pipeline.worker.alive
            and pipeline.alerter.alive})


def _log_time(rec: dict[str, Any]) -> float:
    return datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()


def _assigned_after(proc: ServiceProcess, wall: float, timeout_s: float) -> float | None:
    """Seconds from ``wall`` (POSIX time) to the first ``partitions_assigned`` line of ``proc`` after it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        after = [_log_time(r) for r in proc.events("partitions_assigned") if r.get("partitions")
                 and _log_time(r) >= wall]
        if after:
            return round(min(after) - wall, 2)
        time.sleep(0.1)
    return None


def rebalance(stack: FaultStack, bundle: Path, logs: Path, rate_fps: float = 8.0, phase_s: float = 6.0,
              timeout_s: float = 180.0) -> Outcome:
    """Consumer-group changes under a steady load: B joins, B leaves (SIGTERM), C joins, C is SIGKILLed.

    The settle time of each change is the time from the event to the first ``partitions_assigned`` line of the
    member that takes over (the joiner; the survivor after a leave or a kill: for a kill that includes the group's
    session timeout, 6 s here). Duplicates are counted: frames replayed by the new owner after a SIGKILL.
    """
    env = stack.env()
    cameras = [f"r{c}" for c in range(8)]
    per_camera = int(rate_fps * (5 * phase_s + 10) / len(cameras)) + 1
    frames = frames_for(cameras, per_camera, "rebal")
    a = ServiceProcess("worker", worker_settings(env, bundle), logs / "worker-rebalance-a.log", "worker-a").start()
    a.wait_ready()
    log = ResultsLog(env)
    producer = threading.Thread(target=produce, args=(env, frames, rate_fps), daemon=True, name="load")
    producer.start()
    settle: dict[str, float | None] = {}
    members = [a]
    try:
        time.sleep(phase_s)
        b = ServiceProcess("worker", worker_settings(env, bundle), logs / "worker-rebalance-b.log", "worker-b")
        members.append(b)
        t = time.time()
        b.start()
        settle["join_s"] = _assigned_after(b, t, 120)  # includes the new process's start-up (imports, bundle)
        time.sleep(phase_s)
        t = time.time()
        b.terminate()
        settle["leave_s"] = _assigned_after(a, t, 60)
        c = ServiceProcess("worker", worker_settings(env, bundle), logs / "worker-rebalance-c.log", "worker-c")
        members.append(c)
        t = time.time()
        c.start()
        settle["join_again_s"] = _assigned_after(c, t, 120)
        time.sleep(phase_s)
        t = time.time()
        c.kill()
        killed_at = time.monotonic()
        settle["sigkill_s"] = _assigned_after(a, t, 60)
        producer.join(timeout_s)
        outcome = judge("rebalance under load (join, leave, SIGKILL)", env, log, ids_by_camera(frames), killed_at,
                        timeout_s, settle=settle, rate_fps=rate_fps)
    finally:
        for m in members:
            m.terminate()
        log.close()
    outcome.extra["inferred_by"] = {m.name: sum(int(e.get("inferred", 0)) for e in m.events("batch_done"))
                                    for m in members}
    return outcome


# ----------------------------------------------------------------------------------------------- hostile input

MAX_RECORD = 512 * 1024  # WORKER_MAX_RECORD_BYTES in the hostile-input scenarios


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width x height`` RGB with a few rows of zeros: kB on the wire, GB decoded."""
    rows = zlib.compress((b"\x00" + b"\x00" * 3 * width) * 4, 9)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", rows) + _chunk(b"IEND", b""))


def jpeg_bomb(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is rewritten to claim ``width x height``."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def envelope(header: dict, payload: bytes = b"", version: int = 1) -> bytes:
    raw = json.dumps(header).encode()
    return b"DDF" + bytes([version]) + struct.pack(">I", len(raw)) + raw + payload


def hostile_records(bucket: str, prefix: str, store) -> dict[str, tuple[bytes | None, str]]:
    """name -> (record value, expected DLQ reason)."""
    good = make_frame(900, camera_id="h1")
    header = json.loads(good.model_dump_json(exclude={"image"}))
    claim = good.model_copy(update={"image": None})
    inside = store.put(f"frames/h1/{good.frame_id}.jpg", good.image, "image/jpeg")
    cases: dict[str, tuple[bytes | None, str]] = {
        "truncated_jpeg": (good.model_copy(update={"image": good.image[: len(good.image) // 2]}).to_bytes(),
                           "undecodable"),
        "corrupt_jpeg": (good.model_copy(update={"image": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4}).to_bytes(),
                         "undecodable"),
        "png_bytes_sent_as_jpeg": (good.model_copy(update={"image": png_bomb(64, 64)}).to_bytes(), "undecodable"),
        "zero_bytes": (b"", "bad_envelope"),
        "null_value": (None, "bad_envelope"),
        "jpeg_bomb_30000_header_lies": (good.model_copy(update={"image": jpeg_bomb(good.image, 30000, 30000)})
                                        .to_bytes(), "too_large"),
        "jpeg_bomb_30000_header_honest": (good.model_copy(update={
            "image": jpeg_bomb(good.image, 30000, 30000), "width": 30000, "height": 30000}).to_bytes(), "too_large"),
        "png_bomb_30000": (good.model_copy(update={"image": png_bomb(30000, 30000), "encoding": "png"}).to_bytes(),
                           "too_large"),
        "png_bomb_12000_under_pil_guard": (good.model_copy(update={"image": png_bomb(12000, 12000),
                                                                   "encoding": "png"}).to_bytes(), "too_large"),
        "envelope_version_2": (envelope(header, good.image, version=2), "unsupported_schema"),
        "schema_version_2": (envelope({**header, "schema_version": 2}, good.image), "invalid_frame"),
        "missing_fields": (envelope({k: v for k, v in header.items() if k not in ("captured_at", "width")},
                                    good.image), "invalid_frame"),
        "unknown_encoding": (envelope({**header, "encoding": "webp"}, good.image), "invalid_frame"),
        "camera_id_markup": (envelope({**header, "camera_id": "<img src=x onerror=alert(1)>"}, good.image),
                             "invalid_frame"),
        "camera_id_control_chars": (envelope({**header, "camera_id": "cam\x1b[2J\x00"}, good.image),
                                    "invalid_frame"),
        "source_control_chars": (envelope({**header, "source": "ok\r\nFAKE LOG LINE"}, good.image), "invalid_frame"),
        "claim_other_bucket": (claim.model_copy(update={"image_uri": f"s3://not-{bucket}/frames/x.jpg"}).to_bytes(),
                               "claim_check_refused"),
        "claim_outside_prefix": (claim.model_copy(update={"image_uri": f"s3://{bucket}/elsewhere/x.jpg"}).to_bytes(),
                                 "claim_check_refused"),
        "claim_dotdot": (claim.model_copy(update={"image_uri": f"s3://{bucket}/{prefix}/../x.jpg"}).to_bytes(),
                         "claim_check_refused"),
        "claim_local_path": (claim.model_copy(update={"image_uri": "file:///etc/passwd"}).to_bytes(),
                             "claim_check_refused"),
        "claim_other_scheme": (claim.model_copy(update={
            "image_uri": "http://169.254.169.254/latest/meta-data/"}).to_bytes(), "claim_check_refused"),
        "claim_missing_object": (claim.model_copy(update={"image_uri": f"s3://{bucket}/{prefix}/frames/nope.jpg"})
                                 .to_bytes(), "claim_check_missing"),
        "oversized_record": (good.model_copy(update={"image": good.image + b"\x00" * MAX_RECORD}).to_bytes(),
                             "too_large"),
    }
    # A claim check inside the store is fine: it must *not* land in the DLQ (sent among the good frames).
    cases["_valid_claim_check"] = (claim.model_copy(update={"image_uri": inside}).to_bytes(), "")
    return cases


def hostile(stack: FaultStack, bundle: Path, logs: Path, copies: int = 10, good_frames: int = 40,
            timeout_s: float = 300.0) -> Outcome:
    """``copies`` rounds of every hostile record of ``hostile_records`` among good frames, one worker process."""
    env = stack.env()
    store = open_object_store(env.object_store_url, stack.s3.client_kwargs())
    cases = hostile_records(stack.bucket, env.prefix, store)
    good = frames_for(["g0", "g1"], good_frames // 2, "good")
    expected_dlq = {n: r for n, (_, r) in cases.items() if r}
    producer = make_producer(env.kafka, max_request_size=4 * 1024 * 1024)
    for i, f in enumerate(good):
        producer.send(env.topics.frames, key=f.camera_id.encode(), value=f.to_bytes())
        if i % max(1, len(good) // copies) == 0:
            for name, (value, _) in cases.items():
                if expected_dlq.get(name):
                    producer.send(env.topics.frames, key=f"hostile-{name}".encode(), value=value)
    producer.flush()
    producer.close()
    sent_hostile = len(expected_dlq) * len(range(0, len(good), max(1, len(good) // copies)))
    worker = ServiceProcess("worker", worker_settings(env, bundle, max_record_bytes=MAX_RECORD),
                            logs / "worker-hostile.log").start()
    started = time.monotonic()
    log, dlq = ResultsLog(env), ResultsLog(env, env.topics.frames_dlq)
    try:
        outcome = judge("hostile input among good frames", env, log, ids_by_camera(good), started, timeout_s)
        dlq.read(lambda recs: len(recs) >= sent_hostile, 60)
    finally:
        alive = worker.alive
        worker.terminate()
        log.close()
        dlq.close()
    reasons = collections.Counter(dict(r.headers)["dlq.reason"].decode() for r in dlq.records)
    wrong = [r.key.decode() for r in dlq.records
             if dict(r.headers)["dlq.reason"].decode() != expected_dlq.get(r.key.decode().removeprefix("hostile-"))]
    outcome.dlq = len(dlq.records)
    outcome.extra.update(hostile_sent=sent_hostile, reasons=dict(reasons), wrong_reason=wrong,
                         worker_alive=alive)
    outcome.recovery_s = None
    return outcome
