"""MVTec folder scan: sorted lists, masks, clear layout errors, corrupt images, mask size mismatch."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ddad_core.data import (
    DatasetLayoutError,
    EmptyTrainSetError,
    MaskSizeWarning,
    MVTecFolder,
    SkippedImagesWarning,
    load_images,
    load_mask,
    resize_mask,
)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _make_dataset(root, n_train=3):
    for i in range(n_train):
        _png(root / "train" / "good" / f"{i:03d}.png", np.full((20, 30), i, np.uint8))
    _png(root / "test" / "good" / "000.png", np.zeros((20, 30), np.uint8))
    for name in ("b.png", "a.png"):
        _png(root / "test" / "scratch" / name, np.zeros((20, 30), np.uint8))
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 255
    _png(root / "ground_truth" / "scratch" / "a_mask.png", mask)
    _png(root / "ground_truth" / "scratch" / "b_mask.png", mask)
    return root


def test_scan_sorted_with_masks(tmp_path):
    folder = MVTecFolder(_make_dataset(tmp_path / "cat"), require_test=True)
    assert [p.name for p in folder.train_good] == ["000.png", "001.png", "002.png"]
    assert [(t.defect_type, t.path.name) for t in folder.test_items] == [
        ("good", "000.png"),
        ("scratch", "a.png"),
        ("scratch", "b.png"),
    ]
    assert folder.test_items[1].mask_path.name == "a_mask.png"
    assert folder.test_items[0].mask_path is None and folder.test_items[0].label == 0
    assert folder.test_items[1].label == 1
    assert folder.defect_types == ["scratch"]
    assert "train_good=3" in repr(folder)


def test_layout_errors_name_the_missing_folder(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        MVTecFolder(tmp_path / "nope")
    (tmp_path / "a").mkdir()
    with pytest.raises(DatasetLayoutError, match="'train'"):
        MVTecFolder(tmp_path / "a")
    (tmp_path / "a" / "train").mkdir()
    with pytest.raises(DatasetLayoutError, match="'train/good'"):
        MVTecFolder(tmp_path / "a")
    (tmp_path / "a" / "train" / "good").mkdir()
    with pytest.raises(EmptyTrainSetError, match="no image"):
        MVTecFolder(tmp_path / "a")
    root = _make_dataset(tmp_path / "b")
    MVTecFolder(root)  # fitting does not need test/
    (root / "ground_truth" / "scratch" / "a_mask.png").unlink()
    (root / "ground_truth" / "scratch" / "b_mask.png").unlink()
    (root / "ground_truth" / "scratch").rmdir()
    with pytest.raises(DatasetLayoutError, match="'ground_truth/scratch'"):
        MVTecFolder(root, require_test=True)
    root = _make_dataset(tmp_path / "c")
    for p in sorted((root / "test").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (root / "test").rmdir()
    with pytest.raises(DatasetLayoutError, match="'test'"):
        MVTecFolder(root, require_test=True)


def test_missing_mask_file_warns(tmp_path):
    root = _make_dataset(tmp_path / "cat")
    (root / "ground_truth" / "scratch" / "b_mask.png").unlink()
    with pytest.warns(UserWarning, match="no mask"):
        folder = MVTecFolder(root, require_test=True)
    assert folder.test_items[2].mask_path is None


def test_corrupt_images_listed_and_skipped(tmp_path):
    root = _make_dataset(tmp_path / "cat")
    bad = root / "train" / "good" / "001.png"
    bad.write_bytes(b"not a png")
    folder = MVTecFolder(root)
    with pytest.warns(SkippedImagesWarning, match="001.png"):
        loaded = load_images(folder.train_good)
    assert [p.name for p in loaded.paths] == ["000.png", "002.png"]
    assert len(loaded.images) == 2 and loaded.skipped[0][0] == bad


def test_mask_wrong_size_is_resized_nearest_with_warning(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[:5, :5] = 255
    _png(tmp_path / "m.png", mask)
    with pytest.warns(MaskSizeWarning, match="nearest"):
        resized = load_mask(tmp_path / "m.png", image_shape=(20, 20, 3))
    assert resized.shape == (20, 20) and resized.dtype == bool
    assert resized[:10, :10].all() and not resized[10:, :].any()
    assert set(np.unique(resized)) <= {False, True}
    same = load_mask(tmp_path / "m.png", image_shape=(10, 10))
    assert same.sum() == 25
    assert resize_mask(np.ones((3, 3), bool), (2, 5)).shape == (2, 5)
