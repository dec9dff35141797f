"""Flow step 7 (production recipe), patch k-NN term: distance of every patch to a bank of nominal patches.

A departure from D3AD, used only by recipes with ``DDADConfig.knn_weight > 0`` (the ``production`` recipe): the
reconstruction terms miss defects that the small UNet "repairs" badly, while a PatchCore-style nearest-neighbour
distance on the same backbone's features finds them (Roth et al., "Towards Total Recall in Industrial Anomaly
Detection", CVPR 2022). The two are blended after per-position standardisation (``position_norm.py``).

1. ``patch_features``: blocks 2 and 3 of the backbone (strides 8 and 16), each averaged over its 3 x 3
   neighbourhood ("locally aware" patches), block 3 upsampled to block 2's grid, concatenated; or, with
   ``DDADConfig.knn_features = "expanded"``, the 6x wider activations after the expansion convolution inside the last
   block at those strides (inverted-residual backbones), taken from the same forward pass;
2. ``greedy_coreset``: the bank of every training patch is reduced by greedy k-centre selection on a random
   projection (PatchCore's coreset), so memory and query time stay bounded (``DDADConfig.knn_bank_size``);
3. ``PatchKNN.forward``: L2 distance of every query patch to its nearest bank patch -> ``(B, S/8, S/8)`` map,
   upsampled by the caller;
4. out of sample: every bank patch remembers which good image it came from (``source``), so a good image of the
   bank can be scored as if it had never been in it (``forward(..., exclude=image_ids)`` leaves its own patches
   out). That is how calibration scores every good image out of sample while the bank keeps all of them;
5. taught patches: ``with_overlay(patches)`` gives a bank whose queries also search the operators' nominal overlay
   (``overlay.py``): the distance is to the nearest patch of the union, the bundle's bank itself is never changed.

The bank is built from every good image given to the fit and travels in the bundle as a tensor group.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ddad_core.anomaly_map import local_mean
from ddad_core.features import EXPANDED_BLOCKS, MAP_BLOCKS

__all__ = ["PatchKNN", "greedy_coreset", "patch_features"]

#: Queries and bank rows per ``cdist`` call (bound the temporary ``queries x bank`` matrix to 64 MB).
_QUERY_CHUNK = 1024
_BANK_CHUNK = 16384
_PROGRESS_EVERY = 256  # centres between two progress callbacks


def patch_features(blocks: list[torch.Tensor], zero_padded: bool = False, expanded: bool = False) -> torch.Tensor:
    """Locally aware patch features from the backbone's output (``FeatureExtractor``).

    Args:
        blocks: ``[block1, block2, block3]``, blocks 2 and 3 are used; with ``expanded``, the extractor's
            ``expanded=True`` output, whose expansion activations at strides 8 and 16 are used instead.
        zero_padded: Average border patches with zeros outside the map (PatchCore's ``AvgPool2d(3, 1, 1)``, which
            damps every border patch towards 0 -- the k-NN baseline); False (the production term) averages only the
            pixels inside, and the per-position normalisation handles the borders.
        expanded: Use the expansion activations (``DDADConfig.knn_features == "expanded"``).

    Returns:
        ``(B, C2 + C3, S/8, S/8)`` float32 (``E2 + E3`` channels with ``expanded``).

    Example:
        >>> b = [torch.zeros(1, 4, 16, 16), torch.ones(1, 2, 8, 8), torch.ones(1, 3, 4, 4)]
        >>> patch_features(b).shape
        torch.Size([1, 5, 8, 8])
    """
    used = EXPANDED_BLOCKS if expanded else MAP_BLOCKS
    if expanded and len(blocks) <= max(used):
        raise ValueError("expanded patch features need the extractor's output with expanded=True")
    if zero_padded:
        b2, b3 = (F.avg_pool2d(blocks[j].float(), 3, stride=1, padding=1) for j in used)
    else:
        b2, b3 = (local_mean(blocks[j].float(), 3) for j in used)
    b3 = F.interpolate(b3, size=b2.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([b2, b3], dim=1)


def flatten_patches(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B * h * w, C)`` rows, image by image."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def greedy_coreset(
    patches: torch.Tensor,
    size: int,
    projection_dim: int = 64,
    seed: int = 0,
    chunk: int = 1 << 16,
    on_progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Indices of a greedy k-centre coreset: each new centre is the patch farthest from all chosen ones.

    Distances are measured on a seeded Johnson-Lindenstrauss projection to ``projection_dim`` dimensions
    (PatchCore's speed-up); the returned rows are indices into the full-dimensional ``patches``.

    Args:
        patches: ``(N, C)``.
        size: Number of centres (``>= N`` returns every index).
        projection_dim: Dimensions of the projection (``>= C``: no projection).
        seed: Seed of the projection and of the first centre.
        chunk: Rows per distance update (bounds temporary memory).
        on_progress: Called with the number of centres chosen since its last call (every 256 and at the end).

    Returns:
        ``(min(size, N),)`` long indices, in selection order.

    Example:
        >>> pts = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [10.0, 0.0]])
        >>> sorted(greedy_coreset(pts, 3, seed=0).tolist()) in ([0, 2, 3], [1, 2, 3])
        True
    """
    n = patches.shape[0]
    if size >= n:
        if on_progress is not None:
            on_progress(n)
        return torch.arange(n, device=patches.device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = patches.float()
    if projection_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / projection_dim**0.5
        x = x @ proj.to(x.device)
    first = int(torch.randint(n, (1,), generator=gen))
    chosen = torch.empty(size, dtype=torch.long, device=x.device)
    min_dist = torch.full((n,), float("inf"), device=x.device)
    current = first
    for i in range(size):
        chosen[i] = current
        centre = x[current : current + 1]
        for start in range(0, n, chunk):
            part = x[start : start + chunk]
            d = (part - centre).pow_(2).sum(dim=1)
            torch.minimum(min_dist[start : start + chunk], d, out=min_dist[start : start + chunk])
        current = int(torch.argmax(min_dist))
        if on_progress is not None and (i + 1) % _PROGRESS_EVERY == 0:
            on_progress(_PROGRESS_EVERY)
    if on_progress is not None and size % _PROGRESS_EVERY:
        on_progress(size % _PROGRESS_EVERY)
    return chosen


class PatchKNN(nn.Module):
    """Nearest-neighbour distance of every patch to a bank of nominal patches.

    Args:
        bank: ``(M, C)`` nominal patch features (fill with :meth:`fit`, or load with :meth:`from_tensors`).
        source: ``(M,)`` index of the good image each bank patch came from (-1: unknown, as in bundles written
            before sources were kept; such a bank cannot leave an image out).
        overlay: ``(K, C)`` extra nominal patches searched beside the bank (an operator-taught overlay); never left
            out, never saved with the bank.

    Example:
        >>> knn = PatchKNN().fit(torch.zeros(2, 5, 4, 4), bank_size=8)
        >>> knn(torch.ones(1, 5, 4, 4)).shape
        torch.Size([1, 4, 4])
    """

    def __init__(
        self, bank: torch.Tensor | None = None, source: torch.Tensor | None = None, overlay: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        bank = bank if bank is not None else torch.zeros(0, 0)
        if source is None:
            source = torch.full((bank.shape[0],), -1, dtype=torch.long)
        if source.shape != (bank.shape[0],):
            raise ValueError(f"source must be ({bank.shape[0]},), got {tuple(source.shape)}")
        overlay = overlay if overlay is not None else torch.zeros(0, bank.shape[1])
        if overlay.ndim != 2 or overlay.shape[1] != bank.shape[1]:
            raise ValueError(f"overlay patches must be (K, {bank.shape[1]}), got {tuple(overlay.shape)}")
        self.register_buffer("bank", bank)
        self.register_buffer("source", source.long())
        self.register_buffer("overlay", overlay.float())

    @property
    def is_fitted(self) -> bool:
        return self.bank.numel() > 0

    def fit(
        self, features: torch.Tensor, bank_size: int, seed: int = 0, on_progress: Callable[[int], None] | None = None
    ) -> PatchKNN:
        """Build the bank from the good images' patch features ``(N, C, h, w)`` (coreset-reduced to ``bank_size``;
        ``on_progress`` as in :func:`greedy_coreset`); image ``i`` of ``features`` is source ``i``."""
        n, _, h, w = features.shape
        patches = flatten_patches(features.float())
        keep = greedy_coreset(patches, bank_size, seed=seed, on_progress=on_progress)
        self.bank = patches[keep].contiguous()
        self.source = torch.div(keep, h * w, rounding_mode="floor").to(self.bank.device)
        self.overlay = torch.zeros(0, self.bank.shape[1], device=self.bank.device)
        return self

    def with_overlay(self, patches: torch.Tensor) -> PatchKNN:
        """A k-NN term over this bank (shared, not copied) plus the nominal ``patches`` ``(K, C)``."""
        return PatchKNN(self.bank, self.source, patches.to(self.bank.device))

    def forward(self, features: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Distance map ``(B, h, w)`` of patch features ``(B, C, h, w)`` (from :func:`patch_features`).

        Args:
            features: Patch features of the queries.
            exclude: Optional ``(B,)`` source image per query whose bank patches are left out (-1: none): the
                query's distance as if that image had not been in the bank.
        """
        if not self.is_fitted:
            raise RuntimeError("PatchKNN has no bank: fit it or load it from a bundle")
        b, c, h, w = features.shape
        if c != self.bank.shape[1]:
            raise ValueError(f"patch features have {c} channels, the bank {self.bank.shape[1]}")
        queries = flatten_patches(features.float())
        bank = self.bank.to(queries.device)
        left_out = None
        if exclude is not None and bool((torch.as_tensor(exclude) >= 0).any()):
            if bool((self.source < 0).any()):
                raise RuntimeError(
                    "this bank does not record which image each patch came from; refit it to leave one out"
                )
            left_out = torch.as_tensor(exclude, device=queries.device).long().repeat_interleave(h * w)
        source = self.source.to(queries.device)
        overlay = self.overlay.to(queries.device)
        # (rows, their sources or None): the overlay's patches are never left out.
        parts = [(bank[s : s + _BANK_CHUNK], source[s : s + _BANK_CHUNK]) for s in range(0, len(bank), _BANK_CHUNK)]
        parts += [(overlay[s : s + _BANK_CHUNK], None) for s in range(0, len(overlay), _BANK_CHUNK)]
        best = torch.empty(len(queries), device=queries.device)
        # Chunked over queries and bank, so the distance matrix stays small even for a bank of every patch.
        for qs in range(0, len(queries), _QUERY_CHUNK):
            q = queries[qs : qs + _QUERY_CHUNK]
            low = torch.full((len(q),), float("inf"), device=q.device)
            for rows, rows_source in parts:
                d = torch.cdist(q, rows)
                if left_out is not None and rows_source is not None:
                    d.masked_fill_(rows_source[None, :] == left_out[qs : qs + _QUERY_CHUNK, None], float("inf"))
                torch.minimum(low, d.amin(dim=1), out=low)
            best[qs : qs + len(q)] = low
        return best.view(b, h, w)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"bank": self.bank.detach().cpu().contiguous(), "source": self.source.detach().cpu().contiguous()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> PatchKNN:
        return cls(tensors["bank"].float(), tensors.get("source"))
