"""ddad_core.progress: bars and plain lines, the heartbeat of silent steps, ETA, timings; and its use in a real fit."""

from __future__ import annotations

import io
import re
import threading
import time

import pytest
import torch

from ddad_core.autoencoders import measure_latent_scale, reconstruction_psnr
from ddad_core.bundle import read_bundle_config
from ddad_core.fitting.fit import fit
from ddad_core.progress import Progress, as_progress, format_seconds, format_timings, map_batches

from ._helpers import TINY_FIT, write_mvtec

pytestmark = pytest.mark.timeout(120)


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_lines_mode_start_status_with_eta_and_end():
    out = io.StringIO()
    progress = Progress(mode="lines", interval=0.05, stream=out)
    with progress.step("encode", total=4, unit="img") as step:
        for _ in range(4):
            time.sleep(0.06)
            step.update(1)
    lines = _lines(out)
    assert lines[0] == "encode: started, 4 img"
    status = [line for line in lines if "ETA" in line]
    assert status, lines
    assert re.match(r"encode: \d/4 img \(\d+ %\), [\d.]+ s elapsed, ETA ([\d.]+ s|\?)", status[0])
    assert re.match(r"encode: done, 4 img in [\d.]+ s \([\d.]+ s/img\)", lines[-1])
    assert progress.timings["encode"] >= 0.2


def test_heartbeat_prints_while_a_step_reports_nothing():
    out = io.StringIO()
    progress = Progress(mode="lines", interval=0.1, stream=out)
    with progress.step("coreset", unit="patch"):
        time.sleep(0.55)  # no update at all: only the heartbeat can speak
    running = [line for line in _lines(out) if "still running" in line]
    assert len(running) >= 3, _lines(out)
    assert "ETA" not in "".join(running)  # no total, no made-up ETA
    assert _lines(out)[-1].startswith("coreset: done, ")


def test_eta_ignores_units_done_before_a_resume():
    progress = Progress(mode="off")
    with progress.step("unet", total=10, unit="epoch", initial=8) as step:
        assert step.status().endswith("ETA ?")  # nothing new done yet: no estimate from the resumed epochs
        time.sleep(0.2)
        step.update(1)
        eta = float(re.search(r"ETA ([\d.]+) s", step.status()).group(1))
    assert 0.1 <= eta <= 1.0  # one new epoch took ~0.2 s and one is left (8 resumed epochs would give ~0.02 s)


def test_bar_mode_draws_a_tqdm_bar_with_the_total():
    out = io.StringIO()
    progress = Progress(mode="bar", stream=out)
    with progress.step("unet", total=3, unit="epoch") as step:
        for _ in range(3):
            step.update(1)
        step.set_postfix(loss="0.1234")
    progress.write("a line above the bar")
    text = out.getvalue()
    assert "unet" in text and "3/3" in text and "loss 0.1234" in text and "a line above the bar" in text
    assert set(progress.timings) == {"unet"}


def test_auto_mode_picks_lines_off_a_terminal_and_off_prints_nothing():
    assert Progress(stream=io.StringIO()).mode == "lines"  # StringIO is not a TTY
    out = io.StringIO()
    progress = Progress(mode="off", stream=out)
    with progress.step("metrics") as step:
        step.update(3)
    progress.write("hidden")
    assert out.getvalue() == "" and "metrics" in progress.timings
    assert as_progress(False).mode == "off" and as_progress(progress) is progress


def test_a_failing_step_is_timed_and_stops_its_heartbeat():
    progress = Progress(mode="lines", interval=0.05, stream=io.StringIO())
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="boom"), progress.step("calibration", total=2):
        raise RuntimeError("boom")
    assert "calibration" in progress.timings
    assert threading.active_count() == before


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="progress mode"):
        Progress(mode="loud")
    with pytest.raises(ValueError, match="progress interval"):
        Progress(interval=0)
    with pytest.raises(ValueError, match="batch_size"):
        map_batches(len, [1, 2], 0)


def test_formatting_and_batches():
    assert format_seconds(3725) == "1 h 02 min" and format_seconds(65) == "1 min 05 s"
    assert format_seconds(4.25) == "4.2 s"
    assert format_timings({"a": 1.0, "b": 90.0}, 95.0) == "total 1 min 35 s: b 1 min 30 s, a 1.0 s"
    progress = Progress(mode="off")
    with progress.step("x", total=10) as step:
        assert map_batches(len, list(range(10)), 4, step) == [4, 4, 2]
        assert step.count == 10


def test_autoencoder_callbacks_count_every_image(tiny_autoencoder):
    images = torch.rand(7, 3, 32, 32) * 2 - 1
    counted: list[int] = []
    scale = measure_latent_scale(tiny_autoencoder, images, batch_size=3, on_batch=counted.append)
    assert counted == [3, 3, 1] and scale == measure_latent_scale(tiny_autoencoder, images, batch_size=3)
    counted.clear()
    reconstruction_psnr(tiny_autoencoder, images, batch_size=4, on_batch=counted.append)
    assert counted == [4, 3]


def test_fit_reports_and_times_every_step(tmp_path):
    data = write_mvtec(tmp_path / "data", n_train=10)
    out = io.StringIO()
    lines: list[str] = []
    settings = {k: v for k, v in TINY_FIT.items() if k not in ("progress", "log")}
    bundle = fit(data, tmp_path / "bundle", progress=Progress(mode="lines", stream=out), log=lines.append, **settings)
    steps = (
        "load_images",
        "preprocess",
        "autoencoder_training",
        "latent_cache",
        "unet",
        "domain_adaptation",
        "training_features",
        "calibration",
    )  # fmt: skip (TINY_FIT has no k-NN term, so no coreset: test_cli's production fit has one)
    text = out.getvalue()
    for name in steps:
        assert f"{name}: started" in text and f"{name}: done" in text, name
    seconds = read_bundle_config(bundle).metadata["fit_seconds"]
    assert set(steps) | {"total"} == set(seconds)
    assert seconds["total"] >= max(v for k, v in seconds.items() if k != "total")
    assert lines[-1].startswith("time per step: total ") and "unet " in lines[-1]


def test_coreset_reports_every_centre_it_chooses():
    import torch

    from ddad_core.patch_knn import greedy_coreset

    counts: list[int] = []
    keep = greedy_coreset(torch.randn(2000, 8), 600, on_progress=counts.append)
    assert len(keep) == 600 and sum(counts) == 600 and counts[:2] == [256, 256]
    counts.clear()
    greedy_coreset(torch.randn(10, 8), 50, on_progress=counts.append)  # smaller than the bank: every patch
    assert counts == [10]
