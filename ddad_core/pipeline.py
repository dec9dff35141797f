"""The detector, end to end: ``DDADPipeline.__call__`` restates flow steps 1-8 in order.

1. preprocess (``preprocess.py``) -> 2. encode (``autoencoders.py``) -> 3. noise level (``noise_level.py``, from
the input's block-2 features, ``features.py``) -> 4. conditioned denoising (``denoise.py`` + ``ddim.py``) ->
5. decode -> 6. features of the reconstruction -> 7. anomaly map (``anomaly_map.py``) -> 8. score, normalise,
threshold (``scoring.py``) -> ``InspectionOutput``.

Everything per frame is independent of the other frames of the batch (BatchNorm in eval mode, per-sample noise
levels and timestep grids, per-image maps and fixed normalisation), so a frame scores the same alone or in a batch.
With the defaults (posterior mean, eta = 0, omega = 0) inference is deterministic, which makes at-least-once
redelivery on the stream harmless.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddad_core.anomaly_map import (
    MapNormalization,
    combine_maps,
    component_weights,
    feature_distance_map,
    latent_distance_map,
    upsample_map,
)
from ddad_core.autoencoders import LatentAutoencoder, autoencoder_from_state
from ddad_core.bundle import BundleConfig, BundleError, bundle_hash, load_bundle
from ddad_core.config import DDADConfig
from ddad_core.ddim import DDADScheduler
from ddad_core.denoise import reconstruct
from ddad_core.features import DIC_BLOCK, MAP_BLOCKS, FeatureExtractor, backbone_from_state, check_backbone
from ddad_core.noise_level import NoiseLevelEstimator
from ddad_core.outputs import InspectionOutput
from ddad_core.overlay import NominalOverlay, OverlayError
from ddad_core.patch_knn import PatchKNN, patch_features
from ddad_core.position_norm import PositionNorm
from ddad_core.preprocess import preprocess
from ddad_core.scoring import Calibration, check_sensitivity, score_maps
from ddad_core.unet import unet_from_config


@dataclass
class MapComponents:
    """The un-normalised parts of the anomaly maps of a batch (what fitting and ``paper`` evaluation need).

    Attributes:
        latent_map: ``(B, S, S)`` A_lat, or None when the recipe has no reconstruction term (patch term only).
        feature_map: ``(B, S, S)`` A_feat, or None likewise.
        noise_step: ``(B,)`` long start timesteps.
        timings_ms: Per-stage wall time.
        recon_images: ``(B, 3, S, S)`` decoded reconstructions in [-1, 1] if requested.
        knn_map: ``(B, S, S)`` patch k-NN distances (production recipe), or None when not computed.
    """

    latent_map: torch.Tensor | None
    feature_map: torch.Tensor | None
    noise_step: torch.Tensor
    timings_ms: dict[str, float] = field(default_factory=dict)
    recon_images: torch.Tensor | None = None
    knn_map: torch.Tensor | None = None

    @classmethod
    def concat(cls, parts: list[MapComponents]) -> MapComponents:
        """The components of several batches in one, on the CPU (maps and noise steps only)."""

        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return torch.cat([v.float().cpu() for v in values]) if values and values[0] is not None else None

        return cls(
            latent_map=cat("latent_map"),
            feature_map=cat("feature_map"),
            noise_step=torch.cat([p.noise_step.cpu() for p in parts]),
            knn_map=cat("knn_map"),
        )

    def __len__(self) -> int:
        return len(self.noise_step)

    def head(self, n: int) -> MapComponents:
        """The first ``n`` images (every field, on its device)."""
        return MapComponents(
            latent_map=self.latent_map[:n] if self.latent_map is not None else None,
            feature_map=self.feature_map[:n] if self.feature_map is not None else None,
            noise_step=self.noise_step[:n],
            timings_ms=self.timings_ms,
            recon_images=self.recon_images[:n] if self.recon_images is not None else None,
            knn_map=self.knn_map[:n] if self.knn_map is not None else None,
        )

    @classmethod
    def join(cls, parts: list[MapComponents], timings_ms: dict[str, float]) -> MapComponents:
        """Chunks of one batch in one, on their device (every field)."""

        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return torch.cat(values) if values[0] is not None else None

        return cls(
            latent_map=cat("latent_map"),
            feature_map=cat("feature_map"),
            noise_step=cat("noise_step"),
            timings_ms=timings_ms,
            recon_images=cat("recon_images"),
            knn_map=cat("knn_map"),
        )

    def select(self, index) -> MapComponents:
        """The components of the images at ``index`` (maps and noise steps only)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return MapComponents(
            latent_map=self.latent_map[idx] if self.latent_map is not None else None,
            feature_map=self.feature_map[idx] if self.feature_map is not None else None,
            noise_step=self.noise_step[idx],
            knn_map=self.knn_map[idx] if self.knn_map is not None else None,
        )

    def maps(self) -> dict[str, torch.Tensor]:
        """Component name -> raw map (the ones that were computed)."""
        named = {"latent": self.latent_map, "feature": self.feature_map, "knn": self.knn_map}
        return {name: m for name, m in named.items() if m is not None}


class _Timer:
    """Per-stage wall clock; synchronises CUDA so each stage's time is its own, not the next stage's."""

    def __init__(self, device: torch.device) -> None:
        self.sync = device.type == "cuda"
        self.times: dict[str, float] = {}
        self._last = self._now()

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, name: str) -> None:
        now = self._now()
        self.times[name] = self.times.get(name, 0.0) + (now - self._last) * 1000.0
        self._last = now


class DDADPipeline:
    """D3AD inference: uint8 images in, ``InspectionOutput`` out.

    Args:
        config: Method hyperparameters.
        autoencoder: Latent autoencoder (frozen); None for a recipe without reconstruction (``fast``).
        unet: Trained noise predictor; None likewise.
        features: Domain-adapted feature extractor.
        noise_level: Fitted noise-level estimator.
        patch_knn: Nominal patch bank of the k-NN term (recipes with ``knn_weight > 0``).
        position_norm: Per-position statistics (recipes with ``component_norm="position"``).
        channels_last: Keep the convolution networks' weights channels-last (NHWC): the same results, faster on
            oneDNN and cuDNN (2 CPU cores, batch 8: UNet 1.17x, MobileNetV2 1.68x, TAEF2 encode and decode 1.37x;
            ``bench/bench_model.py``). Off only to restate the reference flow.
        calibration: Normalisation and thresholds; required by ``__call__`` (``components`` works without).
        device: Where everything runs.
        dtype: Optional reduced precision for the networks (e.g. ``torch.bfloat16`` on a GPU); maps and scores are
            always computed in float32.
        model_version: Version string of the bundle.
        bundle_hash: SHA-256 of ``bundle.json``.
        seed: Seed of the random draws used only with ``posterior="sample"``, ``omega > 0`` or ``eta > 0``.

    Example:
        >>> pipe = DDADPipeline.from_bundle("bundles/bottle", device="cuda")  # doctest: +SKIP
        >>> out = pipe([frame_a, frame_b])  # doctest: +SKIP
        >>> out.pred_score, out.pred_label  # doctest: +SKIP
    """

    def __init__(
        self,
        config: DDADConfig,
        autoencoder: LatentAutoencoder | None,
        unet: nn.Module | None,
        features: FeatureExtractor,
        noise_level: NoiseLevelEstimator,
        calibration: Calibration | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        model_version: str = "",
        bundle_hash: str = "",
        seed: int = 0,
        patch_knn: PatchKNN | None = None,
        position_norm: PositionNorm | None = None,
        channels_last: bool = True,
    ) -> None:
        self.config = config
        self.channels_last = channels_last
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.autoencoder = self._place(autoencoder) if autoencoder is not None else None
        self.unet = self._place(unet) if unet is not None else None
        self.features = self._place(features)
        self.noise_level = noise_level.to(self.device)
        self.patch_knn = patch_knn.to(self.device) if patch_knn is not None else None
        self.position_norm = position_norm.to(self.device) if position_norm is not None else None
        self.scheduler = DDADScheduler.from_config(config, device=self.device)
        self.calibration = calibration
        self.model_version = model_version
        self.bundle_hash = bundle_hash
        self.seed = seed
        self.bundle_config: BundleConfig | None = None
        self.compiled_batch_sizes: tuple[int, ...] = ()
        self.overlay: NominalOverlay | None = None

    def _place(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        if self.dtype != torch.float32:
            # Only cast when asked: diffusers warns on any dtype cast of a UNet, even a no-op float32 one.
            module = module.to(self.dtype)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module.eval().requires_grad_(False)

    # ------------------------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        backbone: str | None = None,
        verify: bool = True,
        channels_last: bool = True,
    ) -> DDADPipeline:
        """Load a fitted bundle.

        Args:
            path: Bundle directory.
            device: Where to run.
            dtype: Optional network precision (float32 if None).
            backbone: If given, refuse a bundle fitted with another backbone (``BackboneMismatchError``).
            verify: Check the files' hashes.
            channels_last: See the class arguments.

        Raises:
            BundleError: Missing/corrupt files, or a bundle without calibration or backbone.
            BackboneMismatchError: ``backbone`` differs from the bundle's.
        """
        config, tensors = load_bundle(path, device="cpu", verify=verify)
        if config.calibration is None:
            raise BundleError(f"model bundle {path} has no calibration; it cannot serve (refit it with `ddad fit`)")
        if config.backbone is None:
            raise BundleError(f"model bundle {path} records no feature backbone")
        if backbone is not None:
            check_backbone(config.backbone, backbone)
        reconstructs = config.unet_config is not None
        required = ("unet", "autoencoder", "backbone", "noise_level") if reconstructs else ("backbone", "noise_level")
        for group in required:
            if group not in tensors:
                raise BundleError(f"model bundle {path} lacks the tensor group {group!r}")
        autoencoder, unet = None, None
        if reconstructs:
            autoencoder = autoencoder_from_state(config.autoencoder, tensors["autoencoder"])
            unet = unet_from_config(config.unet_config)
            unet.load_state_dict(tensors["unet"])
        features = backbone_from_state(config.backbone, tensors["backbone"])
        noise_level = NoiseLevelEstimator.from_tensors(config.ddad, tensors["noise_level"])
        if config.ddad.knn_weight > 0 and "patch_knn" not in tensors:
            raise BundleError(f"model bundle {path} uses the k-NN term but lacks the tensor group 'patch_knn'")
        if config.ddad.component_norm == "position" and "position_norm" not in tensors:
            raise BundleError(f"model bundle {path} uses position normalisation but lacks 'position_norm'")
        pipe = cls(
            config.ddad,
            autoencoder,
            unet,
            features,
            noise_level,
            calibration=Calibration.from_dict(config.calibration),
            device=device,
            dtype=dtype,
            model_version=config.model_version,
            bundle_hash=bundle_hash(path),
            seed=config.train.seed,
            patch_knn=PatchKNN.from_tensors(tensors["patch_knn"]) if "patch_knn" in tensors else None,
            position_norm=PositionNorm.from_tensors(tensors["position_norm"]) if "position_norm" in tensors else None,
            channels_last=channels_last,
        )
        pipe.bundle_config = config
        return pipe

    #: DDADConfig fields whose change needs refitting (a new bank, bins, backbone or resolution), so
    #: ``with_settings`` refuses them.
    REFIT_FIELDS = frozenset(
        {
            "image_size",
            "image_shape",
            "num_train_timesteps",
            "beta_start",
            "beta_end",
            "knn_k",
            "num_bins",
            "knn_mode",
            "dic_pool_size",
            "da_epochs",
            "da_batch_size",
            "da_lr",
            "knn_bank_size",
            "knn_zero_pad",
            "knn_features",
        }
    )

    def with_settings(self, seed: int | None = None, **overrides) -> DDADPipeline:
        """A pipeline that shares this one's networks and fitted state, with sampler or map settings changed.

        What ablations and per-product selection use: no refitting, no copy of any weights. The scheduler and the
        noise-level mapping are rebuilt for the new settings; the calibration is kept as it is (re-calibrate
        if the map changes and decisions matter).

        Args:
            seed: Seed of the random draws (``omega > 0``, ``eta > 0``, posterior samples); default unchanged.
            **overrides: ``DDADConfig`` fields, validated as the config is.

        Raises:
            ValueError: A field that needs refitting (``REFIT_FIELDS``), or an invalid value (pydantic's message
                names the field).
        """
        refit = sorted(set(overrides) & self.REFIT_FIELDS)
        if refit:
            raise ValueError(f"{refit} cannot change without refitting; settings that can: sampler and map fields")
        config = DDADConfig(**{**self.config.model_dump(), **overrides})
        new = copy.copy(self)
        new.config = config
        new.scheduler = DDADScheduler.from_config(config, device=self.device)
        new.noise_level = NoiseLevelEstimator.from_tensors(config, self.noise_level.tensors()).to(self.device)
        if seed is not None:
            new.seed = seed
        return new

    @property
    def overlay_version(self) -> int | None:
        """Version of the nominal overlay this pipeline scores with (None: the bundle's bank alone)."""
        return self.overlay.version if self.overlay is not None else None

    def with_overlay(self, overlay: NominalOverlay | None) -> DDADPipeline:
        """A pipeline that shares this one's networks and bank and scores with ``overlay``'s taught patches too.

        The patch k-NN distance becomes the distance to the nearest patch of the bundle's bank or the overlay
        (``ddad_core/overlay.py``); None gives the bundle's bank alone. Nothing is copied but the overlay's patches
        onto the device, so swapping overlays between batches is cheap.

        Raises:
            OverlayError: The bundle has no patch k-NN term, or the overlay was taught on another bundle.
        """
        if self.patch_knn is None or self.config.knn_weight <= 0:
            raise OverlayError("this bundle has no patch k-NN term; an overlay cannot teach it")
        channels = self.patch_knn.bank.shape[1]
        if overlay is not None and overlay.bundle_hash != self.bundle_hash:
            raise OverlayError(
                f"overlay version {overlay.version} of {overlay.product_id} was taught on bundle "
                f"{overlay.bundle_hash[:12]}, this pipeline serves {self.bundle_hash[:12]}"
            )
        if overlay is not None and overlay.channels != channels:
            raise OverlayError(f"overlay patches have {overlay.channels} channels, the bank {channels}")
        new = copy.copy(self)
        new.overlay = overlay
        new.patch_knn = self.patch_knn.with_overlay(
            overlay.patches if overlay is not None else torch.zeros(0, channels)
        )
        return new

    def optimize(
        self,
        channels_last: bool | None = None,
        compile: bool = False,
        batch_sizes: tuple[int, ...] | list[int] | None = None,
        compile_mode: str | None = None,
    ) -> DDADPipeline:
        """Switch on the fast-path options that change no result beyond float rounding (in place; returns self).

        Args:
            channels_last: Switch channels-last weights on or off (default: leave the constructor's choice, on).
            compile: ``torch.compile`` every network (UNet, autoencoder encoder and decoder, feature extractor).
                On the CPU the weights are frozen into the graph so oneDNN prepacks them (inductor ``freezing``,
                a process-wide setting meant for inference-only processes); on a GPU the UNet also runs as CUDA
                graphs (``reduce-overhead``), which removes the launch overhead of the fixed-shape 10-step loop.
                Each batch size compiles once (tens of seconds on a CPU), so ``batch_sizes`` says which to expect.
            batch_sizes: With ``compile``: the batch sizes to compile (``warmup`` runs each one); a batch of
                another size is padded up to the next of these (by repeating its last image: every frame is
                scored on its own, so padding changes no result) and split if it is larger than all of them.
            compile_mode: ``torch.compile`` mode (default: inductor's default on the CPU, ``reduce-overhead`` on a
                GPU for the UNet).

        Attention already runs through PyTorch's fused ``scaled_dot_product_attention`` (diffusers' default
        processor); reduced precision is the ``dtype`` argument of the constructor / ``from_bundle``.
        """
        if channels_last is not None:
            self.channels_last = channels_last
            layout = torch.channels_last if channels_last else torch.contiguous_format
            for module in (self.unet, self.autoencoder, self.features):
                if module is not None:
                    module.to(memory_format=layout)
        if compile:
            if self.device.type == "cpu":
                import torch._inductor.config as inductor_config

                inductor_config.freezing = True
            if self.unet is not None and self.autoencoder is not None:
                unet_mode = compile_mode or ("reduce-overhead" if self.device.type == "cuda" else None)
                self.unet = torch.compile(self.unet, mode=unet_mode, dynamic=False)
                ae = self.autoencoder
                ae._encode_raw = torch.compile(ae._encode_raw, mode=compile_mode, dynamic=False)
                ae._decode_raw = torch.compile(ae._decode_raw, mode=compile_mode, dynamic=False)
            self.features.forward = torch.compile(self.features.forward, mode=compile_mode, dynamic=False)
            self.compiled_batch_sizes = tuple(sorted(set(batch_sizes or ())))
        return self

    def _batch_plan(self, n: int) -> list[tuple[int, int, int]]:
        """``(start, stop, padded size)`` chunks of a batch of ``n`` for the compiled batch sizes."""
        sizes = self.compiled_batch_sizes
        if not sizes:
            return [(0, n, n)]
        plan, start = [], 0
        while start < n:
            rest = n - start
            size = next((s for s in sizes if s >= rest), sizes[-1])
            plan.append((start, start + min(size, rest), size))
            start += min(size, rest)
        return plan

    # ------------------------------------------------------------------------------------------------------------
    # properties

    @property
    def image_size(self) -> int:
        """Side S of the square model input (see ``input_shape`` for bundles with a non-square one)."""
        return self.config.image_size

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(H, W)`` every image is resized to."""
        return self.config.input_shape

    @property
    def reconstructs(self) -> bool:
        """Whether the map has a reconstruction term (latent or feature distance); False for the patch-only
        ``fast`` recipe, which never runs the autoencoder or the UNet."""
        return self.config.knn_weight < 1.0 and self.unet is not None and self.autoencoder is not None

    @property
    def backbone_name(self) -> str:
        return self.features.name

    @property
    def threshold(self) -> dict:
        """The operating point: raw thresholds, normalisation range and sensitivity (empty if uncalibrated)."""
        if self.calibration is None:
            return {}
        c = self.calibration
        return {
            "image_threshold": c.image_threshold,
            "pixel_threshold": c.pixel_threshold,
            "image_min": c.image_min,
            "image_max": c.image_max,
            "sensitivity": c.sensitivity,
            "normalized_threshold": 1.0 - c.sensitivity,
            "method": c.method,
            "target_fpr": c.target_fpr,
            "guarantee": (c.info.get("operating_point") or {}).get("statement"),
        }

    @property
    def sensitivity(self) -> float:
        return self.calibration.sensitivity if self.calibration is not None else 0.5

    @sensitivity.setter
    def sensitivity(self, value: float) -> None:
        if self.calibration is None:
            raise RuntimeError("the pipeline has no calibration")
        self.calibration = self.calibration.with_sensitivity(check_sensitivity(value))

    # ------------------------------------------------------------------------------------------------------------
    # inference

    def _generator(self) -> torch.Generator | None:
        cfg = self.config
        if cfg.posterior == "sample" or cfg.omega > 0 or cfg.eta > 0:
            return torch.Generator(device=self.device).manual_seed(self.seed)
        return None

    @torch.inference_mode()
    def components(
        self,
        images: torch.Tensor,
        keep_recon: bool = False,
        timer: _Timer | None = None,
        knn: bool | None = None,
        exclude: torch.Tensor | None = None,
    ) -> MapComponents:
        """Steps 2-7a: raw latent, feature (and patch k-NN) maps of preprocessed images.

        Args:
            images: ``(B, 3, S, S)`` float in [-1, 1] (output of ``preprocess``).
            keep_recon: Also return the decoded reconstructions.
            timer: Internal stage timer.
            knn: Compute the patch k-NN map (default: when the recipe weights it and a bank is loaded).
            exclude: Optional ``(B,)`` index of the good image of the fit that each image is (or was made from),
                -1 for none: its own entries are left out of the noise-level and patch banks, so a good image of
                the fit is scored out of sample (calibration). Frames in service never pass it.

        Returns:
            MapComponents.
        """
        n = images.shape[0]
        plan = self._batch_plan(n)
        if exclude is not None:
            exclude = torch.as_tensor(exclude, dtype=torch.long).to(self.device)
            if exclude.shape != (n,):
                raise ValueError(f"exclude must be ({n},), got {tuple(exclude.shape)}")
        if plan == [(0, n, n)] or exclude is not None:
            return self._components(images, keep_recon, timer, knn, exclude)
        # Compiled batch sizes: pad each chunk up to one (repeating its last image), keep only the real rows.
        timer = timer or _Timer(self.device)
        parts = []
        for start, stop, size in plan:
            chunk = images[start:stop]
            if size > chunk.shape[0]:
                chunk = torch.cat([chunk, chunk[-1:].expand(size - chunk.shape[0], *chunk.shape[1:])])
            parts.append(self._components(chunk, keep_recon, timer, knn).head(stop - start))
        return MapComponents.join(parts, timings_ms=dict(timer.times))

    def _components(
        self,
        images: torch.Tensor,
        keep_recon: bool,
        timer: _Timer | None,
        knn: bool | None,
        exclude: torch.Tensor | None = None,
    ) -> MapComponents:
        cfg = self.config
        timer = timer or _Timer(self.device)
        x = images.to(self.device, torch.float32)
        generator = self._generator()
        if not self.reconstructs:
            return self._patch_components(x, timer, exclude)
        # 2. Encode: the posterior mean (deterministic, Q5 clean) or a posterior sample (reference).
        dist = self.autoencoder.encode(x)
        latents = dist.sample(generator) if cfg.posterior == "sample" else dist.mean
        timer.lap("encode")
        # 3. Noise level: block-2 features of the input -> k-NN distance -> bin -> start timestep per image.
        if knn is None:
            knn = cfg.knn_weight > 0 and self.patch_knn is not None
        expanded = knn and cfg.knn_features == "expanded"
        feats = self.features(x.to(self.dtype), expanded=expanded)
        noise_steps = self.noise_level(feats[DIC_BLOCK], exclude)
        timer.lap("noise_level")
        # 3b. Patch k-NN term (production recipe): the input's own features against the nominal patch bank.
        knn_map = None
        if knn:
            if self.patch_knn is None:
                raise RuntimeError("the pipeline has no patch k-NN bank")
            patches = patch_features(feats, cfg.knn_zero_pad, expanded)
            knn_map = upsample_map(self.patch_knn(patches, exclude), cfg.input_shape)
            timer.lap("patch_knn")
        # 4. Conditioned denoising, every image from its own start step, all in one batch.
        recon_latents = reconstruct(
            self.unet,
            self.scheduler,
            latents,
            noise_steps,
            cfg.guidance,
            eta=cfg.eta,
            omega=cfg.omega,
            generator=generator,
        )
        timer.lap("denoise")
        # 5. Decode the reconstruction.
        recon = self.autoencoder.decode(recon_latents)
        timer.lap("decode")
        # 6. Features of the reconstruction (and, for the Q7 ablation, of the plain autoencoder round trip).
        recon_feats = self.features(recon.to(self.dtype))
        if cfg.feature_reference == "reconstruction":
            feats = self.features(self.autoencoder.decode(latents).to(self.dtype))
        timer.lap("features")
        # 7a. Raw component maps (normalised and blended by the caller).
        size = cfg.input_shape
        latent_map = latent_distance_map(latents, recon_latents, size)
        feature_map = feature_distance_map(
            [feats[j] for j in MAP_BLOCKS], [recon_feats[j] for j in MAP_BLOCKS], size, pool=cfg.feature_pool
        )
        timer.lap("anomaly_map")
        return MapComponents(
            latent_map=latent_map,
            feature_map=feature_map,
            noise_step=noise_steps,
            timings_ms=dict(timer.times),
            recon_images=recon if keep_recon else None,
            knn_map=knn_map,
        )

    def _patch_components(self, x: torch.Tensor, timer: _Timer, exclude: torch.Tensor | None) -> MapComponents:
        """Steps 3 and 7a of a recipe without reconstruction: one backbone pass, the noise level (reported only) and
        the patch k-NN map."""
        if self.patch_knn is None:
            raise RuntimeError("a recipe without reconstruction needs the patch k-NN bank")
        expanded = self.config.knn_features == "expanded"
        feats = self.features(x.to(self.dtype), expanded=expanded)
        noise_steps = self.noise_level(feats[DIC_BLOCK], exclude)
        timer.lap("noise_level")
        patches = patch_features(feats, self.config.knn_zero_pad, expanded)
        knn_map = upsample_map(self.patch_knn(patches, exclude), self.config.input_shape)
        timer.lap("patch_knn")
        return MapComponents(
            latent_map=None, feature_map=None, noise_step=noise_steps, timings_ms=dict(timer.times), knn_map=knn_map
        )

    @torch.inference_mode()
    def patch_grid(self, images: torch.Tensor) -> torch.Tensor:
        """The patch k-NN term's features ``(B, C, h, w)`` of preprocessed images, made as the bank's were."""
        expanded = self.config.knn_features == "expanded"
        feats = self.features(images.to(self.device, self.dtype), expanded=expanded)
        return patch_features(feats, self.config.knn_zero_pad, expanded)

    def components_batched(self, images: torch.Tensor, batch_size: int = 16, knn: bool | None = None) -> MapComponents:
        """``components`` over many preprocessed images, batch by batch, gathered on the CPU."""
        parts = [self.components(images[s : s + batch_size], knn=knn) for s in range(0, len(images), batch_size)]
        return MapComponents.concat(parts)

    def blend(self, components: MapComponents, normalization: MapNormalization | None = None) -> torch.Tensor:
        """Step 7b: normalise each component (per-position z-scores, or min-max with fixed statistics unless
        ``normalization`` is given), blend with the recipe's weights and blur."""
        cfg = self.config
        weights = component_weights(cfg.latent_weight, cfg.knn_weight)
        if cfg.component_norm == "position":
            if self.position_norm is None:
                raise RuntimeError("the recipe normalises per position but the pipeline has no position statistics")
            return combine_maps(components.maps(), weights, position_norm=self.position_norm, sigma=cfg.blur_sigma)
        if normalization is None:
            if self.calibration is None:
                raise RuntimeError("the pipeline has no calibration: pass a MapNormalization")
            normalization = self.calibration.normalization
        return combine_maps(components.maps(), weights, normalization, sigma=cfg.blur_sigma)

    def run_tensor(self, images: torch.Tensor, sensitivity: float | None = None) -> InspectionOutput:
        """Steps 2-8 on already preprocessed images ``(B, 3, S, S)`` in [-1, 1]."""
        if self.calibration is None:
            raise RuntimeError("the pipeline has no calibration; fit or load a calibrated bundle")
        timer = _Timer(self.device)
        comps = self.components(images, timer=timer)
        with torch.inference_mode():
            # 7b. Normalise with the fixed statistics, blend, blur.
            anomaly_map = self.blend(comps)
            timer.lap("anomaly_map")
            # 8. Score = max of the map, normalise (0.5 = threshold), label and mask.
            pred_score, raw, label, mask = score_maps(anomaly_map, self.calibration, sensitivity)
            timer.lap("score")
        return InspectionOutput(
            pred_score=pred_score,
            pred_score_raw=raw,
            pred_label=label,
            anomaly_map=anomaly_map,
            pred_mask=mask,
            noise_step=comps.noise_step,
            timings_ms=dict(timer.times),
        )

    def __call__(self, images, sensitivity: float | None = None) -> InspectionOutput:
        """Inspect a batch of images.

        Args:
            images: Anything ``ddad_core.preprocess.preprocess`` accepts: a uint8 array/tensor ``(H, W)``,
                ``(H, W, 3)``, a batch ``(B, H, W, 3)`` or a list of such images (sizes may differ).
            sensitivity: Operating point for this call (default: the calibration's).

        Returns:
            InspectionOutput with ``B`` entries (tensors on the pipeline's device) and per-stage timings.
        """
        start = time.perf_counter()
        # 1. Preprocess: the one resize/normalisation shared with fitting.
        x = preprocess(images, image_size=self.input_shape, device=self.device)
        preprocess_ms = (time.perf_counter() - start) * 1000.0
        out = self.run_tensor(x, sensitivity)
        out.timings_ms = {"preprocess": preprocess_ms, **out.timings_ms}
        return out

    def warmup(self, batch_size: int = 1) -> InspectionOutput:
        """Run one dummy batch (allocations, kernel selection) so the first real frame is not slow; with
        compiled batch sizes (``optimize``), one batch of each, so none compiles while frames wait."""
        out = None
        for size in self.compiled_batch_sizes or (batch_size,):
            out = self(np.full((size, *self.input_shape, 3), 127, dtype=np.uint8))
        return out
