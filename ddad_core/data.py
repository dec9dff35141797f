"""Offline data access (fit and eval, not serving): the MVTec AD folder layout.

Layout (docs/method.md section 2)::

    <root>/train/good/*                         defect-free training images
    <root>/test/good/*                          defect-free test images
    <root>/test/<defect>/*                      defective test images
    <root>/ground_truth/<defect>/<name>_mask.*  binary masks (VisA/BTAD style ``<name>.png`` also accepted)

File lists are sorted (quirk Q9: the reference code uses unsorted ``glob``). Images are decoded with
``ddad_core.preprocess.load_image``, the same decoder the services use; files that fail to decode are listed and
skipped, never silently dropped.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LAYOUT_HINT = "expected the MVTec AD layout: train/good/, test/<type>/, ground_truth/<type>/<name>_mask.png"


class DatasetLayoutError(FileNotFoundError):
    """The data folder is not in MVTec layout; the message names the missing folder."""


class EmptyTrainSetError(ValueError):
    """``train/good`` holds no usable image."""


class MaskSizeWarning(UserWarning):
    """A ground-truth mask's size differs from its image; it was resized with nearest neighbour."""


class SkippedImagesWarning(UserWarning):
    """Some images failed to decode and were skipped."""


@dataclass(frozen=True)
class TestItem:
    """One test image.

    Attributes:
        path: Image file.
        defect_type: ``"good"`` or the name of the defect folder.
        mask_path: Ground-truth mask file, or None (always None for good images).
    """

    __test__ = False  # not a pytest test class despite the name

    path: Path
    defect_type: str
    mask_path: Path | None = None

    @property
    def label(self) -> int:
        """1 for a defective image, 0 for a good one."""
        return int(self.defect_type != "good")


@dataclass
class LoadedImages:
    """Decoded images and the files that could not be decoded.

    Attributes:
        images: uint8 arrays ``(H, W)`` or ``(H, W, 3)``, in the order of ``paths``.
        paths: The files that were decoded.
        skipped: ``(path, reason)`` for every file that failed.
    """

    images: list[np.ndarray] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def evenly_spaced(n: int, limit: int | None) -> np.ndarray:
    """Sorted indices of at most ``limit`` of ``n`` items, evenly spaced from the first to the last (all of them
    when ``limit`` is None or not smaller than ``n``): the one rule for thinning training images, test sets and
    synthetic defects, so a subset can be found again from ``n`` and ``limit`` alone.

    Example:
        >>> evenly_spaced(10, 4).tolist(), evenly_spaced(3, 5).tolist()
        ([0, 3, 6, 9], [0, 1, 2])
    """
    if limit is None or n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden files ignored)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def _find_mask(gt_dir: Path, image_path: Path) -> Path | None:
    # MVTec: <stem>_mask.png; VisA/BTAD: <stem>.png (or another image extension).
    for stem in (f"{image_path.stem}_mask", image_path.stem):
        for ext in (".png", *IMAGE_EXTENSIONS):
            candidate = gt_dir / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
    return None


class MVTecFolder:
    """A scanned MVTec-layout folder (file lists only; nothing is decoded here).

    Args:
        root: Dataset folder (one category).
        require_test: Also require ``test/`` (evaluation); fitting only needs ``train/good``.
        require_train: Require ``train/good`` with images; evaluation does not read it (a labelled set exported
            from the line has none).

    Raises:
        DatasetLayoutError: ``root`` or a required sub-folder does not exist (the message names it).
        EmptyTrainSetError: ``train/good`` holds no image file.

    Example:
        >>> folder = MVTecFolder("/data/bottle", require_test=True)  # doctest: +SKIP
        >>> len(folder.train_good), folder.defect_types  # doctest: +SKIP
        (209, ['broken_large', 'broken_small', 'contamination'])
    """

    def __init__(self, root: str | Path, require_test: bool = False, require_train: bool = True) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetLayoutError(f"data folder {self.root} does not exist")
        train_dir = self.root / "train" / "good"
        if require_train and not train_dir.is_dir():
            missing = "train" if not (self.root / "train").is_dir() else "train/good"
            raise DatasetLayoutError(f"{self.root}: missing folder '{missing}' ({LAYOUT_HINT})")
        self.train_good: list[Path] = list_images(train_dir) if train_dir.is_dir() else []
        if require_train and not self.train_good:
            raise EmptyTrainSetError(f"{train_dir} holds no image file (extensions {', '.join(IMAGE_EXTENSIONS)})")

        self.test_items: list[TestItem] = []
        self.missing_masks: list[Path] = []
        test_dir = self.root / "test"
        if not test_dir.is_dir():
            if require_test:
                raise DatasetLayoutError(f"{self.root}: missing folder 'test' ({LAYOUT_HINT})")
            return
        type_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if require_test and not type_dirs:
            raise DatasetLayoutError(
                f"{test_dir}: no sub-folder (need test/good and test/<defect type>) ({LAYOUT_HINT})"
            )
        for type_dir in type_dirs:
            defect_type = type_dir.name
            gt_dir = self.root / "ground_truth" / defect_type
            if defect_type != "good" and require_test and not gt_dir.is_dir():
                missing = "ground_truth" if not (self.root / "ground_truth").is_dir() else f"ground_truth/{defect_type}"
                raise DatasetLayoutError(f"{self.root}: missing folder '{missing}' ({LAYOUT_HINT})")
            for path in list_images(type_dir):
                mask = None
                if defect_type != "good" and gt_dir.is_dir():
                    mask = _find_mask(gt_dir, path)
                    if mask is None:
                        self.missing_masks.append(path)
                self.test_items.append(TestItem(path=path, defect_type=defect_type, mask_path=mask))
        if require_test and not self.test_items:
            raise DatasetLayoutError(f"{test_dir}: no test image found ({LAYOUT_HINT})")
        if self.missing_masks:
            names = ", ".join(str(p.relative_to(self.root)) for p in self.missing_masks[:5])
            warnings.warn(
                f"{len(self.missing_masks)} defective test image(s) have no mask under ground_truth/ "
                f"(e.g. {names}); they count for image metrics only",
                stacklevel=2,
            )

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect folder names (without ``good``)."""
        return sorted({item.defect_type for item in self.test_items} - {"good"})

    def __repr__(self) -> str:
        return (
            f"MVTecFolder(root={str(self.root)!r}, train_good={len(self.train_good)}, "
            f"test={len(self.test_items)}, defect_types={self.defect_types})"
        )


def load_images(paths: Iterable[str | Path], warn: bool = True) -> LoadedImages:
    """Decode image files, skipping (and listing) the ones that fail.

    Args:
        paths: Image files.
        warn: Emit one ``SkippedImagesWarning`` listing every skipped file.

    Returns:
        LoadedImages with the decoded arrays, their paths and the skipped files with reasons.
    """
    from ddad_core.preprocess import load_image

    loaded = LoadedImages()
    for path in paths:
        path = Path(path)
        try:
            loaded.images.append(load_image(path))
            loaded.paths.append(path)
        except (ValueError, OSError) as exc:  # ImageDecodeError is a ValueError
            loaded.skipped.append((path, str(exc)))
    if loaded.skipped and warn:
        listing = "; ".join(f"{p}: {reason}" for p, reason in loaded.skipped)
        warnings.warn(
            f"skipped {len(loaded.skipped)} image(s) that failed to decode: {listing}",
            SkippedImagesWarning,
            stacklevel=2,
        )
    return loaded


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a binary mask (no fractional boundary pixels, docs/method.md section 11.4).

    Args:
        mask: ``(H, W)`` bool or integer mask.
        size: Target ``S`` (square) or ``(height, width)``.

    Returns:
        ``(height, width)`` bool mask.

    Example:
        >>> resize_mask(np.eye(2, dtype=bool), 4).astype(int).tolist()[0]
        [1, 1, 0, 0]
    """
    height, width = (size, size) if isinstance(size, int) else size
    resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)


def load_mask(path: str | Path, image_shape: Sequence[int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as bool (pixel > 127), matched to its image's size.

    Args:
        path: Mask file (0/255 PNG in MVTec).
        image_shape: ``(H, W, ...)`` of the image; a mask of another size is resized with nearest neighbour and a
            ``MaskSizeWarning`` names the file and both sizes.

    Returns:
        ``(H, W)`` bool mask.

    Raises:
        ValueError: the mask cannot be decoded (``ImageDecodeError``).
    """
    from ddad_core.preprocess import load_image

    mask = load_image(path)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    mask = mask > 127
    if image_shape is not None and tuple(mask.shape[:2]) != tuple(image_shape[:2]):
        warnings.warn(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {image_shape[1]}x{image_shape[0]}; "
            "resized with nearest neighbour",
            MaskSizeWarning,
            stacklevel=2,
        )
        mask = resize_mask(mask, (int(image_shape[0]), int(image_shape[1])))
    return mask
