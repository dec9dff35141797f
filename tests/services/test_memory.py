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
