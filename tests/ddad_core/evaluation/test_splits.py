"""Tune/report split: the hash rule restated, balance per type, determinism, independence, MVTec items."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pytest

from ddad_core.data import MVTecFolder
from ddad_core.evaluation.splits import HALVES, half_of_items, split_half

COUNTS = {"good": 21, "crack": 8, "scratch": 5, "hole": 1}


def _dataset(counts: dict[str, int] = COUNTS) -> tuple[list[str], list[str]]:
    paths, types = [], []
    for defect_type, count in counts.items():
        for i in range(count):
            paths.append(f"{defect_type}/{i:03d}.png")
            types.append(defect_type)
    return paths, types


def _halves_by_name(paths, types) -> dict[str, set[str]]:
    return {half: {paths[i] for i in split_half(paths, types, half)} for half in HALVES}


def test_matches_the_rule_restated():
    paths, types = _dataset()
    expected = {"tune": set(), "report": set()}
    for defect_type in COUNTS:
        members = sorted(
            (p for p, t in zip(paths, types, strict=True) if t == defect_type),
            key=lambda p: hashlib.sha256(p.encode()).hexdigest(),
        )
        expected["tune"] |= set(members[0::2])
        expected["report"] |= set(members[1::2])
    assert _halves_by_name(paths, types) == expected


def test_balanced_per_type_tune_gets_the_odd_one():
    paths, types = _dataset()
    types_arr = np.array(types)
    for defect_type, count in COUNTS.items():
        n_tune = int(np.sum(types_arr[split_half(paths, types, "tune")] == defect_type))
        n_report = int(np.sum(types_arr[split_half(paths, types, "report")] == defect_type))
        assert (n_tune, n_report) == ((count + 1) // 2, count // 2)


def test_disjoint_union_all_sorted_indices():
    paths, types = _dataset()
    tune, report = split_half(paths, types, "tune"), split_half(paths, types, "report")
    assert tune.dtype == np.int64 and np.all(np.diff(tune) > 0) and np.all(np.diff(report) > 0)
    assert not set(tune) & set(report)
    assert sorted([*tune, *report]) == list(range(len(paths)))
    assert split_half(paths, types, "all").tolist() == list(range(len(paths)))


def test_deterministic_and_independent_of_input_order():
    paths, types = _dataset()
    first = _halves_by_name(paths, types)
    assert _halves_by_name(paths, types) == first
    order = np.random.default_rng(0).permutation(len(paths))
    assert _halves_by_name([paths[i] for i in order], [types[i] for i in order]) == first


def test_independent_of_files_of_other_types():
    paths, types = _dataset()
    first = _halves_by_name(paths, types)
    more = _halves_by_name([*paths, "contamination/000.png"], [*types, "contamination"])
    assert more["tune"] - {"contamination/000.png"} == first["tune"]
    assert more["report"] == first["report"]
    fewer = _halves_by_name(*_dataset({"good": 21, "crack": 8}))
    assert fewer["tune"] == {p for p in first["tune"] if p.split("/")[0] in ("good", "crack")}


def test_consecutive_frames_are_spread():
    paths, types = _dataset({"good": 200})
    tune = set(split_half(paths, types, "tune").tolist())
    # Frame pairs (2j, 2j+1) split by name parity would always be separated; by hash about half of them are.
    same_half = sum((2 * j in tune) == (2 * j + 1 in tune) for j in range(100))
    assert 25 < same_half < 75


def test_path_forms_give_the_same_split():
    paths, types = _dataset()
    expected = split_half(paths, types, "report")
    assert split_half([PurePosixPath(p) for p in paths], types, "report").tolist() == expected.tolist()
    assert split_half([PureWindowsPath(p) for p in paths], types, "report").tolist() == expected.tolist()
    assert split_half([p.replace("/", "\\") for p in paths], types, "report").tolist() == expected.tolist()


def test_bad_half_and_bad_inputs():
    paths, types = _dataset()
    with pytest.raises(ValueError, match="'tune', 'report', 'all'") as info:
        split_half(paths, types, "test")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="defect types"):
        split_half(paths, types[:-1], "tune")
    with pytest.raises(ValueError, match="more than once"):
        split_half([*paths, paths[0]], [*types, types[0]], "tune")
    with pytest.raises(ValueError, match="valid"):
        half_of_items([], Path("/data/test"), "Tune")


def test_half_of_items_on_an_mvtec_folder(tmp_path):
    root = tmp_path / "bottle"
    (root / "train" / "good").mkdir(parents=True)
    (root / "train" / "good" / "000.png").touch()  # the scan lists files, it decodes nothing
    paths, _ = _dataset()
    for relative in paths:
        (root / "test" / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / "test" / relative).touch()
    folder = MVTecFolder(root)
    items = folder.test_items
    by_half = {half: half_of_items(items, root / "test", half) for half in (*HALVES, "all")}
    assert by_half["all"] == items
    for half in HALVES:
        kept = by_half[half]
        assert [item for item in items if item in kept] == kept  # input order kept
        assert {item.path.relative_to(root / "test").as_posix() for item in kept} == _halves_by_name(*_dataset())[half]
    reversed_items = items[::-1]
    assert half_of_items(reversed_items, root / "test", "tune") == by_half["tune"][::-1]
