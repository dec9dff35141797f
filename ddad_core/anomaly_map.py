"""Flow step 7, anomaly map: latent L1 + feature cosine, normalised, blended, blurred (docs/method.md section 8).

For a batch with input latents z0, reconstructed latents z-hat and the backbone's blocks of the input and of the
decoded reconstruction:

1. ``A_lat = Up_S(mean_c |z-hat - z0|)`` (bilinear, ``align_corners=True``);
2. ``A_feat = sum_{j in {2, 3}} Up_S(1 - cos_c(phi_j(x), phi_j(x-hat)))`` (per-pixel cosine over channels, no patch
   averaging);
3. each component min-max normalised with *fixed* statistics (``MapNormalization``; quirk Q4: the reference takes
   min and max over the whole test set, which a stream does not have);
4. ``A = lambda * A_lat + (1 - lambda) * A_feat`` with lambda = 0.85 on the latent term;
5. Gaussian blur, sigma = 4, kernel ``2 * floor(4 sigma + 0.5) + 1`` = 33, reflect padding (kornia's default);
6. image score ``max(A)``.

Every operation here is per image, so an image's map never depends on the rest of its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ddad_core.preprocess import as_shape


@dataclass(frozen=True)
class MapNormalization:
    """Min and max of the two raw component maps, fixed at fit time (or taken from the evaluated set in ``paper``
    mode).

    Attributes:
        latent_min: Minimum of ``A_lat``.
        latent_max: Maximum of ``A_lat``.
        feature_min: Minimum of ``A_feat``.
        feature_max: Maximum of ``A_feat``.
    """

    latent_min: float = 0.0
    latent_max: float = 1.0
    feature_min: float = 0.0
    feature_max: float = 1.0
    knn_min: float = 0.0
    knn_max: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MapNormalization:
        # Bundles from before the k-NN term have no knn_* entries: the defaults apply.
        return cls(**{k: float(v) for k, v in data.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_maps(
        cls,
        latent_maps: torch.Tensor | None,
        feature_maps: torch.Tensor | None,
        knn_maps: torch.Tensor | None = None,
    ) -> MapNormalization:
        """Min and max over all pixels of all given maps (``(N, S, S)`` each; a missing component keeps 0 and 1)."""
        values: dict[str, float] = {}
        for name, maps in (("latent", latent_maps), ("feature", feature_maps), ("knn", knn_maps)):
            low, high = (0.0, 1.0) if maps is None else (float(maps.min()), float(maps.max()))
            values[f"{name}_min"], values[f"{name}_max"] = low, high
        return cls(**values)

    def merge(self, other: MapNormalization) -> MapNormalization:
        """The statistics of the union of two sets of maps (streaming accumulation)."""
        return MapNormalization(
            latent_min=min(self.latent_min, other.latent_min),
            latent_max=max(self.latent_max, other.latent_max),
            feature_min=min(self.feature_min, other.feature_min),
            feature_max=max(self.feature_max, other.feature_max),
            knn_min=min(self.knn_min, other.knn_min),
            knn_max=max(self.knn_max, other.knn_max),
        )

    def range_of(self, component: str) -> tuple[float, float]:
        """``(min, max)`` of a component (``latent``, ``feature``, ``knn``)."""
        return getattr(self, f"{component}_min"), getattr(self, f"{component}_max")


def upsample_map(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    # (B, h, w) -> (B, S, S) or (B, H, W); the reference upsamples with align_corners=True.
    shape = as_shape(size)
    if tuple(maps.shape[-2:]) == shape:
        return maps
    return F.interpolate(maps.unsqueeze(1), size=shape, mode="bilinear", align_corners=True).squeeze(1)


def latent_distance_map(
    latents: torch.Tensor, recon_latents: torch.Tensor, size: int | tuple[int, int]
) -> torch.Tensor:
    """A_lat: channel-mean absolute latent difference, upsampled to the image size.

    Args:
        latents: ``(B, C, h, w)`` z0.
        recon_latents: ``(B, C, h, w)`` z-hat.
        size: Image side S, or ``(H, W)``.

    Returns:
        ``(B, S, S)`` (or ``(B, H, W)``) float32.

    Example:
        >>> latent_distance_map(torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2), 8).shape
        torch.Size([1, 8, 8])
    """
    diff = (recon_latents.float() - latents.float()).abs().mean(dim=1)
    return upsample_map(diff, size)


def local_mean(features: torch.Tensor, size: int) -> torch.Tensor:
    """``size x size`` neighbourhood average at every position (borders average only the pixels inside)."""
    return F.avg_pool2d(features, size, stride=1, padding=size // 2, count_include_pad=False)


def feature_distance_map(
    features: Sequence[torch.Tensor],
    recon_features: Sequence[torch.Tensor],
    size: int | tuple[int, int],
    pool: int = 1,
) -> torch.Tensor:
    """A_feat: sum over the given blocks of ``1 - cosine`` over channels at each position, upsampled.

    Args:
        features: Blocks of the input, e.g. ``[(B, C2, S/8, S/8), (B, C3, S/16, S/16)]``.
        recon_features: The same blocks of the decoded reconstruction.
        size: Image side S, or ``(H, W)``.
        pool: ``k x k`` local averaging of both before the cosine (``DDADConfig.feature_pool``; 1 = none, paper).

    Returns:
        ``(B, S, S)`` float32, each term in [0, 2].

    Example:
        >>> f = [torch.ones(1, 3, 2, 2)]
        >>> float(feature_distance_map(f, f, 4).abs().max()) < 1e-6
        True
    """
    total = None
    for feat, recon in zip(features, recon_features, strict=True):
        feat, recon = feat.float(), recon.float()
        if pool > 1:
            feat, recon = (
                F.avg_pool2d(f, pool, stride=1, padding=pool // 2, count_include_pad=False) for f in (feat, recon)
            )
        distance = 1.0 - F.cosine_similarity(feat, recon, dim=1)
        up = upsample_map(distance, size)
        total = up if total is None else total + up
    if total is None:
        raise ValueError("feature_distance_map needs at least one block")
    return total


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of size ``2 * floor(4 sigma + 0.5) + 1`` (33 for sigma = 4), as kornia builds it.

    Example:
        >>> gaussian_kernel1d(4.0).numel()
        33
    """
    radius = int(math.floor(4 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).float()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (kornia ``gaussian_blur2d`` default border).

    Args:
        maps: ``(B, H, W)``.
        sigma: Standard deviation in pixels; 0 returns the input.

    Returns:
        ``(B, H, W)``, same dtype.
    """
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma).to(device=maps.device, dtype=maps.dtype)
    x = maps.unsqueeze(1)
    x = _blur_axis(x, kernel, axis=-1)
    x = _blur_axis(x, kernel, axis=-2)
    return x.squeeze(1)


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    # Reflect padding needs pad < size: for maps smaller than the kernel (never at S >= 64 with sigma 4) the
    # kernel is cut to fit and renormalised.
    radius = min(kernel.numel() // 2, x.shape[axis] - 1)
    centre = kernel.numel() // 2
    k = kernel[centre - radius : centre + radius + 1]
    k = k / k.sum()
    if axis == -1:
        return F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))


def normalize_component(maps: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``(maps - low) / (high - low)``; a zero range leaves the maps shifted only (no division by zero)."""
    span = high - low
    return (maps - low) / span if span > 0 else maps - low


def component_weights(latent_weight: float, knn_weight: float = 0.0) -> dict[str, float]:
    """Blend weights: ``(1 - k) * lambda`` latent, ``(1 - k) * (1 - lambda)`` feature, ``k`` k-NN (zeros dropped).

    Example:
        >>> component_weights(0.85)
        {'latent': 0.85, 'feature': 0.15000000000000002}
    """
    weights = {
        "latent": (1.0 - knn_weight) * latent_weight,
        "feature": (1.0 - knn_weight) * (1.0 - latent_weight),
        "knn": knn_weight,
    }
    return {k: w for k, w in weights.items() if w > 0}


def combine_maps(
    components: dict[str, torch.Tensor],
    weights: dict[str, float],
    normalization: MapNormalization | None = None,
    position_norm=None,
    sigma: float = 4.0,
) -> torch.Tensor:
    """Normalise each weighted component, sum and blur: the final anomaly map A.

    Args:
        components: Name (``latent``, ``feature``, ``knn``) -> ``(B, S, S)`` raw map.
        weights: Name -> weight (``component_weights``); every weighted component must be present.
        normalization: Min-max statistics (the paper's normalisation) -- used when ``position_norm`` is None.
        position_norm: A :class:`~ddad_core.position_norm.PositionNorm`: per-position z-scores instead.
        sigma: Blur sigma.

    Returns:
        ``(B, S, S)``.
    """
    if position_norm is None and normalization is None:
        raise ValueError("combine_maps needs min-max statistics or position statistics")
    total = None
    for name, weight in weights.items():
        if name not in components or components[name] is None:
            raise ValueError(f"the map component {name!r} has weight {weight} but was not computed")
        raw = components[name]
        if position_norm is not None:
            part = position_norm.apply(name, raw)
        else:
            part = normalize_component(raw, *normalization.range_of(name))
        total = weight * part if total is None else total + weight * part
    if total is None:
        raise ValueError("combine_maps got no component with a positive weight")
    return gaussian_blur(total, sigma)


def blend_maps(
    latent_map: torch.Tensor,
    feature_map: torch.Tensor,
    normalization: MapNormalization,
    latent_weight: float = 0.85,
    sigma: float = 4.0,
) -> torch.Tensor:
    """Normalise both components, blend them and blur: the final anomaly map A (steps 3-5).

    Args:
        latent_map: ``(B, S, S)`` A_lat.
        feature_map: ``(B, S, S)`` A_feat.
        normalization: Component min/max.
        latent_weight: lambda (on the latent term).
        sigma: Blur sigma.

    Returns:
        ``(B, S, S)`` anomaly map; the image score is its maximum.

    Example:
        >>> norm = MapNormalization(0.0, 1.0, 0.0, 2.0)
        >>> a = blend_maps(torch.ones(1, 8, 8), torch.ones(1, 8, 8), norm, 0.85, sigma=0.0)
        >>> round(float(a[0, 0, 0]), 3)
        0.925
    """
    return combine_maps(
        {"latent": latent_map, "feature": feature_map},
        {"latent": latent_weight, "feature": 1.0 - latent_weight},
        normalization,
        sigma=sigma,
    )


def image_scores(anomaly_maps: torch.Tensor) -> torch.Tensor:
    """Image score s(x) = max over pixels of A: ``(B, S, S) -> (B,)``."""
    return anomaly_maps.flatten(1).amax(dim=1)
