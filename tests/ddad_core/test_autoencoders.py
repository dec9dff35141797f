"""Latent autoencoders: the shared interface, diffusers AutoencoderKL, the TAE family (the ``tae:`` loader on
generated files in the published TAEF2 format; the real TAEF2 weights when ``DDAD_TAEF2_DIR`` names them), our own
ConvAutoencoder, latent scale, and rebuilding from a bundle identity."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from ddad_core.autoencoders import (
    SD_LATENT_SCALE,
    AutoencoderLoadError,
    ConvAutoencoder,
    DiffusersVAE,
    LatentDistribution,
    TinyAutoencoder,
    autoencoder_from_state,
    load_autoencoder,
    measure_latent_scale,
    reconstruction_psnr,
)
from ddad_core.bundle import file_sha256
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


@pytest.mark.skipif(
    TAEF2_DIR is None or not (TAEF2_DIR / "taef2_encoder.pth").is_file(),
    reason="real TAEF2 weights not given: set DDAD_TAEF2_DIR to a directory with taef2_encoder.pth/taef2_decoder.pth",
)
def test_taef2_real_weights_psnr():
    """Real weights (optional): reconstruction quality and the measured latent scale."""
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


# ---------------------------------------------------------------------------------------------------------------
# The tae: loader on generated files in the published TAEF2 format (runs on a clean clone, no weights needed)

#: Parameters per file of the published TAEF2 pair (79 tensors each): pins the generated layout to the real one.
TAEF2_ENCODER_PARAMETERS = 1_338_528
TAEF2_DECODER_PARAMETERS = 1_338_499


def _taef2_state_dicts(seed: int = 0, latent_channels: int = 32, width: int = 64):
    """Random ``(encoder, decoder)`` state dicts with the key names, shapes and dtype (float16) of the published
    ``taef2_encoder.pth`` / ``taef2_decoder.pth``, written out from the layout of docs/method.md section 16.1 (not
    from the loader's own classes)."""
    gen = torch.Generator().manual_seed(seed)

    def conv(state, key, c_in, c_out, k=3, bias=True):
        state[f"{key}.weight"] = torch.randn(c_out, c_in, k, k, generator=gen) * (0.5 / (c_in * k * k) ** 0.5)
        if bias:
            state[f"{key}.bias"] = torch.randn(c_out, generator=gen) * 0.01

    def block(state, index, pool):
        for j in (0, 2, 4):
            conv(state, f"{index}.conv.{j}", width, width)
        if pool:  # 1x1 conv 64 -> 256 (no bias), GroupNorm(4, 256), ReLU, 1x1 conv 256 -> 64 (no bias)
            conv(state, f"{index}.pool.0", width, 4 * width, k=1, bias=False)
            state[f"{index}.pool.1.weight"] = 1 + 0.01 * torch.randn(4 * width, generator=gen)
            state[f"{index}.pool.1.bias"] = 0.01 * torch.randn(4 * width, generator=gen)
            conv(state, f"{index}.pool.3", 4 * width, width, k=1, bias=False)

    enc: OrderedDict[str, torch.Tensor] = OrderedDict()
    conv(enc, "0", 3, width)
    block(enc, 1, pool=False)
    for down, blocks in ((2, (3, 4, 5)), (6, (7, 8, 9)), (10, (11, 12, 13))):
        conv(enc, str(down), width, width, bias=False)  # stride 2
        for i in blocks:
            block(enc, i, pool=i >= 11)
    conv(enc, "14", width, latent_channels)

    dec: OrderedDict[str, torch.Tensor] = OrderedDict()
    conv(dec, "1", latent_channels, width)  # 0 is the soft clamp, 2 a ReLU: no weights
    for i in (3, 4, 5):
        block(dec, i, pool=True)
    for up, blocks in ((7, (8, 9, 10)), (12, (13, 14, 15)), (17, (18,))):  # up - 1 is the x2 upsampling
        conv(dec, str(up), width, width, bias=False)
        for i in blocks:
            block(dec, i, pool=False)
    conv(dec, "19", width, 3)
    return tuple(OrderedDict((k, v.half()) for k, v in state.items()) for state in (enc, dec))


def _write_taef2(directory: Path, seed: int = 0) -> tuple[Path, Path, dict, dict]:
    enc, dec = _taef2_state_dicts(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "taef2_encoder.pth", directory / "taef2_decoder.pth"
    torch.save(enc, paths[0])
    torch.save(dec, paths[1])
    return paths[0], paths[1], enc, dec


def test_generated_taef2_files_have_the_published_format():
    enc, dec = _taef2_state_dicts()
    assert len(enc) == len(dec) == 79
    assert sum(v.numel() for v in enc.values()) == TAEF2_ENCODER_PARAMETERS
    assert sum(v.numel() for v in dec.values()) == TAEF2_DECODER_PARAMETERS
    assert {v.dtype for v in enc.values()} == {v.dtype for v in dec.values()} == {torch.float16}


def test_taef2_format_loads_through_the_tae_spec(tmp_path, images32):
    enc_path, dec_path, enc, dec = _write_taef2(tmp_path / "taef2")
    ae = load_autoencoder(f"tae:{tmp_path / 'taef2'}")
    assert isinstance(ae, TinyAutoencoder)
    assert ae.latent_channels == 32 and ae.encoder_pooled == (11, 12, 13) and ae.decoder_pooled == (3, 4, 5)
    assert ae.latent_scale == 1.0 and ae.downsample == 8
    # Every tensor of the files landed in the model, converted to float32.
    for module, state in ((ae.encoder, enc), (ae.decoder, dec)):
        loaded = module.state_dict()
        assert loaded.keys() == state.keys()
        assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], state[k].float()) for k in state)
    dist = ae.encode(images32)
    assert dist.mean.shape == (4, 32, 4, 4) and torch.count_nonzero(dist.std) == 0
    assert torch.isfinite(dist.mean).all() and dist.mean.abs().sum() > 0
    recon = ae.decode(dist.mean)
    assert recon.shape == images32.shape and recon.dtype == torch.float32 and torch.isfinite(recon).all()
    # What the bundle records: the file hashes and the architecture, enough to rebuild without the files.
    expected_sha = hashlib.sha256((file_sha256(enc_path) + file_sha256(dec_path)).encode()).hexdigest()
    ident = ae.identity()
    assert ident["kind"] == "tae" and ident["sha256"] == expected_sha and ident["latent_channels"] == 32
    ae.set_latent_scale(measure_latent_scale(ae, images32))
    assert abs(float(ae.encode(images32).mean.std()) - 1) < 0.05
    rebuilt = autoencoder_from_state(ae.identity(), ae.state_dict())
    with torch.inference_mode():
        assert torch.equal(rebuilt.encode(images32).mean, ae.encode(images32).mean)
    # The prefix form of the spec reads the same pair.
    assert load_autoencoder(f"tae:{tmp_path / 'taef2' / 'taef2'}").identity()["sha256"] == expected_sha


@pytest.mark.parametrize("missing", ["taef2_encoder.pth", "taef2_decoder.pth"])
def test_taef2_missing_file_is_one_clear_line(tmp_path, missing):
    _write_taef2(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError) as info:
        TinyAutoencoder.from_files(tmp_path / "taef2_encoder.pth", tmp_path / "taef2_decoder.pth")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / missing) in message and "taef2_encoder.pth" in message
    if missing == "taef2_decoder.pth":  # the directory form finds the encoder, then misses its decoder
        with pytest.raises(FileNotFoundError, match="TAE weight file not found"):
            load_autoencoder(f"tae:{tmp_path}")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_key(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    del state["3.conv.2.bias"]
    torch.save(state, path)


def _wrong_shape(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["3.conv.2.weight"] = torch.zeros(64, 64, 1, 1, dtype=torch.float16)
    torch.save(state, path)


@pytest.mark.parametrize(
    "damage, match",
    [
        (_truncate, "not a readable torch checkpoint"),
        (lambda p: p.write_bytes(b""), "not a readable torch checkpoint"),
        (lambda p: p.write_bytes(bytes(range(256)) * 8), "not a readable torch checkpoint"),
        (lambda p: torch.save(torch.zeros(3), p), "does not hold a state dict"),
        (_drop_key, "1 missing key"),
        (_wrong_shape, r"3\.conv\.2\.weight \(64, 64, 1, 1\) \(expected \(64, 64, 3, 3\)\)"),
    ],
    ids=["truncated", "empty", "garbage", "not-a-dict", "missing-key", "wrong-shape"],
)
@pytest.mark.parametrize("which", ["encoder", "decoder"])
def test_taef2_corrupt_file_is_one_clear_line(tmp_path, damage, match, which):
    _write_taef2(tmp_path)
    bad = tmp_path / f"taef2_{which}.pth"
    damage(bad)
    with pytest.raises(AutoencoderLoadError, match=match) as info:
        load_autoencoder(f"tae:{tmp_path}")
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
    assert str(bad) in str(info.value)


def test_cli_reports_a_corrupt_tae_file_in_one_line(tmp_path, monkeypatch, capsys):
    from ddad_core import cli

    _write_taef2(tmp_path)
    _truncate(tmp_path / "taef2_encoder.pth")
    monkeypatch.setattr(cli, "_fit", lambda args: load_autoencoder(f"tae:{tmp_path}") and 0)
    assert cli.main(["fit", str(tmp_path), "--out", str(tmp_path / "bundle")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddad fit: error: cannot read TAE weight file") and "\n" not in err


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
