"""Every good image of a fit scored out of sample: each leave-one-out piece equals a refit without the image, and
a fitted bundle's threshold holds its false-alarm rate on fresh good images (it would not if the good images were
scored by banks that contain them)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ddad_core.autoencoders import ConvAutoencoder
from ddad_core.config import DDADConfig, TrainConfig
from ddad_core.fitting.out_of_sample import out_of_sample_maps
from ddad_core.noise_level import NoiseLevelEstimator
from ddad_core.patch_knn import PatchKNN
from ddad_core.pipeline import DDADPipeline, MapComponents
from ddad_core.position_norm import PositionNorm
from ddad_core.testing import TINY_BACKBONE, synthetic_textures


def test_patch_bank_leaves_an_image_out_exactly():
    feats = torch.randn(5, 8, 4, 4)
    bank = PatchKNN().fit(feats, bank_size=10_000)
    assert bank.source.tolist() == [i for i in range(5) for _ in range(16)]
    without = PatchKNN().fit(torch.cat([feats[:2], feats[3:]]), bank_size=10_000)
    left_out = bank(feats[[2, 0]], exclude=torch.tensor([2, -1]))
    assert torch.allclose(left_out[0], without(feats[2:3])[0])
    assert float(left_out[1].abs().max()) < 1e-2  # not left out: its own patches are in the bank (cdist rounding)
    assert float(bank(feats[2:3]).abs().max()) < 1e-2


def test_a_bank_without_sources_refuses_to_leave_out():
    old = PatchKNN(torch.randn(10, 8))
    with pytest.raises(RuntimeError, match="refit"):
        old(torch.randn(1, 8, 2, 2), exclude=torch.tensor([0]))


def test_noise_level_bank_leaves_an_image_out_exactly():
    emb = torch.randn(12, 6)
    cfg = DDADConfig(knn_k=3)
    full = NoiseLevelEstimator(cfg).fit(emb)
    others = NoiseLevelEstimator(cfg).fit(torch.cat([emb[:4], emb[5:]]))
    d = full.distances(emb[[4, 7]], exclude=torch.tensor([4, 7]))
    assert torch.allclose(d[0], others.distances(emb[4:5])[0])
    assert float(full.distances(emb[4:5])[0]) < float(d[0])  # in sample its own zero distance counts


def test_position_statistics_leave_one_out_equal_a_refit():
    maps = {"knn": torch.rand(7, 16, 16) + torch.linspace(0, 1, 16), "latent": torch.rand(7, 16, 16)}
    loo = PositionNorm.leave_one_out(maps)
    for i in (0, 3, 6):
        keep = [j for j in range(7) if j != i]
        refit = PositionNorm.fit({k: v[keep] for k, v in maps.items()})
        for name, m in maps.items():
            assert torch.allclose(loo.select([i]).apply(name, m[i : i + 1]), refit.apply(name, m[i : i + 1]), atol=1e-4)


@pytest.mark.parametrize("norm", ["minmax", "position"])
def test_out_of_sample_maps_use_the_statistics_of_the_other_images(norm):
    gen = torch.Generator().manual_seed(0)
    comps = MapComponents(
        latent_map=torch.rand(6, 16, 16, generator=gen),
        feature_map=torch.rand(6, 16, 16, generator=gen),
        noise_step=torch.zeros(6, dtype=torch.long),
        knn_map=torch.rand(6, 16, 16, generator=gen) * 3,
    )
    pipe = SimpleNamespace(config=DDADConfig(knn_weight=0.5, component_norm=norm, blur_sigma=0.0))
    maps = out_of_sample_maps(pipe, comps)
    for i in (0, 5):
        keep = [j for j in range(6) if j != i]
        alone = out_of_sample_maps(pipe, comps.select(keep), comps.select([i]), source=[-1])
        assert torch.allclose(maps[i], alone[0], atol=1e-4)


def _fit_knn_bundle(path, images, target_fpr):
    from ddad_core.fitting.fit import fit_images

    config = DDADConfig(image_size=64, knn_k=5, da_epochs=0, knn_weight=1.0, component_norm="position")
    train = TrainConfig(preset="tiny", epochs=1, batch_size=8, holdout_fraction=0.1, seed=0)
    torch.manual_seed(0)
    return fit_images(
        images,
        path,
        config=config,
        train_config=train,
        autoencoder=ConvAutoencoder(latent_channels=4, widths=(8, 16, 16)),
        backbone=TINY_BACKBONE,
        device="cpu",
        batch_size=16,
        target_fpr=target_fpr,
        log=None,
        progress=False,
    )


def _textures(count: int, seed: int) -> list[np.ndarray]:
    """Good parts whose look varies from part to part (stripe period and contrast), so each is partly unique."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    out = []
    for _ in range(count):
        period, contrast, phase = rng.uniform(10, 22), rng.uniform(30, 70), rng.uniform(0, 2 * np.pi)
        base = 128 + contrast * np.sin((xx + yy) * 2 * np.pi / period + phase)
        out.append(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))
    return out


def test_the_calibrated_threshold_holds_its_rate_on_fresh_good_images(tmp_path):
    bundle = _fit_knn_bundle(tmp_path / "b", _textures(60, seed=0), target_fpr=0.1)
    pipe = DDADPipeline.from_bundle(bundle)
    record = pipe.calibration.info["operating_point"]
    assert record["rule"] == "conformal" and record["n_good"] == 60 and record["rank"] == 55
    fresh = pipe(_textures(200, seed=1))
    rate = float(fresh.pred_label.float().mean())
    # A single fit's rate is Beta(6, 55)-distributed around 9.8 %; 0.3 is beyond its 99.9th percentile. Scored in
    # sample (own patches in the bank) the threshold would sit near 0 and flag almost every fresh part.
    assert rate <= 0.3
    assert pipe.bundle_config.metadata["n_good"] == 60
    assert len(pipe.bundle_config.metadata["good_images"] or []) in (0, 60)


def test_too_few_good_images_are_refused_before_training(tmp_path):
    from ddad_core.fitting.recipes import SettingError

    with pytest.raises(SettingError, match="needs at least 99 good images, this fit has 20"):
        _fit_knn_bundle(tmp_path / "b", synthetic_textures(20, 64, 0), target_fpr=0.01)
    assert not (tmp_path / "b").exists()
