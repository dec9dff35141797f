"""Method configuration: every hyperparameter of D3AD in one frozen, validated model.

Values and their sources are in ``docs/method.md`` (section numbers below). ``DDADConfig`` travels
inside the model bundle and is never read from the environment; services only choose *which* bundle to load.
``mode`` switches between the reference code's behaviour ("faithful") and the production-clean one for
each quirk of docs/method.md section 10; individual switches can still be set one by one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Grid = Literal["faithful", "clean"]


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error as one line: ``field: message; ...`` (model-level checks without a field name)."""
    problems = [(".".join(map(str, e["loc"])) + ": " if e["loc"] else "") + e["msg"] for e in exc.errors()]
    return "; ".join(p.replace("Value error, ", "") for p in problems)


class DDADConfig(BaseModel):
    """Hyperparameters of the detector (docs/method.md section 9).

    Example:
        >>> cfg = DDADConfig()
        >>> cfg.max_noise_step, cfg.steps_per_image, cfg.latent_weight
        (80, 10, 0.85)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- preprocessing (section 2)
    image_size: int = Field(256, ge=32, description="Square input size S; images are resized to S x S.")
    image_shape: tuple[int, int] | None = Field(
        None,
        description="(H, W) of a non-square input, about as many pixels as S x S, with the good images' typical "
        "aspect ratio (`ddad fit --aspect keep`); None = S x S.",
    )

    # -- noise schedule (section 4.1)
    num_train_timesteps: int = Field(1000, gt=0, description="T of the forward process.")
    beta_start: float = Field(0.0015, gt=0, description="First beta of the linear schedule.")
    beta_end: float = Field(0.0195, gt=0, description="Last beta of the linear schedule.")

    # -- reverse process (section 7)
    max_noise_step: int = Field(80, gt=0, description="T_max: the largest start timestep the noise level maps to.")
    steps_per_image: int = Field(10, gt=0, description="UNet evaluations per image (every image takes the same).")
    guidance: float = Field(4.0, ge=0, description="w (`eta2` in the reference code): pull toward the input latent.")
    eta: float = Field(0.0, ge=0, description="DDIM stochasticity; 0 is deterministic DDIM.")
    omega: float = Field(0.0, ge=0, le=1, description="Share of real noise in the start state (0 = noiseless).")
    grid: Grid = Field("faithful", description="Q1: 'faithful' first UNet call at T-s; 'clean' grid T, T-s, ..., s.")
    posterior: Literal["mean", "sample"] = Field(
        "mean", description="Q5: encode with the posterior mean (deterministic) or a posterior sample (reference)."
    )

    # -- dynamic noise level (section 6)
    dynamic_noise: bool = Field(True, description="False: fixed start step T_max for every image.")
    knn_k: int = Field(20, gt=0, description="k of the L1 k-NN in the feature bank.")
    num_bins: int = Field(10, gt=1, description="Equal-width bins of the training k-NN distances.")
    min_bin: int = Field(2, ge=0, description="Bins below this map to the same (smallest) noise level.")
    knn_mode: Grid = Field("faithful", description="Q3: 'faithful' includes the self-match; 'clean' leave-one-out.")
    dic_pool_size: int = Field(16, gt=0, description="Block-2 features are average-pooled to this square size.")

    # -- feature extractor and domain adaptation (section 5)
    da_epochs: int = Field(1, ge=0, description="gamma: epochs of domain adaptation of the feature extractor.")
    da_batch_size: int = Field(30, gt=0)
    da_lr: float = Field(1e-4, gt=0)
    da_teacher: float = Field(
        0.0,
        ge=0,
        description="lambda_DL: weight of DDAD's frozen-teacher terms in domain adaptation, which keep the adapted "
        "features of x and of its reconstruction close to the ImageNet ones (0 = D3AD: no teacher; DDAD: 0.1).",
    )

    # -- anomaly map (section 8)
    latent_weight: float = Field(0.85, ge=0, le=1, description="lambda on the latent L1 map; 1-lambda on features.")
    blur_sigma: float = Field(4.0, ge=0, description="Gaussian smoothing of the blended map (kernel 2*round(4s)+1).")
    normalization: Literal["fixed", "paper"] = Field(
        "fixed",
        description="Q4: 'fixed' min/max from held-out good images at fit time (streaming-safe); "
        "'paper' min/max over the whole evaluated set (reference code; offline reproduction only).",
    )
    feature_reference: Literal["input", "reconstruction"] = Field(
        "input", description="Q7: compare features of the input x (reference) or of D(E(x)) with D(z_hat)."
    )
    feature_pool: int = Field(
        1, ge=1, description="k x k local averaging of the feature blocks before the cosine distance; 1 = none (paper)."
    )

    # -- departures of the production recipe (off by default, i.e. in the paper recipe; ddad_core/fitting/recipes.py)
    knn_weight: float = Field(
        0.0, ge=0, le=1, description="Weight of the patch k-NN term (patch_knn.py) in the map; 0 = the paper's map."
    )
    knn_bank_size: int = Field(16384, gt=0, description="Coreset size of the nominal patch bank of the k-NN term.")
    knn_zero_pad: bool = Field(
        False,
        description="Average border patches with zeros outside the map (PatchCore's padding, which damps borders); "
        "False averages only the pixels inside.",
    )
    knn_features: Literal["blocks", "expanded"] = Field(
        "blocks",
        description="Features of the patch k-NN term: 'blocks', the backbone's block outputs at strides 8 and 16; "
        "'expanded', the wider expansion activations inside the last block at each of those strides "
        "(inverted-residual backbones: MobileNetV2, EfficientNet).",
    )
    component_norm: Literal["minmax", "position"] = Field(
        "minmax",
        description="How each map component is normalised before blending: 'minmax' (paper) or 'position', "
        "per-position z-scores against held-out good images (position_norm.py).",
    )

    @model_validator(mode="after")
    def _check(self) -> DDADConfig:
        if self.beta_end <= self.beta_start:
            raise ValueError(f"beta_end ({self.beta_end}) must exceed beta_start ({self.beta_start})")
        if self.max_noise_step >= self.num_train_timesteps:
            raise ValueError("max_noise_step must be smaller than num_train_timesteps")
        if self.max_noise_step % self.steps_per_image:
            raise ValueError(
                f"max_noise_step ({self.max_noise_step}) must be a multiple of steps_per_image ({self.steps_per_image})"
            )
        if self.feature_pool % 2 == 0:
            raise ValueError(f"feature_pool ({self.feature_pool}) must be odd (a centred k x k window)")
        for side in self.input_shape:
            if side % 8 or side < 32:
                raise ValueError(
                    f"input size {self.input_shape} must be at least 32 and a multiple of 8 in each direction "
                    "(the autoencoder's downsampling)"
                )
        return self

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the model input: ``image_shape``, or ``(S, S)``."""
        return tuple(self.image_shape) if self.image_shape is not None else (self.image_size, self.image_size)


class TrainConfig(BaseModel):
    """How the UNet is trained (docs/method.md sections 4.2-4.3)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str = Field("cpu", description="UNet preset name (see ddad_core.unet.UNET_PRESETS).")
    epochs: int = Field(300, gt=0)
    batch_size: int = Field(30, gt=0)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    checkpoint_every: int = Field(25, gt=0, description="Save a resumable checkpoint every N epochs.")
    seed: int = 42
    holdout_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of train/good held out for normalisation and calibration."
    )
    timestep_max: int | None = Field(
        None,
        gt=0,
        description="Sample training timesteps t ~ U{0..timestep_max-1}, where the sampler queries; None = the full "
        "range U{0..T-1} (paper).",
    )
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of the UNet weights (0 = off, paper); the EMA is saved.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="'constant' (paper) or 'cosine' decay to 0 over all steps of all epochs."
    )
