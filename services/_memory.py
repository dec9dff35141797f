"""Memory: the start-up heap kept out of the garbage collector's way, and finding growth with tracemalloc.

Flow step: none (process lifecycle). ``freeze_start_up_heap`` runs in the worker once its model is loaded (why: its
docstring). The rest is a debugging aid of every service: ``<PREFIX>MEMORY_SNAPSHOT_DIR`` set: the service traces its
Python allocations from start-up and writes a snapshot there every ``<PREFIX>MEMORY_SNAPSHOT_INTERVAL_S``
(tracing costs CPU and memory: for soaks and investigations, not for production). ``bench/soak.py
--tracemalloc`` turns it on for the worker and prints where traced memory grew between the first snapshot after
its warm-up and the last one; growth that tracemalloc does not see is outside the Python heap (native libraries,
the C allocator).
"""

from __future__ import annotations

import gc
import json
import threading
import time
import tracemalloc
from pathlib import Path

SUFFIX = ".tracemalloc"


def freeze_start_up_heap() -> int:
    """Collect, then move every object alive now into the collector's permanent generation; returns how many.

    Call it once start-up is over, in the process's main thread: what start-up built (imports, the loaded model)
    lives as long as the process. Why: CPython starts a full (oldest-generation) collection only when the objects
    promoted since the last one exceed a quarter of the long-lived ones. A worker holds about 560,000 objects once
    its model is loaded, and serving makes short-lived reference cycles all the time (kafka-python raises and keeps
    a timeout exception with its traceback, frames, futures and locks, on every poll that times out: about 4,000
    objects a minute). Unfrozen, they pile up for about 20 minutes (80,000 objects, 13-17 MiB of RSS in the soak)
    before one full collection frees them, and that collection walks the whole heap with the GIL held (about 100 ms on a
    2-core VM) in the middle of the inference loop. Frozen objects are never scanned again, so the quarter is taken
    of what serving keeps: the generations stay at about 10,000 objects and a full collection is short. Frozen
    objects that later become cyclic garbage are never freed; start-up objects are not dropped while serving.
    """
    gc.collect()
    gc.freeze()
    gc.collect()  # an empty full collection: the quarter is now taken of nothing, not of the frozen objects
    return gc.get_freeze_count()


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
