"""Flow steps 2 and 5, encode and decode: the latent autoencoders behind one interface (docs/method.md section 3).

The method runs the diffusion model in the latent space of a frozen pretrained autoencoder: the Stable Diffusion
KL-f8 VAE (4 x 32 x 32 latents for 256 x 256 images, scaled by 0.18215). Three implementations share the
:class:`LatentAutoencoder` interface so that the rest of the detector never needs to know which one is used:

* :class:`DiffusersVAE` -- diffusers ``AutoencoderKL`` (the method's default), from a hub id or a local directory.
* :class:`TinyAutoencoder` -- the TAE family (TAESD for the SD latent space, TAEF2 for FLUX.2's, 32 channels), a
  small distilled deterministic encoder/decoder loaded from ``.pth`` files. Architecture written from the
  file-format facts of docs/method.md section 16.1; the two variants differ only in the latent channel count and in
  TAEF2's extra GroupNorm "pool" branch in the blocks next to the latent, both detected from the state dicts.
* :class:`ConvAutoencoder` -- a small convolutional autoencoder of our own, trained on the category's good images
  by ``fit_conv_autoencoder`` (``ddad_core/fitting/autoencoder_training.py``). **A departure from the paper** (which
  uses a frozen pretrained VAE), for machines where no pretrained autoencoder is at hand; expect lower detection
  quality than with a pretrained latent space.

Latent scaling: every ``encode`` returns latents already multiplied by ``latent_scale`` and every ``decode`` divides
by it, so the diffusion model always sees roughly unit-variance latents. The scale is fixed (0.18215) for SD, 1.0
for TAESD (whose latents are already SD-scaled), and for the others measured on the training images with
:func:`measure_latent_scale` and stored with the model (it is a buffer, so it is part of the state dict).
"""

from __future__ import annotations

import hashlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddad_core.bundle import file_sha256

__all__ = [
    "SD_LATENT_SCALE",
    "AutoencoderLoadError",
    "ConvAutoencoder",
    "DiffusersVAE",
    "LatentAutoencoder",
    "LatentDistribution",
    "TinyAutoencoder",
    "autoencoder_from_state",
    "load_autoencoder",
    "measure_latent_scale",
    "reconstruction_psnr",
]

#: Scaling factor of the Stable Diffusion v1 VAE latents (docs/method.md section 3).
SD_LATENT_SCALE = 0.18215

#: What a ``tae:`` spec needs, appended to the loader's errors.
TAE_FILES_HINT = (
    "a tae: spec names a directory with one <name>_encoder.pth / <name>_decoder.pth pair, or their common prefix "
    "(TAEF2: taef2_encoder.pth and taef2_decoder.pth from github.com/madebyollin/taesd)"
)


class AutoencoderLoadError(ValueError):
    """Autoencoder weight files exist but cannot be used (damaged, or not the expected architecture)."""


def _state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 over a state dict's names, dtypes, shapes and values (order independent)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclass
class LatentDistribution:
    """Diagonal Gaussian posterior q(z | x), already in scaled latent units.

    Attributes:
        mean: ``(B, C, h, w)`` posterior mean (the deterministic latent).
        std: ``(B, C, h, w)`` posterior standard deviation (zeros for deterministic encoders).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``mean + std * xi`` with xi ~ N(0, I) (the reference code's posterior sample, quirk Q5)."""
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise


def _check_images(images: torch.Tensor, downsample: int) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be a float tensor in [-1, 1] (use ddad_core.preprocess), got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[-1] % downsample or images.shape[-2] % downsample:
        raise ValueError(f"image size {tuple(images.shape[-2:])} must be a multiple of {downsample}")


class LatentAutoencoder(nn.Module, ABC):
    """Common interface of the latent autoencoders.

    Subclasses implement ``_encode_raw`` and ``_decode_raw`` in raw (unscaled) latent units; this class applies
    ``latent_scale`` and validates inputs.

    Attributes:
        latent_channels: C of the latents.
        downsample: Spatial factor between images and latents (8 for every implementation here).
        latent_scale: Multiplier applied after encoding (and divided out before decoding).
    """

    kind: str = "abstract"
    downsample: int = 8

    def __init__(self, latent_channels: int, latent_scale: float = 1.0):
        super().__init__()
        self.latent_channels = int(latent_channels)
        self.register_buffer("_latent_scale", torch.tensor(float(latent_scale), dtype=torch.float32))

    @property
    def latent_scale(self) -> float:
        return float(self._latent_scale)

    def set_latent_scale(self, value: float) -> None:
        """Set the latent scaling factor (e.g. the result of :func:`measure_latent_scale`)."""
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"latent_scale must be a positive finite number, got {value}")
        self._latent_scale.fill_(float(value))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @abstractmethod
    def _encode_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images in [-1, 1] -> raw posterior (mean, std)."""

    @abstractmethod
    def _decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """raw latents -> images in about [-1, 1]."""

    @abstractmethod
    def _config(self) -> dict[str, Any]:
        """Constructor arguments needed by :func:`autoencoder_from_state`."""

    def encode(self, images: torch.Tensor) -> LatentDistribution:
        """Encode images.

        Args:
            images: ``(B, 3, H, W)`` float in [-1, 1], H and W multiples of 8.

        Returns:
            :class:`LatentDistribution` of shape ``(B, C, H/8, W/8)``, multiplied by ``latent_scale``, in float32.
        """
        _check_images(images, self.downsample)
        mean, std = self._encode_raw(images.to(self.dtype))
        scale = self._latent_scale
        return LatentDistribution(mean.float() * scale, std.float() * scale)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode scaled latents.

        Args:
            latents: ``(B, C, h, w)`` in scaled units (as returned by :meth:`encode`).

        Returns:
            ``(B, 3, 8h, 8w)`` float32 images in about [-1, 1] (not clamped, as in the reference).
        """
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must have shape (B, {self.latent_channels}, h, w), got {tuple(latents.shape)}")
        return self._decode_raw((latents.float() / self._latent_scale).to(self.dtype)).float()

    def identity(self) -> dict[str, Any]:
        """What this autoencoder is, for the model bundle.

        Returns:
            ``dict(kind, source, sha256, latent_channels, downsample, latent_scale, config)`` where ``config`` rebuilds
            the module with :func:`autoencoder_from_state`, and ``sha256`` identifies the weights.
        """
        return dict(
            kind=self.kind,
            source=getattr(self, "source", None),
            sha256=getattr(self, "weights_sha256", None) or _state_sha256(self.state_dict()),
            latent_channels=self.latent_channels,
            downsample=self.downsample,
            latent_scale=self.latent_scale,
            config=self._config(),
        )


# ---------------------------------------------------------------------------------------------------------------
# diffusers AutoencoderKL (Stable Diffusion VAE)


class DiffusersVAE(LatentAutoencoder):
    """The Stable Diffusion KL-f8 VAE (diffusers ``AutoencoderKL``), the method's default latent space.

    Args:
        vae: An ``AutoencoderKL``.
        source: Hub id or directory it came from (recorded in the bundle).
        latent_scale: Defaults to ``vae.config.scaling_factor`` (0.18215 for SD v1).
    """

    kind = "sd"

    def __init__(self, vae, source: str | None = None, latent_scale: float | None = None):
        scale = latent_scale if latent_scale is not None else getattr(vae.config, "scaling_factor", SD_LATENT_SCALE)
        super().__init__(vae.config.latent_channels, scale)
        self.vae = vae.eval().requires_grad_(False)
        self.source = source
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        self.weights_sha256: str | None = None

    @classmethod
    def from_pretrained(cls, source: str, **kwargs) -> DiffusersVAE:
        """Load from a hub id (e.g. ``stabilityai/sd-vae-ft-mse``) or a local directory.

        A directory that holds a full pipeline (with a ``vae/`` subfolder) also works, as does a hub id of a
        pipeline (``CompVis/stable-diffusion-v1-4``, subfolder ``vae``, as the reference training code uses).
        """
        from diffusers import AutoencoderKL

        path = Path(source)
        subfolder = None
        if path.is_dir():
            if not (path / "config.json").exists() and (path / "vae" / "config.json").exists():
                subfolder = "vae"
        elif "stable-diffusion" in source:
            subfolder = "vae"
        try:
            vae = AutoencoderKL.from_pretrained(source, subfolder=subfolder, **kwargs)
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot load an AutoencoderKL from {source!r}: {exc}") from exc
        model = cls(vae, source=source)
        weights_dir = path / subfolder if subfolder else path
        if weights_dir.is_dir():
            files = sorted(weights_dir.glob("diffusion_pytorch_model*.safetensors")) or sorted(
                weights_dir.glob("diffusion_pytorch_model*.bin")
            )
            if files:
                model.weights_sha256 = hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()
        return model

    def _encode_raw(self, images):
        dist = self.vae.encode(images).latent_dist
        return dist.mean, dist.std

    def _decode_raw(self, latents):
        return self.vae.decode(latents).sample

    def _config(self):
        return dict(vae_config={k: v for k, v in dict(self.vae.config).items() if not k.startswith("_")})


# ---------------------------------------------------------------------------------------------------------------
# TAE family (TAESD / TAEF2)


class _TAEBlock(nn.Module):
    """TAE residual block: three 3x3 convs with ReLUs, identity skip, ReLU after the sum.

    With ``pool=True`` (TAEF2, the blocks next to the latent) a 1x1-conv/GroupNorm branch is added to the block
    input before everything else.
    """

    def __init__(self, channels: int, pool: bool):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.pool = (
            nn.Sequential(
                nn.Conv2d(channels, 4 * channels, 1, bias=False),
                nn.GroupNorm(4, 4 * channels),
                nn.ReLU(),
                nn.Conv2d(4 * channels, channels, 1, bias=False),
            )
            if pool
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return F.relu(self.conv(x) + x)


class _SoftClamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def _tae_encoder(latent_channels: int, pooled: set[int], width: int = 64) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), _TAEBlock(width, 1 in pooled)]
    for _ in range(3):
        layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False))
        base = len(layers)
        layers.extend([_TAEBlock(width, base + i in pooled) for i in range(3)])
    layers.append(nn.Conv2d(width, latent_channels, 3, padding=1))
    return nn.Sequential(*layers)


def _tae_decoder(latent_channels: int, pooled: set[int], width: int = 64) -> nn.Sequential:
    layers: list[nn.Module] = [_SoftClamp(), nn.Conv2d(latent_channels, width, 3, padding=1), nn.ReLU()]
    for stage, blocks in enumerate((3, 3, 3, 1)):
        if stage:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers.append(nn.Conv2d(width, width, 3, padding=1, bias=False))
        base = len(layers)
        layers.extend([_TAEBlock(width, base + i in pooled) for i in range(blocks)])
    layers.append(nn.Conv2d(width, 3, 3, padding=1))
    return nn.Sequential(*layers)


def _pooled_blocks(state: dict[str, torch.Tensor]) -> set[int]:
    return {int(k.split(".")[0]) for k in state if ".pool." in k and k.split(".")[0].isdigit()}


def _read_tae_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict saved in one TAE ``.pth`` file; any damage becomes one :class:`AutoencoderLoadError` line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises EOFError, UnpicklingError, RuntimeError, ... for a damaged file
        raise AutoencoderLoadError(
            f"cannot read TAE weight file {path}: not a readable torch checkpoint ({type(exc).__name__}); "
            "the file is damaged or not a .pth state dict, fetch it again"
        ) from exc
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise AutoencoderLoadError(f"TAE weight file {path} does not hold a state dict of tensors; {TAE_FILES_HINT}")
    return state


def _load_tae_half(module: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Load one half; keys or shapes that do not fit the architecture are reported in one line."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{len(items)} {what} (first: {items[0]})"
            for what, items in (
                ("missing key(s)", missing),
                ("unexpected key(s)", unexpected),
                ("wrong shape(s)", wrong),
            )
            if items
        ]
        raise AutoencoderLoadError(f"TAE weights in {path} do not match the architecture: " + "; ".join(parts))
    module.load_state_dict({k: v.float() for k, v in state.items()})


class TinyAutoencoder(LatentAutoencoder):
    """The TAE architecture (TAESD: 4 latent channels; TAEF2: 32 channels with GroupNorm pool branches).

    Deterministic: the posterior std is zero. The networks work on RGB in [0, 1]; this class converts from and
    to the detector's [-1, 1].

    Args:
        latent_channels: 4 (TAESD) or 32 (TAEF2).
        encoder_pooled: Indices of encoder blocks with a pool branch (TAEF2: 11, 12, 13).
        decoder_pooled: Indices of decoder blocks with a pool branch (TAEF2: 3, 4, 5).
        latent_scale: 1.0 for TAESD (already SD-scaled); measure it for TAEF2 (:func:`measure_latent_scale`).
    """

    kind = "tae"

    def __init__(
        self,
        latent_channels: int = 32,
        encoder_pooled: tuple[int, ...] | list[int] = (11, 12, 13),
        decoder_pooled: tuple[int, ...] | list[int] = (3, 4, 5),
        latent_scale: float = 1.0,
    ):
        super().__init__(latent_channels, latent_scale)
        self.encoder_pooled = tuple(sorted(encoder_pooled))
        self.decoder_pooled = tuple(sorted(decoder_pooled))
        self.encoder = _tae_encoder(latent_channels, set(self.encoder_pooled))
        self.decoder = _tae_decoder(latent_channels, set(self.decoder_pooled))
        self.source: str | None = None
        self.weights_sha256: str | None = None

    @classmethod
    def from_files(cls, encoder_path: str | os.PathLike, decoder_path: str | os.PathLike) -> TinyAutoencoder:
        """Load a TAESD/TAEF2 ``*_encoder.pth`` / ``*_decoder.pth`` pair; the variant is read from the weights.

        Every error is one line that names the file.

        Raises:
            FileNotFoundError: A file is missing.
            AutoencoderLoadError: (a ``ValueError``) a file is damaged or does not hold a TAE state dict.
        """
        for path in (encoder_path, decoder_path):
            if not Path(path).is_file():
                raise FileNotFoundError(f"TAE weight file not found: {path}; {TAE_FILES_HINT}")
        enc = _read_tae_state(encoder_path)
        dec = _read_tae_state(decoder_path)
        last = max(
            (int(k.split(".")[0]) for k in enc if k.endswith(".weight") and k.split(".")[0].isdigit()), default=-1
        )
        last_conv, first_conv = enc.get(f"{last}.weight"), dec.get("1.weight")
        if last_conv is None or last_conv.ndim != 4 or first_conv is None or first_conv.ndim != 4:
            raise AutoencoderLoadError(
                f"{encoder_path} / {decoder_path} do not look like a TAE encoder/decoder pair; {TAE_FILES_HINT}"
            )
        latent_channels = last_conv.shape[0]
        if first_conv.shape[1] != latent_channels:
            raise AutoencoderLoadError(
                f"encoder {encoder_path} makes {latent_channels}-channel latents but decoder {decoder_path} takes "
                f"{first_conv.shape[1]}"
            )
        # Scale 1: TAESD latents are already in the SD-scaled space; TAEF2 latents are raw and their scale is
        # measured on the training images afterwards (measure_latent_scale).
        model = cls(latent_channels, _pooled_blocks(enc), _pooled_blocks(dec), latent_scale=1.0)
        _load_tae_half(model.encoder, enc, encoder_path)
        _load_tae_half(model.decoder, dec, decoder_path)
        model.source = f"{encoder_path},{decoder_path}"
        model.weights_sha256 = hashlib.sha256(
            (file_sha256(encoder_path) + file_sha256(decoder_path)).encode()
        ).hexdigest()
        return model.eval().requires_grad_(False)

    @classmethod
    def from_spec(cls, location: str | os.PathLike) -> TinyAutoencoder:
        """``location`` is a directory with one ``*_encoder.pth``/``*_decoder.pth`` pair, or the common prefix."""
        path = Path(location)
        if path.is_dir():
            encoders = sorted(path.glob("*_encoder.pth"))
            if len(encoders) != 1:
                raise FileNotFoundError(
                    f"expected exactly one *_encoder.pth in {path}, found {len(encoders)}; {TAE_FILES_HINT}"
                )
            prefix = str(encoders[0])[: -len("_encoder.pth")]
        else:
            prefix = str(path)
        return cls.from_files(prefix + "_encoder.pth", prefix + "_decoder.pth")

    def _encode_raw(self, images):
        mean = self.encoder((images + 1) * 0.5)
        return mean, torch.zeros_like(mean)

    def _decode_raw(self, latents):
        return self.decoder(latents) * 2 - 1

    def _config(self):
        return dict(
            latent_channels=self.latent_channels,
            encoder_pooled=list(self.encoder_pooled),
            decoder_pooled=list(self.decoder_pooled),
        )


# ---------------------------------------------------------------------------------------------------------------
# our own small convolutional autoencoder


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x):
        return x + self.body(x)


class ConvAutoencoder(LatentAutoencoder):
    """A small deterministic 8x convolutional autoencoder, trained per category (**not** in the paper).

    The paper uses a frozen VAE pretrained on millions of images. When none is available (a fresh clone without
    hub access), this model is fitted on the good training images first (``fit_conv_autoencoder`` in
    ``ddad_core/fitting/autoencoder_training.py``). It is small so that fitting takes a few minutes on a CPU; its
    reconstructions are blurrier than a pretrained VAE's, which mostly weakens the feature-distance term of the
    anomaly map.

    Encoder: a pixel-unshuffle does the first ``8 / 2**(L-1)`` of the downsampling for free (no convolutions at
    full resolution, which is what makes CPU training affordable), then per level ``[conv 3x3, ResBlock]``
    with a stride-2 conv between levels, then GroupNorm/SiLU and a 1x1 conv to ``latent_channels``. The decoder
    mirrors it (nearest-neighbour upsampling + conv) and ends with a pixel shuffle. Posterior std is zero.

    Args:
        latent_channels: C of the latent (default 4, like SD).
        widths: Channel width per level, finest first; ``L = len(widths)`` in 1..4 levels.
        latent_scale: Set after fitting with :func:`measure_latent_scale`.
    """

    kind = "conv"

    def __init__(
        self,
        latent_channels: int = 4,
        widths: tuple[int, ...] | list[int] = (64, 128),
        latent_scale: float = 1.0,
    ):
        super().__init__(latent_channels, latent_scale)
        widths = tuple(int(w) for w in widths)
        if not 1 <= len(widths) <= 4 or any(w <= 0 or w % 8 for w in widths):
            raise ValueError(f"widths must be 1 to 4 positive multiples of 8, got {widths}")
        self.widths = widths
        shuffle = self.downsample // 2 ** (len(widths) - 1)
        packed = 3 * shuffle * shuffle
        enc: list[nn.Module] = [nn.PixelUnshuffle(shuffle), nn.Conv2d(packed, widths[0], 3, padding=1)]
        enc.append(_ResBlock(widths[0]))
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            enc += [nn.Conv2d(w_in, w_out, 3, stride=2, padding=1), _ResBlock(w_out)]
        enc += [nn.GroupNorm(8, widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], latent_channels, 1)]
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1), _ResBlock(widths[-1])]
        for w_in, w_out in zip(widths[::-1][:-1], widths[::-1][1:], strict=True):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w_in, w_out, 3, padding=1), _ResBlock(w_out)]
        dec += [nn.GroupNorm(8, widths[0]), nn.SiLU(), nn.Conv2d(widths[0], packed, 3, padding=1)]
        dec.append(nn.PixelShuffle(shuffle))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.source = "conv"

    def _encode_raw(self, images):
        mean = self.encoder(images)
        return mean, torch.zeros_like(mean)

    def _decode_raw(self, latents):
        return self.decoder(latents)

    def _config(self):
        return dict(latent_channels=self.latent_channels, widths=list(self.widths))


def reconstruction_psnr(
    ae: LatentAutoencoder, images: torch.Tensor, batch_size: int = 16, on_batch: Callable[[int], None] | None = None
) -> float:
    """Mean PSNR (dB, peak-to-peak 2 for the [-1, 1] range) of ``decode(encode(images).mean)``.

    Args:
        ae: Any latent autoencoder.
        images: ``(N, 3, S, S)`` in [-1, 1].
        batch_size: Images per forward pass.
        on_batch: Called with the number of images after each batch (progress).

    Returns:
        PSNR in dB, averaged over images.
    """
    device = next(ae.parameters()).device
    values = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device, torch.float32)
            recon = ae.decode(ae.encode(x).mean).clamp(-1, 1)
            mse = (recon - x).pow(2).flatten(1).mean(1).clamp(min=1e-12)
            values.append(10 * torch.log10(4.0 / mse))
            if on_batch is not None:
                on_batch(len(x))
    return float(torch.cat(values).mean())


def measure_latent_scale(
    ae: LatentAutoencoder, images: torch.Tensor, batch_size: int = 16, on_batch: Callable[[int], None] | None = None
) -> float:
    """``1 / std`` of the raw latent means over ``images`` (the rule that gave SD its 0.18215).

    Args:
        ae: The autoencoder; its current ``latent_scale`` is divided out.
        images: ``(N, 3, S, S)`` in [-1, 1], typically the good training images.
        batch_size: Images per forward pass.
        on_batch: Called with the number of images after each batch (progress).

    Returns:
        The scale that makes the scaled latents unit-variance.

    Raises:
        ValueError: No images.
    """
    if len(images) == 0:
        raise ValueError("measure_latent_scale needs at least one image")
    device = next(ae.parameters()).device
    total, total_sq, count = 0.0, 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            raw = ae.encode(images[start : start + batch_size].to(device)).mean.double() / ae.latent_scale
            total += float(raw.sum())
            total_sq += float(raw.pow(2).sum())
            count += raw.numel()
            if on_batch is not None:
                on_batch(raw.shape[0])
    var = max(total_sq / count - (total / count) ** 2, 1e-12)
    return 1.0 / math.sqrt(var)


# ---------------------------------------------------------------------------------------------------------------
# factories


def load_autoencoder(spec: str, latent_size_hint: int | None = None) -> LatentAutoencoder:
    """Create an autoencoder from a spec string.

    Args:
        spec: ``"sd:<hub-id-or-dir>"`` (diffusers AutoencoderKL, scale 0.18215), ``"tae:<dir-or-prefix>"``
            (a TAESD/TAEF2 ``.pth`` pair; latent scale still to be measured for TAEF2), or ``"conv"`` /
            ``"conv:<latent_channels>"`` (a fresh :class:`ConvAutoencoder`, to be fitted).
        latent_size_hint: Unused by the current implementations (all downsample by 8); kept for the interface.

    Returns:
        The autoencoder in eval mode on the CPU.

    Raises:
        ValueError: Unknown spec.
        FileNotFoundError / OSError: Weights not found.
    """
    del latent_size_hint
    kind, _, arg = spec.partition(":")
    if kind == "sd":
        if not arg:
            raise ValueError("spec 'sd:' needs a hub id or directory, e.g. 'sd:stabilityai/sd-vae-ft-mse'")
        return DiffusersVAE.from_pretrained(arg)
    if kind == "tae":
        if not arg:
            raise ValueError("spec 'tae:' needs a directory or file prefix, e.g. 'tae:/weights/taef2'")
        return TinyAutoencoder.from_spec(arg)
    if kind == "conv":
        return ConvAutoencoder(latent_channels=int(arg) if arg else 4).eval()
    raise ValueError(f"unknown autoencoder spec {spec!r}; expected 'sd:<id-or-dir>', 'tae:<dir-or-prefix>' or 'conv'")


def autoencoder_from_state(identity: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> LatentAutoencoder:
    """Rebuild an autoencoder from its :meth:`LatentAutoencoder.identity` and state dict (e.g. from a bundle).

    No hub access or original files are needed: the identity's ``config`` holds the architecture.

    Raises:
        ValueError: Unknown kind, or weights that do not fit the architecture.
    """
    kind = identity.get("kind")
    config = dict(identity.get("config") or {})
    if kind == "sd":
        from diffusers import AutoencoderKL

        model: LatentAutoencoder = DiffusersVAE(
            AutoencoderKL.from_config(config["vae_config"]), source=identity.get("source")
        )
    elif kind == "tae":
        model = TinyAutoencoder(**config)
    elif kind == "conv":
        model = ConvAutoencoder(**config)
    else:
        raise ValueError(f"unknown autoencoder kind {kind!r} in identity")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise ValueError(f"autoencoder weights do not match its identity ({kind}): {exc}") from exc
    model.source = identity.get("source")
    if kind != "conv":
        model.weights_sha256 = identity.get("sha256")
    return model.eval().requires_grad_(False)
