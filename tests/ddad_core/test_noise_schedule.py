"""Noise schedule against the reference table of docs/method.md section 4.1."""

from __future__ import annotations

import pytest
import torch

from ddad_core.config import DDADConfig
from ddad_core.noise_schedule import NoiseSchedule

# t, beta_t, abar_t, sqrt(abar_t), sqrt(1 - abar_t)  (docs/method.md section 4.1)
TABLE = [
    (0, 0.0015, 0.99850, 0.99925, 0.03873),
    (18, 0.001824, 0.96889, 0.98432, 0.17639),
    (20, 0.00186, 0.96530, 0.98250, 0.18627),
    (40, 0.002221, 0.92649, 0.96255, 0.27112),
    (72, 0.002797, 0.85468, 0.92449, 0.38121),
    (80, 0.002941, 0.83520, 0.91389, 0.40596),
    (999, 0.0195, 3.0e-5, 0.00507, 0.99999),
]


@pytest.mark.parametrize("t, beta, abar, sqrt_abar, sqrt_one_minus", TABLE)
def test_reference_table(schedule, t, beta, abar, sqrt_abar, sqrt_one_minus):
    tt = torch.tensor([t])
    assert float(schedule.betas[t]) == pytest.approx(beta, abs=5e-7)
    a = float(schedule.alpha_bar(tt)[0])
    assert a == pytest.approx(abar, abs=6e-6 if t < 999 else 5e-6)
    assert a**0.5 == pytest.approx(sqrt_abar, abs=6e-6)
    assert (1 - a) ** 0.5 == pytest.approx(sqrt_one_minus, abs=6e-6)


def test_minus_one_and_shapes(schedule):
    t = torch.tensor([[-1, 0], [5, 999]])
    out = schedule.alpha_bar(t)
    assert out.shape == (2, 2) and out.dtype == torch.float32
    assert float(out[0, 0]) == 1.0
    assert torch.all(schedule.alphas_cumprod[1:] < schedule.alphas_cumprod[:-1])
    assert schedule.betas.shape == schedule.alphas_cumprod.shape == (1000,)


def test_float_timesteps_rejected(schedule):
    with pytest.raises(TypeError):
        schedule.alpha_bar(torch.tensor([1.0]))


def test_add_noise_per_sample(schedule):
    z0 = torch.randn(3, 4, 2, 2)
    noise = torch.randn(3, 4, 2, 2)
    t = torch.tensor([0, 80, 999])
    zt = schedule.add_noise(z0, noise, t)
    for i in range(3):
        a = schedule.alphas_cumprod[t[i]]
        assert torch.allclose(zt[i], a.sqrt() * z0[i] + (1 - a).sqrt() * noise[i])
    with pytest.raises(ValueError):
        schedule.add_noise(z0, noise, t[:2])


def test_matches_diffusers_table():
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="linear")
    ours = NoiseSchedule()
    assert torch.allclose(ours.alphas_cumprod, ref.alphas_cumprod, atol=1e-6)


def test_from_config_and_validation():
    s = NoiseSchedule.from_config(DDADConfig())
    assert s.num_train_timesteps == 1000 and s.beta_end == 0.0195
    with pytest.raises(ValueError):
        NoiseSchedule(beta_start=0.02, beta_end=0.01)
    assert s.to("cpu").device.type == "cpu"
