"""UNet presets: shapes, per-sample timesteps, the paper preset's structure and parameter count."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention

from ddad_core.unet import UNET_PRESETS, build_unet, count_parameters, unet_from_config

from .conftest import perturb_


def test_presets_listed():
    assert {"paper", "cpu", "tiny"} <= set(UNET_PRESETS)


def test_tiny_shape_and_per_sample_timesteps():
    unet = perturb_(build_unet("tiny", latent_channels=4, latent_size=8, seed=0)).eval()
    z = torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 40, 999])
    with torch.no_grad():
        out = unet(z, t).sample
        assert out.shape == z.shape
        # Each sample is processed with its own timestep: equal to running it alone.
        for i in range(3):
            assert torch.allclose(out[i : i + 1], unet(z[i : i + 1], t[i : i + 1]).sample, atol=1e-5)


def test_seed_is_reproducible_and_local():
    state = torch.random.get_rng_state()
    a = build_unet("tiny", 4, 8, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_unet("tiny", 4, 8, seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_zero_init_output():
    unet = build_unet("tiny", 4, 8, seed=0)
    with torch.no_grad():
        assert torch.count_nonzero(unet(torch.randn(1, 4, 8, 8), torch.tensor([5])).sample) == 0


def test_cpu_preset_shape_and_size():
    unet = build_unet("cpu", latent_channels=4, latent_size=32, seed=0)
    with torch.no_grad():
        assert unet(torch.randn(1, 4, 32, 32), torch.tensor([10])).sample.shape == (1, 4, 32, 32)
    assert count_parameters(unet) < 20_000_000


def test_paper_preset_matches_reference_structure():
    """docs/method.md 4.4: analytic 281.1 M parameters, 8 heads, attention at 32/16/8/4 and in the middle."""
    with torch.device("meta"):
        unet = build_unet("paper", latent_channels=4, latent_size=32)
    assert count_parameters(unet) == 281_088_004
    assert unet.config.block_out_channels == (192, 384, 384, 768, 768)
    attentions = [m for m in unet.modules() if isinstance(m, Attention)]
    assert attentions and all(m.heads == 8 for m in attentions)
    # 2 per down level at 32/16/8/4, 1 in the middle, 3 per up level at 4/8/16/32
    assert len(attentions) == 4 * 2 + 1 + 4 * 3
    assert unet.config.flip_sin_to_cos is False and unet.config.freq_shift == 0
    assert unet.config.downsample_type == "resnet" and unet.config.upsample_type == "resnet"


def test_unet_from_config_roundtrip():
    unet = perturb_(build_unet("tiny", 4, 8, seed=0)).eval()
    rebuilt = unet_from_config(dict(unet.config)).eval()
    rebuilt.load_state_dict(unet.state_dict())
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 50])
    with torch.no_grad():
        assert torch.equal(unet(z, t).sample, rebuilt(z, t).sample)


def test_paper_config_roundtrip_keeps_heads_and_layout():
    with torch.device("meta"):
        unet = build_unet("paper", 32, 32)
        rebuilt = unet_from_config(dict(unet.config))
    assert set(unet.state_dict()) == set(rebuilt.state_dict())
    assert [m.heads for m in rebuilt.modules() if isinstance(m, Attention)] == [8] * 21


def test_errors():
    with pytest.raises(KeyError, match="unknown UNet preset"):
        build_unet("huge", 4, 32)
    with pytest.raises(ValueError, match="divisible"):
        build_unet("paper", 4, 20)


def test_recommended_training_is_a_valid_train_config():
    from ddad_core.config import TrainConfig
    from ddad_core.unet import RECOMMENDED_TRAINING

    assert set(RECOMMENDED_TRAINING) == set(UNET_PRESETS)
    for preset, overrides in RECOMMENDED_TRAINING.items():
        assert TrainConfig(preset=preset, **overrides).lr > 0
