"""Domain adaptation: noise levels of the DA sampler, the loss, and the fine-tuning loop."""

from __future__ import annotations

import pytest
import torch

from ddad_core.autoencoders import ConvAutoencoder
from ddad_core.config import DDADConfig
from ddad_core.ddim import DDADScheduler
from ddad_core.features import FeatureExtractor
from ddad_core.fitting.adapt import adaptation_loss, adaptation_noise_levels, domain_adapt, reconstruct_for_adaptation
from ddad_core.noise_schedule import NoiseSchedule
from ddad_core.unet import build_unet


class _ZeroUNet(torch.nn.Module):
    """eps_theta == 0 (the docs/method.md 7.2 worked example)."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z, t):
        return type("Out", (), {"sample": torch.zeros_like(z)})()


def test_noise_levels_faithful_and_clean():
    faithful = [adaptation_noise_levels(k, DDADConfig()) for k in range(1, 11)]
    # t_s = floor(8k), T_r = round10(8k) half-up (docs/method.md 5.2).
    assert faithful == [
        (8, 10),
        (16, 20),
        (24, 20),
        (32, 30),
        (40, 40),
        (48, 50),
        (56, 60),
        (64, 60),
        (72, 70),
        (80, 80),
    ]
    clean = [adaptation_noise_levels(k, DDADConfig(grid="clean")) for k in range(1, 11)]
    assert all(a == b for a, b in clean)


def test_reconstruction_start_scaling_quirk():
    schedule = NoiseSchedule()
    scheduler = DDADScheduler(schedule, steps_per_image=10, grid="faithful")
    y = torch.randn(2, 4, 4, 4)
    out = reconstruct_for_adaptation(_ZeroUNet(), scheduler, y, scale_step=24, grid_step=20, guidance=0.0)
    abar = schedule.alphas_cumprod
    # Start scaled at t_s = 24, first UNet call at T_r - s = 18: the chain returns sqrt(abar_24 / abar_18) y.
    torch.testing.assert_close(out, (abar[24] / abar[18]).sqrt() * y, rtol=1e-5, atol=1e-6)


def test_loss_is_one_cosine_per_image_and_block():
    f = [torch.randn(3, 5, 4, 4), torch.randn(3, 6, 2, 2)]
    assert float(adaptation_loss(f, f)) == pytest.approx(0.0, abs=1e-6)
    g = [f[0], -f[1]]
    assert float(adaptation_loss(f, g)) == pytest.approx(2.0, abs=1e-6)
    # Flattened over C x H x W (not per pixel): scaling one position changes the cosine.
    h = [f[0].clone(), f[1]]
    h[0][:, :, 0, 0] *= 10
    assert float(adaptation_loss(f, h)) > 0.01


def test_domain_adapt_updates_weights_and_batchnorm():
    torch.manual_seed(0)
    cfg = DDADConfig(image_size=64, da_epochs=2, da_batch_size=4)
    features = FeatureExtractor("test_resnet").eval()
    before = {k: v.clone() for k, v in features.state_dict().items()}
    ae = ConvAutoencoder(latent_channels=4, widths=(8, 16, 16)).eval()
    unet = build_unet("tiny", 4, 8, seed=0).eval()
    scheduler = DDADScheduler(NoiseSchedule(), steps_per_image=10)
    images = torch.rand(6, 3, 64, 64) * 2 - 1
    losses = domain_adapt(features, ae, unet, scheduler, images, cfg, progress=False)
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    after = features.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("running_mean" in k for k in changed)  # BatchNorm adapted in train mode
    assert any(k.endswith("weight") and "bn" not in k for k in changed)
    assert not features.training and not any(p.requires_grad for p in features.parameters())


def test_zero_epochs_keeps_imagenet_weights():
    features = FeatureExtractor("test_resnet").eval()
    before = {k: v.clone() for k, v in features.state_dict().items()}
    losses = domain_adapt(features, None, None, None, torch.zeros(1, 3, 64, 64), DDADConfig(da_epochs=0))
    assert losses == []
    assert all(torch.equal(before[k], v) for k, v in features.state_dict().items())


def _weight_drift(cfg: DDADConfig) -> tuple[float, list[float]]:
    """How far DA moves the backbone's conv weights from ImageNet's (relative L2), with the epoch losses."""
    torch.manual_seed(0)
    features = FeatureExtractor("test_resnet").eval()
    before = {k: v.clone() for k, v in features.state_dict().items() if k.endswith("weight") and "bn" not in k}
    ae = ConvAutoencoder(latent_channels=4, widths=(8, 16, 16)).eval()
    unet = build_unet("tiny", 4, 8, seed=0).eval()
    scheduler = DDADScheduler(NoiseSchedule(), steps_per_image=10)
    images = torch.rand(6, 3, 64, 64) * 2 - 1
    losses = domain_adapt(features, ae, unet, scheduler, images, cfg, progress=False)
    after = features.state_dict()
    drift = sum(float((after[k] - v).norm()) for k, v in before.items()) / sum(float(v.norm()) for v in before.values())
    return drift, losses


def test_frozen_teacher_holds_the_features_near_imagenet():
    common = {"image_size": 64, "da_epochs": 3, "da_batch_size": 3, "da_lr": 1e-2}
    free, free_losses = _weight_drift(DDADConfig(**common))
    held, held_losses = _weight_drift(DDADConfig(**common, da_teacher=10.0))
    # The teacher terms add to the loss (so it is larger) and pull the weights back towards ImageNet's.
    assert held_losses[0] > free_losses[0]
    assert 0 < held < free
