"""Offline fitting, step 1: train the latent noise-prediction UNet (docs/method.md sections 4.2 and 4.3).

Recipe (as the reference): AdamW (lr 1e-4, weight decay 0.01), batch 30, shuffled with ``drop_last``, uniform
t ~ U{0..T-1} per sample, eps ~ N(0, I), loss = element-mean MSE between eps and eps_theta(z_t, t); no EMA, no LR
schedule, no clipping.

Settings of the production recipe (``TrainConfig``; the paper recipe leaves them off): ``timestep_max`` samples
t ~ U{0..timestep_max-1}, where the sampler queries (D3AD never starts above T_max, so with the full range about
92 % of the training signal lands on timesteps inference never uses); ``ema_decay`` keeps an exponential moving
average of the weights (with the usual warm-up ``min(decay, (1 + n) / (10 + n))`` after n updates) and the EMA
weights are what training returns; ``lr_schedule="cosine"`` decays the learning rate to 0 over all steps.

What we do differently, for speed and robustness (docs/method.md section 13.2, item 2): the autoencoder runs once
(:func:`encode_dataset` caches the posterior mean and std of every training image) and each step samples
``z0 = mean + std * xi`` from the cache -- the same distribution as re-encoding, at a fraction of the cost.
Randomness comes from explicit generators seeded from ``TrainConfig.seed`` (reproducible on CPU), and their
states are checkpointed, so a run resumed after an interruption continues exactly as an uninterrupted one would.
On CUDA the UNet runs under bf16 autocast (the loss is computed in float32). A non-finite loss stops training
with :class:`TrainingDivergedError` before the optimiser step, so the last checkpoint on disk stays good.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddad_core.autoencoders import LatentAutoencoder
from ddad_core.config import TrainConfig
from ddad_core.noise_schedule import NoiseSchedule
from ddad_core.progress import Progress, Step, as_progress

__all__ = ["CHECKPOINT_NAME", "LatentCache", "TrainingDivergedError", "encode_dataset", "train_unet"]

#: File name of the resumable checkpoint inside ``checkpoint_dir``.
CHECKPOINT_NAME = "unet_checkpoint.pt"


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite.

    Attributes:
        epoch: 0-based epoch in which it happened.
        step: Step within that epoch.
        checkpoint: Path of the last good checkpoint, or None if none was written.
    """

    def __init__(self, epoch: int, step: int, loss: float, checkpoint: Path | None, checkpoint_epoch: int | None):
        self.epoch, self.step, self.loss, self.checkpoint = epoch, step, loss, checkpoint
        where = (
            f"the last good checkpoint ({checkpoint}, after epoch {checkpoint_epoch}) was kept; lower the learning "
            "rate and resume from it"
            if checkpoint is not None
            else "no checkpoint had been written yet"
        )
        super().__init__(f"UNet training diverged: loss = {loss} at epoch {epoch + 1}, step {step + 1}; {where}")


@dataclass
class LatentCache:
    """Posterior statistics of the training images, in scaled latent units.

    Attributes:
        mean: ``(N, C, h, w)`` posterior means.
        std: ``(N, C, h, w)`` posterior standard deviations (zeros for deterministic autoencoders).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __len__(self) -> int:
        return self.mean.shape[0]

    def to(self, device: torch.device | str) -> LatentCache:
        return LatentCache(self.mean.to(device), self.std.to(device))

    def sample(self, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``mean + std * xi`` for the images at ``index`` (on the cache's device)."""
        mean, std = self.mean[index], self.std[index]
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + std * noise


def encode_dataset(
    ae: LatentAutoencoder, images: torch.Tensor, batch_size: int = 16, step: Step | None = None
) -> LatentCache:
    """Encode every training image once.

    Args:
        ae: The (frozen) autoencoder, on the device to encode on.
        images: ``(N, 3, S, S)`` float in [-1, 1], on any device (moved batch by batch).
        batch_size: Images per encoder call.
        step: Progress step counting the encoded images.

    Returns:
        :class:`LatentCache` on the autoencoder's device, float32.

    Raises:
        ValueError: ``images`` is empty or not ``(N, 3, S, S)``.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a (N, 3, S, S) tensor, got {getattr(images, 'shape', type(images))}")
    if len(images) == 0:
        raise ValueError("encode_dataset got no images: the training set is empty")
    device = next(ae.parameters()).device
    means, stds = [], []
    # no_grad rather than inference_mode: the cached latents are later inputs to a network that is trained.
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            dist = ae.encode(images[start : start + batch_size].to(device))
            means.append(dist.mean.float())
            stds.append(dist.std.float())
            if step is not None:
                step.update(len(means[-1]))
    return LatentCache(torch.cat(means), torch.cat(stds))


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint behind


def _generator_state(gen: torch.Generator) -> torch.Tensor:
    return gen.get_state().clone()


class WeightEMA:
    """Exponential moving average of a module's floating-point parameters and buffers, with warm-up."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach(), 1.0 - decay)

    def copy_to(self, module: nn.Module) -> None:
        module.load_state_dict({**module.state_dict(), **self.shadow})

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


def train_unet(
    unet: nn.Module,
    cache: LatentCache,
    schedule: NoiseSchedule,
    train_cfg: TrainConfig,
    device: torch.device | str,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: Progress | bool = True,
    resume: bool = True,
    max_epochs: int | None = None,
) -> list[float]:
    """Train ``unet`` in place to predict the noise added to cached latents.

    Args:
        unet: A ``UNet2DModel`` (e.g. from :func:`~ddad_core.unet.build_unet`); moved to ``device``.
        cache: Output of :func:`encode_dataset`.
        schedule: The noise schedule (moved to ``device`` if needed).
        train_cfg: ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``checkpoint_every``, ``seed``.
        device: Where to train. On CUDA the forward runs under bf16 autocast.
        checkpoint_dir: If given, a resumable checkpoint (``unet_checkpoint.pt``) is written there every
            ``checkpoint_every`` epochs and at the end, and (with ``resume``) an existing one is resumed from.
        progress: Where the epochs, the loss and the ETA are shown (``ddad_core.progress``; True: a bar on a
            terminal, lines otherwise; False: silent). The step is timed as ``unet``.
        resume: Continue from the checkpoint in ``checkpoint_dir`` if there is one.
        max_epochs: Stop after this many epochs *of this call* (an interruption, for tests and time budgets);
            the run can be resumed later.

    Returns:
        Mean loss of every completed epoch since the start of training (including resumed epochs).

    Raises:
        TrainingDivergedError: The loss became NaN/inf (the weights are not updated with it; the last
            checkpoint on disk is kept).
        ValueError: The cache is empty.
    """
    if len(cache) == 0:
        raise ValueError("train_unet got an empty latent cache: the training set is empty")
    device = torch.device(device)
    unet.to(device).train()
    cache = cache.to(device)
    if schedule.device != device:
        schedule = schedule.to(device)
    batch_size = train_cfg.batch_size
    if len(cache) < batch_size:
        # drop_last with fewer images than a batch would mean zero steps per epoch.
        warnings.warn(
            f"only {len(cache)} training images (< batch size {batch_size}); using one batch of all of them",
            stacklevel=2,
        )
        batch_size = len(cache)
    steps_per_epoch = len(cache) // batch_size  # drop_last, as the reference DataLoader

    optimiser = torch.optim.AdamW(unet.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    total_steps = max(1, train_cfg.epochs * steps_per_epoch)
    if train_cfg.lr_schedule == "cosine":
        lr_sched = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
    else:
        lr_sched = None
    ema = WeightEMA(unet, train_cfg.ema_decay) if train_cfg.ema_decay > 0 else None
    # Two explicit generators: shuffling/timesteps on the CPU (cheap, device independent) and noise on the device.
    cpu_gen = torch.Generator().manual_seed(train_cfg.seed)
    dev_gen = torch.Generator(device=device).manual_seed(train_cfg.seed + 1)
    losses: list[float] = []
    start_epoch = 0

    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    last_good: tuple[Path, int] | None = None
    if ckpt_path is not None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        if resume and ckpt_path.exists():
            # Generator states must be CPU byte tensors; weights and optimiser state are moved by load_state_dict.
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            unet.load_state_dict(state["unet"])
            optimiser.load_state_dict(state["optimizer"])
            cpu_gen.set_state(state["cpu_generator"])
            dev_gen.set_state(state["device_generator"])
            losses = list(state["losses"])
            start_epoch = int(state["epoch"])
            if lr_sched is not None and state.get("lr_scheduler") is not None:
                lr_sched.load_state_dict(state["lr_scheduler"])
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            saved_cfg = {k: v for k, v in state.get("train_config", {}).items() if k != "epochs"}
            current = {k: v for k, v in train_cfg.model_dump().items() if k != "epochs"}
            if saved_cfg != current:
                warnings.warn(
                    f"resuming {ckpt_path} (epoch {start_epoch}) with a different training config: "
                    f"saved {saved_cfg}, now {current}",
                    stacklevel=2,
                )
            last_good = (ckpt_path, start_epoch)

    def save(epoch: int) -> None:
        nonlocal last_good
        if ckpt_path is None:
            return
        _atomic_save(
            dict(
                unet=unet.state_dict(),
                optimizer=optimiser.state_dict(),
                cpu_generator=_generator_state(cpu_gen),
                device_generator=_generator_state(dev_gen),
                losses=losses,
                epoch=epoch,
                train_config=train_cfg.model_dump(),
                lr_scheduler=lr_sched.state_dict() if lr_sched is not None else None,
                ema=ema.state_dict() if ema is not None else None,
            ),
            ckpt_path,
        )
        last_good = (ckpt_path, epoch)

    end_epoch = train_cfg.epochs if max_epochs is None else min(train_cfg.epochs, start_epoch + max_epochs)
    use_autocast = device.type == "cuda"
    T = schedule.num_train_timesteps
    t_high = min(T, train_cfg.timestep_max) if train_cfg.timestep_max is not None else T
    progress = as_progress(progress)
    with progress.step("unet", total=train_cfg.epochs, unit="epoch", initial=start_epoch) as bar:
        for epoch in range(start_epoch, end_epoch):
            order = torch.randperm(len(cache), generator=cpu_gen)
            timesteps = torch.randint(0, t_high, (steps_per_epoch, batch_size), generator=cpu_gen)
            total = torch.zeros((), device=device)
            for step in range(steps_per_epoch):
                index = order[step * batch_size : (step + 1) * batch_size].to(device)
                t = timesteps[step].to(device)
                z0 = cache.sample(index, generator=dev_gen)
                noise = torch.randn(z0.shape, generator=dev_gen, device=device, dtype=z0.dtype)
                zt = schedule.add_noise(z0, noise, t)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_autocast):
                    pred = unet(zt, t).sample
                loss = F.mse_loss(pred.float(), noise)
                value = float(loss.detach())  # one sync per step: needed to stop before a NaN reaches the weights
                if not math.isfinite(value):
                    path, done = last_good if last_good is not None else (None, None)
                    raise TrainingDivergedError(epoch, step, value, path, done)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                if lr_sched is not None:
                    lr_sched.step()
                if ema is not None:
                    ema.update(unet)
                total += loss.detach()
            losses.append(float(total) / steps_per_epoch)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            bar.update(1)
            done = epoch + 1
            if done % train_cfg.checkpoint_every == 0 or done == train_cfg.epochs:
                save(done)
    if ema is not None:
        ema.copy_to(unet)  # the averaged weights are the trained model (checkpoints keep the raw ones to resume)
    unet.eval()
    return losses
