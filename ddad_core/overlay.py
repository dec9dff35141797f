"""The nominal overlay: good-part patches an operator taught, scored as normal beside a bundle's own patch bank.

A false alarm of a patch-memory detector means that a good look of the part is missing from its bank. The overlay
holds the missing patches: the features of the flagged frame (only the region above the pixel threshold, or the
whole frame when nothing is above it), recorded per entry with who added them, when, and from which frame and
alert. ``DDADPipeline.with_overlay`` scores with the union of the bundle's bank and the overlay (the nearest patch
of either), so the same pattern on a later frame no longer alerts, without refitting and without touching the
bundle. Removing an entry (undo) gives the next version without its patches.

Only the patch k-NN term learns from an overlay (recipes with ``knn_weight > 0``: ``fast`` scores with it alone,
``production`` blends it with the reconstruction terms, which an overlay does not change).

The guard: ``DefectGuard`` re-scores confirmed defects with a candidate overlay and names every one that would no
longer be flagged, so a caller can refuse the change (an operator's "this is fine" must never silence a defect
someone else confirmed).

Format (``to_bytes``): one safetensors blob (no pickle) holding the ``(K, C)`` float32 patches, with the product,
the bundle hash the patches belong to (features of another bundle's backbone mean nothing here), the version
number and the entries as JSON metadata. Patches are stored in entry order, entry ``i`` owning ``patches`` rows.

Example:
    >>> import torch
    >>> ov = NominalOverlay(product_id="p1", bundle_hash="h", channels=2)
    >>> ov = ov.added(OverlayEntry("e1", "a1", "f1", "alice", "2026-01-01T00:00:00+00:00", "mask", 3),
    ...               torch.ones(3, 2))
    >>> ov.version, len(ov.patches), NominalOverlay.from_bytes(ov.to_bytes()) == ov
    (1, 3, True)
    >>> ov.without("e1").version, len(ov.without("e1").patches)
    (2, 0)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ddad_core.anomaly_map import upsample_map
from ddad_core.patch_knn import flatten_patches
from ddad_core.preprocess import preprocess
from ddad_core.scoring import decision_threshold, score_maps

if TYPE_CHECKING:
    from ddad_core.pipeline import DDADPipeline, MapComponents

__all__ = ["OVERLAY_FORMAT", "DefectGuard", "NominalOverlay", "OverlayEntry", "OverlayError", "frame_patches"]

#: Version of the byte format written by :meth:`NominalOverlay.to_bytes`.
OVERLAY_FORMAT = 1

Region = Literal["mask", "frame"]


class OverlayError(ValueError):
    """An overlay that cannot be read, changed or used with a pipeline (the message names why)."""


@dataclass(frozen=True)
class OverlayEntry:
    """One taught frame.

    Attributes:
        entry_id: Unique id of the entry (the operator action that added it).
        alert_id: The alert the operator marked as a false alarm.
        frame_id: The frame whose patches were added.
        actor: Who marked it.
        at: When (ISO-8601).
        region: ``mask``: the patches under the region above the pixel threshold; ``frame``: every patch.
        patches: How many patch rows the entry owns.
    """

    entry_id: str
    alert_id: str
    frame_id: str
    actor: str
    at: str
    region: Region
    patches: int


@dataclass(frozen=True, eq=False)
class NominalOverlay:
    """The taught patches of one product, at one version.

    Attributes:
        product_id: The product the overlay teaches.
        bundle_hash: ``bundle_hash`` of the bundle whose feature space the patches live in.
        channels: Patch feature channels (the bundle's bank's).
        version: 0 for the empty start, +1 per change (an undo is a change too).
        entries: In the order they were added.
        patches: ``(sum of entries' patches, channels)`` float32, in entry order.
    """

    product_id: str
    bundle_hash: str
    channels: int
    version: int = 0
    entries: tuple[OverlayEntry, ...] = ()
    patches: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.patches is None:
            object.__setattr__(self, "patches", torch.zeros(0, self.channels))
        if self.patches.ndim != 2 or self.patches.shape[1] != self.channels:
            raise OverlayError(f"overlay patches must be (K, {self.channels}), got {tuple(self.patches.shape)}")
        owned = sum(e.patches for e in self.entries)
        if owned != self.patches.shape[0]:
            raise OverlayError(f"overlay entries own {owned} patches, the overlay holds {self.patches.shape[0]}")
        ids = [e.entry_id for e in self.entries]
        if len(set(ids)) != len(ids):
            raise OverlayError("overlay entry ids repeat")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NominalOverlay) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def entry(self, entry_id: str) -> OverlayEntry | None:
        return next((e for e in self.entries if e.entry_id == entry_id), None)

    def added(self, entry: OverlayEntry, patches: torch.Tensor) -> NominalOverlay:
        """The next version with ``entry`` and its ``(entry.patches, channels)`` rows appended.

        Raises:
            OverlayError: The entry id is already in the overlay, or the rows do not match the entry.
        """
        if self.entry(entry.entry_id) is not None:
            raise OverlayError(f"entry {entry.entry_id!r} is already in the overlay")
        rows = patches.detach().float().cpu()
        if rows.shape != (entry.patches, self.channels):
            raise OverlayError(f"entry {entry.entry_id!r} says {entry.patches} patches, got {tuple(rows.shape)}")
        return replace(
            self, version=self.version + 1, entries=(*self.entries, entry), patches=torch.cat([self.patches, rows])
        )

    def without(self, entry_id: str) -> NominalOverlay:
        """The next version without the entry ``entry_id`` and its patches (undo).

        Raises:
            OverlayError: No such entry.
        """
        if self.entry(entry_id) is None:
            raise OverlayError(f"no entry {entry_id!r} in the overlay of {self.product_id} (version {self.version})")
        keep, kept_entries, start = [], [], 0
        for e in self.entries:
            if e.entry_id != entry_id:
                keep.append(self.patches[start : start + e.patches])
                kept_entries.append(e)
            start += e.patches
        patches = torch.cat(keep) if keep else torch.zeros(0, self.channels)
        return replace(self, version=self.version + 1, entries=tuple(kept_entries), patches=patches)

    def _header(self) -> dict[str, str]:
        meta = {
            "format": OVERLAY_FORMAT,
            "product_id": self.product_id,
            "bundle_hash": self.bundle_hash,
            "channels": self.channels,
            "version": self.version,
            "entries": [asdict(e) for e in self.entries],
        }
        return {"overlay": json.dumps(meta, sort_keys=True)}

    def to_bytes(self) -> bytes:
        """The overlay as one safetensors blob (what the object store keeps)."""
        return save_safetensors({"patches": self.patches.contiguous()}, metadata=self._header())

    @property
    def digest(self) -> str:
        """SHA-256 of :meth:`to_bytes` (the change record carries it; readers check it)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes) -> NominalOverlay:
        """Read :meth:`to_bytes` output.

        Raises:
            OverlayError: Not an overlay, another format version, or inconsistent content.
        """
        try:
            patches = load_safetensors(data)["patches"]
            # The metadata sits in the blob's JSON header (little-endian u64 length, then the header itself).
            header_len = int.from_bytes(data[:8], "little")
            meta = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["overlay"])
        except (SafetensorError, KeyError, ValueError, TypeError) as exc:
            raise OverlayError(f"not a nominal overlay: {exc}") from None
        if meta.get("format") != OVERLAY_FORMAT:
            raise OverlayError(f"overlay format {meta.get('format')!r}; this code reads {OVERLAY_FORMAT}")
        try:
            entries = tuple(OverlayEntry(**e) for e in meta["entries"])
            return cls(
                product_id=meta["product_id"],
                bundle_hash=meta["bundle_hash"],
                channels=int(meta["channels"]),
                version=int(meta["version"]),
                entries=entries,
                patches=patches.float(),
            )
        except (KeyError, TypeError) as exc:
            raise OverlayError(f"overlay metadata is incomplete: {exc}") from None


def frame_patches(pipe: DDADPipeline, image: np.ndarray, region: Region = "mask") -> tuple[torch.Tensor, Region]:
    """The patch features an overlay entry adds for one frame, with the region they were taken from.

    Args:
        pipe: The pipeline in force (the bundle, with the overlay it scores with now).
        image: The flagged frame, uint8 as the pipeline takes it.
        region: ``mask``: the patches where the frame's anomaly map is above the image threshold (every pixel
            there alone would keep the frame alerting; a wider region than ``pred_mask``, whose pixel threshold is
            usually higher), widened by one patch for the blur of the map; falls back to ``frame`` when no pixel
            is above it. ``frame``: every patch of the frame.

    Returns:
        ``((K, C) float32 on the CPU, region used)``.
    """
    if pipe.patch_knn is None or pipe.calibration is None:
        raise OverlayError("this pipeline has no calibrated patch k-NN term; an overlay cannot teach it")
    x = preprocess([image], image_size=pipe.input_shape, device=pipe.device)
    with torch.inference_mode():
        grid = pipe.patch_grid(x)[0]  # (C, h, w)
        if region == "mask":
            c = pipe.calibration
            hot = pipe.run_tensor(x).anomaly_map[:1, None] > decision_threshold(
                c.image_threshold, c.image_min, c.image_max, c.sensitivity
            )
            cells = F.max_pool2d(F.adaptive_max_pool2d(hot.float(), grid.shape[-2:]), 3, stride=1, padding=1)[0, 0]
            if bool((cells > 0).any()):
                return grid[:, cells > 0].T.float().cpu().contiguous(), "mask"
        return flatten_patches(grid[None]).float().cpu().contiguous(), "frame"


class DefectGuard:
    """A product's confirmed defects, ready to be re-scored with any candidate overlay in a few milliseconds each.

    An overlay changes only the patch k-NN term, so :meth:`add` computes each defect's map components, patch
    features and distances to the bundle's bank once; :meth:`missed` then measures only the distances to the
    candidate's patches, takes the nearer of the two per patch (what ``PatchKNN`` does with an overlay), and blends
    and scores as the pipeline does: the same decisions as ``pipe.with_overlay(candidate)(images).pred_label``.

    Args:
        pipe: The pipeline of the bundle (any overlay it has is ignored: candidates are whole overlays).

    Example:
        >>> guard = DefectGuard(pipe)  # doctest: +SKIP
        >>> guard.add("alert-7", image)  # doctest: +SKIP
        >>> guard.missed(candidate)  # the ids the candidate would no longer flag  # doctest: +SKIP
        []
    """

    def __init__(self, pipe: DDADPipeline) -> None:
        if pipe.calibration is None:
            raise OverlayError("the guard needs a calibrated pipeline")
        self.pipe = pipe.with_overlay(None)
        self._items: dict[str, tuple[MapComponents, torch.Tensor, torch.Tensor]] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def keys(self) -> list[str]:
        return list(self._items)

    def add(self, key: str, image: np.ndarray) -> None:
        """Prepare one confirmed defect (uint8 image as the pipeline takes it)."""
        pipe = self.pipe
        x = preprocess([image], image_size=pipe.input_shape, device=pipe.device)
        with torch.inference_mode():
            comps = pipe.components(x)
            grid = pipe.patch_grid(x)
            self._items[key] = (comps, grid, pipe.patch_knn(grid))

    def remove(self, key: str) -> None:
        self._items.pop(key, None)

    @torch.inference_mode()
    def missed(self, overlay: NominalOverlay | None, batch_size: int = 64) -> list[str]:
        """Ids of the defects that the bundle with ``overlay`` would not flag, in the order they were added."""
        from ddad_core.pipeline import MapComponents

        pipe, keys = self.pipe, list(self._items)
        missed = []
        for start in range(0, len(keys), batch_size):
            chunk = [self._items[k] for k in keys[start : start + batch_size]]
            grids, distances = torch.cat([c[1] for c in chunk]), torch.cat([c[2] for c in chunk])
            if overlay is not None and len(overlay.patches):
                queries, taught = flatten_patches(grids), overlay.patches.to(grids.device)
                to_taught = torch.cat([torch.cdist(q, taught).amin(dim=1) for q in queries.split(8192)])
                distances = torch.minimum(distances, to_taught.view(distances.shape))
            comps = replace(
                MapComponents.join([c[0] for c in chunk], timings_ms={}),
                knn_map=upsample_map(distances, pipe.input_shape),
            )
            labels = score_maps(pipe.blend(comps), pipe.calibration)[2].tolist()
            missed += [k for k, flagged in zip(keys[start : start + batch_size], labels, strict=True) if not flagged]
        return missed
