"""Tiny random components for the ddad_core tests (diffusers' ``get_dummy_components`` idea).

Everything here builds in well under a second on a CPU and needs no downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ddad_core.autoencoders import ConvAutoencoder
from ddad_core.config import DDADConfig, TrainConfig
from ddad_core.noise_schedule import NoiseSchedule
from ddad_core.testing import TINY_BACKBONE, synthetic_textures
from ddad_core.unet import build_unet

#: Optional real TAEF2 weights: set the environment variable ``DDAD_TAEF2_DIR`` to a directory holding
#: ``taef2_encoder.pth`` and ``taef2_decoder.pth`` (published in github.com/madebyollin/taesd) to run the tests that
#: need them; unset, they skip. The loader itself is tested without them, on generated files of the same format.
TAEF2_DIR: Path | None = Path(os.environ["DDAD_TAEF2_DIR"]) if os.environ.get("DDAD_TAEF2_DIR") else None


@pytest.fixture(autouse=True, scope="package")
def _single_thread_torch():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine thread hand-offs make a
    10 ms step take a second; one thread keeps these tests fast and their timing stable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Add small random values to every parameter (zero-initialised layers would make outputs trivially 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module


@pytest.fixture
def schedule() -> NoiseSchedule:
    return NoiseSchedule()


@pytest.fixture
def tiny_unet() -> torch.nn.Module:
    """Tiny random UNet on 4 x 8 x 8 latents, non-trivial outputs, eval mode."""
    return perturb_(build_unet("tiny", latent_channels=4, latent_size=8, seed=0)).eval()


@pytest.fixture
def tiny_autoencoder() -> ConvAutoencoder:
    """Small random ConvAutoencoder (4 latent channels), eval mode."""
    torch.manual_seed(0)
    return ConvAutoencoder(latent_channels=4, widths=(8, 16, 16)).eval()


@pytest.fixture
def rgb_images() -> list[np.ndarray]:
    """Three small uint8 RGB images of different sizes (a smooth gradient plus texture)."""
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((48, 64), (64, 64), (40, 56)):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
        out.append(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))
    return out


def fit_production(path: Path, size: int = 64) -> Path:
    """A small bundle of the ``production`` recipe (k-NN term, per-position normalisation, EMA, capped timesteps)."""
    from ddad_core.fitting.fit import fit_images  # only when a test asks for it: fitting imports the whole pipeline

    config = DDADConfig(
        image_size=size, knn_k=3, da_epochs=0, knn_weight=0.5, component_norm="position", feature_pool=3,
        knn_bank_size=256,
    )  # fmt: skip
    train = TrainConfig(preset="tiny", epochs=2, batch_size=8, holdout_fraction=0.5, timestep_max=160, ema_decay=0.9)
    torch.manual_seed(0)
    ae = ConvAutoencoder(latent_channels=4, widths=(8, 16, 16))
    images = synthetic_textures(24, size, seed=0)
    return fit_images(
        images, path, config=config, train_config=train, autoencoder=ae, backbone=TINY_BACKBONE, device="cpu",
        batch_size=8, log=None, progress=False, recipe="production", image_names=[f"{i}.png" for i in range(24)],
        target_fpr=0.1,
    )  # fmt: skip


@pytest.fixture(scope="session")
def production_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The production-recipe bundle of 24 synthetic textures, fitted once per run (tests only read it)."""
    return fit_production(tmp_path_factory.mktemp("prod") / "bundle")
