"""The model bundle: everything a detector needs, in one self-contained, verifiable directory.

Layout::

    <bundle>/
      bundle.json              # BundleConfig (pydantic, schema_version 1): configs, identities, file hashes
      unet.safetensors         # one safetensors file per tensor group, named in BundleConfig.files
      autoencoder.safetensors
      backbone.safetensors
      noise_level.safetensors  # ... whatever the fitting recipe stores

``bundle.json`` records the method and training configs, the UNet preset and full diffusers config, the
identities of the autoencoder and feature backbone (kind, source, hash of the original weights), the latent scale,
the calibration (filled by the fitting recipe), and the SHA-256 of every tensor file. Loading checks the schema
version, the config, and every file's existence and hash, and raises :class:`BundleError` naming the file or
field at fault -- a broken bundle fails at load time, never at the first frame.

Weights are safetensors (no pickle: loading a bundle cannot execute code).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors.torch import load_file, save_file

from ddad_core.config import DDADConfig, TrainConfig, validation_problems

__all__ = [
    "BUNDLE_CONFIG_NAME",
    "SCHEMA_VERSION",
    "BundleConfig",
    "BundleError",
    "bundle_hash",
    "file_sha256",
    "load_bundle",
    "read_bundle_config",
    "save_bundle",
]

#: Version of the bundle layout this code writes and reads.
SCHEMA_VERSION = 1
#: Name of the JSON config file inside a bundle directory.
BUNDLE_CONFIG_NAME = "bundle.json"


class BundleError(ValueError):
    """A model bundle is missing, incomplete, corrupt or incompatible."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class BundleConfig(BaseModel):
    """Contents of ``bundle.json``.

    Attributes:
        schema_version: Layout version (1).
        ddad: Method hyperparameters.
        train: How the UNet was trained.
        unet_preset: Name of the UNet preset (``ddad_core.unet.UNET_PRESETS``); ``none`` for a recipe without
            reconstruction (``fast``), whose bundle holds no UNet and no autoencoder.
        unet_config: ``dict(unet.config)``; rebuild with ``ddad_core.unet.unet_from_config``; None without a UNet.
        autoencoder: Identity of the latent autoencoder (``LatentAutoencoder.identity()``); None without one.
        backbone: Identity of the feature extractor, or None.
        latent_scale: Latent scaling factor used in training (also inside the autoencoder weights); 1 without one.
        calibration: Normalisation statistics and thresholds (filled by the fitting recipe), or None.
        files: Tensor-group name -> SHA-256 of ``<name>.safetensors`` (filled by :func:`save_bundle`).
        created_at: ISO-8601 UTC time of creation.
        model_version: Human-readable version; derived from the content hash when left empty.
        metadata: Free-form extra information (dataset, category, fit timings, metrics, ...).
        recipe: Name, version and description of the recipe (``ddad_core.fitting.recipes``); None in bundles written
            before recipes existed (paper map settings).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    schema_version: Literal[1] = SCHEMA_VERSION
    ddad: DDADConfig
    train: TrainConfig
    unet_preset: str
    unet_config: dict[str, Any] | None
    autoencoder: dict[str, Any] | None
    backbone: dict[str, Any] | None = None
    latent_scale: float = Field(gt=0)
    calibration: dict[str, Any] | None = None
    files: dict[str, str] = Field(default_factory=dict)
    created_at: str = Field(default_factory=_now)
    model_version: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    recipe: dict[str, Any] | None = None

    @field_validator("unet_config", mode="before")
    @classmethod
    def _drop_private_keys(cls, value: Any) -> Any:
        # diffusers configs carry bookkeeping such as "_use_default_values"/"_class_name": not part of the model.
        if isinstance(value, dict) or hasattr(value, "items"):
            return {k: v for k, v in dict(value).items() if not str(k).startswith("_")}
        return value


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in ``chunk``-byte blocks.

    The one file hash of the package: the bundle's tensor files and ``bundle.json`` (``bundle_hash``), and the
    original weight files that the autoencoder and backbone identities record.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(f"tensor group name {name!r} must be non-empty and use only letters, digits, '_' and '-'")


def save_bundle(
    path: str | os.PathLike,
    config: BundleConfig,
    tensors: dict[str, dict[str, torch.Tensor]],
    overwrite: bool = False,
) -> Path:
    """Write a bundle directory.

    Args:
        path: Target directory (created).
        config: The bundle config; its ``files`` are (re)computed here, ``model_version`` is derived from the
            content if empty.
        tensors: Group name (``"unet"``, ``"autoencoder"``, ``"backbone"``, ``"noise_level"``, ...) -> flat dict
            of tensors (a state dict). Each group becomes ``<name>.safetensors``.
        overwrite: Allow writing into a directory that already holds a bundle.

    Returns:
        The bundle directory.

    Raises:
        FileExistsError: A bundle exists there and ``overwrite`` is False.
        ValueError: Bad group names or non-tensor values.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    if (root / BUNDLE_CONFIG_NAME).exists() and not overwrite:
        raise FileExistsError(f"{root / BUNDLE_CONFIG_NAME} already exists (pass overwrite=True to replace it)")
    files: dict[str, str] = {}
    for name, group in tensors.items():
        _check_name(name)
        bad = [k for k, v in group.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"tensor group {name!r} has non-tensor entries: {bad[:5]}")
        # clone(): safetensors refuses tensors that share storage (views, tied weights).
        data = {k: v.detach().to("cpu").contiguous().clone() for k, v in group.items()}
        target = root / f"{name}.safetensors"
        tmp = target.with_suffix(".safetensors.tmp")
        save_file(data, str(tmp), metadata={"group": name})
        # safetensors creates the file owner-only; a bundle holds no secret and is read by other users (the
        # images' non-root user from a mounted folder or volume), so it gets the usual file mode.
        tmp.chmod(0o644)
        os.replace(tmp, target)
        files[name] = file_sha256(target)
    update: dict[str, Any] = {"files": files}
    if not config.model_version:
        content = config.model_copy(update={"files": files, "created_at": ""}).model_dump_json()
        update["model_version"] = f"{config.unet_preset}-{hashlib.sha256(content.encode()).hexdigest()[:12]}"
    final = config.model_copy(update=update)
    tmp = root / (BUNDLE_CONFIG_NAME + ".tmp")
    tmp.write_text(final.model_dump_json(indent=2))
    os.replace(tmp, root / BUNDLE_CONFIG_NAME)  # bundle.json last: a bundle is complete once it exists
    return root


def read_bundle_config(path: str | os.PathLike) -> BundleConfig:
    """Read and validate ``bundle.json`` only (no tensor files touched).

    Raises:
        BundleError: Missing file, invalid JSON, an incompatible ``schema_version`` or an invalid field.
    """
    root = Path(path)
    cfg_path = root / BUNDLE_CONFIG_NAME
    if not root.is_dir():
        raise BundleError(f"model bundle directory not found: {root}")
    if not cfg_path.is_file():
        raise BundleError(f"model bundle {root} has no {BUNDLE_CONFIG_NAME}")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{cfg_path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{cfg_path} must hold a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{cfg_path}: incompatible schema_version {version!r} (this code reads version {SCHEMA_VERSION})"
        )
    try:
        return BundleConfig.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{cfg_path}: invalid field(s): {validation_problems(exc)}") from exc


def load_bundle(
    path: str | os.PathLike, device: torch.device | str = "cpu", verify: bool = True
) -> tuple[BundleConfig, dict[str, dict[str, torch.Tensor]]]:
    """Load and verify a bundle.

    Args:
        path: The bundle directory.
        device: Where the tensors are loaded.
        verify: Check every file's SHA-256 against ``bundle.json`` (cheap next to loading; keep it on).

    Returns:
        ``(config, tensors)`` with ``tensors[name]`` the state dict saved under ``name``.

    Raises:
        BundleError: Missing ``bundle.json`` or tensor file, hash mismatch, incompatible ``schema_version``,
            invalid field, unreadable safetensors file.
    """
    root = Path(path)
    config = read_bundle_config(root)
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name, expected in config.files.items():
        target = root / f"{name}.safetensors"
        if not target.is_file():
            raise BundleError(f"model bundle {root} is missing {target.name} (listed in {BUNDLE_CONFIG_NAME})")
        if verify:
            actual = file_sha256(target)
            if actual != expected:
                raise BundleError(
                    f"{target}: SHA-256 mismatch (bundle.json says {expected[:16]}..., file has {actual[:16]}...); "
                    "the file is corrupt or was replaced"
                )
        try:
            tensors[name] = load_file(str(target), device=str(device))
        except Exception as exc:  # safetensors raises its own error types
            raise BundleError(f"{target}: cannot read safetensors file: {exc}") from exc
    return config, tensors


def bundle_hash(path: str | os.PathLike) -> str:
    """SHA-256 of ``bundle.json``, which pins every tensor file by hash: one id for the whole bundle.

    Raises:
        BundleError: No ``bundle.json``.
    """
    cfg_path = Path(path) / BUNDLE_CONFIG_NAME
    if not cfg_path.is_file():
        raise BundleError(f"model bundle {path} has no {BUNDLE_CONFIG_NAME}")
    return file_sha256(cfg_path)
