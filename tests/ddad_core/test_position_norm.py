"""Per-position normalisation: z-scores against held-out good maps remove a fixed border pattern."""

from __future__ import annotations

import pytest
import torch

from ddad_core.position_norm import PositionNorm


def test_position_norm_removes_a_fixed_border_pattern():
    gen = torch.Generator().manual_seed(0)
    size = 64
    border = torch.zeros(size, size)
    border[:8], border[-8:], border[:, :8], border[:, -8:] = 1.0, 1.0, 1.0, 1.0
    good = torch.rand(30, size, size, generator=gen) * 0.2 + 2.0 * border  # strong border on every good map
    norm = PositionNorm.fit({"latent": good[:15]}, cell=8)
    z = norm.apply("latent", good[15:])
    inner = z[:, 16:-16, 16:-16].mean()
    band = torch.cat([z[:, :8].flatten(), z[:, -8:].flatten()]).mean()
    assert abs(float(band - inner)) < 0.25
    raw_gap = float(good[15:, :8].mean() - good[15:, 16:-16, 16:-16].mean())
    assert raw_gap > 1.5  # without it the border dominates
    # A defect in the centre now outscores the border of a good map.
    defect = good[15:16].clone()
    defect[0, 30:34, 30:34] += 0.5
    assert float(norm.apply("latent", defect)[0, 30:34, 30:34].mean()) > float(norm.apply("latent", good[16:17]).max())
    restored = PositionNorm.from_tensors(norm.tensors())
    assert torch.equal(restored.apply("latent", good[:2]), norm.apply("latent", good[:2]))
    with pytest.raises(KeyError, match="knn"):
        norm.apply("knn", good[:1])
