"""Out-of-sample maps of the good images of a fit: each image scored as if it had never been part of it.

A threshold set on scores of images that also built the model sits too low or too high for new frames. Holding
images out costs the bank images and leaves the threshold on few scores. Instead, every good image is kept in
every fitted statistic, and each one is scored leaving itself out:

1. ``good_components``: the raw component maps of the good images with their own entries left out of the
   noise-level bank (``NoiseLevelEstimator``, ``exclude``) and of the patch bank (``PatchKNN``: each coreset patch
   remembers its source image); synthetic defects made on good image ``i`` leave ``i`` out too;
2. ``out_of_sample_maps``: each map normalised with the statistics of the *other* images -- per-position
   statistics in closed form (``PositionNorm.leave_one_out``), min-max ranges from the other images' extremes --
   then blended and blurred as in service;
3. ``deployed_statistics``: what the bundle ships, the same statistics over all N images, so the maps a new frame
   gets are made exactly as the calibration maps were, with one more image in each statistic.

The only fitted part that is not left out is the UNet (and a domain-adapted backbone): retraining it N times is
not affordable. It is trained on a share of the good images (``TrainConfig.holdout_fraction``), and the fit
records how the reconstruction terms of the images it never saw compare with those of the ones it trained on
(``reconstruction_gap``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ddad_core.anomaly_map import MapNormalization, combine_maps, component_weights
from ddad_core.pipeline import DDADPipeline, MapComponents
from ddad_core.position_norm import PositionNorm
from ddad_core.progress import Step, map_batches

__all__ = ["deployed_statistics", "good_components", "out_of_sample_maps", "reconstruction_gap"]


def good_components(
    pipe: DDADPipeline,
    images: torch.Tensor,
    source: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 16,
    step: Step | None = None,
    knn: bool | None = None,
) -> MapComponents:
    """Raw components of ``images``, each with good image ``source[i]`` of the fit left out of the banks.

    Args:
        pipe: The fitted pipeline (banks over all good images, in fit order).
        images: ``(M, 3, S, S)`` preprocessed images.
        source: Per image, the index of the good image it is (or was made from); default ``0..M-1`` (the good
            images themselves). -1 leaves nothing out.
        batch_size: Images per batch.
        step: Progress step counting the images.
        knn: As in ``DDADPipeline.components``.
    """
    source = torch.arange(len(images)) if source is None else torch.as_tensor(source, dtype=torch.long)
    if source.shape != (len(images),):
        raise ValueError(f"source must have one entry per image ({len(images)}), got {tuple(source.shape)}")
    order = torch.arange(len(images))

    def run(index: torch.Tensor) -> MapComponents:
        return pipe.components(images[index], knn=knn, exclude=source[index])

    return MapComponents.concat(map_batches(run, order, batch_size, step))


def _weighted_maps(pipe: DDADPipeline, comps: MapComponents, overrides: dict[str, Any]) -> dict[str, torch.Tensor]:
    cfg = pipe.config.model_copy(update=overrides)
    weights = component_weights(cfg.latent_weight, cfg.knn_weight)
    return {k: v for k, v in comps.maps().items() if k in weights}


def _minmax_leave_one_out(good: MapComponents, names: Sequence[str], source: torch.Tensor) -> list[MapNormalization]:
    """Per target row, the min-max statistics of the good images other than ``source[row]``."""
    n = len(good)
    if n < 2:
        raise ValueError("leave-one-out statistics need at least two good images")
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        flat = good.maps()[name].flatten(1)
        ranges[name] = (flat.amin(dim=1).double().numpy(), flat.amax(dim=1).double().numpy())
    out = []
    for s in source.tolist():
        keep = np.ones(n, dtype=bool)
        if s >= 0:
            keep[s] = False
        values: dict[str, float] = {}
        for name, (lows, highs) in ranges.items():
            values[f"{name}_min"], values[f"{name}_max"] = float(lows[keep].min()), float(highs[keep].max())
        out.append(MapNormalization(**values))
    return out


def _position_rows(stats: dict[str, torch.Tensor], source: torch.Tensor) -> PositionNorm:
    """Per target row, the per-position statistics of the good images other than ``source[row]`` (all of them for
    -1); the leave-one-out statistics are computed only when some row needs them."""
    full = PositionNorm.fit(stats)
    left_out = source >= 0
    if not bool(left_out.any()):
        return full
    loo = PositionNorm.leave_one_out(stats).select(source.clamp_min(0))
    means, sds = {}, {}
    for name in loo.names:
        keep = left_out.view(-1, 1, 1)
        means[name] = torch.where(keep, getattr(loo, f"mean_{name}"), getattr(full, f"mean_{name}"))
        sds[name] = torch.where(keep, getattr(loo, f"sd_{name}"), getattr(full, f"sd_{name}"))
    return PositionNorm(means, sds)


def out_of_sample_maps(
    pipe: DDADPipeline,
    good: MapComponents,
    target: MapComponents | None = None,
    source: Sequence[int] | torch.Tensor | None = None,
    overrides: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Blended maps of ``target`` (default: the good images themselves), row ``i`` normalised with the statistics
    of every good image except ``source[i]`` (default ``0..N-1``; -1 = all of them).

    Args:
        pipe: The pipeline whose map settings apply (``overrides``: other map settings, e.g. a candidate of
            ``--select``).
        good: Out-of-sample components of all N good images of the fit (``good_components``).
        target: Components to blend (synthetic defects made on good images, for example).
        source: Per target row, the good image to leave out of the statistics.
        overrides: Map settings (``knn_weight``, ``latent_weight``, ``component_norm``, ``blur_sigma``).
    """
    overrides = overrides or {}
    target = good if target is None else target
    n_target = len(target)
    source = torch.arange(n_target) if source is None else torch.as_tensor(source, dtype=torch.long)
    cfg = pipe.config.model_copy(update=overrides)
    weights = component_weights(cfg.latent_weight, cfg.knn_weight)
    stats = _weighted_maps(pipe, good, overrides)
    if cfg.component_norm == "position":
        return combine_maps(target.maps(), weights, position_norm=_position_rows(stats, source), sigma=cfg.blur_sigma)
    norms = _minmax_leave_one_out(good, list(stats), source)
    groups: dict[MapNormalization, list[int]] = {}
    for i, norm in enumerate(norms):
        groups.setdefault(norm, []).append(i)
    out = torch.empty(next(iter(target.maps().values())).shape, dtype=torch.float32)
    for norm, rows in groups.items():
        out[rows] = combine_maps(target.select(rows).maps(), weights, norm, sigma=cfg.blur_sigma).float()
    return out


def deployed_statistics(
    pipe: DDADPipeline, good: MapComponents, overrides: dict[str, Any] | None = None
) -> tuple[MapNormalization, PositionNorm | None]:
    """The statistics the bundle ships: min-max ranges and (for ``component_norm="position"``) per-position
    statistics over all N good images' out-of-sample components."""
    cfg = pipe.config.model_copy(update=overrides or {})
    normalization = MapNormalization.from_maps(good.latent_map, good.feature_map, good.knn_map)
    position = PositionNorm.fit(good.maps()) if cfg.component_norm == "position" else None
    return normalization, position


def reconstruction_gap(good: MapComponents, unet_trained: np.ndarray) -> dict[str, float] | None:
    """How the reconstruction terms of good images the UNet never trained on compare with those it trained on:
    per component, the median image maximum of the unseen ones over that of the seen ones (1.0 = no gap; above 1:
    the calibration scores of trained-on images are optimistic). None when either group is empty."""
    seen = np.asarray(unet_trained, dtype=bool)
    if seen.all() or not seen.any():
        return None
    out = {"unet_trained_images": int(seen.sum()), "unet_unseen_images": int((~seen).sum())}
    for name in ("latent", "feature"):
        if getattr(good, f"{name}_map") is None:
            return None
        peaks = getattr(good, f"{name}_map").flatten(1).amax(dim=1).numpy()
        out[f"{name}_unseen_over_seen"] = float(np.median(peaks[~seen]) / max(np.median(peaks[seen]), 1e-12))
    return out
