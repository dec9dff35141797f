"""bench/soak.py's figures: the RSS growth fit, and the worker's heap growth read from real tracemalloc snapshots."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _soak():
    spec = importlib.util.spec_from_file_location("bench_soak", REPO / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rss_growth_fit_ignores_the_warmup_and_measures_the_slope():
    soak = _soak()
    mib = 1024
    # warm-up: a jump to 500 MiB; after it, +1 MiB per minute on a 400 MiB base
    samples = [(t, 500 * mib) for t in range(0, 90, 5)] + [(t, int((400 + (t - 90) / 60) * mib))
                                                            for t in range(90, 690, 5)]
    g = soak.growth(samples, warmup_s=90)
    assert abs(g["slope_mib_per_10min"] - 10.0) < 0.05
    assert 8.5 < g["last_minus_first_mib"] < 10.0 and g["first_min_mib"] < 401
    flat = soak.growth([(t, 300 * mib) for t in range(0, 600, 5)], warmup_s=90)
    assert flat["slope_mib_per_10min"] == 0.0 and flat["last_minus_first_mib"] == 0.0


def test_heap_growth_between_the_first_and_last_snapshot(tmp_path):
    code = textwrap.dedent("""
        import sys, time
        from services._memory import start_snapshots
        start_snapshots(sys.argv[1], 0.3)
        kept = [bytearray(2048) for _ in range(10)]
        for _ in range(400):
            kept.append(bytearray(2048))
            time.sleep(0.004)
    """)
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60, cwd=REPO)
    heap = _soak().heap_growth(tmp_path)
    assert heap["snapshots"] >= 3 and heap["minutes_between"] >= 0
    assert heap["traced_growth_kib"] > 100 and heap["top"][0]["size_diff_kib"] > 100
    assert _soak().heap_growth(tmp_path / "none") == {}
