"""Shared helpers of the ddad_core tests: tiny fitted bundles and fit settings, MVTec-layout folders, generated
defects, a zero UNet (fixtures live in conftest.py and the test files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddad_core.config import DDADConfig, TrainConfig
from ddad_core.testing import make_tiny_bundle, synthetic_textures

#: Keyword arguments of ``fitting.fit.fit`` for a fit in seconds (tiny UNet, one epoch, own autoencoder, random
#: test backbone).
TINY_FIT = dict(
    config=DDADConfig(image_size=64, knn_k=3, da_epochs=1, da_batch_size=8),
    train_config=TrainConfig(preset="tiny", epochs=1, batch_size=8, holdout_fraction=0.25),
    autoencoder="conv",
    autoencoder_epochs=1,
    backbone="test_resnet:random",
    device="cpu",
    progress=False,
    log=None,
    target_fpr=0.2,
)


class ZeroUNet(torch.nn.Module):
    """A stand-in UNet whose noise prediction is always zero (eps_theta == 0): the sampler's own arithmetic alone."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, sample, timestep):
        return type("Out", (), {"sample": torch.zeros_like(sample)})()


def tiny_bundle(root: Path) -> Path:
    """A fitted tiny bundle under ``root`` (built once per caller's fixture scope)."""
    return make_tiny_bundle(root / "tiny_bundle", image_size=64, seed=0)


def write_mvtec(root: Path, n_train: int = 12, n_good: int = 3, n_bad: int = 3, size: int = 64, seed: int = 0) -> Path:
    """A small MVTec-layout folder of synthetic textures with square defects and their masks."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = synthetic_textures(n_train + n_good + n_bad, size, seed)
    for i in range(n_train):
        _save(root / "train" / "good" / f"{i:03d}.png", images[i])
    for i in range(n_good):
        _save(root / "test" / "good" / f"{i:03d}.png", images[n_train + i])
    for i in range(n_bad):
        image = images[n_train + n_good + i].copy()
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(8, size - 24, 2)
        image[y : y + 12, x : x + 12] = 255
        mask[y : y + 12, x : x + 12] = 255
        _save(root / "test" / "blob" / f"{i:03d}.png", image)
        _save(root / "ground_truth" / "blob" / f"{i:03d}_mask.png", mask)
    del Image
    return root


def _save(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ----------------------------------------------------------------------------------------------------------------
# generated defects over a CC0 texture of the scikit-image wheel (quality test, benchmarks of the recipe)


def texture_crops(count: int, size: int, seed: int, source: str = "brick") -> list[np.ndarray]:
    """Random ``size`` x ``size`` gray crops of a scikit-image texture (``brick``, ``grass``, ``gravel``; CC0)."""
    import cv2
    from skimage import data as skdata

    texture = getattr(skdata, source)()
    if texture.ndim == 3:
        texture = cv2.cvtColor(texture, cv2.COLOR_RGB2GRAY)
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        y, x = rng.integers(0, texture.shape[0] - size), rng.integers(0, texture.shape[1] - size)
        crops.append(np.ascontiguousarray(texture[y : y + size, x : x + size]))
    return crops


def plant_defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Plant a scratch (thick line) or a blob (ellipse), bright or dark, and return ``(image, mask)``."""
    import cv2

    size = image.shape[0]
    out = image.astype(np.float32).copy()
    mask = np.zeros(image.shape[:2], np.uint8)
    if rng.integers(0, 2) == 0:
        x0, y0 = (int(v) for v in rng.integers(size // 8, size - size // 8, 2))
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.3 * size, 0.6 * size)
        x1, y1 = int(x0 + length * np.cos(angle)), int(y0 + length * np.sin(angle))
        cv2.line(mask, (x0, y0), (x1, y1), 1, thickness=max(2, size // 32))
    else:
        cx, cy = (int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
        axes = (int(rng.integers(size // 12, size // 6)), int(rng.integers(size // 12, size // 6)))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    value = 255.0 if rng.random() < 0.5 else 0.0
    region = mask.astype(bool)
    out[region] = 0.3 * out[region] + 0.7 * value
    return np.clip(out, 0, 255).astype(np.uint8), region


# ----------------------------------------------------------------------------------------------------------------
# generated machined parts (quality test): every image drawn on its own, never a crop of a shared picture


def machined_parts(count: int, size: int, seed: int) -> list[np.ndarray]:
    """Gray images of a turned part seen from above, each generated independently: a disc with concentric turning
    marks and a central bore on a dark fixture, with the part's position, radius, brightness, mark period and
    lighting varying from part to part, plus sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    parts = []
    for _ in range(count):
        cy, cx = size / 2 + rng.uniform(-2, 2, 2)
        radius = size * rng.uniform(0.40, 0.43)
        r = np.hypot(yy - cy, xx - cx)
        marks = 12 * np.sin(2 * np.pi * r / rng.uniform(4.5, 6.0) + rng.uniform(0, 2 * np.pi))
        light = 25 * ((xx - cx) * np.cos(a := rng.uniform(0, 2 * np.pi)) + (yy - cy) * np.sin(a)) / size
        surface = rng.uniform(140, 160) + marks + light
        image = np.where(r < radius, surface, 35.0)
        image = np.where(r < size * 0.1, 20.0, image)  # the bore
        image += rng.normal(0, 4, image.shape)
        parts.append(np.clip(image, 0, 255).astype(np.uint8))
    return parts


def plant_part_defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A scratch (thin line across the marks) or a dent (small soft-edged spot), bright or dark, of moderate
    contrast, on the part's surface; returns ``(image, mask)``."""
    import cv2

    size = image.shape[0]
    mask = np.zeros(image.shape, np.uint8)
    angle = rng.uniform(0, 2 * np.pi)
    centre = size / 2 + rng.uniform(0.18, 0.3) * size * np.array([np.cos(angle), np.sin(angle)])
    if rng.integers(0, 2) == 0:
        direction = rng.uniform(0, np.pi)
        half = rng.uniform(0.08, 0.15) * size
        step = half * np.array([np.cos(direction), np.sin(direction)])
        p0, p1 = (centre - step).astype(int), (centre + step).astype(int)
        cv2.line(mask, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 1, thickness=2)
    else:
        axes = tuple(int(v) for v in rng.integers(size // 24, size // 12, 2))
        cv2.ellipse(mask, tuple(int(v) for v in centre), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    region = mask.astype(bool)
    out = image.astype(np.float32)
    out[region] += (1 if rng.random() < 0.5 else -1) * rng.uniform(45, 70)
    return np.clip(out, 0, 255).astype(np.uint8), region


# ----------------------------------------------------------------------------------------------------------------
# patterns of the nominal-overlay tests (ddad_core and the services)


def ring(image: np.ndarray, cx: int = 24, cy: int = 30) -> np.ndarray:
    """A dark ring (a harmless mark the good textures never show)."""
    out = image.copy()
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    r = np.hypot(yy - cy, xx - cx)
    out[(r > 4) & (r < 8)] = 30
    return out


def square(image: np.ndarray, x: int = 10, y: int = 40) -> np.ndarray:
    """A bright square (a defect)."""
    out = image.copy()
    out[y : y + 10, x : x + 10] = 255
    return out


def recapture(image: np.ndarray, seed: int) -> np.ndarray:
    """The same scene on a later frame: fresh sensor noise."""
    rng = np.random.default_rng(seed)
    return np.clip(image.astype(np.float32) + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)
