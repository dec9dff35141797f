"""Patch k-NN term: greedy coreset, exact nearest-neighbour distance, patch features (local average, zero padding)."""

from __future__ import annotations

import pytest
import torch

from ddad_core.patch_knn import PatchKNN, greedy_coreset, patch_features


def test_greedy_coreset_covers_the_points():
    gen = torch.Generator().manual_seed(0)
    clusters = torch.cat([torch.randn(200, 8, generator=gen) * 0.01 + c for c in (0.0, 5.0, -5.0, 10.0)])
    keep = greedy_coreset(clusters, 4, projection_dim=8, seed=1)
    # One centre per cluster: k-centre picks the farthest point each time.
    assert sorted((keep // 200).tolist()) == [0, 1, 2, 3]
    # The coreset radius (max distance of any point to its nearest centre) shrinks as the coreset grows.
    radii = [torch.cdist(clusters, clusters[greedy_coreset(clusters, n, seed=1)]).amin(1).max() for n in (4, 16, 64)]
    assert radii[0] >= radii[1] >= radii[2]
    assert torch.equal(greedy_coreset(clusters, 10, seed=3), greedy_coreset(clusters, 10, seed=3))
    assert len(greedy_coreset(clusters, 10_000)) == len(clusters)


def test_patch_knn_distance_is_exact_nearest_neighbour():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(3, 6, 4, 4, generator=gen)
    knn = PatchKNN().fit(train, bank_size=10_000)  # no reduction: the bank is every patch
    query = torch.randn(2, 6, 4, 4, generator=gen)
    got = knn(query)
    rows = query.permute(0, 2, 3, 1).reshape(-1, 6)
    expected = torch.cdist(rows, train.permute(0, 2, 3, 1).reshape(-1, 6)).amin(1).view(2, 4, 4)
    assert torch.allclose(got, expected, atol=1e-5)
    # A training patch is in the bank (cdist via matrix products: ~1e-3 rounding at distance 0).
    assert float(knn(train).abs().max()) < 5e-3
    restored = PatchKNN.from_tensors(knn.tensors())
    assert torch.equal(restored(query), got)
    with pytest.raises(ValueError, match="channels"):
        knn(torch.zeros(1, 5, 4, 4))


def test_patch_features_shape_and_local_average():
    blocks = [torch.zeros(1, 2, 16, 16), torch.zeros(1, 3, 8, 8), torch.ones(1, 4, 4, 4)]
    blocks[1][0, :, 4, 4] = 9.0
    feats = patch_features(blocks)
    assert feats.shape == (1, 7, 8, 8)
    assert float(feats[0, 0, 4, 4]) == pytest.approx(1.0)  # 9 / 9: the 3 x 3 average
    assert float(feats[0, 0, 0, 0]) == 0.0 and float(feats[0, 3:, 0, 0].min()) == pytest.approx(1.0)


def test_patch_features_zero_padded_damps_borders():
    blocks = [torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 4, 4), torch.ones(1, 1, 2, 2)]
    inside = patch_features(blocks)
    padded = patch_features(blocks, zero_padded=True)
    assert float(inside[0, 0, 0, 0]) == pytest.approx(1.0)  # averages only the pixels inside
    assert float(padded[0, 0, 0, 0]) == pytest.approx(4 / 9)  # PatchCore's AvgPool2d(3, 1, 1): zeros outside
    assert float(padded[0, 0, 1, 1]) == pytest.approx(1.0)


def test_patch_features_expanded_uses_the_expansion_activations():
    blocks = [torch.zeros(1, 2, 16, 16), torch.zeros(1, 3, 8, 8), torch.zeros(1, 4, 4, 4)]
    expansions = [torch.full((1, 6, 8, 8), 2.0), torch.full((1, 5, 4, 4), 3.0)]
    feats = patch_features(blocks + expansions, expanded=True)
    assert feats.shape == (1, 11, 8, 8)
    assert float(feats[0, :6].min()) == 2.0 and float(feats[0, 6:].min()) == 3.0
    with pytest.raises(ValueError, match="expanded=True"):
        patch_features(blocks, expanded=True)
