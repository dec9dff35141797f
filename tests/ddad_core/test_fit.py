"""Fitting recipe: configs, hold-out split, a tiny end-to-end fit, and bad-input handling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddad_core.bundle import read_bundle_config
from ddad_core.config import DDADConfig, TrainConfig
from ddad_core.data import DatasetLayoutError, EmptyTrainSetError
from ddad_core.features import BackboneMismatchError
from ddad_core.fitting.fit import FIT_PRESETS, fit, make_configs, split_holdout
from ddad_core.pipeline import DDADPipeline

from ._helpers import write_mvtec

TINY = dict(
    config=DDADConfig(image_size=64, knn_k=3, da_epochs=1, da_batch_size=8),
    train_config=TrainConfig(preset="tiny", epochs=1, batch_size=8, holdout_fraction=0.25),
    autoencoder="conv",
    autoencoder_epochs=1,
    backbone="test_resnet:random",
    device="cpu",
    progress=False,
    log=None,
    target_fpr=0.2,
)


def test_presets_and_overrides():
    assert set(FIT_PRESETS) == {"cpu", "paper"}
    cfg, tcfg = make_configs("paper", recipe="paper")
    assert tcfg.preset == "paper" and tcfg.epochs == 300 and cfg == DDADConfig()
    # The default recipe (production) sits on top of the preset; explicit overrides on top of both.
    cfg, tcfg = make_configs("paper")
    assert tcfg.preset == "paper" and tcfg.lr == 1e-4 and cfg.knn_weight > 0
    cfg, tcfg = make_configs("cpu", epochs=3, da_epochs=2, guidance=7.0, image_size=128)
    assert (tcfg.preset, tcfg.epochs, cfg.da_epochs, cfg.guidance, cfg.image_size) == ("cpu", 3, 2, 7.0, 128)
    with pytest.raises(KeyError):
        make_configs("gpu")


def test_split_holdout():
    fit_idx, hold = split_holdout(20, 0.1, seed=0)
    assert len(hold) == 2 and not set(fit_idx) & set(hold) and len(fit_idx) + len(hold) == 20
    assert split_holdout(5, 0.0, 0)[1].size == 0
    assert len(split_holdout(2, 0.9, 0)[0]) == 1  # never all held out


def test_fit_end_to_end_and_skips_corrupt_images(tmp_path):
    data = write_mvtec(tmp_path / "data", n_train=10)
    (data / "train" / "good" / "zz_broken.png").write_bytes(b"broken")
    lines = []
    out = fit(data, tmp_path / "bundle", log=lines.append, **{k: v for k, v in TINY.items() if k != "log"})
    assert any("zz_broken.png" in line for line in lines)
    cfg = read_bundle_config(out)
    assert cfg.metadata["skipped_images"][0].endswith("zz_broken.png")
    assert cfg.metadata["n_good"] == 10 and len(cfg.metadata["good_images"]) == 10
    assert cfg.metadata["n_train"] + len(cfg.metadata["unet_unseen_images"]) == 10
    assert cfg.metadata["autoencoder"]["departure"]
    assert cfg.calibration["n_good"] == 10  # every good image sets the threshold, scored out of sample
    assert not (out / "checkpoints").exists()
    pipe = DDADPipeline.from_bundle(out)
    assert len(pipe(np.zeros((64, 64), np.uint8))) == 1
    assert any(line.startswith("[7/7]") for line in lines)


def test_refuses_bundle_of_another_backbone(tmp_path):
    data = write_mvtec(tmp_path / "data", n_train=8)
    out = fit(data, tmp_path / "bundle", **TINY)
    with pytest.raises(BackboneMismatchError, match="test_resnet.*test_efficientnet"):
        fit(data, out, **{**TINY, "backbone": "test_efficientnet:random", "overwrite": False})


def test_bad_data_folders(tmp_path):
    with pytest.raises(DatasetLayoutError, match="'train'"):
        fit(tmp_path, tmp_path / "b", **TINY)
    (tmp_path / "train" / "good").mkdir(parents=True)
    with pytest.raises(EmptyTrainSetError):
        fit(tmp_path, tmp_path / "b", **TINY)
    (tmp_path / "train" / "good" / "a.png").write_bytes(b"nope")
    with pytest.raises(EmptyTrainSetError, match="no decodable"):
        fit(tmp_path, tmp_path / "b", **TINY)


def test_bundle_json_is_plain_json(tmp_path):
    data = write_mvtec(tmp_path / "data", n_train=8)
    out = fit(data, tmp_path / "bundle", **TINY)
    raw = json.loads((out / "bundle.json").read_text())
    assert raw["backbone"]["spec"] == "test_resnet:random"
    assert raw["calibration"]["method"] == "conformal"
