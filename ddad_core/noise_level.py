"""Flow step 3, dynamic noise level: Dynamic Implicit Conditioning (docs/method.md section 6).

Each image's block-2 features are average-pooled and flattened into one vector g(x). At fit time the vectors of the
training images form a bank; every training image's mean L1 distance to its k = 20 nearest bank entries gives a
"novelty" value, and 10 equal-width bins span the range of those values. At test time an image's mean k-NN
distance picks a bin kappa, and psi(kappa) = round10(max(kappa, 2) / 10 * T_max) is its start timestep T-hat: more
novel images get more noise, so larger defects can be repaired.

Production changes against the reference code (docs/method.md 13.2): the k-NN runs with ``torch.cdist(p=1)`` + ``topk``
on the model's device (not sklearn on the CPU), and the bank, the bin edges and the fit values are module buffers
that travel in the bundle (quirk Q10). ``knn_mode`` chooses quirk Q3: ``faithful`` counts each training image's
own zero distance among its k neighbours, ``clean`` leaves it out.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ddad_core.config import DDADConfig

#: Bank rows compared per ``cdist`` call; bounds the (rows x bank) distance matrix in memory.
_CHUNK = 256


def noise_step_for_bin(
    kappa: int | torch.Tensor, max_noise_step: int = 80, num_bins: int = 10, min_bin: int = 2, multiple: int = 10
) -> int | torch.Tensor:
    """psi: bin key -> start timestep, ``round_half_up(max(kappa, min_bin) / num_bins * T_max / m) * m``.

    The rounding is done in integers so that e.g. 6/10 * 80 = 48 -> 50 and 3/10 * 80 = 24 -> 20 exactly as in the
    reference (docs/method.md 6.3). ``multiple`` is the number of steps per image, so the step size T-hat / steps is an
    integer; the result is never below one step.

    Args:
        kappa: Bin key(s) in 0..num_bins.
        max_noise_step: T_max.
        num_bins: Number of bins.
        min_bin: Smaller keys are raised to this one.
        multiple: Round to a multiple of this (steps per image).

    Returns:
        Start timestep(s), same type as ``kappa``.

    Example:
        >>> [noise_step_for_bin(k) for k in range(11)]
        [20, 20, 20, 20, 30, 40, 50, 60, 60, 70, 80]
    """
    if isinstance(kappa, torch.Tensor):
        k = kappa.long().clamp(min=min_bin)
        steps = torch.div(2 * k * max_noise_step + num_bins * multiple, 2 * num_bins * multiple, rounding_mode="floor")
        return (steps * multiple).clamp(min=multiple)
    k = max(int(kappa), min_bin)
    return max(((2 * k * max_noise_step + num_bins * multiple) // (2 * num_bins * multiple)) * multiple, multiple)


def embed_block(block2: torch.Tensor, pool_size: int = 16) -> torch.Tensor:
    """g(x): average-pool block-2 features to ``pool_size`` squared and flatten (docs/method.md 6.1).

    When the block is already smaller than ``pool_size`` (small images), it is kept as is: pooling "up" only
    repeats values, which scales every L1 distance by the same factor and changes no bin.

    Args:
        block2: ``(B, C, h, w)`` features.
        pool_size: Target side (16 in the reference).

    Returns:
        ``(B, C * p * p)`` float32 embeddings.
    """
    size = min(pool_size, block2.shape[-2], block2.shape[-1])
    return F.adaptive_avg_pool2d(block2.float(), size).flatten(1)


class NoiseLevelEstimator(nn.Module):
    """Feature bank + L1 k-NN + equal-width bins -> per-image start timestep.

    Args:
        config: Uses ``knn_k``, ``num_bins``, ``min_bin``, ``knn_mode``, ``max_noise_step``, ``steps_per_image``,
            ``dynamic_noise`` and ``dic_pool_size``.

    Buffers (persisted with ``state_dict``): ``bank`` ``(N, D)``, ``bin_edges`` ``(num_bins + 1,)`` float64,
    ``train_distances`` ``(N,)``.

    Example:
        >>> est = NoiseLevelEstimator(DDADConfig(knn_k=2))
        >>> _ = est.fit(torch.tensor([[0.0], [1.0], [2.0], [10.0]]))
        >>> est.noise_steps_from_embeddings(torch.tensor([[1.0], [50.0]])).tolist()
        [20, 80]
    """

    def __init__(self, config: DDADConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("bank", torch.empty(0, 0))
        self.register_buffer("bin_edges", torch.empty(0, dtype=torch.float64))
        self.register_buffer("train_distances", torch.empty(0))

    @property
    def is_fitted(self) -> bool:
        return self.bank.numel() > 0

    def _effective_k(self, exclude_self: bool) -> int:
        available = self.bank.shape[0] - int(exclude_self)
        k = min(self.config.knn_k, available)
        if k < 1:
            raise ValueError("the noise-level bank needs at least 2 images for leave-one-out (knn_mode='clean')")
        return k

    def _knn_mean(self, queries: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
        # Chunked so the distance matrix stays small; each row only ever sees its own query, so a frame's noise
        # level never depends on the other frames of its batch. ``exclude``: per query, a bank row to leave out
        # (-1: none).
        bank = self.bank
        out = []
        for start in range(0, queries.shape[0], _CHUNK):
            q = queries[start : start + _CHUNK].to(device=bank.device, dtype=bank.dtype)
            dist = torch.cdist(q.unsqueeze(0), bank.unsqueeze(0), p=1.0).squeeze(0)
            if exclude is not None:
                rows = exclude[start : start + _CHUNK].to(bank.device)
                keep = rows >= 0
                dist[torch.arange(q.shape[0], device=bank.device)[keep], rows[keep]] = float("inf")
            out.append(dist.topk(k, dim=1, largest=False).values.mean(dim=1))
        return torch.cat(out)

    @torch.no_grad()
    def fit(self, embeddings: torch.Tensor) -> NoiseLevelEstimator:
        """Store the bank and derive the bin edges from the training images' own k-NN distances.

        Args:
            embeddings: ``(N, D)`` g(x) of the training images (``embed_block``).

        Returns:
            self.
        """
        if embeddings.ndim != 2 or embeddings.shape[0] < 1:
            raise ValueError(f"embeddings must be (N, D) with N >= 1, got {tuple(embeddings.shape)}")
        self.bank = embeddings.detach().float().clone()
        clean = self.config.knn_mode == "clean"
        k = self._effective_k(exclude_self=clean)
        if k < self.config.knn_k:
            warnings.warn(
                f"only {self.bank.shape[0]} bank images: k-NN uses k={k} instead of {self.config.knn_k}", stacklevel=3
            )
        self.train_distances = self._knn_mean(self.bank, k, torch.arange(self.bank.shape[0]) if clean else None)
        low, high = self.train_distances.double().min(), self.train_distances.double().max()
        # numpy.histogram's edges: linspace between min and max (a single value still spans a zero-width range).
        self.bin_edges = torch.linspace(float(low), float(high), self.config.num_bins + 1, dtype=torch.float64).to(
            self.bank.device
        )
        return self

    @torch.no_grad()
    def distances(self, embeddings: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """y-bar: mean L1 distance of each query to its k nearest bank entries.

        Args:
            embeddings: ``(B, D)``.
            exclude: Optional ``(B,)`` bank row per query to leave out (-1: none): a good image of the bank scored
                out of sample. A new frame leaves nothing out.

        Returns:
            ``(B,)`` float32 on the bank's device.
        """
        if not self.is_fitted:
            raise RuntimeError("NoiseLevelEstimator is not fitted")
        if exclude is not None and bool((exclude < 0).all()):
            exclude = None
        return self._knn_mean(embeddings, self._effective_k(exclude_self=exclude is not None), exclude)

    def bin_index(self, distances: torch.Tensor) -> torch.Tensor:
        """kappa: 0 if y <= e0, i if e_{i-1} < y <= e_i, num_bins if y > e_last (right-closed bins).

        Args:
            distances: ``(B,)``.

        Returns:
            ``(B,)`` long in 0..num_bins.
        """
        edges = self.bin_edges.to(distances.device)
        # searchsorted(side='left') returns the first i with e_i >= y, i.e. e_{i-1} < y <= e_i.
        kappa = torch.searchsorted(edges, distances.double().contiguous(), right=False)
        return kappa.clamp(max=self.config.num_bins)

    def noise_steps_from_embeddings(
        self, embeddings: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Start timesteps ``(B,)`` long for embeddings ``(B, D)`` (``exclude`` as in :meth:`distances`)."""
        cfg = self.config
        if not cfg.dynamic_noise:
            return torch.full((embeddings.shape[0],), cfg.max_noise_step, dtype=torch.long, device=embeddings.device)
        kappa = self.bin_index(self.distances(embeddings, exclude))
        return noise_step_for_bin(kappa, cfg.max_noise_step, cfg.num_bins, cfg.min_bin, cfg.steps_per_image)

    def forward(self, block2: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Start timesteps for block-2 features.

        Args:
            block2: ``(B, C, h, w)`` block-2 features of the (domain-adapted) backbone.
            exclude: Optional ``(B,)`` bank row per image to leave out (see :meth:`distances`).

        Returns:
            ``(B,)`` long start timesteps T-hat on ``block2``'s device.
        """
        cfg = self.config
        if not cfg.dynamic_noise:
            return torch.full((block2.shape[0],), cfg.max_noise_step, dtype=torch.long, device=block2.device)
        return self.noise_steps_from_embeddings(embed_block(block2, cfg.dic_pool_size), exclude).to(block2.device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """State for the bundle (``noise_level.safetensors``)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, config: DDADConfig, tensors: dict[str, torch.Tensor]) -> NoiseLevelEstimator:
        """Rebuild a fitted estimator from ``tensors()``."""
        est = cls(config)
        missing = {"bank", "bin_edges", "train_distances"} - set(tensors)
        if missing:
            raise KeyError(f"noise-level state lacks {sorted(missing)}")
        est.bank = tensors["bank"].float()
        est.bin_edges = tensors["bin_edges"].double()
        est.train_distances = tensors["train_distances"].float()
        if est.bin_edges.numel() != config.num_bins + 1:
            raise ValueError(f"noise-level state has {est.bin_edges.numel() - 1} bins, config says {config.num_bins}")
        return est
