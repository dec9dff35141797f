"""The fixed split of a test set into a ``tune`` half and a ``report`` half.

Every setting (threshold, noise level, any hyper-parameter) is chosen on the ``tune`` half; every published figure
comes from the ``report`` half, so no reported number was seen while choosing.

Rule:

1. Key of an image: its path relative to the dataset's ``test/`` folder, written with forward slashes
   (``crack/003.png``, ``good/017.png``).
2. Within each defect-type folder (``good`` included), order the images by the SHA-256 hex digest of the UTF-8
   bytes of their key (ties, possible only for equal digests, by the key itself).
3. Positions 0, 2, 4, ... of that order go to ``tune``; positions 1, 3, 5, ... to ``report``.

Consequences:

* Each half holds half of every defect type; ``tune`` gets the extra image of an odd count.
* The half of an image depends only on the keys in its own defect-type folder: not on other folders, on the order
  in which files are listed, on any seed, or on the machine. (Adding or removing an image inside a folder can move
  the images that sort after it in that folder to the other half.)
* The order is a hash, not a name: adjacent frames of one sequence (``000.png``, ``001.png``, ...) are spread over
  both halves, not systematically kept together.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

HALVES = ("tune", "report")
_VALID = (*HALVES, "all")


def _key(relative_path: str | PurePath) -> str:
    """Forward-slash form of a path relative to ``test/``."""
    if isinstance(relative_path, PurePath):
        return relative_path.as_posix()
    return str(relative_path).replace("\\", "/")


def _check_half(half: str) -> None:
    if half not in _VALID:
        raise ValueError(f"unknown half {half!r}; valid: {', '.join(repr(h) for h in _VALID)}")


def split_half(relative_paths: Sequence[str | PurePath], defect_types: Sequence[str], half: str) -> np.ndarray:
    """Indices of the images in one half of the test set (rule in the module docstring).

    Args:
        relative_paths: Path of each image relative to the dataset's ``test/`` folder (``crack/003.png``); a
            ``PurePath`` or a backslash-separated string is converted to forward slashes.
        defect_types: Defect-type folder of each image (``"good"`` or the defect name).
        half: ``"tune"``, ``"report"`` or ``"all"`` (every index).

    Returns:
        Sorted ``int64`` indices into the given lists.

    Raises:
        ValueError: unknown ``half``, lists of different lengths, or the same path given twice.

    Example:
        >>> paths = ["good/000.png", "good/001.png", "good/002.png", "crack/000.png", "crack/001.png"]
        >>> types = ["good", "good", "good", "crack", "crack"]
        >>> tune, report = split_half(paths, types, "tune"), split_half(paths, types, "report")
        >>> len(tune), len(report), sorted([*tune, *report]) == list(range(5))
        (3, 2, True)
    """
    _check_half(half)
    if len(relative_paths) != len(defect_types):
        raise ValueError(f"{len(relative_paths)} paths but {len(defect_types)} defect types")
    if half == "all":
        return np.arange(len(relative_paths), dtype=np.int64)
    keys = [_key(p) for p in relative_paths]
    if len(set(keys)) != len(keys):
        duplicates = sorted(k for k, count in Counter(keys).items() if count > 1)
        raise ValueError(f"paths given more than once: {', '.join(duplicates[:5])}")

    # 1. Group the indices by defect type.
    by_type: dict[str, list[int]] = defaultdict(list)
    for index, defect_type in enumerate(defect_types):
        by_type[str(defect_type)].append(index)

    # 2. Within each type, order by the SHA-256 digest of the key; 3. keep every other position.
    parity = HALVES.index(half)
    kept: list[int] = []
    for indices in by_type.values():
        ordered = sorted(indices, key=lambda i: (hashlib.sha256(keys[i].encode("utf-8")).hexdigest(), keys[i]))
        kept.extend(ordered[parity::2])
    return np.array(sorted(kept), dtype=np.int64)


def half_of_items(items: Sequence[Any], test_root: Path, half: str) -> list:
    """The items of one half, in their input order.

    Args:
        items: Objects with ``.path`` (a ``Path`` under ``test_root``) and ``.defect_type``, such as
            ``ddad_core.data.MVTecFolder(...).test_items``.
        test_root: The dataset's ``test/`` folder.
        half: ``"tune"``, ``"report"`` or ``"all"``.

    Returns:
        The kept items.

    Raises:
        ValueError: unknown ``half``, or an item's path is not under ``test_root``.

    Example:
        >>> from ddad_core.data import MVTecFolder
        >>> folder = MVTecFolder("/data/bottle", require_test=True)  # doctest: +SKIP
        >>> report = half_of_items(folder.test_items, folder.root / "test", "report")  # doctest: +SKIP
    """
    _check_half(half)
    root = Path(test_root)
    relative = [Path(item.path).relative_to(root) for item in items]
    indices = split_half(relative, [item.defect_type for item in items], half)
    return [items[i] for i in indices]
