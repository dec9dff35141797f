"""Synthetic defects: determinism, locality, mask bounds, visibility, types, grayscale, Perlin statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from ddad_core.fitting.synthetic import (
    MIN_MEAN_CHANGE,
    SyntheticDefects,
    cutpaste,
    make_synthetic_defects,
    perlin_mask,
    perlin_noise,
    perlin_paste,
)
from ddad_core.preprocess import preprocess

SIZE = 64


def _texture(name: str, size: int = SIZE) -> np.ndarray:
    """A CC0 skimage texture (gray), centre-cropped and subsampled to ``size`` x ``size`` x 3 uint8."""
    img = getattr(data, name)()
    img = img[: min(img.shape[:2]), : min(img.shape[:2])]
    step = img.shape[0] // size
    img = np.ascontiguousarray(img[::step, ::step][:size, :size])
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]


def _colour(size: int = SIZE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.5 + 0.3 * np.sin(6 * xx), 0.4 + 0.3 * yy, 0.6 - 0.2 * xx * yy], -1)
    return np.clip(np.rint((img + 0.02 * rng.standard_normal(img.shape)) * 255), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [
        _texture("brick"),
        _texture("grass"),
        _texture("gravel"),
        _colour(),
        _colour(seed=1),
        np.full((SIZE, SIZE, 3), 128, np.uint8),
    ]


@pytest.fixture(scope="module")
def tensor(images) -> torch.Tensor:
    return preprocess(images, image_size=SIZE)


def _change_in_mask(orig, out, mask, unit: float) -> float:
    return float(np.abs(out.astype(np.float64) - orig.astype(np.float64))[mask].mean() / unit)


def test_perlin_noise_is_smooth_at_coarse_scale_and_zero_mean():
    fields = [perlin_noise((128, 128), 4, np.random.default_rng(s)) for s in range(4)]
    for f in fields:
        assert f.dtype == np.float32 and f.shape == (128, 128)
        assert np.abs(f).max() <= 1.0 + 1e-6
        assert np.corrcoef(f[:, :-1].ravel(), f[:, 1:].ravel())[0, 1] > 0.9
        assert np.corrcoef(f[:-1].ravel(), f[1:].ravel())[0, 1] > 0.9
    fine = [perlin_noise((128, 128), 16, np.random.default_rng(s)) for s in range(4)]
    assert abs(float(np.mean(fine))) < 0.05 and float(np.std(fine)) > 0.15
    corr = lambda f: np.corrcoef(f[:, :-2].ravel(), f[:, 2:].ravel())[0, 1]  # noqa: E731
    assert corr(perlin_noise((128, 128), 32, np.random.default_rng(0))) < corr(fields[0])
    rot = perlin_noise((64, 48), (2, 8), np.random.default_rng(0), angle=0.7)
    assert rot.shape == (64, 48) and np.isfinite(rot).all()


def test_perlin_mask_non_empty_and_within_bounds():
    for s in range(30):
        m = perlin_mask((SIZE, SIZE), np.random.default_rng(s), min_area_fraction=0.02, max_area_fraction=0.3)
        assert m.dtype == bool and m.shape == (SIZE, SIZE)
        assert 0.02 <= m.mean() <= 0.3
    # impossible bounds -> the ellipse fallback, still non-empty and near the bounds' geometric mean
    m = perlin_mask(
        (SIZE, SIZE), np.random.default_rng(0), threshold=5.0, min_area_fraction=0.05, max_area_fraction=0.2
    )
    assert m.any() and 0.05 <= m.mean() <= 0.2
    assert perlin_mask((8, 8), np.random.default_rng(0), threshold=5.0).any()


@pytest.mark.parametrize("kind", ["perlin", "cutpaste", "scar"])
def test_defects_are_local_visible_and_bounded(images, kind):
    for i, img in enumerate(images):
        for s in range(3):
            rng = np.random.default_rng((s, i))
            out, mask = perlin_paste(img, rng) if kind == "perlin" else cutpaste(img, rng, scar=kind == "scar")
            assert out.dtype == np.uint8 and out.shape == img.shape and mask.shape == img.shape[:2]
            assert mask.any()
            np.testing.assert_array_equal(out[~mask], img[~mask])
            assert _change_in_mask(img, out, mask, 255 / 2) >= MIN_MEAN_CHANGE
            area = mask.mean()
            if kind == "cutpaste":
                assert 0.015 <= area <= 0.17
            elif kind == "scar":
                assert area <= 0.25 * 16 / SIZE + 0.01


def test_perlin_paste_with_source_and_float_input(images):
    img = images[3].astype(np.float32) / 255
    out, mask = perlin_paste(img, np.random.default_rng(0), source=_texture("gravel", 40))
    assert out.dtype == np.float32 and out.shape == img.shape and 0 <= out.min() and out.max() <= 1
    np.testing.assert_array_equal(out[~mask], img[~mask])
    assert _change_in_mask(img, out, mask, 0.5) >= MIN_MEAN_CHANGE


def test_make_synthetic_defects_tensor_types_and_determinism(tensor):
    a = make_synthetic_defects(tensor, seed=3)
    assert isinstance(a, SyntheticDefects)
    assert a.images.shape == tensor.shape and a.images.dtype == tensor.dtype
    assert a.masks.shape == (len(tensor), SIZE, SIZE) and a.masks.dtype == torch.bool
    assert a.images.min() >= -1 and a.images.max() <= 1
    assert a.kinds == ["perlin", "cutpaste", "scar"] * 2
    keep = ~a.masks[:, None].expand_as(tensor)
    assert torch.equal(a.images[keep], tensor[keep])
    for i in range(len(tensor)):
        m = a.masks[i]
        assert m.any()
        assert (a.images[i][:, m] - tensor[i][:, m]).abs().mean() >= MIN_MEAN_CHANGE
    b = make_synthetic_defects(tensor.clone(), seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    c = make_synthetic_defects(tensor, seed=4)
    assert not torch.equal(a.masks, c.masks)
    # an image's defect depends on its index and seed only, not on the rest of the batch
    d = make_synthetic_defects(tensor[:2], seed=3)
    assert torch.equal(d.images, a.images[:2])


def test_make_synthetic_defects_uint8_list_and_kinds(images):
    gray2d = images[0][..., 0].copy()
    batch = [images[0], gray2d, *images[1:4], gray2d]
    res = make_synthetic_defects(batch, seed=0, kinds=("scar", "perlin"))
    assert res.kinds == ["scar", "perlin"] * 3
    for img, out, m in zip(batch, res.images, res.masks, strict=True):
        assert out.dtype == np.uint8 and out.shape == img.shape and m.dtype == bool and m.shape == img.shape[:2]
        np.testing.assert_array_equal(out[~m], img[~m])
        assert _change_in_mask(img, out, m, 255 / 2) >= MIN_MEAN_CHANGE
    again = make_synthetic_defects(batch, seed=0, kinds=("scar", "perlin"))
    assert all(np.array_equal(x, y) for x, y in zip(res.images, again.images, strict=True))
    with pytest.raises(ValueError):
        make_synthetic_defects(batch, seed=0, kinds=("dent",))
    with pytest.raises(TypeError):
        make_synthetic_defects([img.astype(np.float32) for img in batch], seed=0)
    with pytest.raises(ValueError):
        make_synthetic_defects([], seed=0)


def test_grayscale_stays_grayscale(images, tensor):
    gray = [images[0], images[1], images[2]]  # skimage textures: 3 identical channels
    res = make_synthetic_defects(gray * 2, seed=1)
    for out in res.images:
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    t = make_synthetic_defects(tensor[:3].repeat(2, 1, 1, 1), seed=1).images
    assert torch.equal(t[:, 0], t[:, 1]) and torch.equal(t[:, 0], t[:, 2])
    colour = make_synthetic_defects(tensor[3:5], seed=0).images
    assert not torch.equal(colour[:, 0], colour[:, 1])


def test_subtle_defects_are_small_low_contrast_and_local():
    from ddad_core.fitting.synthetic import SUBTLE_KINDS

    rng = np.random.default_rng(0)
    images = [np.clip(120 + 40 * rng.standard_normal((128, 128)), 0, 255).astype(np.uint8) for _ in range(12)]
    made = make_synthetic_defects(images, seed=3, kinds=SUBTLE_KINDS)
    for image, out, mask, kind in zip(images, made.images, made.masks, made.kinds, strict=True):
        assert mask.any() and mask.mean() < 0.04, kind
        assert np.array_equal(out[~mask], image[~mask])
        change = np.abs(out.astype(float) - image.astype(float))[mask].mean()
        assert 1.0 < change < 60.0, (kind, change)
