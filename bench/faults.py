"""Fault scenarios at volume: frames sent, results recorded, lost, duplicated, DLQ'd and recovery time per scenario.

Runs the scenarios of ``tests/integration/test_faults*.py`` (``tests/integration/_fault_harness.py``) on servers of
its own, with the services as subprocesses, and prints one table row per scenario (also written as JSON):

    python bench/faults.py                                  # everything, 30 s outages
    python bench/faults.py --scenarios kafka,redis --outage-s 60 --per-camera 40

Scenarios: ``sigkill-inference``, ``sigkill-sinks``, ``redis``, ``s3``, ``kafka``, ``rebalance``, ``hostile``.
"""

from __future__ import annotations

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration._fault_harness import (  # noqa: E402
    Outcome,
    Pipeline,
    bench_workspace,
    hostile,
    outage,
    rebalance,
    sigkill_worker,
)

SCENARIOS = ("sigkill-inference", "sigkill-sinks", "redis", "s3", "kafka", "rebalance", "hostile")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--outage-s", type=float, default=30.0, help="length of each server outage")
    parser.add_argument("--per-camera", type=int, default=40, help="frames per camera in the SIGKILL scenarios")
    parser.add_argument("--fps", type=float, default=6.0, help="ingestor frame rate during the outages")
    parser.add_argument("--rate-fps", type=float, default=10.0, help="offered load during the rebalance")
    parser.add_argument("--bundle", type=Path, help="model bundle (default: a tiny one fitted here, 64 px)")
    parser.add_argument("--out", type=Path, default=Path("bench-faults.json"))
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        print(f"faults: unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    work, logs, bundle, stack = bench_workspace("ddad-faults-", args.bundle)
    rows: list[Outcome] = []
    t0 = time.monotonic()
    try:
        for phase in ("inference", "sinks"):
            if f"sigkill-{phase}" in chosen:
                rows.append(
                    sigkill_worker(stack, bundle, logs, phase, per_camera=args.per_camera, cameras=4, timeout_s=600)
                )
                _print(rows[-1])
        outages = [s for s in ("redis", "s3", "kafka") if s in chosen]
        if outages:
            pipeline = Pipeline.start(stack, bundle, logs)
            try:
                for server in outages:
                    rows.append(
                        outage(stack, pipeline, server, logs, outage_s=args.outage_s, fps=args.fps, timeout_s=600)
                    )
                    _print(rows[-1])
            finally:
                pipeline.stop()
        if "rebalance" in chosen:
            rows.append(rebalance(stack, bundle, logs, rate_fps=args.rate_fps, timeout_s=600))
            _print(rows[-1])
        if "hostile" in chosen:
            rows.append(hostile(stack, bundle, logs, copies=10))
            _print(rows[-1])
    finally:
        stack.stop()
    print()
    print(
        "| scenario | sent | results recorded | lost | duplicated (replays) | DLQ'd | dropped (counted) | recovery s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.scenario} | {r.sent} | {r.recorded} | {r.lost} | {r.duplicated} | {r.dlq} | {r.dropped} "
            f"| {'-' if r.recovery_s is None else r.recovery_s} |"
        )
    args.out.write_text(
        json.dumps(
            {"elapsed_s": round(time.monotonic() - t0, 1), "logs": str(logs), "scenarios": [r.row() for r in rows]},
            indent=2,
            default=str,
        )
    )
    print(f"\nfigures in {args.out}; service logs in {logs}")
    return 0 if all(r.lost == 0 for r in rows) else 1


def _print(row: Outcome) -> None:
    print(json.dumps(row.row(), default=str), flush=True)


if __name__ == "__main__":
    sys.exit(main())
