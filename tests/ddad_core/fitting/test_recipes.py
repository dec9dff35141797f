"""Named recipes: the table and bad names, a production bundle (round trip, no border excess in good maps), a
bundle from before recipes, and the fast recipe (no networks trained)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ddad_core.bundle import read_bundle_config
from ddad_core.config import DDADConfig
from ddad_core.evaluation.evaluate import evaluate
from ddad_core.fitting.fit import fit_images, make_configs
from ddad_core.fitting.recipes import RECIPES, SettingError, get_recipe, recipe_label
from ddad_core.pipeline import DDADPipeline
from ddad_core.testing import TINY_BACKBONE, synthetic_textures

from .._helpers import tiny_bundle, write_mvtec


def test_recipes_and_bad_names():
    assert set(RECIPES) >= {"paper", "production"}
    assert get_recipe("paper").ddad == {} and get_recipe("paper").train == {}
    config, train = make_configs("cpu", recipe="production")
    assert config.knn_weight > 0 and config.component_norm == "position" and train.ema_decay > 0
    config, train = make_configs("cpu", recipe="paper")
    assert config == DDADConfig() and train.timestep_max is None and train.lr_schedule == "constant"
    with pytest.raises(SettingError, match="paper.*production"):
        make_configs("cpu", recipe="best")
    assert recipe_label(None).startswith("pre-recipe")


def test_start_steps_above_the_trained_range_are_refused():
    """A sampler asked to start where the UNet never trained fails at start-up, in one line, not at scoring."""
    with pytest.raises(SettingError, match="max_noise_step 250 is above the UNet's training range"):
        make_configs("cpu", recipe="production", ddad_overrides={"max_noise_step": 250},
                     train_overrides={"timestep_max": 160})  # fmt: skip
    config, train = make_configs("cpu", recipe="production", ddad_overrides={"max_noise_step": 160},
                                 train_overrides={"timestep_max": 160})  # fmt: skip
    assert config.max_noise_step == train.timestep_max == 160
    assert make_configs("cpu", recipe="paper", ddad_overrides={"max_noise_step": 400})[1].timestep_max is None


def test_production_bundle_round_trip(production_bundle):
    cfg = read_bundle_config(production_bundle)
    assert cfg.recipe["name"] == "production" and cfg.recipe["version"] == get_recipe("production").version
    assert len(cfg.metadata["unet_unseen_images"]) == 12 and len(cfg.metadata["good_images"]) == 24
    # Every good image is in the banks and sets the threshold, each scored out of sample.
    assert cfg.calibration["n_good"] == 24 and cfg.calibration["info"]["operating_point"]["rank"] == 23
    pipe = DDADPipeline.from_bundle(production_bundle)
    assert pipe.patch_knn is not None and pipe.position_norm is not None
    assert pipe.patch_knn.bank.shape[0] == 256
    frames = synthetic_textures(3, 64, seed=5)
    out = pipe(frames)
    comps = pipe.components(torch.stack([torch.as_tensor(f) for f in frames]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert comps.knn_map is not None and comps.knn_map.shape == (3, 64, 64)
    # Batch independence holds with the k-NN term and position statistics too.
    alone = pipe(frames[1:2])
    # (z-scores amplify the float rounding of batched distance computations: compare at 1e-3)
    assert torch.allclose(out.anomaly_map[1:2], alone.anomaly_map, atol=1e-3)


def test_good_maps_have_no_border_excess(production_bundle):
    """The map of unseen good images has no fixed border band above the interior."""
    pipe = DDADPipeline.from_bundle(production_bundle)
    maps = pipe(synthetic_textures(8, 64, seed=11)).anomaly_map
    band = torch.cat(
        [maps[:, :8].flatten(), maps[:, -8:].flatten(), maps[:, :, :8].flatten(), maps[:, :, -8:].flatten()]
    )
    inner = maps[:, 16:-16, 16:-16].flatten()
    spread = float(maps.std())
    assert float(band.mean() - inner.mean()) < 0.5 * spread


def test_old_bundle_without_recipe_still_loads(tmp_path):
    old = tiny_bundle(tmp_path)
    data = json.loads((old / "bundle.json").read_text())
    data.pop("recipe", None)
    (old / "bundle.json").write_text(json.dumps(data))
    assert read_bundle_config(old).recipe is None
    DDADPipeline.from_bundle(old)
    root = write_mvtec(tmp_path / "data", n_train=4, n_good=2, n_bad=2)
    results = evaluate(old, root, log=None)
    assert results["recipe"] == "pre-recipe (paper map settings)"
    shutil.rmtree(old)


def test_fast_recipe_trains_nothing_and_serves(tmp_path):
    config, train = make_configs("cpu", image_size=64, recipe="fast", ddad_overrides={"knn_k": 3})
    bundle = fit_images(
        synthetic_textures(20, 64, seed=0), tmp_path / "fast", config=config, train_config=train,
        backbone=TINY_BACKBONE, device="cpu", batch_size=8, log=None, progress=False, recipe="fast", target_fpr=0.1,
    )  # fmt: skip
    cfg = read_bundle_config(bundle)
    assert cfg.unet_config is None and cfg.autoencoder is None and "unet" not in cfg.files
    assert cfg.recipe["name"] == "fast" and cfg.calibration["n_good"] == 20
    pipe = DDADPipeline.from_bundle(bundle)
    assert not pipe.reconstructs and pipe.unet is None
    frames = synthetic_textures(2, 64, seed=9)
    damaged = frames[1].copy()
    damaged[20:34, 20:34] = 255
    out = pipe([frames[0], damaged])
    assert out.anomaly_map.shape == (2, 64, 64) and set(out.timings_ms) >= {"noise_level", "patch_knn"}
    assert "denoise" not in out.timings_ms
    assert float(out.pred_score_raw[1]) > float(out.pred_score_raw[0])


def test_expanded_patch_features_fit_and_serve(tmp_path):
    config, train = make_configs(
        "cpu", image_size=64, recipe="fast", ddad_overrides={"knn_k": 3, "knn_features": "expanded"}
    )
    with pytest.raises(SettingError, match="inverted-residual backbone"):  # refused before anything is fitted
        fit_images(
            synthetic_textures(20, 64, seed=0), tmp_path / "resnet", config=config, train_config=train,
            backbone=TINY_BACKBONE, device="cpu", batch_size=8, log=None, progress=False, target_fpr=0.1,
        )  # fmt: skip
    assert not (tmp_path / "resnet").exists()
    bundle = fit_images(
        synthetic_textures(20, 64, seed=0), tmp_path / "expanded", config=config, train_config=train,
        backbone="mobilenetv2_050:random", device="cpu", batch_size=8, log=None, progress=False, target_fpr=0.1,
    )  # fmt: skip
    pipe = DDADPipeline.from_bundle(bundle)
    assert pipe.patch_knn.bank.shape[1] == sum(pipe.features.expanded_channels) == 96 + 288
    frames = synthetic_textures(2, 64, seed=9)
    damaged = frames[1].copy()
    damaged[20:34, 20:34] = 255
    out = pipe([frames[0], damaged])
    assert float(out.pred_score_raw[1]) > float(out.pred_score_raw[0])
