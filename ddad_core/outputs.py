"""Step 8 of the flow (result): the typed output of one inspected batch.

Field names follow anomalib's ``InferenceBatch`` (``pred_score``, ``pred_label``, ``anomaly_map``, ``pred_mask``),
because that is the vocabulary users of inspection systems bring (anomalib's model API). We add the raw score
(``pred_score_raw``, not normalised), the per-image start timestep of the reverse process (``noise_step``) and
per-stage latencies of the batch (``timings_ms``). Services turn one ``item(i)`` into one wire message.
:func:`output_names` names the files ``ddad predict`` writes per input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

_TENSOR_FIELDS = ("pred_score", "pred_score_raw", "pred_label", "anomaly_map", "pred_mask", "noise_step")


@dataclass
class InspectionItem:
    """The result of one image, as plain Python / NumPy values (what a service serialises).

    Attributes:
        pred_score: Normalised score in [0, 1]; 0.5 is the calibrated threshold.
        pred_score_raw: Raw image score (maximum of ``anomaly_map``).
        pred_label: True if the image is judged anomalous.
        anomaly_map: ``(S, S)`` float32 blended, smoothed anomaly map (raw scale, same as ``pred_score_raw``).
        pred_mask: ``(S, S)`` bool predicted defect mask.
        noise_step: Start timestep of the reverse process chosen for this image.
    """

    pred_score: float
    pred_score_raw: float
    pred_label: bool
    anomaly_map: np.ndarray
    pred_mask: np.ndarray
    noise_step: int


@dataclass
class InspectionOutput:
    """Batched detector output (anomalib names) plus raw score, noise step and stage timings.

    Attributes:
        pred_score: ``(B,)`` float, normalised so that 0.5 is the threshold, clamped to [0, 1].
        pred_score_raw: ``(B,)`` float, the raw image score ``max(anomaly_map)``.
        pred_label: ``(B,)`` bool, ``pred_score_raw`` above the (sensitivity-adjusted) image threshold.
        anomaly_map: ``(B, S, S)`` float, the blended and blurred map on the raw scale.
        pred_mask: ``(B, S, S)`` bool, ``anomaly_map`` above the (sensitivity-adjusted) pixel threshold.
        noise_step: ``(B,)`` long, the per-image start timestep T-hat (docs/method.md section 6.3).
        timings_ms: Wall time per pipeline stage for the whole batch, in milliseconds.

    Example:
        >>> out = InspectionOutput(
        ...     pred_score=torch.tensor([0.2, 0.9]), pred_score_raw=torch.tensor([0.1, 0.7]),
        ...     pred_label=torch.tensor([False, True]), anomaly_map=torch.zeros(2, 4, 4),
        ...     pred_mask=torch.zeros(2, 4, 4, dtype=torch.bool), noise_step=torch.tensor([20, 60]))
        >>> len(out), out.item(1).pred_label, out.item(1).noise_step
        (2, True, 60)
    """

    pred_score: torch.Tensor
    pred_score_raw: torch.Tensor
    pred_label: torch.Tensor
    anomaly_map: torch.Tensor
    pred_mask: torch.Tensor
    noise_step: torch.Tensor
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        batch = self.pred_score.shape[0]
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"InspectionOutput.{name} must be a torch.Tensor, got {type(value).__name__}")
            if value.shape[0] != batch:
                raise ValueError(f"InspectionOutput.{name} has batch size {value.shape[0]}, pred_score has {batch}")

    def __len__(self) -> int:
        return int(self.pred_score.shape[0])

    def to(self, device: torch.device | str) -> InspectionOutput:
        """Return a copy with every tensor on ``device``."""
        values = {name: getattr(self, name).to(device) for name in _TENSOR_FIELDS}
        return InspectionOutput(**values, timings_ms=dict(self.timings_ms))

    def to_numpy(self) -> dict[str, np.ndarray]:
        """All tensor fields as NumPy arrays on the host (maps as float32, masks/labels as bool)."""
        out = {}
        for f in fields(self):
            if f.name == "timings_ms":
                continue
            value = getattr(self, f.name).detach().cpu()
            if value.is_floating_point():
                value = value.float()
            out[f.name] = value.numpy()
        return out

    def item(self, index: int) -> InspectionItem:
        """The result of image ``index`` as plain values (one host copy per call)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a batch of {len(self)}")
        return InspectionItem(
            pred_score=float(self.pred_score[index]),
            pred_score_raw=float(self.pred_score_raw[index]),
            pred_label=bool(self.pred_label[index]),
            anomaly_map=self.anomaly_map[index].detach().float().cpu().numpy(),
            pred_mask=self.pred_mask[index].detach().cpu().numpy().astype(bool),
            noise_step=int(self.noise_step[index]),
        )

    def items(self) -> list[InspectionItem]:
        """Every image's result, in batch order."""
        return [self.item(i) for i in range(len(self))]

    @staticmethod
    def concatenate(outputs: list[InspectionOutput]) -> InspectionOutput:
        """Join several batch outputs into one; timings are summed per stage."""
        if not outputs:
            raise ValueError("concatenate needs at least one InspectionOutput")
        values = {name: torch.cat([getattr(o, name) for o in outputs]) for name in _TENSOR_FIELDS}
        timings: dict[str, float] = {}
        for o in outputs:
            for key, ms in o.timings_ms.items():
                timings[key] = timings.get(key, 0.0) + ms
        return InspectionOutput(**values, timings_ms=timings)


def output_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Unique, predictable output stems for a list of input files (``ddad predict``).

    The rule: each input's path relative to the common folder of all inputs, without its extension, with the
    folder separators replaced by ``__``; a name that still repeats (the same file twice, or files that differ
    only in their extension) gets ``~2``, ``~3``, ... in input order (the first free one).

    Example:
        >>> output_names(["d/test/good/000.png", "d/test/crack/000.png", "d/test/crack/001.png"])
        ['good__000', 'crack__000', 'crack__001']
        >>> output_names(["a/000.png", "a/000.jpg", "a/000.png"])
        ['000', '000~2', '000~3']
        >>> output_names(["one/file.png"])
        ['file']
    """
    if not paths:
        return []
    resolved = [Path(os.path.abspath(p)) for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    names: list[str] = []
    used: set[str] = set()
    for path in resolved:
        stem = name = "__".join(path.relative_to(root).with_suffix("").parts)
        repeat = 1
        while name in used:  # also skips a ``~k`` that an input's own name already took
            repeat += 1
            name = f"{stem}~{repeat}"
        used.add(name)
        names.append(name)
    return names
