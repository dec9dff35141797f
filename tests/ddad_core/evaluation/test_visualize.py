"""The overlay pictures of the report and of ``ddad predict``: blend, outlines, colour bar, sizes."""

from __future__ import annotations

import numpy as np
import pytest

from ddad_core.evaluation.visualize import (
    PRED_COLOR,
    TRUE_COLOR,
    blend_heatmap,
    colorbar,
    colorbar_width,
    render_overlay,
)


def _part(h=64, w=64):
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 3 + yy * 2) % 200 + 30).astype(np.uint8)  # a gray part with structure


def test_low_scores_leave_the_part_visible_and_high_scores_colour_it():
    image = np.stack([_part()] * 3, axis=-1)
    heat = np.zeros((64, 64), np.float32)
    heat[20:40, 20:40] = 1.0
    out = blend_heatmap(image, heat)
    assert np.array_equal(out[:10], image[:10])  # normal area: the part itself, not a blue wash
    inside = out[25:35, 25:35].astype(int)
    assert (inside[..., 0] - inside[..., 2]).mean() > 40  # defect area: JET's red over the gray part
    assert not np.array_equal(inside, image[25:35, 25:35])


def test_outlines_in_distinct_colours_and_bar_beside_the_picture():
    heat = np.zeros((64, 64), np.float32)
    pred = np.zeros((64, 64), bool)
    pred[10:30, 10:30] = True
    true = np.zeros((64, 64), bool)
    true[36:56, 36:56] = True
    out = render_overlay(_part(), heat, pred, true, threshold=0.5)
    assert out.shape == (64, 64 + colorbar_width(64), 3)
    picture = out[:, :64]
    assert (picture == PRED_COLOR).all(axis=-1).any() and (picture == TRUE_COLOR).all(axis=-1).any()
    assert (picture[10:30, 10:30] == PRED_COLOR).all(axis=-1).sum() < 20 * 20  # an outline, not a filled box
    resized = render_overlay(_part(), heat, pred, true, size=256, with_colorbar=False)
    assert resized.shape == (256, 256, 3)
    # A channels-last view (what the evaluation's thumbnails are: a permuted tensor) at its own size.
    view = np.stack([_part()] * 3).transpose(1, 2, 0)
    assert not view.flags.c_contiguous
    assert render_overlay(view, heat, pred, true).shape == out.shape


def test_colour_bar_marks_the_threshold_and_fits_tall_parts():
    bar = colorbar(256, threshold=0.1)
    assert bar.shape == (256, colorbar_width(256), 3)
    # the threshold line: a black row across the gradient near the bottom (score 0.1)
    black_rows = np.flatnonzero((bar[:, 5:15] < 20).all(axis=-1).all(axis=1))
    assert black_rows.size and abs(black_rows.mean() - (8 + 0.9 * (248 - 1 - 8))) < 4
    tall = render_overlay(_part(1200, 400), np.zeros((64, 64), np.float32), threshold=0.5)
    assert tall.shape[1] - 400 == colorbar_width(1200, 400) < 400 // 3  # sized by the short side


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="differ in size"):
        blend_heatmap(np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="gray or RGB"):
        render_overlay(np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8)))
