"""UNet training: reproducibility, resume after interruption, divergence handling, dataset encoding, and the
recipes' training settings (EMA, cosine learning rate, timestep range)."""

from __future__ import annotations

import pytest
import torch

from ddad_core.config import TrainConfig
from ddad_core.fitting.train import CHECKPOINT_NAME, LatentCache, TrainingDivergedError, encode_dataset, train_unet
from ddad_core.noise_schedule import NoiseSchedule
from ddad_core.unet import build_unet


@pytest.fixture
def cache() -> LatentCache:
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(12, 4, 8, 8, generator=gen)
    return LatentCache(mean, torch.full_like(mean, 0.1))


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=4, batch_size=4, lr=1e-3, checkpoint_every=2, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def _train(cache, schedule, cfg, **kw):
    unet = build_unet("tiny", 4, 8, seed=0)
    losses = train_unet(unet, cache, schedule, cfg, "cpu", progress=False, **kw)
    return unet, losses


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_reproducible_and_learning(cache, schedule):
    a, la = _train(cache, schedule, _cfg())
    b, lb = _train(cache, schedule, _cfg())
    assert la == lb and len(la) == 4
    assert _same_weights(a, b)
    assert not a.training  # left in eval mode
    _, lc = _train(cache, schedule, _cfg(seed=8))
    assert lc != la


def test_resume_equals_uninterrupted(tmp_path, cache, schedule):
    full, full_losses = _train(cache, schedule, _cfg(), checkpoint_dir=tmp_path / "a")
    # Interrupted after 2 epochs (a checkpoint boundary), then resumed with a fresh model object.
    _, part = _train(cache, schedule, _cfg(), checkpoint_dir=tmp_path / "b", max_epochs=2)
    assert len(part) == 2 and (tmp_path / "b" / CHECKPOINT_NAME).exists()
    resumed, losses = _train(cache, schedule, _cfg(), checkpoint_dir=tmp_path / "b")
    assert losses == full_losses
    assert _same_weights(full, resumed)


def test_resume_from_last_checkpoint_after_crash(tmp_path, cache, schedule):
    """Interrupted after epoch 3 (checkpoint every 2): resumes from epoch 2 and still matches."""
    full, full_losses = _train(cache, schedule, _cfg(checkpoint_every=2))
    _train(cache, schedule, _cfg(checkpoint_every=2), checkpoint_dir=tmp_path, max_epochs=3)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 2
    resumed, losses = _train(cache, schedule, _cfg(checkpoint_every=2), checkpoint_dir=tmp_path)
    assert losses == full_losses and _same_weights(full, resumed)


def test_nan_loss_raises_and_keeps_checkpoint(tmp_path, cache, schedule):
    unet = build_unet("tiny", 4, 8, seed=0)
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        if calls["n"] > 7:  # epochs of 3 steps, checkpoint every 2 epochs -> good checkpoint after 6 steps
            output.sample.fill_(float("nan"))
        return output

    unet.register_forward_hook(poison)
    with pytest.raises(TrainingDivergedError, match="diverged") as info:
        train_unet(unet, cache, schedule, _cfg(epochs=5, checkpoint_every=2), "cpu", tmp_path, progress=False)
    assert info.value.checkpoint == tmp_path / CHECKPOINT_NAME
    assert "after epoch 2" in str(info.value)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["unet"].values())
    # The model was not updated with the NaN loss either.
    assert all(torch.isfinite(p).all() for p in unet.parameters())


def test_huge_lr_diverges_with_clear_error(cache, schedule):
    unet = build_unet("tiny", 4, 8, seed=0)
    with pytest.raises(TrainingDivergedError, match="no checkpoint"):
        train_unet(unet, cache, schedule, _cfg(epochs=30, lr=1e12), "cpu", progress=False)


def test_small_dataset_uses_one_batch(schedule):
    small = LatentCache(torch.randn(3, 4, 8, 8), torch.zeros(3, 4, 8, 8))
    unet = build_unet("tiny", 4, 8, seed=0)
    with pytest.warns(UserWarning, match="batch size"):
        losses = train_unet(unet, small, schedule, _cfg(epochs=1), "cpu", progress=False)
    assert len(losses) == 1


def test_encode_dataset(tiny_autoencoder):
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    cache = encode_dataset(tiny_autoencoder, images, batch_size=2)
    assert len(cache) == 5 and cache.mean.shape == (5, 4, 4, 4) and cache.std.shape == (5, 4, 4, 4)
    assert not cache.mean.is_inference()
    with pytest.raises(ValueError, match="empty"):
        encode_dataset(tiny_autoencoder, torch.zeros(0, 3, 32, 32))
    with pytest.raises(ValueError):
        encode_dataset(tiny_autoencoder, torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="empty"):
        train_unet(
            build_unet("tiny", 4, 8),
            LatentCache(torch.zeros(0, 4, 8, 8), torch.zeros(0, 4, 8, 8)),
            None,
            _cfg(),
            "cpu",
            progress=False,
        )


def test_cache_sample_uses_std():
    cache = LatentCache(torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2))
    a = cache.sample(torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    assert a.shape == (2, 1, 2, 2) and a.abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_training_and_resume(tmp_path, cache):
    from ddad_core.noise_schedule import NoiseSchedule

    unet = build_unet("tiny", 4, 8, seed=0)
    losses = train_unet(unet, cache, NoiseSchedule(), _cfg(), "cuda", tmp_path, progress=False)
    assert len(losses) == 4 and all(v == v for v in losses)
    assert next(unet.parameters()).dtype == torch.float32  # autocast, weights stay float32


def test_resume_with_changed_config_warns(tmp_path, cache, schedule):
    _train(cache, schedule, _cfg(), checkpoint_dir=tmp_path, max_epochs=2)
    with pytest.warns(UserWarning, match="different training config"):
        _train(cache, schedule, _cfg(lr=5e-4), checkpoint_dir=tmp_path, max_epochs=1)


# ----------------------------------------------------------------------------------------------------------------
# training settings of the recipes (EMA, cosine schedule, timestep range)


def _train_fresh(cfg: TrainConfig):
    torch.manual_seed(0)
    unet = build_unet("tiny", 4, 8, seed=0)
    cache = LatentCache(torch.randn(16, 4, 8, 8), torch.zeros(16, 4, 8, 8))
    return unet, train_unet(unet, cache, NoiseSchedule(), cfg, "cpu", progress=False)


def test_ema_and_cosine_and_timestep_range_change_training():
    base = TrainConfig(preset="tiny", epochs=3, batch_size=8, lr=1e-3)
    unet_a, _ = _train_fresh(base)
    unet_b, _ = _train_fresh(base.model_copy(update={"ema_decay": 0.5}))
    unet_c, _ = _train_fresh(base.model_copy(update={"lr_schedule": "cosine"}))
    unet_d, _ = _train_fresh(base.model_copy(update={"timestep_max": 100}))
    ref = dict(unet_a.named_parameters())
    for other in (unet_b, unet_c, unet_d):
        diff = max(float((p - ref[n]).abs().max()) for n, p in other.named_parameters())
        assert diff > 0


def test_timestep_max_limits_the_sampled_range(monkeypatch):
    seen = []
    original = NoiseSchedule.add_noise

    def spy(self, z0, noise, t):
        seen.append(t.clone())
        return original(self, z0, noise, t)

    monkeypatch.setattr(NoiseSchedule, "add_noise", spy)
    _train_fresh(TrainConfig(preset="tiny", epochs=4, batch_size=8, timestep_max=50))
    assert int(torch.cat(seen).max()) < 50
    seen.clear()
    _train_fresh(TrainConfig(preset="tiny", epochs=4, batch_size=8))
    assert int(torch.cat(seen).max()) >= 50
