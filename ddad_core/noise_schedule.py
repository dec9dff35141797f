"""The forward-process noise schedule (docs/method.md section 4.1), tabulated once on the device.

The reference code rebuilt the alpha-bar table from a numpy linspace twice per sampling step and again in every
training step (docs/method.md section 13.1, item 1). Here it is computed once, in float64 for accuracy, stored in
float32 on the target device, and indexed with per-sample timestep tensors -- no host round trips.

Convention: timesteps are 0-based (``alpha_bar(0) = 1 - beta_0``) and ``alpha_bar(-1) := 1``, which is what the
last DDIM step (t -> -1) needs. The table is padded with that 1 at the front so ``alpha_bar`` is a single gather.
"""

from __future__ import annotations

import torch

__all__ = ["NoiseSchedule"]


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape ``(B,)`` to ``(B, 1, 1, ...)`` to broadcast against ``like`` and match its dtype."""
    return values.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


class NoiseSchedule:
    """Linear-beta DDPM schedule with a per-sample lookup.

    Args:
        num_train_timesteps: T (1000 in the paper).
        beta_start: beta_0 (0.0015).
        beta_end: beta_{T-1} (0.0195).
        device: Where the tables live.

    Attributes:
        betas: ``(T,)`` float32.
        alphas_cumprod: ``(T,)`` float32, ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``.

    Example:
        >>> s = NoiseSchedule()
        >>> round(float(s.alpha_bar(torch.tensor([80]))[0]), 5)
        0.8352
        >>> float(s.alpha_bar(torch.tensor([-1]))[0])
        1.0
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        device: torch.device | str | None = None,
    ):
        if num_train_timesteps <= 0:
            raise ValueError(f"num_train_timesteps must be positive, got {num_train_timesteps}")
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        betas64 = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        abar64 = torch.cumprod(1.0 - betas64, dim=0)
        self.betas = betas64.to(device=device, dtype=torch.float32)
        self.alphas_cumprod = abar64.to(device=device, dtype=torch.float32)
        # index t + 1: position 0 holds alpha_bar(-1) = 1 so the final DDIM step needs no branch.
        self._abar_padded = torch.cat([torch.ones(1, dtype=torch.float64), abar64]).to(device, torch.float32)

    @classmethod
    def from_config(cls, config, device: torch.device | str | None = None) -> NoiseSchedule:
        """Build from a :class:`~ddad_core.config.DDADConfig` (or anything with the same three fields)."""
        return cls(config.num_train_timesteps, config.beta_start, config.beta_end, device=device)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """Return a copy whose tables live on ``device`` (a no-op copy if already there)."""
        return NoiseSchedule(self.num_train_timesteps, self.beta_start, self.beta_end, device=device)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """Look up alpha_bar per sample.

        Args:
            t: Integer timesteps of any shape, values in ``[-1, T-1]`` (``-1`` gives 1.0). Moved to the
                table's device if needed (a no-op in the sampling loop, where both already agree).

        Returns:
            Float32 tensor of the same shape as ``t``.
        """
        if t.dtype.is_floating_point:
            raise TypeError(f"timesteps must be an integer tensor, got {t.dtype}")
        return self._abar_padded[t.to(self._abar_padded.device) + 1]

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process ``z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps`` (docs/method.md section 4.2).

        Args:
            latents: ``(B, C, h, w)`` clean latents z0.
            noise: Same shape, eps ~ N(0, I).
            t: ``(B,)`` integer timesteps.

        Returns:
            ``(B, C, h, w)`` noisy latents, in ``latents.dtype``.
        """
        if latents.shape != noise.shape:
            raise ValueError(f"latents {tuple(latents.shape)} and noise {tuple(noise.shape)} differ in shape")
        if t.ndim != 1 or t.shape[0] != latents.shape[0]:
            raise ValueError(f"t must have shape ({latents.shape[0]},), got {tuple(t.shape)}")
        abar = _per_sample(self.alpha_bar(t), latents)
        return abar.sqrt() * latents + (1 - abar).sqrt() * noise

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(num_train_timesteps={self.num_train_timesteps}, beta_start={self.beta_start}, "
            f"beta_end={self.beta_end}, device={self.device})"
        )
