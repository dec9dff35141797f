"""Flow step 7 (production recipe), per-position normalisation: each map component standardised by where it is.

A fixed camera sees the same part at the same place, and every map component has a fixed pattern on good parts:
the autoencoder, the UNet and the CNN respond at image borders (zero padding), on specular or textured regions and
on static background. Min-max normalisation (the paper's) keeps that pattern, so a bright border of a good part can
outscore a small defect. Here each component ``A_c`` is replaced by a z-score against the held-out good images at
the same position::

    z_c(p) = (A_c(p) - mean_c(p)) / sd_c(p)

1. ``fit``: the mean is taken per pixel over the held-out good images (a fixed pattern keeps its sharp edges);
   the spread per cell of ``cell`` x ``cell`` pixels, as the root mean square deviation from the per-pixel mean
   over all pixels of the cell in all images (a variance needs many samples; a cell has ``cell**2`` per image);
2. the spread is floored by ``floor`` times the component's global spread, so a cell that happened to be flat on
   the good images cannot blow a tiny difference up;
3. the spread is upsampled bilinearly to the map size; both are stored in the bundle (tensor group
   ``position_norm``);
4. ``apply``: ``(A - mean) / sd``; a good image's map then has mean about 0 everywhere, borders included.

``leave_one_out`` gives, for each of N good images, the statistics of the other N - 1 (closed form, one pass):
what calibration needs to score every good image out of sample while the bundle keeps the statistics of all N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PositionNorm"]


class PositionNorm(nn.Module):
    """Per-position mean and spread of named map components.

    Args:
        means: Component name -> ``(S, S)`` mean map.
        sds: Component name -> ``(S, S)`` spread map (strictly positive).

    Example:
        >>> maps = torch.rand(20, 32, 32) + torch.linspace(0, 1, 32)  # a left-to-right fixed pattern
        >>> norm = PositionNorm.fit({"latent": maps}, cell=8)
        >>> z = norm.apply("latent", maps)
        >>> abs(float(z[..., :8].mean() - z[..., -8:].mean())) < 0.2
        True
    """

    def __init__(self, means: dict[str, torch.Tensor], sds: dict[str, torch.Tensor]) -> None:
        super().__init__()
        if set(means) != set(sds):
            raise ValueError(f"means {sorted(means)} and sds {sorted(sds)} name different components")
        self.names = sorted(means)
        for name in self.names:
            self.register_buffer(f"mean_{name}", means[name].float())
            self.register_buffer(f"sd_{name}", sds[name].float())

    @classmethod
    @torch.no_grad()
    def fit(cls, maps: dict[str, torch.Tensor], cell: int = 8, floor: float = 0.25) -> PositionNorm:
        """Statistics from good images' raw component maps (each ``(N, S, S)``)."""
        means, sds = {}, {}
        for name, m in _checked(maps):
            mean = m.mean(dim=0)
            dev2 = (m - mean).pow(2).mean(dim=0)
            means[name], sds[name] = mean, _spread(dev2[None], cell, floor)[0]
        return cls(means, sds)

    @classmethod
    @torch.no_grad()
    def leave_one_out(cls, maps: dict[str, torch.Tensor], cell: int = 8, floor: float = 0.25) -> PositionNorm:
        """Per image, the statistics of the *other* images: buffers ``(N, S, S)``; ``apply`` then takes the same N
        images in the same order (or any maps indexed by ``select``). Needs N >= 2.

        Example:
            >>> maps = torch.rand(5, 8, 8)
            >>> loo = PositionNorm.leave_one_out({"k": maps}, cell=4)
            >>> alone = PositionNorm.fit({"k": maps[1:]}, cell=4)
            >>> bool(torch.allclose(loo.apply("k", maps)[0], alone.apply("k", maps[:1])[0], atol=1e-4))
            True
        """
        means, sds = {}, {}
        for name, m in _checked(maps):
            n = m.shape[0]
            if n < 2:
                raise ValueError("leave-one-out statistics need at least two images")
            x = m.double()
            total, squares = x.sum(dim=0), x.pow(2).sum(dim=0)
            mean = (total - x) / (n - 1)
            dev2 = ((squares - x.pow(2)) / (n - 1) - mean.pow(2)).clamp_min(0.0)
            means[name], sds[name] = mean.float(), _spread(dev2.float(), cell, floor)
        return cls(means, sds)

    def select(self, index) -> PositionNorm:
        """The leave-one-out statistics of the images at ``index`` (one row per map to normalise)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return PositionNorm(
            {n: getattr(self, f"mean_{n}")[idx] for n in self.names},
            {n: getattr(self, f"sd_{n}")[idx] for n in self.names},
        )

    def apply(self, name: str, maps: torch.Tensor) -> torch.Tensor:
        """Z-scores of ``(B, S, S)`` maps of component ``name``."""
        if name not in self.names:
            raise KeyError(f"no position statistics for component {name!r}; have {self.names}")
        mean, sd = getattr(self, f"mean_{name}"), getattr(self, f"sd_{name}")
        if maps.shape[-2:] != mean.shape[-2:] or (mean.ndim == 3 and mean.shape[0] != maps.shape[0]):
            raise ValueError(f"maps of size {tuple(maps.shape[-2:])}, statistics of size {tuple(mean.shape)}")
        return (maps.float() - mean.to(maps.device)) / sd.to(maps.device)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.names:
            out[f"mean_{name}"] = getattr(self, f"mean_{name}").detach().cpu().contiguous()
            out[f"sd_{name}"] = getattr(self, f"sd_{name}").detach().cpu().contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> PositionNorm:
        names = [k[len("mean_") :] for k in tensors if k.startswith("mean_")]
        return cls({n: tensors[f"mean_{n}"] for n in names}, {n: tensors[f"sd_{n}"] for n in names})


def _checked(maps: dict[str, torch.Tensor]):
    for name, m in maps.items():
        m = m.float()
        if m.ndim != 3 or m.shape[0] == 0:
            raise ValueError(f"component {name!r}: need (N, S, S) maps of at least one image, got {tuple(m.shape)}")
        yield name, m


def _spread(dev2: torch.Tensor, cell: int, floor: float) -> torch.Tensor:
    """``(K, S, S)`` squared deviations from the per-pixel mean -> ``(K, S, S)`` floored per-cell spread."""
    size = dev2.shape[-2:]
    k = max(1, min(cell, size[0], size[1]))
    var = F.avg_pool2d(dev2[:, None], k, ceil_mode=True)
    global_sd = dev2.flatten(1).mean(dim=1).sqrt().view(-1, 1, 1, 1)
    sd = (var + (floor * global_sd) ** 2).sqrt().clamp_min(1e-6)
    return F.interpolate(sd, size=size, mode="bilinear", align_corners=False)[:, 0]
