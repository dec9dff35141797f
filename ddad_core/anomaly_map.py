"""Flow step 7, anomaly map: latent L1 + feature cosine, normalised, blended, blurred (METHOD.md section 8).

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

    latent_min: float
    latent_max: float
    feature_min: float
    feature_max: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MapNormalization:
        return cls(**{k: float(data[k]) for k in ("latent_min", "latent_max", "feature_min", "feature_max")})

    @classmethod
    def from_maps(cls, latent_maps: torch.Tensor, feature_maps: torch.Tensor) -> MapNormalization:
        """Min and max over all pixels of all given maps (``(N, S, S)`` each)."""
        return cls(
            latent_min=float(latent_maps.min()),
            latent_max=float(latent_maps.max()),
            feature_min=float(feature_maps.min()),
            feature_max=float(feature_maps.max()),
        )

    def merge(self, other: MapNormalization) -> MapNormalization:
        """The statistics of the union of two sets of maps (streaming accumulation)."""
        return MapNormalization(
            latent_min=min(self.latent_min, other.latent_min),
            latent_max=max(self.latent_max, other.latent_max),
            feature_min=min(self.feature_min, other.feature_min),
            feature_max=max(self.feature_max, other.feature_max),
        )


def _upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    # (B, h, w) -> (B, S, S); the reference upsamples with align_corners=True.
    if maps.shape[-2:] == (size, size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=True).squeeze(1)


def latent_distance_map(latents: torch.Tensor, recon_latents: torch.Tensor, size: int) -> torch.Tensor:
    """A_lat: channel-mean absolute latent difference, upsampled to the image size.

    Args:
        latents: ``(B, C, h, w)`` z0.
        recon_latents: ``(B, C, h, w)`` z-hat.
        size: Image side S.

    Returns:
        ``(B, S, S)`` float32.

    Example:
        >>> latent_distance_map(torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2), 8).shape
        torch.Size([1, 8, 8])
    """
    diff = (recon_latents.float() - latents.float()).abs().mean(dim=1)
    return _upsample(diff, size)


def feature_distance_map(
    features: Sequence[torch.Tensor], recon_features: Sequence[torch.Tensor], size: int
) -> torch.Tensor:
    """A_feat: sum over the given blocks of ``1 - cosine`` over channels at each position, upsampled.

    Args:
        features: Blocks of the input, e.g. ``[(B, C2, S/8, S/8), (B, C3, S/16, S/16)]``.
        recon_features: The same blocks of the decoded reconstruction.
        size: Image side S.

    Returns:
        ``(B, S, S)`` float32, each term in [0, 2].

    Example:
        >>> f = [torch.ones(1, 3, 2, 2)]
        >>> float(feature_distance_map(f, f, 4).abs().max()) < 1e-6
        True
    """
    total = None
    for feat, recon in zip(features, recon_features, strict=True):
        distance = 1.0 - F.cosine_similarity(feat.float(), recon.float(), dim=1)
        up = _upsample(distance, size)
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
    lat = normalize_component(latent_map, normalization.latent_min, normalization.latent_max)
    feat = normalize_component(feature_map, normalization.feature_min, normalization.feature_max)
    return gaussian_blur(latent_weight * lat + (1.0 - latent_weight) * feat, sigma)


def image_scores(anomaly_maps: torch.Tensor) -> torch.Tensor:
    """Image score s(x) = max over pixels of A: ``(B, S, S) -> (B,)``."""
    return anomaly_maps.flatten(1).amax(dim=1)
