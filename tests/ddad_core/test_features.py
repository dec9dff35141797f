"""Feature extractor: strides, offline ImageNet weights (strict key mapping + a real image), specs, errors."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from ddad_core.features import (
    BackboneLoadError,
    BackboneMismatchError,
    FeatureExtractor,
    backbone_from_state,
    check_backbone,
    load_backbone,
    offline_weight_path,
    parse_backbone_spec,
    read_weight_file,
    to_timm_state_dict,
)
from ddad_core.preprocess import preprocess, to_feature_input


def _offline_available(name: str) -> bool:
    try:
        offline_weight_path(name)
        return True
    except BackboneLoadError:
        return False


needs_mobilenet = pytest.mark.skipif(not _offline_available("mobilenetv2_100"), reason="offline wheel missing")
needs_lite0 = pytest.mark.skipif(not _offline_available("efficientnet_lite0"), reason="offline wheel missing")


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "resnet34"])
def test_blocks_at_strides_4_8_16(name):
    fe = FeatureExtractor(name).eval()
    with torch.no_grad():
        feats = fe(torch.zeros(2, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4]
    assert [f.shape[1] for f in feats] == fe.channels
    ident = fe.identity()
    assert ident["strides"] == [4, 8, 16] and ident["name"] == name


def test_efficientnet_features_are_truncated_after_stride_16():
    fe = FeatureExtractor("mobilenetv2_100")
    assert len(fe.body.blocks) == 5  # blocks.4 is the stride-16 stage; blocks 5-6 are not computed
    assert not any(k.startswith("blocks.6") for k in fe.state_dict())


@pytest.mark.parametrize("name, widths", [("mobilenetv2_100", [192, 576]), ("efficientnet_lite0", [240, 672])])
def test_expanded_activations_come_from_the_same_pass(name, widths):
    fe = FeatureExtractor(name).eval()
    x = torch.randn(2, 3, 64, 64).clamp(-1, 1)
    with torch.no_grad():
        plain = fe(x)
        feats = fe(x, expanded=True)
        # The same activation recomputed by hand: the stride-8 stage up to its last block, then that block's
        # expansion (1x1 conv, batch norm, activation).
        h = fe.body.bn1(fe.body.conv_stem(to_feature_input(x)))
        h = fe.body.blocks[:2](h)
        h = fe.body.blocks[2][:-1](h)
        by_hand = fe.body.blocks[2][-1].bn1(fe.body.blocks[2][-1].conv_pw(h))
    assert len(plain) == 3 and len(feats) == 5
    for a, b in zip(plain, feats[:3], strict=True):
        torch.testing.assert_close(a, b)
    assert fe.expanded_channels == widths == [f.shape[1] for f in feats[3:]]
    assert [f.shape[-1] for f in feats[3:]] == [8, 4]
    torch.testing.assert_close(feats[3], by_hand)
    assert not fe.body.blocks[2][-1].bn1._forward_hooks  # nothing left attached after the call


def test_expanded_activations_refused_for_resnets():
    fe = FeatureExtractor("test_resnet").eval()
    assert fe.expanded_channels is None
    with pytest.raises(ValueError, match="no expansion activations"):
        fe(torch.zeros(1, 3, 64, 64), expanded=True)


def test_spec_parsing_and_errors(tmp_path):
    assert parse_backbone_spec("resnet34") == ("resnet34", None)
    assert parse_backbone_spec("mobilenetv2_100:/a/b.pth") == ("mobilenetv2_100", "/a/b.pth")
    with pytest.raises(BackboneLoadError, match="unknown timm model"):
        load_backbone("not_a_model:random")
    with pytest.raises(BackboneLoadError, match="does not exist"):
        load_backbone(f"resnet34:{tmp_path / 'missing.pth'}")
    with pytest.raises(BackboneLoadError, match="no offline weights"):
        load_backbone("resnet34:offline")
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, bad)
    with pytest.raises(BackboneLoadError, match="shape mismatch"):
        load_backbone(f"resnet34:{bad}")


def test_local_timm_file_round_trip(tmp_path):
    model = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    fe = load_backbone(f"test_resnet:{path}")
    own = fe.body.state_dict()
    for key, value in own.items():
        torch.testing.assert_close(value, model.state_dict()[key])
    assert fe.identity()["sha256"] and fe.identity()["source"] == str(path)
    rebuilt = backbone_from_state(fe.identity(), fe.state_dict())
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        for a, b in zip(fe(x), rebuilt(x), strict=True):
            torch.testing.assert_close(a, b)


def test_check_backbone_refuses_other_names(tmp_path):
    fe = load_backbone("test_resnet:random")
    check_backbone(fe.identity(), "test_resnet")
    with pytest.raises(BackboneMismatchError, match="'test_resnet'.*'resnet34'"):
        check_backbone(fe.identity(), "resnet34")


def _classify(name: str, state: dict, image: np.ndarray) -> torch.Tensor:
    model = timm.create_model(name, pretrained=False).eval()
    model.load_state_dict(state, strict=True)
    x = preprocess(image, image_size=224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return F.softmax(model(((x + 1) / 2 - mean) / std), dim=1)[0]


@needs_mobilenet
def test_mobilenet_v2_torchvision_weights_load_strictly_and_see_a_cat():
    from skimage import data

    state = to_timm_state_dict("mobilenetv2_100", read_weight_file(offline_weight_path("mobilenetv2_100")))
    probs = _classify("mobilenetv2_100", state, data.chelsea())
    assert int(probs.argmax()) in range(281, 286)  # ImageNet's domestic-cat classes
    assert float(probs[281:286].sum()) > 0.8
    fe = load_backbone("mobilenetv2_100:offline")
    assert fe.channels == [24, 32, 96]
    torch.testing.assert_close(fe.body.conv_stem.weight, state["conv_stem.weight"])


@needs_lite0
def test_efficientnet_lite0_lukemelas_weights_load_strictly_and_see_espresso():
    from skimage import data

    state = to_timm_state_dict("efficientnet_lite0", read_weight_file(offline_weight_path("efficientnet_lite0")))
    probs = _classify("efficientnet_lite0", state, data.coffee())
    assert int(probs.argmax()) == 967  # espresso
    probs = _classify("efficientnet_lite0", state, data.chelsea())
    assert int(probs.argmax()) in range(281, 286)
    fe = load_backbone("efficientnet_lite0:offline")
    assert fe.channels == [24, 40, 112]


@needs_mobilenet
def test_mapped_weights_rejected_by_a_wrong_architecture():
    with pytest.raises(BackboneLoadError, match="shape mismatch"):
        to_timm_state_dict("mobilenetv2_140", read_weight_file(offline_weight_path("mobilenetv2_100")))


@needs_mobilenet
def test_real_features_separate_texture_from_defect():
    """Pretrained features respond more to a planted blob than to the texture's own variation."""
    from skimage import data

    brick = data.brick()[:256, :256]
    defect = brick.copy()
    defect[100:140, 100:140] = 255
    fe = load_backbone("mobilenetv2_100:offline")
    with torch.no_grad():
        a, b = fe(preprocess([brick, defect], image_size=256))[2]
    cos = F.cosine_similarity(a, b, dim=0)  # (16, 16) at stride 16
    inside = 1 - cos[6:9, 6:9].mean()
    outside = 1 - cos[:3, :3].mean()
    assert inside > 5 * outside
