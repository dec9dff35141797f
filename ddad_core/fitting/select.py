"""Per-product tuning without defect images (``ddad fit --select``): choose sampler and map settings on synthetic
defects made on held-out good images.

Users have only good parts. After the UNet, the backbone and the banks are fitted, a small grid of settings that
need no retraining (``DDADPipeline.with_settings``) is scored on how well each separates the good images from
synthetic defects pasted on some of them (``ddad_core.fitting.synthetic``: DRAEM-style Perlin pastes, CutPaste,
scars), every image scored out of sample (``out_of_sample.py``: its own entries left out of the banks and the
statistics):

1. candidates are grouped by their sampler settings: each group runs the pipeline once on the good images and the
   synthetic defects; map-only settings re-blend those components;
2. each candidate gets the mean of image AUROC, pixel AUROC and AUPRO (exact) over good + synthetic;
3. the best candidate wins; a tie keeps the earlier one, and the recipe's own settings come first, so a flat
   grid changes nothing. The whole table and the choice go into ``bundle.json["metadata"]["selection"]``.

Synthetic defects are not the product's defects: whether the choice helps on real ones is measured in the README
(``bench/bench_detector.py --select``), not assumed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import product
from typing import Any

import numpy as np
import torch

from ddad_core.evaluation.metrics import aupro, auroc, pixel_auroc
from ddad_core.pipeline import DDADPipeline
from ddad_core.progress import Progress, as_progress

__all__ = ["DEFAULT_GRID", "SelectionResult", "select_settings"]

#: The default grid: guidance w (sampler) x weight of the k-NN term x lambda x normalisation (map only). The recipe's
#: own values are put first by ``select_settings``.
DEFAULT_GRID: dict[str, Sequence[Any]] = {
    "guidance": (4.0, 10.0),
    "knn_weight": (0.5, 0.75, 1.0),
    "latent_weight": (0.5, 0.85),
    # per-position statistics help where parts sit at the same place in every frame and hurt where they do not
    "component_norm": ("position", "minmax"),
}

#: Fields a candidate may set without rerunning the pipeline.
MAP_FIELDS = frozenset({"knn_weight", "latent_weight", "blur_sigma", "component_norm"})


def separation(good_maps: torch.Tensor, defect_maps: torch.Tensor, defect_masks: torch.Tensor) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO of good vs synthetic maps, and their mean (the selection score)."""
    maps = torch.cat([good_maps, defect_maps]).numpy()
    masks = torch.cat([torch.zeros(good_maps.shape, dtype=torch.bool), defect_masks.bool().cpu()]).numpy()
    labels = np.r_[np.zeros(len(good_maps)), np.ones(len(defect_maps))]
    scores = maps.reshape(len(maps), -1).max(axis=1)
    out = {"image_auroc": auroc(scores, labels), "pixel_auroc": pixel_auroc(maps, masks), "aupro": aupro(maps, masks)}
    out["score"] = float(np.mean(list(out.values())))
    return out


class SelectionResult(dict):
    """``{"chosen": overrides, "table": [{"settings", "image_auroc", "pixel_auroc", "aupro", "score"}, ...]}``."""


def _candidates(pipe: DDADPipeline, grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    own = {n: getattr(pipe.config, n) for n in names}
    combos = [dict(zip(names, values, strict=True)) for values in product(*(grid[n] for n in names))]
    return [own] + [c for c in combos if c != own]


def select_settings(
    pipe: DDADPipeline,
    good_images: torch.Tensor,
    defect_images: torch.Tensor,
    defect_masks: torch.Tensor,
    defect_source: Sequence[int] | np.ndarray,
    grid: dict[str, Sequence[Any]] | None = None,
    batch_size: int = 16,
    log: Callable[[str], None] | None = None,
    progress: Progress | bool = False,
) -> SelectionResult:
    """Score every candidate of ``grid`` and return the best overrides with the whole table.

    Args:
        pipe: The fitted pipeline (its networks and banks over ``good_images`` are shared by every candidate).
        good_images: The good images of the fit, in bank order.
        defect_images: Synthetic defects made on some of them.
        defect_masks: Their masks ``(K, S, S)``.
        defect_source: Per defect, the index of the good image it was made on.
        grid: Field -> values (default ``DEFAULT_GRID``); sampler fields rerun the pipeline, ``MAP_FIELDS`` do not.
        batch_size: Images per batch.
        log: One line per candidate.
        progress: Progress of the pipeline runs (step ``selection``).

    Returns:
        ``{"chosen", "table", "recipe_default", "components"}``; ``components`` is ``(good, defects)`` of the chosen
        candidate's sampler settings (for calibration to reuse; not part of the record).
    """
    from ddad_core.fitting.out_of_sample import good_components, out_of_sample_maps

    grid = dict(DEFAULT_GRID if grid is None else grid)
    if pipe.patch_knn is None:
        grid.pop("knn_weight", None)  # no nominal bank in this bundle: the k-NN term cannot be weighed in
    if pipe.unet is None:  # a patch-only bundle: nothing to reconstruct, only the normalisation to choose
        grid = {k: v for k, v in grid.items() if k == "component_norm"}
    candidates = _candidates(pipe, grid)
    knn = pipe.patch_knn is not None
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for cand in candidates:
        key = tuple(sorted((k, v) for k, v in cand.items() if k not in MAP_FIELDS))
        groups.setdefault(key, []).append(cand)
    table, components = [], {}
    progress = as_progress(progress)
    with progress.step("selection", total=len(groups) * (len(good_images) + len(defect_images))) as step:
        for key, members in groups.items():
            variant = pipe.with_settings(**dict(key))
            good = good_components(variant, good_images, batch_size=batch_size, step=step, knn=knn)
            defect = good_components(variant, defect_images, defect_source, batch_size, step, knn=knn)
            components[key] = (good, defect)
            for cand in members:
                map_part = {k: v for k, v in cand.items() if k in MAP_FIELDS}
                good_maps = out_of_sample_maps(variant, good, overrides=map_part)
                defect_maps = out_of_sample_maps(variant, good, defect, defect_source, map_part)
                result = separation(good_maps, defect_maps, defect_masks)
                table.append({"settings": cand, **result})
                if log is not None:
                    log(f"  select {cand}: score {result['score']:.4f}")
    best = max(range(len(table)), key=lambda i: (table[i]["score"], -i))
    chosen = table[best]["settings"]
    key = tuple(sorted((k, v) for k, v in chosen.items() if k not in MAP_FIELDS))
    return SelectionResult(chosen=chosen, table=table, recipe_default=table[0]["settings"], components=components[key])
