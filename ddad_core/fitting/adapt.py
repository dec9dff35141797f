"""Offline fitting, step 2: domain adaptation of the feature extractor phi (docs/method.md section 5.2).

For gamma epochs over the good training images (batch 30, shuffled, last batch kept):

1. draw one noise level per batch: k ~ U{1..10}, start scaling at t_s = floor(T_max k / 10) and step grid from
   T_r = round10(T_max k / 10) (quirk Q2; ``grid="clean"`` uses T_r for both);
2. without gradients: z0 = E(x), reconstruct with the conditioned sampler (condition y = z0, weight w) in its "DA
   variant" (c1 = c2 = 0 at the first step, quirk Q6; ``grid="clean"`` uses the same update at every step), and
   decode x-hat = D(z-hat);
3. loss ``sum_{l in 1..3} mean_b [1 - cos(vec phi_l(x-hat_b), vec phi_l(x_b))]`` with gradients through phi on both
   branches (one cosine per image and block over the whole flattened map);
4. AdamW, lr 1e-4, weight decay 0.01, every phi parameter trainable, phi in train mode (BatchNorm statistics adapt to
   the target domain). D3AD has no frozen teacher; with ``da_teacher`` = lambda_DL > 0 the loss gains DDAD's two
   regularisers, ``lambda_DL * sum_l mean_b [1 - cos(phi_l(x), phi0_l(x))] + [1 - cos(phi_l(x-hat), phi0_l(x-hat))]``
   against a frozen copy phi0 of the ImageNet backbone, so that adaptation cannot drift the features (which the
   patch k-NN term also uses) away from what ImageNet made them.

The adapted weights are stored in the bundle (``backbone.safetensors``) and never re-computed at evaluation time
(quirk Q10: the reference re-runs DA inside every evaluation).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ddad_core.autoencoders import LatentAutoencoder
from ddad_core.config import DDADConfig
from ddad_core.ddim import DDADScheduler
from ddad_core.denoise import start_state
from ddad_core.features import FeatureExtractor
from ddad_core.noise_level import noise_step_for_bin
from ddad_core.progress import Progress, as_progress


def adaptation_noise_levels(k: int, config: DDADConfig) -> tuple[int, int]:
    """``(t_s, T_r)`` for a drawn k: the start-scaling step and the grid's start step (docs/method.md 5.2 step 1).

    Example:
        >>> [adaptation_noise_levels(k, DDADConfig()) for k in (1, 3, 6, 10)]
        [(8, 10), (24, 20), (48, 50), (80, 80)]
    """
    cfg = config
    grid_start = int(noise_step_for_bin(k, cfg.max_noise_step, cfg.num_bins, min_bin=0, multiple=cfg.steps_per_image))
    scale_start = (cfg.max_noise_step * k) // cfg.num_bins if cfg.grid == "faithful" else grid_start
    return scale_start, grid_start


@torch.no_grad()
def reconstruct_for_adaptation(
    unet: nn.Module,
    scheduler: DDADScheduler,
    latents: torch.Tensor,
    scale_step: int,
    grid_step: int,
    guidance: float,
    plain_first: bool = True,
) -> torch.Tensor:
    """The reference's DA sampler: start scaled at ``scale_step``, grid from ``grid_step``, optional plain first step.

    Args:
        unet: Noise predictor (eval mode).
        scheduler: Per-sample DDIM scheduler.
        latents: ``(B, C, h, w)`` z0 (also the condition).
        scale_step: t_s.
        grid_step: T_r.
        guidance: w.
        plain_first: Zero c1, c2 at the first step (Q6 faithful).

    Returns:
        ``(B, C, h, w)`` reconstructed latents.
    """
    batch = latents.shape[0]
    device = latents.device
    timesteps = scheduler.set_timesteps(torch.full((batch,), grid_step, dtype=torch.long, device=device))
    prev_timesteps = scheduler.prev_timesteps
    z = start_state(scheduler, latents, torch.full((batch,), scale_step, dtype=torch.long, device=device))
    unet_dtype = next(unet.parameters()).dtype
    for i in range(scheduler.steps_per_image):
        eps = unet(z.to(unet_dtype), timesteps[i]).sample.float()
        z = scheduler.step(
            eps, timesteps[i], prev_timesteps[i], z, latents, guidance, plain_first=plain_first and i == 0
        ).prev_sample
    return z


def adaptation_loss(features: list[torch.Tensor], recon_features: list[torch.Tensor]) -> torch.Tensor:
    """``sum_l mean_b [1 - cos(vec f_l, vec g_l)]``: one cosine per image and block over the flattened map.

    Example:
        >>> f = [torch.ones(2, 3, 4, 4)]
        >>> float(adaptation_loss(f, [-t for t in f]))
        2.0
    """
    total = features[0].new_zeros(())
    for f, g in zip(features, recon_features, strict=True):
        total = total + (1 - F.cosine_similarity(f.flatten(1).float(), g.flatten(1).float(), dim=1)).mean()
    return total


def domain_adapt(
    features: FeatureExtractor,
    autoencoder: LatentAutoencoder,
    unet: nn.Module,
    scheduler: DDADScheduler,
    images: torch.Tensor,
    config: DDADConfig,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: Progress | bool = True,
) -> list[float]:
    """Fine-tune ``features`` in place for ``config.da_epochs`` epochs; returns the mean loss of each epoch.

    Args:
        features: The ImageNet backbone (trained in place, left in eval mode).
        autoencoder: Frozen latent autoencoder.
        unet: Trained noise predictor (frozen).
        scheduler: Scheduler on ``device``.
        images: ``(N, 3, S, S)`` good training images in [-1, 1] (any device; moved batch by batch).
        config: ``da_epochs``, ``da_batch_size``, ``da_lr``, ``guidance``, ``posterior``, ``grid`` and the noise-level
            fields.
        device: Where to run.
        seed: Seeds shuffling, the noise levels and posterior samples.
        progress: Where the batches and the ETA are shown (``ddad_core.progress``), plus one line per epoch; timed as
            ``domain_adaptation``.

    Returns:
        Mean loss per epoch (empty for ``da_epochs == 0``, which keeps the ImageNet weights unchanged).
    """
    if config.da_epochs == 0:
        return []
    device = torch.device(device)
    features.to(device)
    unet.to(device).eval()
    autoencoder.to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    sample_gen = torch.Generator(device=device).manual_seed(seed + 1)
    optimiser = torch.optim.AdamW(features.parameters(), lr=config.da_lr, weight_decay=0.01)
    # DDAD's frozen teacher: the backbone as it was before adaptation, in eval mode (its BatchNorm statistics fixed).
    teacher = copy.deepcopy(features).eval().requires_grad_(False) if config.da_teacher > 0 else None
    features.requires_grad_(True)
    losses = []
    n = len(images)
    batches = math.ceil(n / config.da_batch_size)
    progress = as_progress(progress)
    with progress.step("domain_adaptation", total=config.da_epochs * batches, unit="batch") as step:
        for epoch in range(config.da_epochs):
            features.train()  # BatchNorm statistics adapt to the target domain (part of the method)
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for b in range(batches):
                x = images[order[b * config.da_batch_size : (b + 1) * config.da_batch_size]].to(device)
                k = int(torch.randint(1, config.num_bins + 1, (1,), generator=gen))
                scale_step, grid_step = adaptation_noise_levels(k, config)
                with torch.no_grad():
                    dist = autoencoder.encode(x)
                    z0 = dist.sample(sample_gen) if config.posterior == "sample" else dist.mean
                    plain_first = config.grid == "faithful"
                    z_hat = reconstruct_for_adaptation(
                        unet, scheduler, z0, scale_step, grid_step, config.guidance, plain_first=plain_first
                    )
                    x_hat = autoencoder.decode(z_hat)
                f_x, f_hat = features(x), features(x_hat)
                loss = adaptation_loss(f_x, f_hat)
                if teacher is not None:
                    with torch.no_grad():
                        t_x, t_hat = teacher(x), teacher(x_hat)
                    loss = loss + config.da_teacher * (adaptation_loss(f_x, t_x) + adaptation_loss(f_hat, t_hat))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += float(loss.detach())
                step.set_postfix(epoch=f"{epoch + 1}/{config.da_epochs}", loss=f"{total / (b + 1):.4f}")
                step.update(1)
            losses.append(total / batches)
            progress.write(f"domain adaptation epoch {epoch + 1}/{config.da_epochs}: loss {losses[-1]:.4f}")
    features.eval().requires_grad_(False)
    return losses
