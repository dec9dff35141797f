"""Shared helpers of core2's tests (fixtures live in the test files; conftest.py belongs to core1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddad_core.testing import make_tiny_bundle, synthetic_textures


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
