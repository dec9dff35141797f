"""Streaming benchmark: end-to-end throughput through Kafka vs. the same pipeline offline, and p99 latency.

Flow step: all of them, measured. One run does, on the same machine and the same bundle:

1. offline: ``DDADPipeline`` on pre-decoded frames in batches of ``--max-batch-size`` (frames/s and the compute
   time of one full batch);
2. streaming, saturated: a backlog of ``--frames`` JPEG frames in Kafka, one worker process (``python -m
   services.worker``, same batch size) drains it; throughput = results / (last processed_at - first processed_at of
   the drain), i.e. everything the product adds: Kafka consume, decode, masks/heatmaps, Redis, produce, flush, commit;
3. streaming at an offered load (``--load`` x the offline throughput, spread over ``--cameras`` cameras): p99 of
   capture -> result latency, compared with the target ``max_queue_delay + 2 x batch compute time``.

Targets (services issue): streaming >= 90 % of offline; p99 <= max queue delay + 2 batch compute times.

    python bench/bench_streaming.py --bundle path/to/bundle [--frames 256] [--max-batch-size 8]

Without ``--bundle`` a model is fitted first with ``ddad_core``'s fit on generated data (``--preset cpu`` by
default; training quality does not change throughput, so ``--epochs 1`` is fine). Servers come from
``services._localstack`` unless KAFKA_BOOTSTRAP_SERVERS and REDIS_URL point at running ones.
"""

from __future__ import annotations

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()  # passive OpenMP waiting, one thread per usable core; before torch (ddad_core/runtime.py)

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devtools.demo import fabric_texture, local_stack, plant_defect, prepare_data  # noqa: E402
from services._kafka import default_topic_specs, ensure_topics, make_consumer, make_producer  # noqa: E402
from services.contracts.frames import Frame  # noqa: E402
from services.contracts.results import InspectionResult  # noqa: E402
from services.contracts.topics import Topics  # noqa: E402
from services.ingestor.publish import encode_jpeg  # noqa: E402


def make_frames(n: int, size: int, cameras: int, seed: int = 0) -> list[tuple[str, np.ndarray, bytes]]:
    """(camera_id, BGR image, JPEG) triples; about one frame in ten carries a planted defect."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = fabric_texture(rng, size)
        if i % 10 == 3:
            img = plant_defect(img, rng)[0]
        out.append((f"cam-{i % cameras + 1}", img, encode_jpeg(img, 90)))
    return out


def offline_throughput(detector, frames, batch: int, rounds: int) -> dict:
    """Frames/s of the pipeline alone on decoded RGB frames, and the time of one full batch."""
    images = [img[..., ::-1].copy() for _, img, _ in frames]
    detector(images[:batch])  # warm-up
    times = []
    done = 0
    t_all = time.perf_counter()
    for r in range(rounds):
        chunk = [images[(r * batch + k) % len(images)] for k in range(batch)]
        t0 = time.perf_counter()
        detector(chunk)
        times.append(time.perf_counter() - t0)
        done += batch
    total = time.perf_counter() - t_all
    return {
        "frames_per_s": done / total,
        "batch_compute_s_median": float(np.median(times)),
        "batch_compute_s_p90": float(np.percentile(times, 90)),
        "batches": rounds,
    }


def start_worker(
    bundle: Path,
    stack: dict,
    topics: Topics,
    objects: Path,
    batch: int,
    delay_ms: float,
    logdir: Path,
    device: str,
    threads: int | None = None,
    name: str = "worker",
    compile: bool = False,
    pipeline_depth: int | None = None,
) -> tuple[subprocess.Popen, int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "WORKER_BUNDLE_PATH": str(bundle),
        "WORKER_KAFKA_BOOTSTRAP_SERVERS": stack["kafka"],
        "WORKER_REDIS_URL": stack["redis"],
        "WORKER_TOPIC_PREFIX": topics.prefix,
        "WORKER_REDIS_KEY_PREFIX": topics.prefix,
        "WORKER_OBJECT_STORE_URL": objects.as_uri(),
        "WORKER_MAX_BATCH_SIZE": str(batch),
        "WORKER_MAX_QUEUE_DELAY_MS": str(delay_ms),
        "WORKER_MAX_FRAME_AGE_MS": "0",
        "WORKER_HTTP_PORT": str(port),
        "WORKER_DEVICE": device,
        "WORKER_GROUP_ID": f"{topics.prefix}-worker",
        "WORKER_SESSION_TIMEOUT_MS": "10000",
        "WORKER_HEARTBEAT_INTERVAL_MS": "1000",
        "WORKER_LOG_LEVEL": "WARNING",
    }
    if compile:
        env["WORKER_COMPILE"] = "true"
    if pipeline_depth is not None:
        env["WORKER_PIPELINE_DEPTH"] = str(pipeline_depth)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    log = open(logdir / f"{name}-{topics.prefix}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.worker"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return proc, port
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("worker not ready")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def produce(kafka: dict, topic: str, frames, rate_fps: float | None, size: int) -> None:
    """Produce frames now (captured_at = send time), either as a backlog or paced at ``rate_fps`` in total."""
    producer = make_producer(kafka, linger_ms=2)
    period = 1.0 / rate_fps if rate_fps else 0.0
    t_next = time.monotonic()
    for i, (cam, _, jpeg) in enumerate(frames):
        if period:
            now = time.monotonic()
            if now < t_next:
                time.sleep(t_next - now)
            t_next += period
        frame = Frame(
            frame_id=f"{cam}-{uuid.uuid4().hex[:8]}-{i}",
            camera_id=cam,
            sequence=i,
            encoding="jpeg",
            width=size,
            height=size,
            image=jpeg,
            captured_at=datetime.now(UTC),
        )
        producer.send(topic, key=cam.encode(), value=frame.to_bytes())
    producer.flush()
    producer.close()


def collect(
    kafka: dict, topic: str, n: int, timeout_s: float, ready: threading.Event | None = None
) -> list[InspectionResult]:
    consumer = make_consumer(
        kafka, f"bench-{uuid.uuid4().hex[:8]}", session_timeout_ms=10000, heartbeat_interval_ms=1000
    )
    consumer.subscribe([topic])
    out: dict[str, InspectionResult] = {}
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=500).values():
            for rec in recs:
                r = InspectionResult.from_bytes(rec.value)
                out[r.frame_id] = r
        if ready is not None and consumer.assignment():
            ready.set()
    consumer.close()
    return list(out.values())


def ensure_bundle(args, workdir: Path) -> Path:
    if args.bundle:
        return Path(args.bundle)
    from ddad_core.fitting.fit import fit, make_configs

    data = prepare_data(workdir / "data", args.image_size, 1, 1, 0.0, args.train_images)
    out = workdir / "model"
    print(f"[bench] fitting a {args.preset} model ({args.epochs} epoch(s)) for timing only ...", flush=True)
    config, train_config = make_configs(args.preset, epochs=args.epochs, image_size=args.image_size)
    fit(
        data["train_dir"],
        out,
        config=config,
        train_config=train_config,
        backbone="mobilenetv2_100:offline",
        autoencoder="conv",
        autoencoder_epochs=2,
        tail_fit=True,  # a timing bundle: its threshold does not matter, however few images it has
        log=lambda m: print(f"[fit] {m}", flush=True),
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--train-images", type=int, default=32)
    p.add_argument("--frames", type=int, default=192)
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-queue-delay-ms", type=float, default=50.0)
    p.add_argument("--load", type=float, default=0.7, help="offered load as a share of offline throughput")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ddad-bench-streaming")
    p.add_argument("--output", type=Path, help="also write the numbers as JSON here")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="scaling: also drain with 1 and with this many worker processes (cores split between them)",
    )
    p.add_argument("--compile", action="store_true", help="workers run with WORKER_COMPILE=true")
    p.add_argument(
        "--compare-depths",
        default="",
        help="e.g. '0,1': also drain the backlog with each WORKER_PIPELINE_DEPTH, alternating, "
        "--compare-rounds times each (pipelined vs sequential worker, side by side)",
    )
    p.add_argument("--compare-rounds", type=int, default=2)
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "logs").mkdir(exist_ok=True)

    from services.worker.inference import load_detector

    bundle = ensure_bundle(args, args.workdir)
    detector = load_detector(str(bundle), args.device)
    size = int(getattr(detector, "image_size", args.image_size))
    frames = make_frames(args.frames, size, args.cameras)
    batch = args.max_batch_size
    print(f"[bench] offline: {len(frames)} frames of {size}px in batches of {batch} ...", flush=True)
    offline = offline_throughput(detector, frames, batch, rounds=max(3, args.frames // batch))
    del detector  # the worker process has its own copy; keep the cores for it

    report: dict = {
        "machine": f"{platform.node()} {os.cpu_count()} CPUs {platform.processor()}",
        "bundle": str(bundle),
        "image_size": size,
        "max_batch_size": batch,
        "max_queue_delay_ms": args.max_queue_delay_ms,
        "offline": offline,
    }
    with local_stack(args.workdir) as stack:
        kafka = {"bootstrap_servers": [stack["kafka"]], "client_id": "bench"}

        def worker_on(topics: Topics, pipeline_depth: int | None = None):
            objects, logs = args.workdir / "objects", args.workdir / "logs"
            return start_worker(
                bundle,
                stack,
                topics,
                objects,
                batch,
                args.max_queue_delay_ms,
                logs,
                args.device,
                compile=args.compile,
                pipeline_depth=pipeline_depth,
            )

        def saturated(pipeline_depth: int | None = None) -> dict:
            """Backlog first, then start the worker and time the drain."""
            topics = Topics(f"bench{uuid.uuid4().hex[:6]}")
            ensure_topics(kafka, default_topic_specs(topics, frames_partitions=args.cameras))
            produce(kafka, topics.frames, frames, None, size)
            proc, _ = worker_on(topics, pipeline_depth)
            try:
                results = collect(kafka, topics.results, len(frames), timeout_s=1800)
            finally:
                stop(proc)
            # Throughput over the drain: from the first batch's completion to the last one's, per processed frame
            # after the first batch (the first batch's start is not visible in the results).
            done = sorted(r.processed_at.timestamp() for r in results)
            first_batch = sum(1 for t in done if t == done[0])
            fps = (len(done) - first_batch) / max(1e-9, done[-1] - done[0]) if len(done) > first_batch else float("nan")
            return {
                "frames_per_s": fps,
                "results": len(results),
                "mean_batch_size": float(np.mean([r.batch_size for r in results])),
            }

        def drain_with(n_workers: int) -> dict:
            """Start ``n_workers`` on a fresh topic, let the group settle, then offer a backlog; frames/s of the
            drain (first to last result), with the machine's cores split evenly between the workers."""
            topics = Topics(f"bench{uuid.uuid4().hex[:6]}")
            ensure_topics(kafka, default_topic_specs(topics, frames_partitions=max(args.cameras, n_workers)))
            threads = max(1, (os.cpu_count() or 1) // n_workers)
            objects, logs = args.workdir / "objects", args.workdir / "logs"
            procs = [
                start_worker(
                    bundle,
                    stack,
                    topics,
                    objects,
                    batch,
                    args.max_queue_delay_ms,
                    logs,
                    args.device,
                    threads=threads,
                    name=f"worker{i}",
                    compile=args.compile,
                )[0]
                for i in range(n_workers)
            ]
            try:
                time.sleep(12)  # the group's join and first assignment (session timeout 10 s)
                produce(kafka, topics.frames, frames, None, size)
                results = collect(kafka, topics.results, len(frames), timeout_s=1800)
            finally:
                for proc in procs:
                    stop(proc)
            done = sorted(r.processed_at.timestamp() for r in results)
            fps = (len(done) - 1) / max(1e-9, done[-1] - done[0]) if len(done) > 1 else float("nan")
            return {"workers": n_workers, "threads_per_worker": threads, "frames_per_s": fps, "results": len(results)}

        # 2. saturated: the worker as configured (default pipeline depth) drains a backlog
        print("[bench] streaming (saturated): worker drains a backlog ...", flush=True)
        report["streaming_saturated"] = saturated()
        report["streaming_vs_offline"] = report["streaming_saturated"]["frames_per_s"] / offline["frames_per_s"]
        if args.compare_depths:
            depths = [int(d) for d in args.compare_depths.split(",")]
            runs: dict[int, list[float]] = {d: [] for d in depths}
            for r in range(args.compare_rounds):
                for d in depths:  # A B A B: machine noise hits both alike
                    print(f"[bench] drain with WORKER_PIPELINE_DEPTH={d} (round {r + 1}) ...", flush=True)
                    runs[d].append(saturated(d)["frames_per_s"])
            report["pipeline_depths"] = {
                str(d): {
                    "frames_per_s": fps,
                    "median": float(np.median(fps)),
                    "vs_offline": float(np.median(fps)) / offline["frames_per_s"],
                }
                for d, fps in runs.items()
            }

        # 3. offered load: frames arrive over time from several cameras; latency capture -> result
        topics = Topics(f"bench{uuid.uuid4().hex[:6]}")
        ensure_topics(kafka, default_topic_specs(topics, frames_partitions=args.cameras))
        rate = args.load * offline["frames_per_s"]
        proc, _ = worker_on(topics)
        try:
            print(f"[bench] streaming at {rate:.1f} frames/s offered ({args.load:.0%} of offline) ...", flush=True)
            ready = threading.Event()
            got: list[InspectionResult] = []
            reader = threading.Thread(
                target=lambda: got.extend(collect(kafka, topics.results, len(frames), 1800, ready))
            )
            reader.start()
            ready.wait(30)
            produce(kafka, topics.frames, frames, rate, size)
            reader.join()
        finally:
            stop(proc)
        lat = [r.latency_ms for r in got]
        bound = args.max_queue_delay_ms + 2 * offline["batch_compute_s_median"] * 1000.0
        report["offered_load"] = {
            "offered_fps": rate,
            "results": len(got),
            "mean_batch_size": float(np.mean([r.batch_size for r in got])),
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p95": float(np.percentile(lat, 95)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "target_p99_ms": bound,
        }

        if args.workers > 1:
            print(f"[bench] scaling: drain with 1 and {args.workers} workers ...", flush=True)
            one, many = drain_with(1), drain_with(args.workers)
            report["scaling"] = {"one": one, "many": many, "ratio": many["frames_per_s"] / one["frames_per_s"]}

    o, s, ol = report["offline"], report["streaming_saturated"], report["offered_load"]
    print("\n=== bench_streaming ===")
    print(
        f"machine: {report['machine']}; bundle {bundle}; {size}px; max batch {batch}; "
        f"max queue delay {args.max_queue_delay_ms} ms"
    )
    print(f"{'':34}{'frames/s':>10}")
    print(
        f"{'offline pipeline (batched)':34}{o['frames_per_s']:>10.2f}   batch compute median "
        f"{o['batch_compute_s_median'] * 1000:.0f} ms"
    )
    print(
        f"{'streaming through Kafka (drain)':34}{s['frames_per_s']:>10.2f}   = {report['streaming_vs_offline']:.0%} "
        f"of offline (target >= 90%), mean batch {s['mean_batch_size']:.1f}"
    )
    print(
        f"offered load {ol['offered_fps']:.1f} frames/s: capture->result p50 {ol['latency_ms_p50']:.0f} ms, "
        f"p95 {ol['latency_ms_p95']:.0f} ms, p99 {ol['latency_ms_p99']:.0f} ms "
        f"(target <= {ol['target_p99_ms']:.0f} ms), mean batch {ol['mean_batch_size']:.1f}"
    )
    for d, row in report.get("pipeline_depths", {}).items():
        print(
            f"{'  drain, WORKER_PIPELINE_DEPTH=' + d:34}{row['median']:>10.2f}   = {row['vs_offline']:.0%} of "
            f"offline (median of {', '.join(f'{v:.2f}' for v in row['frames_per_s'])})"
        )
    if "scaling" in report:
        sc = report["scaling"]
        one = sc["one"]
        print(
            f"scaling: 1 worker ({one['threads_per_worker']} threads) {one['frames_per_s']:.2f} frames/s, "
            f"{sc['many']['workers']} workers ({sc['many']['threads_per_worker']} threads each) "
            f"{sc['many']['frames_per_s']:.2f} frames/s: ratio {sc['ratio']:.2f}"
        )
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
