"""InspectionOutput: shapes, item/numpy helpers, validation, concatenation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddad_core.outputs import InspectionItem, InspectionOutput, output_names


def _output(batch=3, size=4):
    return InspectionOutput(
        pred_score=torch.linspace(0, 1, batch),
        pred_score_raw=torch.arange(batch, dtype=torch.float32),
        pred_label=torch.arange(batch) > 0,
        anomaly_map=torch.rand(batch, size, size),
        pred_mask=torch.rand(batch, size, size) > 0.5,
        noise_step=torch.full((batch,), 20, dtype=torch.long),
        timings_ms={"encode": 1.0},
    )


def test_item_and_numpy():
    out = _output()
    assert len(out) == 3
    item = out.item(2)
    assert isinstance(item, InspectionItem)
    assert item.pred_label is True and item.noise_step == 20 and item.pred_score == 1.0
    assert item.anomaly_map.dtype == np.float32 and item.pred_mask.dtype == bool
    arrays = out.to_numpy()
    assert set(arrays) == {"pred_score", "pred_score_raw", "pred_label", "anomaly_map", "pred_mask", "noise_step"}
    assert arrays["anomaly_map"].shape == (3, 4, 4)
    assert len(out.items()) == 3
    with pytest.raises(IndexError):
        out.item(3)


def test_validation_and_concatenate():
    with pytest.raises(ValueError, match="batch size"):
        InspectionOutput(
            pred_score=torch.zeros(2),
            pred_score_raw=torch.zeros(3),
            pred_label=torch.zeros(2, dtype=torch.bool),
            anomaly_map=torch.zeros(2, 4, 4),
            pred_mask=torch.zeros(2, 4, 4, dtype=torch.bool),
            noise_step=torch.zeros(2, dtype=torch.long),
        )
    both = InspectionOutput.concatenate([_output(2), _output(3)])
    assert len(both) == 5 and both.timings_ms == {"encode": 2.0}
    assert len(both.to("cpu")) == 5


def test_output_names_are_unique_and_follow_the_relative_path(tmp_path):
    names = output_names([tmp_path / "test/good/000.png", tmp_path / "test/broken_small/000.png"])
    assert names == ["good__000", "broken_small__000"]
    # Always the same rule, whatever came before: a later input never renames an earlier one.
    names = output_names([tmp_path / "a" / name for name in ("000.png", "000.jpg", "000~2.png", "000.png")])
    assert names == ["000", "000~2", "000~2~2", "000~3"]
    assert len(set(names)) == len(names)
    assert output_names([tmp_path / "x" / "y" / "z.png", tmp_path / "z.png"]) == ["x__y__z", "z"]
    assert output_names([]) == []
