"""Latent autoencoders: the shared interface, diffusers AutoencoderKL, the TAE family (real TAEF2 weights),
our own ConvAutoencoder, latent scale, and rebuilding from a bundle identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddad_core.autoencoders import (
    SD_LATENT_SCALE,
    ConvAutoencoder,
    DiffusersVAE,
    LatentDistribution,
    TinyAutoencoder,
    autoencoder_from_state,
    fit_conv_autoencoder,
    load_autoencoder,
    measure_latent_scale,
    reconstruction_psnr,
)
from ddad_core.preprocess import preprocess

from .conftest import TAEF2_DIR


def _tiny_kl():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    # diffusers' dummy-component style: 4 blocks -> 8x downsampling, tiny widths.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).eval()


@pytest.fixture
def images32():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1


def test_diffusers_vae_from_local_dir(tmp_path, images32):
    kl = _tiny_kl()
    kl.save_pretrained(tmp_path / "vae")
    ae = load_autoencoder(f"sd:{tmp_path / 'vae'}")
    assert isinstance(ae, DiffusersVAE)
    assert ae.latent_channels == 4 and ae.downsample == 8 and ae.latent_scale == pytest.approx(SD_LATENT_SCALE)
    dist = ae.encode(images32)
    with torch.no_grad():
        raw = kl.encode(images32).latent_dist
    assert dist.mean.shape == (4, 4, 4, 4)
    assert torch.allclose(dist.mean, raw.mean * SD_LATENT_SCALE, atol=1e-6)
    assert torch.allclose(dist.std, raw.std * SD_LATENT_SCALE, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(ae.decode(dist.mean), kl.decode(raw.mean).sample, atol=1e-5)
    ident = ae.identity()
    assert ident["kind"] == "sd" and ident["source"] == str(tmp_path / "vae") and len(ident["sha256"]) == 64
    # A pipeline directory with a vae/ subfolder also loads.
    assert load_autoencoder(f"sd:{tmp_path}").latent_channels == 4


def test_diffusers_vae_rebuild_from_identity(tmp_path, images32):
    ae = DiffusersVAE(_tiny_kl(), source="test")
    rebuilt = autoencoder_from_state(ae.identity(), ae.state_dict())
    with torch.no_grad():
        assert torch.equal(ae.encode(images32).mean, rebuilt.encode(images32).mean)


def test_posterior_sample_is_seeded():
    dist = LatentDistribution(torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2))
    a = dist.sample(torch.Generator().manual_seed(0))
    assert torch.equal(a, dist.sample(torch.Generator().manual_seed(0)))
    assert not torch.equal(a, torch.zeros_like(a))


def _real_images():
    skdata = pytest.importorskip("skimage.data")
    return preprocess([skdata.astronaut(), skdata.chelsea()], image_size=256)


@pytest.mark.skipif(not (TAEF2_DIR / "taef2_encoder.pth").exists(), reason="TAEF2 weights not present")
def test_taef2_real_weights_psnr():
    ae = load_autoencoder(f"tae:{TAEF2_DIR}")
    assert isinstance(ae, TinyAutoencoder)
    assert ae.latent_channels == 32 and ae.encoder_pooled == (11, 12, 13) and ae.decoder_pooled == (3, 4, 5)
    images = _real_images()
    for i in range(len(images)):
        psnr = reconstruction_psnr(ae, images[i : i + 1])
        assert psnr >= 30.0, f"image {i}: {psnr:.2f} dB"
    scale = measure_latent_scale(ae, images)
    ae.set_latent_scale(scale)
    assert 0.1 < scale < 10
    assert abs(float(ae.encode(images).mean.std()) - 1) < 0.05
    # The scale is divided out again on decode: PSNR unchanged.
    assert reconstruction_psnr(ae, images[:1]) >= 30.0
    ident = ae.identity()
    assert ident["kind"] == "tae" and ident["latent_scale"] == pytest.approx(scale)
    rebuilt = autoencoder_from_state(ident, ae.state_dict())
    assert rebuilt.latent_scale == pytest.approx(scale)
    with torch.inference_mode():
        assert torch.equal(rebuilt.encode(images[:1]).mean, ae.encode(images[:1]).mean)


def test_taesd_layout_from_state_dicts(tmp_path, images32):
    """TAESD: same block structure, 4 latent channels, no pool branches -- detected from the files."""
    src = TinyAutoencoder(latent_channels=4, encoder_pooled=(), decoder_pooled=())
    torch.save(src.encoder.state_dict(), tmp_path / "taesd_encoder.pth")
    torch.save(src.decoder.state_dict(), tmp_path / "taesd_decoder.pth")
    ae = load_autoencoder(f"tae:{tmp_path}")
    assert ae.latent_channels == 4 and ae.encoder_pooled == () and ae.decoder_pooled == ()
    assert ae.latent_scale == 1.0
    assert ae.encode(images32).mean.shape == (4, 4, 4, 4)
    assert ae.decode(ae.encode(images32).mean).shape == images32.shape
    assert load_autoencoder(f"tae:{tmp_path / 'taesd'}").latent_channels == 4  # prefix form


def test_tae_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_autoencoder(f"tae:{tmp_path}")
    with pytest.raises(FileNotFoundError):
        TinyAutoencoder.from_files(tmp_path / "a_encoder.pth", tmp_path / "a_decoder.pth")


def test_conv_autoencoder_fit_improves_psnr(capsys):
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    images = torch.stack([torch.stack([xx * a, yy * b, (xx * yy) * a]) for a, b in ((1, 1), (0.5, -1), (-1, 0.3))])
    images = images.repeat(2, 1, 1, 1)
    ae = ConvAutoencoder(latent_channels=4, widths=(8, 16, 16))
    before = reconstruction_psnr(ae, images)
    psnr = fit_conv_autoencoder(ae, images, epochs=80, batch_size=6, lr=3e-3, progress=True)
    assert "PSNR" in capsys.readouterr().out
    assert psnr > before + 5
    # The latent scale was measured: scaled latents are about unit variance.
    assert abs(float(ae.encode(images).mean.std()) - 1) < 0.1
    assert ae.latent_scale != 1.0


def test_conv_autoencoder_shapes_and_rebuild(tiny_autoencoder, images32):
    ae = tiny_autoencoder
    ae.set_latent_scale(0.5)
    dist = ae.encode(images32)
    assert dist.mean.shape == (4, 4, 4, 4) and torch.count_nonzero(dist.std) == 0
    assert ae.decode(dist.mean).shape == images32.shape
    ident = ae.identity()
    assert ident["kind"] == "conv" and ident["config"]["widths"] == [8, 16, 16]
    rebuilt = autoencoder_from_state(ident, ae.state_dict())
    assert rebuilt.latent_scale == 0.5
    with torch.no_grad():
        assert torch.equal(rebuilt.encode(images32).mean, dist.mean)
    assert isinstance(load_autoencoder("conv"), ConvAutoencoder)
    assert load_autoencoder("conv:8").latent_channels == 8


def test_latent_scale_applied_both_ways(tiny_autoencoder, images32):
    ae = tiny_autoencoder
    base = ae.encode(images32).mean
    ae.set_latent_scale(2.0)
    assert torch.allclose(ae.encode(images32).mean, base * 2.0, atol=1e-6)
    assert torch.allclose(ae.decode(base * 2.0), ae.decode(base * 2.0), atol=0)
    with pytest.raises(ValueError):
        ae.set_latent_scale(0.0)
    with pytest.raises(ValueError):
        ae.set_latent_scale(float("nan"))


@pytest.mark.parametrize(
    "images, exc",
    [
        (torch.zeros(1, 3, 30, 32), ValueError),
        (torch.zeros(1, 1, 32, 32), ValueError),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError),
        (np.zeros((1, 3, 32, 32), np.float32), TypeError),
    ],
)
def test_bad_images(tiny_autoencoder, images, exc):
    with pytest.raises(exc):
        tiny_autoencoder.encode(images)


def test_bad_specs_and_identity():
    with pytest.raises(ValueError, match="unknown autoencoder spec"):
        load_autoencoder("vqgan:x")
    with pytest.raises(ValueError):
        load_autoencoder("sd:")
    with pytest.raises(ValueError, match="unknown autoencoder kind"):
        autoencoder_from_state({"kind": "nope"}, {})
    with pytest.raises(ValueError, match="do not match"):
        autoencoder_from_state(ConvAutoencoder(widths=(8, 16, 16)).identity(), {})
    with pytest.raises(ValueError):
        measure_latent_scale(ConvAutoencoder(), torch.zeros(0, 3, 32, 32))
