"""Test helpers for ddad_core and its users (services, integration tests): a tiny but complete model bundle.

``make_tiny_bundle`` runs the real fitting recipe (``ddad_core.fitting.fit.fit_images``) with tiny random components --
a small ConvAutoencoder, the ``tiny`` UNet preset trained for two epochs, timm's ``test_resnet`` backbone with
random weights -- on synthetic textures, in a few seconds on a CPU. The bundle is valid in every respect
(hashes, calibration, noise-level state) and ``DDADPipeline.from_bundle`` serves it; its detections are
meaningless, which is all a service test needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddad_core.autoencoders import ConvAutoencoder
from ddad_core.config import DDADConfig, TrainConfig

#: Backbone used by tiny bundles (random weights, ~0.1 M parameters, strides 4/8/16).
TINY_BACKBONE = "test_resnet:random"


def synthetic_textures(count: int, size: int = 64, seed: int = 0, gray: bool = False) -> list[np.ndarray]:
    """Defect-free uint8 images: a diagonal stripe pattern with random phase plus mild noise.

    Args:
        count: Number of images.
        size: Side in pixels.
        seed: Random seed.
        gray: ``(S, S)`` gray images instead of ``(S, S, 3)`` RGB.

    Returns:
        List of uint8 arrays.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for _ in range(count):
        phase = rng.uniform(0, 2 * np.pi)
        base = 128 + 60 * np.sin((xx + yy) * 2 * np.pi / 16 + phase)
        image = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        out.append(image if gray else np.stack([image, image, (image * 0.8).astype(np.uint8)], axis=-1))
    return out


def make_tiny_bundle(
    path: str | Path, image_size: int = 64, seed: int = 0, num_images: int = 12, recipe: str | None = None
) -> Path:
    """Fit a tiny, complete, loadable bundle in a few seconds.

    Args:
        path: Bundle directory (created or replaced).
        image_size: Model input side (multiple of 16).
        seed: Seed of the data and of every component.
        num_images: Synthetic good images (at least 9: the calibration's 10 % false-alarm target needs them).
        recipe: None: the paper's map with a small ConvAutoencoder and the ``tiny`` UNet; ``"fast"``: the patch k-NN
            term alone (nothing trained, about a second), what nominal overlays (``ddad_core.overlay``) are tested
            with: a pattern missing from the synthetic good textures alerts, a taught one does not.

    Returns:
        The bundle directory.

    Example:
        >>> from ddad_core.pipeline import DDADPipeline
        >>> bundle = make_tiny_bundle(tmp_path / "tiny")  # doctest: +SKIP
        >>> DDADPipeline.from_bundle(bundle)(np.zeros((64, 64, 3), np.uint8)).pred_score.shape  # doctest: +SKIP
        torch.Size([1])
    """
    from ddad_core.fitting.fit import fit_images, make_configs

    autoencoder = None
    if recipe == "fast":
        config, train_config = make_configs(
            "cpu", image_size=image_size, recipe="fast", ddad_overrides={"knn_k": 3}, train_overrides={"seed": seed}
        )
    else:
        config = DDADConfig(image_size=image_size, knn_k=3, da_epochs=1, da_batch_size=8)
        train_config = TrainConfig(preset="tiny", epochs=2, batch_size=8, holdout_fraction=0.25, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            autoencoder = ConvAutoencoder(latent_channels=4, widths=(8, 16, 16))
    return fit_images(
        synthetic_textures(num_images, image_size, seed),
        path,
        config=config,
        train_config=train_config,
        autoencoder=autoencoder,
        backbone=TINY_BACKBONE,
        device="cpu",
        batch_size=8,
        target_fpr=0.1,
        recipe=recipe,
        metadata={"purpose": "tiny test bundle (random components; detections are meaningless)"},
        log=None,
        progress=False,
    )
