"""Anomaly map: components, kernel, blur, blend, batch independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from ddad_core.anomaly_map import (
    MapNormalization,
    blend_maps,
    feature_distance_map,
    gaussian_blur,
    gaussian_kernel1d,
    image_scores,
    latent_distance_map,
)


def test_latent_map_is_channel_mean_upsampled_align_corners():
    z = torch.zeros(1, 4, 2, 2)
    z_hat = torch.zeros(1, 4, 2, 2)
    z_hat[0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean |diff| = 3
    m = latent_distance_map(z, z_hat, 8)
    assert m.shape == (1, 8, 8)
    assert float(m[0, 0, 0]) == pytest.approx(3.0)  # align_corners=True keeps the corner value
    assert float(m[0, -1, -1]) == pytest.approx(0.0)


def test_feature_map_per_pixel_cosine():
    a = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2).clone()
    b = a.clone()
    b[0, :, 1, 1] = torch.tensor([0.0, 1.0])  # orthogonal at one position: 1 - cos = 1
    c = -a  # opposite everywhere: 2
    m = feature_distance_map([a, a], [b, c], 2)
    expected = torch.full((2, 2), 2.0)
    expected[1, 1] = 3.0
    torch.testing.assert_close(m[0], expected)


def test_kernel_matches_definition():
    k = gaussian_kernel1d(4.0)
    assert k.numel() == 33
    assert float(k.sum()) == pytest.approx(1.0)
    x = torch.arange(-16, 17, dtype=torch.float64)
    ref = torch.exp(-(x**2) / 32)
    torch.testing.assert_close(k.double(), ref / ref.sum(), atol=1e-7, rtol=0)


def test_blur_matches_scipy_reflect():
    # kornia 'reflect' == numpy/scipy 'mirror' (edge not repeated).
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 64, 48)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(maps), 4.0).numpy()
    ref = ndimage.gaussian_filter(maps, sigma=(0, 4, 4), mode="mirror", truncate=4.0)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert torch.equal(gaussian_blur(torch.from_numpy(maps), 0), torch.from_numpy(maps))  # sigma 0: the input as is


def test_blend_weights_and_normalization():
    norm = MapNormalization(latent_min=1.0, latent_max=3.0, feature_min=0.0, feature_max=4.0)
    lat = torch.full((1, 40, 40), 2.0)  # -> 0.5
    feat = torch.full((1, 40, 40), 4.0)  # -> 1.0
    a = blend_maps(lat, feat, norm, latent_weight=0.85, sigma=4.0)
    torch.testing.assert_close(a, torch.full((1, 40, 40), 0.85 * 0.5 + 0.15 * 1.0))
    assert image_scores(a).shape == (1,)
    stats = MapNormalization.from_maps(torch.tensor([[1.0, 5.0]]), torch.tensor([[0.0, 2.0]]))
    assert stats == MapNormalization(1.0, 5.0, 0.0, 2.0)
    assert MapNormalization.from_dict(stats.to_dict()) == stats
    assert stats.merge(MapNormalization(0.0, 1.0, -1.0, 9.0)) == MapNormalization(0.0, 5.0, -1.0, 9.0)


def test_map_of_one_image_does_not_depend_on_batch():
    torch.manual_seed(0)
    z, z_hat = torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8)
    f = [torch.randn(5, 6, 8, 8), torch.randn(5, 7, 4, 4)]
    g = [torch.randn(5, 6, 8, 8), torch.randn(5, 7, 4, 4)]
    norm = MapNormalization(0.0, 2.0, 0.0, 3.0)

    def full(idx):
        lat = latent_distance_map(z[idx], z_hat[idx], 64)
        feat = feature_distance_map([t[idx] for t in f], [t[idx] for t in g], 64)
        return blend_maps(lat, feat, norm)

    batch = full(slice(None))
    for i in range(5):
        torch.testing.assert_close(full(slice(i, i + 1))[0], batch[i], atol=1e-6, rtol=0)
    # And shuffling the other images changes nothing.
    torch.testing.assert_close(full(torch.tensor([2, 0, 4]))[1], batch[0], atol=1e-6, rtol=0)


def test_upsampling_matches_interpolate():
    d = torch.rand(3, 4, 4)
    ref = F.interpolate(d[:, None], size=(16, 16), mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(latent_distance_map(torch.zeros(3, 1, 4, 4), d[:, None], 16), ref)
