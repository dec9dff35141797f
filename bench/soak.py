"""Bounded soak: a steady offered load below capacity for ~10 minutes, RSS of every service sampled, growth reported.

An ingestor (looping image folder at ``--fps``), the worker and the alerter run as subprocesses on servers of their
own (``tests/integration/_fault_harness.py``); every ``--sample-s`` seconds the resident memory (VmRSS) of each
service is read from /proc. After the warm-up (``--warmup-s``: imports, first batches, allocator pools) the growth
per service is fitted as a straight line (least squares, MiB per 10 minutes) and also given as last minute minus
first minute (medians). At the end every acknowledged frame must have a result.

    python bench/soak.py                     # 10 minutes at 3 fps
    python bench/soak.py --duration-s 120    # a quick look
    python bench/soak.py --duration-s 3600 --tracemalloc   # an hour, and where the worker's Python heap grew

``--tracemalloc`` has the worker write a tracemalloc snapshot every ``--snapshot-s`` (``services/_memory.py``) and
prints the allocation sites that grew most between the first snapshot after the warm-up and the last one; RSS
growth that the traced heap does not show comes from native code or the C allocator.
"""

from __future__ import annotations

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration._fault_harness import (  # noqa: E402
    Pipeline,
    ResultsLog,
    ServiceProcess,
    bench_workspace,
    image_folder,
    ingestor_settings,
)


def growth(samples: list[tuple[float, int]], warmup_s: float) -> dict[str, float]:
    """Fit of RSS (KiB) over time after the warm-up: slope in MiB / 10 min, first/last-minute medians in MiB."""
    pts = [(t, kb / 1024.0) for t, kb in samples if t >= warmup_s and kb > 0]
    if len(pts) < 3:
        return {}
    ts, ms = [p[0] for p in pts], [p[1] for p in pts]
    t_mean, m_mean = statistics.fmean(ts), statistics.fmean(ms)
    var = sum((t - t_mean) ** 2 for t in ts)
    slope = sum((t - t_mean) * (m - m_mean) for t, m in zip(ts, ms, strict=True)) / var if var else 0.0
    first = [m for t, m in pts if t < ts[0] + 60]
    last = [m for t, m in pts if t > ts[-1] - 60]
    return {
        "slope_mib_per_10min": round(slope * 600, 2),
        "first_min_mib": round(statistics.median(first), 1),
        "last_min_mib": round(statistics.median(last), 1),
        "last_minus_first_mib": round(statistics.median(last) - statistics.median(first), 1),
        "max_mib": round(max(ms), 1),
        "samples": len(pts),
    }


def heap_growth(directory: Path) -> dict:
    """Traced-heap growth of the worker between its first snapshot (one interval after start, past the warm-up
    when ``--snapshot-s`` >= ``--warmup-s``) and its last one."""
    from services._memory import growth as traced_growth
    from services._memory import snapshot_files

    files = snapshot_files(directory)
    if len(files) < 2:
        return {}
    (t_first, first), (t_last, last) = files[0], files[-1]
    return {
        "minutes_between": round((t_last - t_first) / 60.0, 1),
        "snapshots": len(files),
        **traced_growth(first, last),
    }


def gc_counts(proc: ServiceProcess) -> dict[str, dict[str, float]]:
    """The service's garbage-collector counters by generation, from its ``/metrics`` (prometheus-client's own)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = proc.http("/metrics")
    out: dict[str, dict[str, float]] = {}
    if status != 200:
        return out
    for family in text_string_to_metric_families(body):
        if family.name in ("python_gc_collections", "python_gc_objects_collected"):
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counters = out.setdefault(f"generation {sample.labels['generation']}", {})
                    counters[family.name.removeprefix("python_gc_")] = sample.value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--fps", type=float, default=3.0, help="offered load (keep it below the worker's capacity)")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=90.0, help="left out of the growth fit")
    parser.add_argument("--bundle", type=Path, help="model bundle (default: a tiny one fitted here, 64 px)")
    parser.add_argument("--out", type=Path, default=Path("bench-soak.json"))
    parser.add_argument("--tracemalloc", action="store_true", help="worker traces its Python heap (slower)")
    parser.add_argument("--snapshot-s", type=float, default=300.0)
    args = parser.parse_args(argv)
    work, logs, bundle, stack = bench_workspace("ddad-soak-", args.bundle)
    started: list[ServiceProcess] = []
    try:
        snapshots = work / "worker-snapshots"
        worker_kw = (
            {"memory_snapshot_dir": str(snapshots), "memory_snapshot_interval_s": args.snapshot_s}
            if args.tracemalloc
            else {}
        )
        # traced from start-up, the worker's imports and model load take minutes instead of seconds
        pipeline = Pipeline.start(
            stack, bundle, logs, ready_timeout_s=900.0 if args.tracemalloc else 120.0, **worker_kw
        )
        started += [pipeline.worker, pipeline.alerter]
        env = pipeline.env
        ingestor = ServiceProcess(
            "ingestor",
            ingestor_settings(env, "soak", image_folder(work / "frames", 32), loop=True, fps=args.fps, encoding="png"),
            logs / "ingestor-soak.log",
        )
        started.append(ingestor)
        ingestor.start()
        ingestor.wait_ready(60)
        services = {"ingestor": ingestor, "worker": pipeline.worker, "alerter": pipeline.alerter}
        samples: dict[str, list[tuple[float, int]]] = {name: [] for name in services}
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.duration_s:
            for name, proc in services.items():
                if not proc.alive:
                    raise RuntimeError(f"{name} died during the soak:\n{proc.log_tail()}")
                samples[name].append((round(time.monotonic() - t0, 1), proc.rss_kb()))
            time.sleep(args.sample_s)
        collector = {name: gc_counts(proc) for name, proc in services.items()}
        ingestor.terminate()
        stopped = (ingestor.events("ingestor_stopped") or [{}])[-1]
        log = ResultsLog(env)
        sent = int(stopped.get("sent", 0))
        log.read(lambda _: len(log.frame_ids(lambda f: f.startswith("soak-"))) >= sent, 300)
        recorded = len(log.frame_ids(lambda f: f.startswith("soak-")))
        log.close()
        exits = pipeline.stop()
    finally:
        for proc in started:  # after a failure: nothing may outlive the servers
            if proc.alive:
                proc.terminate(timeout_s=30)
        stack.stop()
    report = {
        "duration_s": args.duration_s,
        "fps": args.fps,
        "sent": sent,
        "recorded": recorded,
        "lost": max(0, sent - recorded),
        "ingestor": stopped,
        "exits": exits,
        "growth": {name: growth(s, args.warmup_s) for name, s in samples.items()},
        "gc": collector,
        "samples": samples,
        "logs": str(logs),
    }
    if args.tracemalloc:
        report["worker_heap"] = heap_growth(snapshots)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"soak {args.duration_s:.0f} s at {args.fps} fps: sent {sent}, recorded {recorded}, lost {report['lost']}")
    print("| service | RSS first minute MiB | last minute MiB | last - first MiB | fitted slope MiB / 10 min |")
    print("|---|---|---|---|---|")
    for name, g in report["growth"].items():
        if g:
            print(
                f"| {name} | {g['first_min_mib']} | {g['last_min_mib']} | {g['last_minus_first_mib']} | "
                f"{g['slope_mib_per_10min']} |"
            )
    for name, gens in collector.items():
        full = gens.get("generation 2", {})
        if full:
            print(
                f"{name}: {full['collections']:.0f} full collections, {full['objects_collected']:.0f} objects freed "
                "by them (garbage-collector counters of its /metrics)"
            )
    heap = report.get("worker_heap")
    if heap:
        print(
            f"worker Python heap (tracemalloc) over {heap['minutes_between']} min: {heap['traced_first_kib']:.0f} -> "
            f"{heap['traced_last_kib']:.0f} KiB ({heap['traced_growth_kib']:+.0f} KiB); sites that grew most:"
        )
        if heap.get("tracemalloc_own_last_kib") is not None:
            print(
                f"  tracemalloc's own tables (in the worker's RSS above, not the worker's): "
                f"{heap['tracemalloc_own_first_kib']:.0f} -> {heap['tracemalloc_own_last_kib']:.0f} KiB"
            )
        for site in heap["top"][:10]:
            where = " <- ".join(site["where"][::-1][:3])
            print(f"  {site['size_diff_kib']:+8.1f} KiB {site['count_diff']:+6d} blocks  {where}")
    print(f"figures in {args.out}")
    return 0 if report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
