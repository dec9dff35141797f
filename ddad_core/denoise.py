"""Flow step 4, conditioned denoising: the explicit reverse loop (docs/method.md section 7).

``reconstruct`` writes the loop out (diffusers' "model and scheduler are separate" stance): build every sample's
grid, scale the input latent to its own start level (noiseless scaling, optionally with a continuous share omega
of real noise), then ``steps_per_image`` batched UNet calls, each followed by the conditioned DDIM step of
:mod:`ddad_core.ddim`.

Speed (docs/method.md section 13.2, item 1): the loop keeps only the current state, builds all timesteps on the device
before it starts, never calls ``.item()``/``.cpu()``, and has no per-sample Python loop, so a batch with mixed start
steps costs exactly ``steps_per_image`` UNet calls. It runs under ``torch.inference_mode``.
"""

from __future__ import annotations

import torch
from torch import nn

from ddad_core.ddim import DDADScheduler

__all__ = ["reconstruct", "start_state"]


def start_state(
    scheduler: DDADScheduler,
    latents: torch.Tensor,
    noise_steps: torch.Tensor,
    omega: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Noiseless scaling (docs/method.md 7.1): ``z_T = sqrt(abar_T) z0 + omega sqrt(1 - abar_T) eps``.

    Args:
        scheduler: Provides the schedule.
        latents: ``(B, C, h, w)`` z0.
        noise_steps: ``(B,)`` long start timesteps T_i.
        omega: Share of real noise (0 = the paper's best setting; 1 = a full DDPM forward sample).
        generator: For eps when ``omega > 0``.

    Returns:
        ``(B, C, h, w)`` start state in ``latents.dtype``.
    """
    abar = scheduler.schedule.alpha_bar(noise_steps).to(latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
    z = abar.sqrt() * latents
    if omega > 0:
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        z = z + omega * (1 - abar).sqrt() * noise
    return z


def _check_inputs(latents: torch.Tensor, noise_steps: torch.Tensor) -> None:
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
        raise ValueError(f"latents must be a (B, C, h, w) tensor, got {getattr(latents, 'shape', type(latents))}")
    if not latents.dtype.is_floating_point:
        raise TypeError(f"latents must be floating point, got {latents.dtype}")
    if noise_steps.ndim != 1 or noise_steps.shape[0] != latents.shape[0]:
        raise ValueError(f"noise_steps must have shape ({latents.shape[0]},), got {tuple(noise_steps.shape)}")
    if noise_steps.dtype.is_floating_point:
        raise TypeError(f"noise_steps must be an integer tensor, got {noise_steps.dtype}")


@torch.inference_mode()
def _reconstruct(unet, scheduler, latents, noise_steps, guidance, eta, omega, generator, plain_first, start_steps):
    # 1. Per-sample grids, built on the device in one go.
    timesteps = scheduler.set_timesteps(noise_steps)
    prev_timesteps = scheduler.prev_timesteps
    condition = latents.float()
    unet_dtype = next(unet.parameters()).dtype
    # 2. Start state (noiseless scaling); the scheduler math stays in float32 even for a bf16 UNet.
    start = (noise_steps if start_steps is None else start_steps).to(condition.device)
    z = start_state(scheduler, condition, start, omega=omega, generator=generator)
    # 3. Denoising loop: one batched UNet call and one batched step per iteration.
    for i in range(scheduler.steps_per_image):
        eps = unet(z.to(unet_dtype), timesteps[i]).sample.float()
        z = scheduler.step(
            eps,
            timesteps[i],
            prev_timesteps[i],
            z,
            condition,
            guidance,
            eta=eta,
            generator=generator,
            plain_first=plain_first and i == 0,
        ).prev_sample
    # The last step targets t' = -1 (abar = 1, c1 = c2 = 0), so z is the final x0 estimate.
    return z


def reconstruct(
    unet: nn.Module,
    scheduler: DDADScheduler,
    latents: torch.Tensor,
    noise_steps: torch.Tensor,
    guidance: float | torch.Tensor,
    eta: float = 0.0,
    omega: float = 0.0,
    generator: torch.Generator | None = None,
    plain_first: bool = False,
    start_steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reconstruct latents with the conditioned DDIM reverse process, each sample from its own start step.

    Args:
        unet: An eps-prediction model called as ``unet(z, t).sample`` (diffusers ``UNet2DModel``), with
            ``t`` a ``(B,)`` long tensor. Put it in eval mode and on the latents' device first.
        scheduler: The :class:`~ddad_core.ddim.DDADScheduler` (steps per image, grid).
        latents: ``(B, C, h, w)`` input latents z0 (already scaled by the autoencoder's latent scale); they are
            both the start point and the condition y.
        noise_steps: ``(B,)`` long start timesteps T_i (e.g. from the noise-level estimator).
        guidance: w, float or ``(B,)`` tensor.
        eta: DDIM stochasticity.
        omega: Share of real noise in the start state (0 = noiseless scaling).
        generator: Random source for omega/eta noise.
        plain_first: Zero c1, c2 at the first step (the reference's domain-adaptation sampler, Q6).
        start_steps: ``(B,)`` long timesteps for the start-state scaling only, if they differ from the grid's
            ``noise_steps`` (the reference's domain adaptation scales at floor(8k) but steps on round10(8k), Q2).

    Returns:
        ``(B, C, h, w)`` float32 reconstructed latents z0^. The result is a normal tensor (usable in autograd as
        a constant), even though the loop itself runs in inference mode.

    Raises:
        ValueError / TypeError: Wrong shapes or dtypes, or schedule and latents on different devices.

    Example:
        >>> from diffusers import UNet2DModel
        >>> from ddad_core.noise_schedule import NoiseSchedule
        >>> unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32,),
        ...                    down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
        ...                    layers_per_block=1, norm_num_groups=8).eval()
        >>> z = torch.randn(2, 4, 8, 8)
        >>> reconstruct(unet, DDADScheduler(NoiseSchedule()), z, torch.tensor([20, 80]), guidance=4.0).shape
        torch.Size([2, 4, 8, 8])
    """
    _check_inputs(latents, noise_steps)
    if scheduler.schedule.device != latents.device:
        # Checked here because moving the tables inside the loop would be a hidden host-device copy per step.
        raise ValueError(
            f"the noise schedule is on {scheduler.schedule.device} but the latents are on {latents.device}; "
            "build the schedule with device=... (or use schedule.to(device))"
        )
    if start_steps is not None:
        _check_inputs(latents, start_steps)
    out = _reconstruct(unet, scheduler, latents, noise_steps, guidance, eta, omega, generator, plain_first, start_steps)
    if torch.is_inference_mode_enabled():
        return out
    # An inference tensor cannot be saved for backward (domain adaptation feeds reconstructions to a trained
    # network); one cheap copy outside inference mode makes it an ordinary tensor.
    return out.clone()
