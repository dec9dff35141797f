"""services/_memory.py: snapshots written on a timer by a real process, and growth pinned to the line that leaks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from services._memory import growth, snapshot_files

LEAKY = textwrap.dedent("""
    import sys, time
    from services._memory import start_snapshots
    start_snapshots(sys.argv[1], 0.3)
    kept = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:
        kept.append(bytearray(4096))  # the leak: about 4 KiB every 5 ms
        time.sleep(0.005)
""")


def test_snapshots_show_where_the_heap_grew(tmp_path):
    out = tmp_path / "snaps"
    subprocess.run([sys.executable, "-c", LEAKY, str(out)], check=True, timeout=60)
    files = snapshot_files(out)
    assert len(files) >= 3 and [t for t, _ in files] == sorted(t for t, _ in files)
    g = growth(files[0][1], files[-1][1])
    assert g["traced_growth_kib"] > 200  # hundreds of 4 KiB blocks kept between the first and last snapshot
    top = g["top"][0]
    assert top["size_diff_kib"] > 200 and top["count_diff"] > 50
    assert g["tracemalloc_own_last_kib"] > 0  # its own tables, measured beside each snapshot
    line = next(i for i, text in enumerate(LEAKY.splitlines(), 1) if "bytearray" in text)
    assert f"<string>:{line}" in top["where"], top  # pinned to the line that keeps the blocks


# A serving process in miniature: a start-up heap of long-lived objects, then batches whose reference cycles live
# long enough to reach the oldest generation before they are dropped (futures, exceptions with tracebacks, ...).
CYCLES = textwrap.dedent("""
    import collections, gc, sys
    from services._memory import freeze_start_up_heap
    start_up = [[i] for i in range(400_000)]  # what start-up builds (a loaded model): long-lived, tracked objects
    if sys.argv[1] == "freeze":
        print("frozen", freeze_start_up_heap())
    garbage = 0
    class Cycle:  # only the collector frees it
        def __init__(self):
            self.me = self
        def __del__(self):
            global garbage
            garbage -= 1
    in_flight = collections.deque(maxlen=50)  # the cycles of the last 50 batches
    peak = 0
    for _ in range(3000):
        batch = [[j] for j in range(2000)]  # a batch's objects: they drive the young collections
        in_flight.append(Cycle())
        del batch
        garbage += 1  # alive or garbage, not yet freed
        peak = max(peak, garbage)
    print("peak", peak, "full", gc.get_stats()[2]["collections"])
""")


def _cycles(mode: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", CYCLES, mode], check=True, timeout=120, capture_output=True,
                         text=True).stdout.split()
    return {out[i]: int(out[i + 1]) for i in range(0, len(out), 2)}


def test_frozen_start_up_heap_lets_the_collector_free_cycles_promptly():
    plain, frozen = _cycles("plain"), _cycles("freeze")
    assert frozen["frozen"] >= 400_000  # the start-up objects left the generations
    # unfrozen, a full collection waits until a quarter of the 400k start-up objects' worth has been promoted
    assert frozen["full"] > 3 * plain["full"], (plain, frozen)
    assert frozen["peak"] < plain["peak"] / 3, (plain, frozen)  # cycles not yet freed, at their most
    assert frozen["peak"] >= 50  # the 50 in flight are alive: the collector freed garbage only
