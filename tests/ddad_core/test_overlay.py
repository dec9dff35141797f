"""Nominal overlay: a taught false-alarm pattern stops alerting, an unrelated defect still alerts, undo restores the
alert, the guard names confirmed defects an overlay would silence, and the byte format round-trips and refuses what
it cannot use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddad_core.overlay import DefectGuard, NominalOverlay, OverlayEntry, OverlayError, frame_patches
from ddad_core.pipeline import DDADPipeline
from ddad_core.testing import make_tiny_bundle, synthetic_textures

from ._helpers import recapture, ring, square


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> DDADPipeline:
    return DDADPipeline.from_bundle(
        make_tiny_bundle(tmp_path_factory.mktemp("overlay") / "fast", num_images=20, recipe="fast")
    )


@pytest.fixture(scope="module")
def part() -> np.ndarray:
    return synthetic_textures(1, 64, seed=42)[0]


def teach(pipe: DDADPipeline, overlay: NominalOverlay, image: np.ndarray, entry_id: str) -> NominalOverlay:
    patches, region = frame_patches(pipe.with_overlay(overlay), image)
    entry = OverlayEntry(entry_id, f"alert-{entry_id}", f"frame-{entry_id}", "alice", "2026-01-01T00:00:00+00:00",
                         region, len(patches))  # fmt: skip
    return overlay.added(entry, patches)


def empty(pipe: DDADPipeline) -> NominalOverlay:
    return NominalOverlay(product_id="p1", bundle_hash=pipe.bundle_hash, channels=pipe.patch_knn.bank.shape[1])


def test_taught_pattern_stops_alerting_and_a_defect_still_alerts(pipe, part):
    flagged = ring(part)
    later = [recapture(flagged, seed) for seed in range(4)]
    defects = [recapture(square(part, x=8 + 6 * i), 10 + i) for i in range(3)]
    assert pipe([flagged, *later]).pred_label.all()  # the harmless ring alerts before it is taught
    taught = pipe.with_overlay(teach(pipe, empty(pipe), flagged, "e1"))
    assert taught.overlay_version == 1
    assert not taught(later).pred_label.any()
    assert taught(defects).pred_label.all()
    before, after = pipe(later).pred_score_raw, taught(later).pred_score_raw
    assert (after < before).all()


def test_overlay_only_lowers_the_knn_map_and_leaves_good_frames_alone(pipe, part):
    goods = synthetic_textures(4, 64, seed=7)
    taught = pipe.with_overlay(teach(pipe, empty(pipe), ring(part), "e1"))
    torch.testing.assert_close(taught(goods).pred_score_raw, pipe(goods).pred_score_raw)
    assert pipe.overlay_version is None and pipe.patch_knn.overlay.shape[0] == 0  # the original is untouched


def test_undo_brings_the_alert_back(pipe, part):
    overlay = teach(pipe, empty(pipe), ring(part), "e1")
    overlay = teach(pipe, overlay, square(part, x=40, y=4), "e2")
    undone = overlay.without("e1")
    assert undone.version == 3 and [e.entry_id for e in undone.entries] == ["e2"]
    assert len(undone.patches) == undone.entries[0].patches
    assert pipe.with_overlay(undone)([recapture(ring(part), 1)]).pred_label.all()
    with pytest.raises(OverlayError, match="no entry 'e1'"):
        undone.without("e1")


def test_guard_names_the_confirmed_defects_an_overlay_would_silence(pipe, part):
    confirmed = {"alert-ring": recapture(ring(part), 5), "alert-square": recapture(square(part), 6)}
    confirmed |= {f"alert-{i}": recapture(square(part, x=4 + 7 * i, y=8), 7 + i) for i in range(5)}
    guard = DefectGuard(pipe)
    for key, image in confirmed.items():
        guard.add(key, image)
    overlay = teach(pipe, empty(pipe), ring(part), "e1")
    assert guard.missed(None) == []
    assert guard.missed(overlay) == ["alert-ring"]
    # The same decisions as scoring the images through the pipeline with the overlay, whatever the batching.
    full = pipe.with_overlay(overlay)(list(confirmed.values())).pred_label.tolist()
    assert guard.missed(overlay, batch_size=3) == [k for k, flagged in zip(confirmed, full, strict=True) if not flagged]
    guard.remove("alert-ring")
    assert guard.missed(overlay) == [] and "alert-ring" not in guard


def test_bytes_round_trip_and_refusals(pipe, part, tmp_path):
    overlay = teach(pipe, empty(pipe), ring(part), "e1")
    back = NominalOverlay.from_bytes(overlay.to_bytes())
    assert back == overlay and back.entries == overlay.entries and back.digest == overlay.digest
    torch.testing.assert_close(back.patches, overlay.patches)
    with pytest.raises(OverlayError, match="not a nominal overlay"):
        NominalOverlay.from_bytes(b"garbage bytes")
    with pytest.raises(OverlayError, match="already in the overlay"):
        teach(pipe, overlay, ring(part), "e1")
    other = NominalOverlay(product_id="p1", bundle_hash="0" * 64, channels=overlay.channels)
    with pytest.raises(OverlayError, match="taught on bundle 000000000000"):
        pipe.with_overlay(other)
    paper = DDADPipeline.from_bundle(make_tiny_bundle(tmp_path / "paper"))
    with pytest.raises(OverlayError, match="no patch k-NN term"):
        paper.with_overlay(overlay)
