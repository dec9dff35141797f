"""Finding memory growth: tracemalloc snapshots written on a timer, and the comparison of two of them.

Flow step: none (a debugging aid of every service). ``<PREFIX>MEMORY_SNAPSHOT_DIR`` set: the service traces its
Python allocations from start-up and writes a snapshot there every ``<PREFIX>MEMORY_SNAPSHOT_INTERVAL_S``
(tracing costs CPU and memory: for soaks and investigations, not for production). ``bench/soak.py
--tracemalloc`` turns it on for the worker and prints where traced memory grew between the first snapshot after
its warm-up and the last one; growth that tracemalloc does not see is outside the Python heap (native libraries,
the C allocator).
"""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from pathlib import Path

SUFFIX = ".tracemalloc"


def start_snapshots(directory: str | Path, interval_s: float, frames: int = 12) -> threading.Thread:
    """Start tracing (``frames`` deep) and write ``snap-NNNNN-<unix time>.tracemalloc`` every ``interval_s``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if not tracemalloc.is_tracing():
        tracemalloc.start(frames)

    def run() -> None:
        n = 0
        while True:
            time.sleep(interval_s)
            snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            tmp = out / f".snap-{n:05d}.tmp"
            snap.dump(str(tmp))
            final = out / f"snap-{n:05d}-{int(time.time())}{SUFFIX}"
            # tracemalloc's own memory (its trace and interned-traceback tables) is in the RSS, not in the snapshot
            final.with_suffix(".json").write_text(json.dumps({"tracemalloc_kib": tracemalloc_kib()}))
            tmp.rename(final)  # complete files only
            n += 1

    thread = threading.Thread(target=run, daemon=True, name="memory-snapshots")
    thread.start()
    return thread


def tracemalloc_kib() -> float:
    """Memory tracemalloc itself uses now (KiB): RSS growth of a traced process that is not the process's own."""
    return round(tracemalloc.get_tracemalloc_memory() / 1024, 1)


def _own_kib(snapshot: Path) -> float | None:
    side = snapshot.with_suffix(".json")
    return json.loads(side.read_text())["tracemalloc_kib"] if side.exists() else None


def snapshot_files(directory: str | Path) -> list[tuple[float, Path]]:
    """``(unix time, path)`` of the snapshots in ``directory``, oldest first."""
    files = sorted(Path(directory).glob(f"snap-*{SUFFIX}"))
    return [(float(p.stem.split("-")[2]), p) for p in files]


def growth(first: Path, last: Path, top: int = 15, key: str = "traceback") -> dict:
    """Traced memory of ``last`` against ``first``: totals and the ``top`` allocation sites that grew most."""
    a, b = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(last))
    diffs = b.compare_to(a, key)
    total_a = sum(s.size for s in a.statistics("filename"))
    total_b = sum(s.size for s in b.statistics("filename"))
    return {
        "traced_first_kib": round(total_a / 1024, 1), "traced_last_kib": round(total_b / 1024, 1),
        "traced_growth_kib": round((total_b - total_a) / 1024, 1),
        "tracemalloc_own_first_kib": _own_kib(first), "tracemalloc_own_last_kib": _own_kib(last),
        "top": [{"size_diff_kib": round(d.size_diff / 1024, 1), "count_diff": d.count_diff,
                 "where": [f"{f.filename}:{f.lineno}" for f in d.traceback][-6:]}
                for d in diffs[:top] if d.size_diff > 0],
    }
