"""Conditioned DDIM step: grids, docs/method.md section 14 identities, parity with diffusers' DDIMScheduler."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from ddad_core.ddim import DDADScheduler
from ddad_core.denoise import reconstruct

from ._helpers import ZeroUNet

# docs/method.md section 7.2: eps == 0, w = 0, faithful grid -> sqrt(abar_T / abar_{T-s}) * y
SHRINK = {20: 0.99815, 30: 0.99697, 40: 0.99562, 50: 0.99410, 60: 0.99241, 70: 0.99056, 80: 0.98854}


def test_grids(schedule):
    sched = DDADScheduler(schedule, steps_per_image=10, grid="faithful")
    ts = sched.set_timesteps(torch.tensor([20, 80]))
    assert ts.shape == (10, 2) and ts.dtype == torch.long
    assert ts[:, 0].tolist() == list(range(18, -1, -2))
    assert ts[:, 1].tolist() == list(range(72, -1, -8))
    assert sched.prev_timesteps[:, 1].tolist() == list(range(64, -1, -8)) + [-1]
    clean = DDADScheduler(schedule, steps_per_image=10, grid="clean").set_timesteps(torch.tensor([80]))
    assert clean[:, 0].tolist() == list(range(80, 0, -8))
    with pytest.raises(ValueError):
        DDADScheduler(schedule, grid="other")
    with pytest.raises(TypeError):
        sched.set_timesteps(torch.tensor([20.0]))


@pytest.mark.parametrize("T, factor", sorted(SHRINK.items()))
def test_faithful_shrink_factor_table(schedule, T, factor):
    y = torch.randn(1, 4, 4, 4)
    sched = DDADScheduler(schedule, steps_per_image=10, grid="faithful")
    out = reconstruct(ZeroUNet(), sched, y, torch.tensor([T]), guidance=0.0)
    assert torch.allclose(out, y * factor, atol=2e-5 * y.abs().max())


def test_shrink_factors_in_one_mixed_batch(schedule):
    steps = torch.tensor(sorted(SHRINK))
    y = torch.randn(len(steps), 4, 4, 4)
    out = reconstruct(ZeroUNet(), DDADScheduler(schedule), y, steps, guidance=0.0)
    ratio = (out / y).flatten(1)
    assert torch.allclose(ratio.mean(1), torch.tensor([SHRINK[int(t)] for t in steps]), atol=1e-5)


def test_clean_grid_returns_y_exactly(schedule):
    y = torch.randn(3, 4, 4, 4)
    out = reconstruct(ZeroUNet(), DDADScheduler(schedule, grid="clean"), y, torch.tensor([20, 50, 80]), guidance=0.0)
    assert torch.allclose(out, y, atol=1e-5)


def test_noiseless_identity_eps_hat(schedule):
    """z_t = sqrt(abar_t) y  =>  eps^ = eps (1 - w (1 - abar_t)); with w = 1/(1 - abar_t), x0^ = y exactly."""
    sched = DDADScheduler(schedule)
    y = torch.randn(2, 4, 4, 4)
    eps = torch.randn(2, 4, 4, 4)
    t = torch.tensor([18, 72])
    prev = torch.tensor([16, 64])
    abar = schedule.alpha_bar(t).view(-1, 1, 1, 1)
    z = abar.sqrt() * y
    w = 3.0
    out = sched.step(eps, t, prev, z, y, guidance=w)
    eps_hat = eps * (1 - w * (1 - abar))
    assert torch.allclose(out.pred_original_sample, (z - (1 - abar).sqrt() * eps_hat) / abar.sqrt(), atol=1e-5)
    w_exact = 1 / (1 - abar.flatten())
    out = sched.step(eps, t, prev, z, y, guidance=w_exact)
    assert torch.allclose(out.pred_original_sample, y, atol=1e-5)


def test_plain_first_zeroes_c1_c2(schedule):
    sched = DDADScheduler(schedule)
    z, eps, y = torch.randn(3, 2, 4, 4, 4)
    t, prev = torch.tensor([40, 40]), torch.tensor([36, 36])
    out = sched.step(eps, t, prev, z, y, guidance=2.0, eta=0.5, plain_first=True)
    assert torch.allclose(out.prev_sample, schedule.alpha_bar(prev).sqrt().view(-1, 1, 1, 1) * out.pred_original_sample)


def _diffusers_ddim(eta: float) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,  # abar_{-1} = 1, as in docs/method.md section 7.2
        steps_offset=0,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_w0_matches_diffusers_ddim_per_sample(schedule, eta):
    """w = 0: every sample of a mixed batch equals diffusers' scalar DDIMScheduler.step with its own step size."""
    ours = DDADScheduler(schedule, steps_per_image=10)
    noise_steps = torch.tensor([20, 40, 80, 60])
    grid = ours.set_timesteps(noise_steps)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, 4, 8, 8, generator=gen)
    y = torch.randn(4, 4, 8, 8, generator=gen)
    for k in range(grid.shape[0]):
        eps = torch.randn(4, 4, 8, 8, generator=gen)
        xi = torch.randn(4, 4, 8, 8, generator=gen)
        out = ours.step(eps, grid[k], ours.prev_timesteps[k], z, y, guidance=0.0, eta=eta, variance_noise=xi)
        for i in range(4):
            ref = _diffusers_ddim(eta)
            ref.set_timesteps(1000 // (int(noise_steps[i]) // 10))  # stride s_i = T_i / 10
            r = ref.step(eps[i : i + 1], int(grid[k, i]), z[i : i + 1], eta=eta, variance_noise=xi[i : i + 1])
            assert torch.allclose(out.prev_sample[i], r.prev_sample[0], atol=1e-5), (k, i)
            assert torch.allclose(out.pred_original_sample[i], r.pred_original_sample[0], atol=1e-4), (k, i)
        z = out.prev_sample


def test_per_sample_guidance_tensor(schedule):
    sched = DDADScheduler(schedule)
    z, eps, y = torch.randn(3, 2, 4, 4, 4)
    t, prev = torch.tensor([40, 40]), torch.tensor([36, 36])
    both = sched.step(eps, t, prev, z, y, guidance=torch.tensor([0.0, 5.0]))
    a = sched.step(eps[:1], t[:1], prev[:1], z[:1], y[:1], guidance=0.0)
    b = sched.step(eps[1:], t[1:], prev[1:], z[1:], y[1:], guidance=5.0)
    assert torch.allclose(both.prev_sample, torch.cat([a.prev_sample, b.prev_sample]))


def test_shape_mismatch(schedule):
    sched = DDADScheduler(schedule)
    with pytest.raises(ValueError, match="shape"):
        sched.step(
            torch.zeros(1, 4, 4, 4),
            torch.tensor([1]),
            torch.tensor([0]),
            torch.zeros(1, 4, 4, 4),
            torch.zeros(1, 4, 2, 2),
            guidance=0.0,
        )
