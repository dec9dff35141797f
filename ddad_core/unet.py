"""The noise-prediction network eps_theta on latents (docs/method.md section 4.4), as diffusers ``UNet2DModel`` presets.

``UNet2DModel`` takes a ``(B,)`` tensor of per-sample timesteps, which the dynamic noise level needs.

Presets:

* ``"paper"`` -- the reference D3AD/DDAD UNet as closely as ``UNet2DModel`` allows: base width C = 192,
  multipliers (1, 2, 2, 4, 4) (widths 192/384/384/768/768 at 32/16/8/4/2 for a 32x32 latent), 2 ResBlocks per
  level on the way down and 3 on the way up, self-attention at every level except the coarsest (resolutions
  32/16/8/4) and in the middle block, 8 heads, dropout 0, GroupNorm(32), additive time embedding
  (``resnet_time_scale_shift="default"``), BigGAN-style resampling ResBlocks (``downsample_type="resnet"``: 2x2
  average pool, ``upsample_type="resnet"``: nearest x2, both applied after the first norm+SiLU to the hidden
  state and the skip), sinusoidal time embedding [sin, cos] with f_k = exp(-k ln(1e4) / (C/2))
  (``flip_sin_to_cos=False``, ``freq_shift=0``) followed by Linear(C, 4C)-SiLU-Linear(4C, 4C).
  Checked against the reference: with the reference UNet's (random) weights mapped onto this model key by key,
  both give the same output to within 1e-6 for a 4 x 32 x 32 input, and both have 281,088,004 parameters (the
  analytic 281.1 M of docs/method.md). The remaining differences are in implementation, not in the function:

  - Attention projections are ``nn.Linear`` q/k/v/out instead of one 1x1 Conv1d to qkv (same parameters,
    same function; the legacy ``[head][q, k, v]`` channel layout only matters for loading the authors' weights,
    which are not published). Attention uses fused SDPA (scale 1/sqrt(d) once instead of d^-1/4 on q and k:
    mathematically equal).
  - Two things are not expressible in a ``UNet2DModel`` config and are applied by :func:`build_unet` after
    construction (and recorded as ``ddad_*`` entries of ``unet.config``): a fixed head count (diffusers has one
    ``attention_head_dim`` for all levels; the reference has 8 heads at every width), and an up path without
    attention at the coarsest level that still upsamples with a BigGAN ResBlock (diffusers' ``UpBlock2D`` can
    only upsample with a conv; we use ``AttnUpBlock2D`` there and replace its attentions by identities).
    Rebuild a saved model with :func:`build_unet` or :func:`unet_from_config`, not ``UNet2DModel.from_config``.
  - Zero-initialisation of the second conv of each ResBlock, the attention output projection and the output
    conv is applied by :func:`build_unet` (diffusers does not zero-init); this only affects training from scratch.
  - GroupNorm runs in the model dtype (the reference upcasts GroupNorm to float32); relevant only under bf16.
  - The reference normalises the latent spatial size implicitly through ``attn_reso``; here attention levels are
    fixed per preset and the latent size only sets ``sample_size``.

* ``"cpu"`` -- a small UNet of the same family (4.5 M parameters, 4 levels 32/64/128/128, one ResBlock per level,
  attention at 8x8, 4x4 and the middle) sized so that fitting a 200-image category (32x32 latents) for the
  paper's 300 epochs fits in the 20-minute budget on a 2-core CPU: measured 2.6 s per epoch (6 steps of 30) on
  one core of a busy machine, i.e. about 13 minutes for 300 epochs. A departure from the paper made for machines
  without a GPU. (On a shared machine set ``OMP_WAIT_POLICY=PASSIVE`` or one thread: spinning OpenMP workers made
  the same epoch take 15-46 s with two threads while another process was busy.)
* ``"tiny"`` -- for unit tests only.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

__all__ = ["RECOMMENDED_TRAINING", "UNET_PRESETS", "build_unet", "count_parameters", "unet_from_config"]

_PAPER_CHANNELS = (192, 384, 384, 768, 768)

# What every preset shares (the reference's block recipe: GroupNorm eps 1e-5, SiLU, additive time embedding,
# sinusoidal [sin, cos] timestep features, attention in the middle block, no dropout).
_COMMON: dict[str, Any] = dict(
    mid_block_type="UNetMidBlock2D",
    add_attention=True,
    norm_eps=1e-5,
    dropout=0.0,
    act_fn="silu",
    resnet_time_scale_shift="default",
    time_embedding_type="positional",
    flip_sin_to_cos=False,
    freq_shift=0,
)

#: Preset name -> ``UNet2DModel`` keyword arguments (plus ``num_attention_heads``, applied by ``build_unet``).
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        **_COMMON,
        block_out_channels=_PAPER_CHANNELS,
        down_block_types=("AttnDownBlock2D",) * 4 + ("DownBlock2D",),
        # The coarsest up level is an AttnUpBlock2D only because UpBlock2D cannot resample with a ResBlock; its
        # attention layers are removed again by build_unet (no_attention_up_blocks), as the reference has none there.
        up_block_types=("AttnUpBlock2D",) * 5,
        no_attention_up_blocks=(0,),
        layers_per_block=2,
        attention_head_dim=_PAPER_CHANNELS[0] // 8,  # overridden per level by num_attention_heads
        num_attention_heads=8,
        norm_num_groups=32,
        downsample_type="resnet",
        upsample_type="resnet",
    ),
    "cpu": dict(
        **_COMMON,
        # Four levels (32/16/8/4 for a 32x32 latent) with narrow high-resolution levels: most of the compute of a
        # UNet is at its finest levels, so width goes where the resolution is low. Attention at 8x8, 4x4 and in
        # the middle. ~4.5 M parameters, ~69 GFLOP per training step of 30 latents.
        block_out_channels=(32, 64, 128, 128),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=32,
        num_attention_heads=None,
        no_attention_up_blocks=(),
        norm_num_groups=16,
        downsample_type="conv",
        upsample_type="conv",
    ),
    "tiny": dict(
        **_COMMON,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=16,
        num_attention_heads=None,
        no_attention_up_blocks=(),
        norm_num_groups=8,
        downsample_type="conv",
        upsample_type="conv",
    ),
}


#: Suggested training overrides per preset (``TrainConfig(**RECOMMENDED_TRAINING[preset])``). The paper preset uses
#: the paper's recipe. The small cpu preset learns much faster with a larger step: on 200 KolektorSDD images
#: (TAEF2 latents), 40 epochs gave a loss of 0.74 at lr 1e-4, 0.52 at 3e-4 and 0.38 at 1e-3.
RECOMMENDED_TRAINING: dict[str, dict[str, Any]] = {
    "paper": dict(lr=1e-4, epochs=300, batch_size=30),
    "cpu": dict(lr=1e-3, epochs=300, batch_size=30),
    "tiny": dict(lr=1e-3, epochs=5, batch_size=8),
}


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _set_heads(unet: UNet2DModel, num_heads: int) -> None:
    """Give every attention module a fixed head count (what ``n_head: 8`` means in the reference config)."""
    for module in unet.modules():
        if isinstance(module, Attention):
            inner = module.to_q.out_features
            if inner % num_heads:
                raise ValueError(f"attention width {inner} is not divisible by {num_heads} heads")
            module.heads = num_heads


def _zero_init(unet: UNet2DModel) -> None:
    """Zero the last layer of every residual branch and the output conv, as the reference UNet does."""
    for module in unet.modules():
        if isinstance(module, ResnetBlock2D):
            last = module.conv2
        elif isinstance(module, Attention):
            last = module.to_out[0]
        else:
            continue
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)
    nn.init.zeros_(unet.conv_out.weight)
    nn.init.zeros_(unet.conv_out.bias)


def _strip_attention(unet: UNet2DModel, up_blocks: tuple[int, ...] | list[int]) -> None:
    """Replace the attention layers of the given up blocks by identities (keeps their BigGAN up-ResBlock)."""
    for index in up_blocks:
        block = unet.up_blocks[index]
        block.attentions = nn.ModuleList([nn.Identity() for _ in block.attentions])


# Keys that build_unet applies after UNet2DModel construction and records in unet.config (prefixed "ddad_").
_POST_BUILD_KEYS = ("num_attention_heads", "no_attention_up_blocks")


def _post_build(unet: UNet2DModel, num_attention_heads: int | None, no_attention_up_blocks) -> None:
    if no_attention_up_blocks:
        _strip_attention(unet, tuple(no_attention_up_blocks))
    if num_attention_heads:
        _set_heads(unet, num_attention_heads)
    unet.register_to_config(
        ddad_num_attention_heads=num_attention_heads, ddad_no_attention_up_blocks=list(no_attention_up_blocks or ())
    )


def unet_from_config(config: dict[str, Any]) -> UNet2DModel:
    """Rebuild a UNet from ``dict(unet.config)`` (as stored in a bundle), including the post-build changes.

    Args:
        config: The diffusers config dict of a model made by :func:`build_unet` (its ``ddad_*`` entries restore
            the fixed head count and the attention-free up blocks).

    Returns:
        A freshly initialised ``UNet2DModel`` (load the weights afterwards).
    """
    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    heads = config.pop("ddad_num_attention_heads", None)
    no_attn = config.pop("ddad_no_attention_up_blocks", None) or ()
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        if key in config and isinstance(config[key], list):
            config[key] = tuple(config[key])
    unet = UNet2DModel(**config)
    _post_build(unet, heads, no_attn)
    return unet


def build_unet(
    preset: str,
    latent_channels: int,
    latent_size: int | tuple[int, int],
    seed: int | None = None,
    **overrides: Any,
) -> UNet2DModel:
    """Instantiate a preset.

    Args:
        preset: ``"paper"``, ``"cpu"`` or ``"tiny"`` (keys of :data:`UNET_PRESETS`).
        latent_channels: In/out channels (4 for SD latents, 32 for TAEF2, the ConvAutoencoder's channels).
        latent_size: Latent side h (32 for 256x256 images) or ``(h, w)``; sets ``sample_size``.
        seed: If given, the initial weights are drawn from ``torch.manual_seed(seed)`` (reproducible) without
            touching the global random state.
        **overrides: Replace preset entries (for experiments).

    Returns:
        A ``UNet2DModel`` in train mode on the CPU, float32. ``dict(unet.config)`` is everything needed to rebuild
        it with :func:`unet_from_config`.

    Raises:
        KeyError: Unknown preset.
        ValueError: A latent too small for the depth, or widths not divisible by the GroupNorm groups.

    Example:
        >>> unet = build_unet("tiny", latent_channels=4, latent_size=8, seed=0)
        >>> unet(torch.zeros(2, 4, 8, 8), torch.tensor([3, 70])).sample.shape
        torch.Size([2, 4, 8, 8])
    """
    if preset not in UNET_PRESETS:
        raise KeyError(f"unknown UNet preset {preset!r}; choose one of {sorted(UNET_PRESETS)}")
    if latent_channels <= 0:
        raise ValueError(f"latent_channels must be positive, got {latent_channels}")
    kwargs = copy.deepcopy(UNET_PRESETS[preset])
    kwargs.update(overrides)
    levels = len(kwargs["block_out_channels"])
    sides = (latent_size,) if isinstance(latent_size, int) else tuple(latent_size)
    if any(side % (2 ** (levels - 1)) for side in sides):
        raise ValueError(f"latent_size {latent_size} must be divisible by {2 ** (levels - 1)} for preset {preset!r}")
    heads = kwargs.pop("num_attention_heads", None)
    no_attn = kwargs.pop("no_attention_up_blocks", ())
    kwargs.update(sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        unet = UNet2DModel(**kwargs)
        _post_build(unet, heads, no_attn)
        _zero_init(unet)
    return unet
