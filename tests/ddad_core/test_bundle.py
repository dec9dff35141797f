"""Model bundle: save/load round trip with identical outputs, and clear errors for broken bundles."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from ddad_core.autoencoders import autoencoder_from_state
from ddad_core.bundle import (
    BundleConfig,
    BundleError,
    bundle_hash,
    file_sha256,
    load_bundle,
    read_bundle_config,
    save_bundle,
)
from ddad_core.config import DDADConfig, TrainConfig
from ddad_core.ddim import DDADScheduler
from ddad_core.denoise import reconstruct
from ddad_core.unet import unet_from_config


@pytest.fixture
def bundle_dir(tmp_path, tiny_unet, tiny_autoencoder):
    tiny_autoencoder.set_latent_scale(1.7)
    cfg = BundleConfig(
        ddad=DDADConfig(image_size=64),
        train=TrainConfig(preset="tiny", epochs=1),
        unet_preset="tiny",
        unet_config=dict(tiny_unet.config),
        autoencoder=tiny_autoencoder.identity(),
        latent_scale=tiny_autoencoder.latent_scale,
        calibration={"threshold": 0.3},
    )
    tensors = {
        "unet": tiny_unet.state_dict(),
        "autoencoder": tiny_autoencoder.state_dict(),
        "noise_level": {"bank": torch.randn(5, 7), "edges": torch.arange(11.0)},
    }
    return save_bundle(tmp_path / "bundle", cfg, tensors)


def test_round_trip_identical_outputs(bundle_dir, tiny_unet, tiny_autoencoder, schedule):
    cfg, tensors = load_bundle(bundle_dir)
    assert set(tensors) == {"unet", "autoencoder", "noise_level"}
    assert cfg.model_version.startswith("tiny-") and cfg.calibration == {"threshold": 0.3}
    assert cfg.latent_scale == pytest.approx(1.7)
    unet = unet_from_config(cfg.unet_config).eval()
    unet.load_state_dict(tensors["unet"])
    ae = autoencoder_from_state(cfg.autoencoder, tensors["autoencoder"])
    assert ae.latent_scale == pytest.approx(1.7)

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sched = DDADScheduler(schedule, steps_per_image=4)
    steps = torch.tensor([20, 80])

    def run(u, a):
        with torch.inference_mode():
            z = a.encode(images).mean
            return a.decode(reconstruct(u, sched, z, steps, guidance=4.0))

    assert torch.equal(run(tiny_unet, tiny_autoencoder), run(unet, ae))


def test_hash_and_version_are_stable(bundle_dir):
    h = bundle_hash(bundle_dir)
    assert len(h) == 64 and h == bundle_hash(bundle_dir)
    assert read_bundle_config(bundle_dir).files.keys() == {"unet", "autoencoder", "noise_level"}


def test_refuses_to_overwrite(bundle_dir):
    cfg = read_bundle_config(bundle_dir)
    with pytest.raises(FileExistsError):
        save_bundle(bundle_dir, cfg, {})
    save_bundle(bundle_dir, cfg, {"unet": {"w": torch.zeros(2)}}, overwrite=True)
    assert set(load_bundle(bundle_dir)[1]) == {"unet"}


def test_missing_file(bundle_dir):
    (bundle_dir / "unet.safetensors").unlink()
    with pytest.raises(BundleError, match="missing unet.safetensors"):
        load_bundle(bundle_dir)


def test_missing_config(tmp_path, bundle_dir):
    (bundle_dir / "bundle.json").unlink()
    with pytest.raises(BundleError, match="bundle.json"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")


def test_hash_mismatch(bundle_dir):
    path = bundle_dir / "autoencoder.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="autoencoder.safetensors: SHA-256 mismatch"):
        load_bundle(bundle_dir)


def _edit(bundle_dir, **changes):
    path = bundle_dir / "bundle.json"
    raw = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    path.write_text(json.dumps(raw))


def test_incompatible_version(bundle_dir):
    _edit(bundle_dir, schema_version=2)
    with pytest.raises(BundleError, match="incompatible schema_version 2"):
        load_bundle(bundle_dir)


def test_invalid_field_named(bundle_dir):
    _edit(bundle_dir, latent_scale=-1)
    with pytest.raises(BundleError, match="latent_scale"):
        load_bundle(bundle_dir)
    _edit(bundle_dir, latent_scale=1.0, unet_preset=None)
    with pytest.raises(BundleError, match="unet_preset"):
        load_bundle(bundle_dir)


def test_invalid_json(bundle_dir):
    (bundle_dir / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_dir)


def test_bad_group_name(tmp_path, bundle_dir):
    cfg = read_bundle_config(bundle_dir)
    with pytest.raises(ValueError):
        save_bundle(tmp_path / "x", cfg, {"../evil": {"w": torch.zeros(1)}})


def test_file_sha256_reads_in_blocks_and_records_the_tensor_files(tmp_path, bundle_dir):
    data = bytes(range(256)) * 41  # 10496 bytes: several blocks of 1000 and a partial last one
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert file_sha256(path) == file_sha256(str(path), chunk=1000) == expected
    (tmp_path / "empty.bin").write_bytes(b"")
    assert file_sha256(tmp_path / "empty.bin") == hashlib.sha256(b"").hexdigest()
    # The same function is what the bundle records for every tensor file and for bundle.json.
    cfg = read_bundle_config(bundle_dir)
    assert cfg.files and all(file_sha256(bundle_dir / f"{name}.safetensors") == h for name, h in cfg.files.items())
    assert bundle_hash(bundle_dir) == hashlib.sha256((bundle_dir / "bundle.json").read_bytes()).hexdigest()


def test_every_bundle_file_is_readable_by_other_users(bundle_dir):
    # the images run as user 10001 and read a bundle someone else wrote (a mounted folder or volume)
    files = sorted(bundle_dir.iterdir())
    assert any(f.suffix == ".safetensors" for f in files)
    for f in files:
        assert f.stat().st_mode & 0o044 == 0o044, (f.name, oct(f.stat().st_mode))
