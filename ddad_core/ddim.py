"""Flow step 4 (conditioned denoising), the per-step math: DDIM with DDAD implicit conditioning (docs/method.md 7.2).

Shaped like a diffusers scheduler (``set_timesteps`` / ``step`` / a small output dataclass), with one difference
that the method needs: every sample in a batch has its *own* start timestep T_i (chosen by the dynamic noise
level), so timesteps are ``(B,)`` tensors and the grid is ``(steps_per_image, B)``. All samples take the same
number of steps, each on its own grid with step size ``s_i = T_i / steps_per_image``, so one batched UNet call per
step serves the whole batch.

The update from t to t' for a latent z_t, model output eps, condition y (the input image's own latent) and
guidance weight w::

    y_t   = sqrt(abar_t) y + sqrt(1 - abar_t) eps            # the target re-noised with the predicted noise
    eps^  = eps - w sqrt(1 - abar_t) (y_t - z_t)
    x0^   = (z_t - sqrt(1 - abar_t) eps^) / sqrt(abar_t)
    c1    = eta sqrt((1 - abar_t / abar_t') (1 - abar_t') / (1 - abar_t))
    c2    = sqrt(1 - abar_t' - c1^2)
    z_t'  = sqrt(abar_t') x0^ + c1 xi + c2 eps^              # xi ~ N(0, I)

Grids (quirk Q1 of docs/method.md section 10): ``"faithful"`` is the reference code's ``T-s, T-2s, ..., 0`` (the start
state is scaled at T but the first network call is at T - s); ``"clean"`` is ``T, T-s, ..., s``. In both, the last
step goes to t' = -1 with abar = 1, where c1 = c2 = 0 and the result is x0^.
``plain_first`` (quirk Q6) zeroes c1 and c2 for a step, as the reference code's domain-adaptation and fixed-T
samplers do at their first step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ddad_core.noise_schedule import NoiseSchedule

__all__ = ["DDADScheduler", "DDADSchedulerOutput"]


@dataclass
class DDADSchedulerOutput:
    """Result of one :meth:`DDADScheduler.step`.

    Attributes:
        prev_sample: ``(B, C, h, w)`` z_{t'}, the input of the next step.
        pred_original_sample: ``(B, C, h, w)`` x0^, the current estimate of the clean latent.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


class DDADScheduler:
    """Batched conditioned DDIM scheduler with per-sample timesteps.

    Args:
        schedule: The noise schedule (its device is where the grids are built).
        steps_per_image: UNet evaluations per image (10 in the paper).
        grid: ``"faithful"`` (reference code, Q1) or ``"clean"``.

    Example:
        >>> sched = DDADScheduler(NoiseSchedule(), steps_per_image=4)
        >>> sched.set_timesteps(torch.tensor([8, 20])).T.tolist()
        [[6, 4, 2, 0], [15, 10, 5, 0]]
        >>> sched.prev_timesteps.T.tolist()
        [[4, 2, 0, -1], [10, 5, 0, -1]]
    """

    def __init__(
        self, schedule: NoiseSchedule, steps_per_image: int = 10, grid: Literal["faithful", "clean"] = "faithful"
    ):
        if steps_per_image <= 0:
            raise ValueError(f"steps_per_image must be positive, got {steps_per_image}")
        if grid not in ("faithful", "clean"):
            raise ValueError(f"grid must be 'faithful' or 'clean', got {grid!r}")
        self.schedule = schedule
        self.steps_per_image = int(steps_per_image)
        self.grid = grid
        self.timesteps: torch.Tensor | None = None
        self.prev_timesteps: torch.Tensor | None = None

    @classmethod
    def from_config(cls, config, schedule: NoiseSchedule | None = None, device=None) -> DDADScheduler:
        """Build from a :class:`~ddad_core.config.DDADConfig` (schedule built on ``device`` unless given)."""
        schedule = schedule if schedule is not None else NoiseSchedule.from_config(config, device=device)
        return cls(schedule, steps_per_image=config.steps_per_image, grid=config.grid)

    def set_timesteps(self, noise_steps: torch.Tensor) -> torch.Tensor:
        """Build every sample's grid at once, on the schedule's device, without host syncs.

        Args:
            noise_steps: ``(B,)`` integer start timesteps T_i. They should be multiples of ``steps_per_image``
                (the noise-level estimator only produces such values); otherwise the step is ``T_i //
                steps_per_image`` (at least 1) and grid points below 0 are clamped to 0.

        Returns:
            ``(steps_per_image, B)`` long tensor of the timesteps at which the UNet is called, row ``k`` for
            step ``k``. Also stored as ``self.timesteps``; ``self.prev_timesteps`` holds each step's target t'
            (the next row, and -1 after the last step).
        """
        if noise_steps.ndim != 1:
            raise ValueError(f"noise_steps must have shape (B,), got {tuple(noise_steps.shape)}")
        if noise_steps.dtype.is_floating_point:
            raise TypeError(f"noise_steps must be an integer tensor, got {noise_steps.dtype}")
        device = self.schedule.device
        start = noise_steps.to(device=device, dtype=torch.long)
        n = self.steps_per_image
        step = torch.clamp(start // n, min=1)
        k = torch.arange(n, device=device, dtype=torch.long).unsqueeze(1)  # (n, 1)
        first = 1 if self.grid == "faithful" else 0
        timesteps = torch.clamp(start.unsqueeze(0) - (k + first) * step.unsqueeze(0), min=0)
        prev = torch.cat([timesteps[1:], torch.full_like(timesteps[:1], -1)])
        self.timesteps, self.prev_timesteps = timesteps, prev
        return timesteps

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        prev_timestep: torch.Tensor,
        sample: torch.Tensor,
        condition: torch.Tensor,
        guidance: float | torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        plain_first: bool = False,
        variance_noise: torch.Tensor | None = None,
    ) -> DDADSchedulerOutput:
        """One conditioned DDIM step, per sample (see the module docstring for the formulas).

        Args:
            model_output: ``(B, C, h, w)`` predicted noise eps_theta(z_t, t).
            timestep: ``(B,)`` long, current t per sample.
            prev_timestep: ``(B,)`` long, target t' per sample (-1 for the last step).
            sample: ``(B, C, h, w)`` z_t.
            condition: ``(B, C, h, w)`` y, the latent the reconstruction is pulled toward.
            guidance: w, a float or a ``(B,)`` tensor (0 = plain DDIM).
            eta: DDIM stochasticity (0 = deterministic).
            generator: For xi when ``eta > 0``.
            plain_first: Zero c1 and c2 in this step (Q6; the caller passes it for the first step only).
            variance_noise: Optional explicit xi (diffusers' argument of the same name), overrides ``generator``.

        Returns:
            :class:`DDADSchedulerOutput` with ``prev_sample`` and ``pred_original_sample`` in ``sample.dtype``.
        """
        if not (model_output.shape == sample.shape == condition.shape):
            raise ValueError(
                f"shape mismatch: model_output {tuple(model_output.shape)}, sample {tuple(sample.shape)}, "
                f"condition {tuple(condition.shape)}"
            )
        abar_t = _bcast(self.schedule.alpha_bar(timestep), sample)
        abar_prev = _bcast(self.schedule.alpha_bar(prev_timestep), sample)
        sqrt_one_minus = (1 - abar_t).sqrt()
        if isinstance(guidance, torch.Tensor) and guidance.ndim > 0:
            guidance = _bcast(guidance, sample)

        eps = model_output
        # Implicit conditioning: push eps toward the noise that would turn y into z_t at level t.
        target_t = abar_t.sqrt() * condition + sqrt_one_minus * eps
        eps_hat = eps - guidance * sqrt_one_minus * (target_t - sample)
        x0_hat = (sample - sqrt_one_minus * eps_hat) / abar_t.sqrt()

        if plain_first:
            return DDADSchedulerOutput(prev_sample=abar_prev.sqrt() * x0_hat, pred_original_sample=x0_hat)

        prev = abar_prev.sqrt() * x0_hat
        if eta > 0:
            c1 = eta * ((1 - abar_t / abar_prev) * (1 - abar_prev) / (1 - abar_t)).clamp(min=0).sqrt()
            c2 = (1 - abar_prev - c1 * c1).clamp(min=0).sqrt()
            if variance_noise is None:
                variance_noise = torch.randn(
                    sample.shape, generator=generator, device=sample.device, dtype=sample.dtype
                )
            prev = prev + c1 * variance_noise + c2 * eps_hat
        else:
            prev = prev + (1 - abar_prev).clamp(min=0).sqrt() * eps_hat
        return DDADSchedulerOutput(prev_sample=prev, pred_original_sample=x0_hat)
