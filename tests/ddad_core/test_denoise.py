"""The batched reverse loop: batch invariance with mixed start steps, determinism, no host syncs, autograd use."""

from __future__ import annotations

import pytest
import torch

from ddad_core.ddim import DDADScheduler
from ddad_core.denoise import reconstruct, start_state


@pytest.mark.parametrize("grid", ["faithful", "clean"])
def test_mixed_batch_equals_one_by_one(tiny_unet, schedule, grid):
    sched = DDADScheduler(schedule, steps_per_image=5, grid=grid)
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    steps = torch.tensor([20, 80, 40, 60])
    batch = reconstruct(tiny_unet, sched, latents, steps, guidance=4.0)
    assert batch.shape == latents.shape and batch.dtype == torch.float32
    for i in range(4):
        alone = reconstruct(tiny_unet, sched, latents[i : i + 1], steps[i : i + 1], guidance=4.0)
        assert torch.allclose(batch[i : i + 1], alone, atol=1e-5), i


def test_deterministic_and_uses_the_unet(tiny_unet, schedule):
    sched = DDADScheduler(schedule, steps_per_image=10)
    latents = torch.randn(2, 4, 8, 8)
    steps = torch.tensor([80, 80])
    a = reconstruct(tiny_unet, sched, latents, steps, guidance=0.0)
    b = reconstruct(tiny_unet, sched, latents, steps, guidance=0.0)
    assert torch.equal(a, b)
    # A non-zero eps_theta changes the result relative to the eps == 0 shrink.
    assert not torch.allclose(a, latents * 0.98854, atol=1e-3)


def test_guidance_pulls_toward_input(tiny_unet, schedule):
    sched = DDADScheduler(schedule, steps_per_image=10)
    latents = torch.randn(3, 4, 8, 8)
    steps = torch.full((3,), 80)
    err0 = (reconstruct(tiny_unet, sched, latents, steps, guidance=0.0) - latents).abs().mean()
    err8 = (reconstruct(tiny_unet, sched, latents, steps, guidance=8.0) - latents).abs().mean()
    assert err8 < err0


def test_omega_and_eta_are_seeded(tiny_unet, schedule):
    sched = DDADScheduler(schedule, steps_per_image=4)
    latents = torch.randn(2, 4, 8, 8)
    steps = torch.tensor([40, 80])

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return reconstruct(tiny_unet, sched, latents, steps, guidance=2.0, eta=0.5, omega=1.0, generator=gen)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_start_state_noiseless(schedule):
    sched = DDADScheduler(schedule)
    z = torch.randn(2, 4, 2, 2)
    out = start_state(sched, z, torch.tensor([20, 80]))
    assert torch.allclose(out[1], z[1] * schedule.alphas_cumprod[80].sqrt())


def test_plain_first_changes_only_with_noise(tiny_unet, schedule):
    sched = DDADScheduler(schedule, steps_per_image=5)
    latents = torch.randn(2, 4, 8, 8)
    steps = torch.tensor([40, 80])
    a = reconstruct(tiny_unet, sched, latents, steps, guidance=1.0, plain_first=False)
    b = reconstruct(tiny_unet, sched, latents, steps, guidance=1.0, plain_first=True)
    assert a.shape == b.shape and not torch.equal(a, b)


def test_result_usable_in_autograd(tiny_unet, schedule):
    """Domain adaptation feeds reconstructions to a network being trained: no inference-tensor error."""
    sched = DDADScheduler(schedule, steps_per_image=2)
    out = reconstruct(tiny_unet, sched, torch.randn(1, 4, 8, 8), torch.tensor([20]), guidance=1.0)
    layer = torch.nn.Conv2d(4, 1, 1)
    layer(out).sum().backward()
    # d(sum)/d(weight) of a 1 x 1 convolution is the per-channel sum of its input: the reconstruction itself.
    torch.testing.assert_close(layer.weight.grad.view(4), out.detach().sum(dim=(0, 2, 3)))


def test_no_host_sync_in_loop(tiny_unet, schedule):
    """The loop never calls .item()/.tolist()/.cpu() (a CUDA sync): checked by making those raise."""
    sched = DDADScheduler(schedule, steps_per_image=3)
    latents = torch.randn(2, 4, 8, 8)
    steps = torch.tensor([20, 60])
    forbidden = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")
    saved = {name: getattr(torch.Tensor, name) for name in forbidden}

    def trap(name):
        def raiser(*args, **kwargs):
            raise AssertionError(f"host sync via Tensor.{name} in the sampling loop")

        return raiser

    try:
        for name in forbidden:
            setattr(torch.Tensor, name, trap(name))
        reconstruct(tiny_unet, sched, latents, steps, guidance=4.0)
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


@pytest.mark.parametrize(
    "latents, steps, exc",
    [
        (torch.zeros(2, 4, 8), torch.tensor([20, 20]), ValueError),
        (torch.zeros(2, 4, 8, 8), torch.tensor([20]), ValueError),
        (torch.zeros(2, 4, 8, 8), torch.tensor([20.0, 20.0]), TypeError),
        (torch.zeros(2, 4, 8, 8, dtype=torch.long), torch.tensor([20, 20]), TypeError),
    ],
)
def test_bad_inputs(tiny_unet, schedule, latents, steps, exc):
    with pytest.raises(exc):
        reconstruct(tiny_unet, DDADScheduler(schedule), latents, steps, guidance=1.0)


def test_bf16_unet_keeps_float32_scheduler_math(tiny_unet, schedule):
    sched = DDADScheduler(schedule, steps_per_image=4)
    latents = torch.randn(2, 4, 8, 8)
    steps = torch.tensor([40, 80])
    ref = reconstruct(tiny_unet, sched, latents, steps, guidance=4.0)
    out = reconstruct(tiny_unet.to(torch.bfloat16), sched, latents, steps, guidance=4.0)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_mixed_batch_bf16(tiny_unet):
    from ddad_core.noise_schedule import NoiseSchedule

    sched = DDADScheduler(NoiseSchedule(device="cuda"), steps_per_image=10)
    unet = tiny_unet.to("cuda", torch.bfloat16)
    latents = torch.randn(4, 4, 8, 8, device="cuda")
    steps = torch.tensor([20, 80, 40, 60], device="cuda")
    batch = reconstruct(unet, sched, latents, steps, guidance=4.0)
    for i in range(4):
        alone = reconstruct(unet, sched, latents[i : i + 1], steps[i : i + 1], guidance=4.0)
        assert torch.allclose(batch[i : i + 1], alone, atol=2e-2)


def test_start_steps_override(schedule):
    """Q2: start scaled at 24 but stepping on the grid of 20 -> eps == 0 shrink sqrt(abar_24 / abar_18)."""
    from ._helpers import ZeroUNet

    y = torch.randn(1, 4, 4, 4)
    out = reconstruct(ZeroUNet(), DDADScheduler(schedule), y, torch.tensor([20]), 0.0, start_steps=torch.tensor([24]))
    factor = (schedule.alphas_cumprod[24] / schedule.alphas_cumprod[18]).sqrt()
    assert torch.allclose(out, y * factor, atol=1e-5)


def test_schedule_device_mismatch(tiny_unet, schedule):
    latents = torch.randn(1, 4, 8, 8, device="meta")
    with pytest.raises(ValueError, match="schedule is on"):
        reconstruct(tiny_unet, DDADScheduler(schedule), latents, torch.tensor([20], device="meta"), guidance=1.0)
