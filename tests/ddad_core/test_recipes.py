"""Production-recipe stages: patch k-NN term, per-position normalisation, recipes in bundles, training settings."""

from __future__ import annotations

import json

import pytest
import torch

from ddad_core.autoencoders import ConvAutoencoder
from ddad_core.bundle import read_bundle_config
from ddad_core.config import DDADConfig, TrainConfig
from ddad_core.fitting.fit import fit_images, make_configs
from ddad_core.fitting.recipes import RECIPES, SettingError, get_recipe, recipe_label
from ddad_core.fitting.train import LatentCache, train_unet
from ddad_core.patch_knn import PatchKNN, greedy_coreset, patch_features
from ddad_core.pipeline import DDADPipeline
from ddad_core.position_norm import PositionNorm
from ddad_core.schedule import NoiseSchedule
from ddad_core.testing import TINY_BACKBONE, synthetic_textures
from ddad_core.unet import build_unet

# ----------------------------------------------------------------------------------------------------------------
# patch k-NN


def test_greedy_coreset_covers_the_points():
    gen = torch.Generator().manual_seed(0)
    clusters = torch.cat([torch.randn(200, 8, generator=gen) * 0.01 + c for c in (0.0, 5.0, -5.0, 10.0)])
    keep = greedy_coreset(clusters, 4, projection_dim=8, seed=1)
    # One centre per cluster: k-centre picks the farthest point each time.
    assert sorted((keep // 200).tolist()) == [0, 1, 2, 3]
    # The coreset radius (max distance of any point to its nearest centre) shrinks as the coreset grows.
    radii = [torch.cdist(clusters, clusters[greedy_coreset(clusters, n, seed=1)]).amin(1).max() for n in (4, 16, 64)]
    assert radii[0] >= radii[1] >= radii[2]
    assert torch.equal(greedy_coreset(clusters, 10, seed=3), greedy_coreset(clusters, 10, seed=3))
    assert len(greedy_coreset(clusters, 10_000)) == len(clusters)


def test_patch_knn_distance_is_exact_nearest_neighbour():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(3, 6, 4, 4, generator=gen)
    knn = PatchKNN().fit(train, bank_size=10_000)  # no reduction: the bank is every patch
    query = torch.randn(2, 6, 4, 4, generator=gen)
    got = knn(query)
    rows = query.permute(0, 2, 3, 1).reshape(-1, 6)
    expected = torch.cdist(rows, train.permute(0, 2, 3, 1).reshape(-1, 6)).amin(1).view(2, 4, 4)
    assert torch.allclose(got, expected, atol=1e-5)
    # A training patch is in the bank (cdist via matrix products: ~1e-3 rounding at distance 0).
    assert float(knn(train).abs().max()) < 5e-3
    restored = PatchKNN.from_tensors(knn.tensors())
    assert torch.equal(restored(query), got)
    with pytest.raises(ValueError, match="channels"):
        knn(torch.zeros(1, 5, 4, 4))


def test_patch_features_shape_and_local_average():
    blocks = [torch.zeros(1, 2, 16, 16), torch.zeros(1, 3, 8, 8), torch.ones(1, 4, 4, 4)]
    blocks[1][0, :, 4, 4] = 9.0
    feats = patch_features(blocks)
    assert feats.shape == (1, 7, 8, 8)
    assert float(feats[0, 0, 4, 4]) == pytest.approx(1.0)  # 9 / 9: the 3 x 3 average
    assert float(feats[0, 0, 0, 0]) == 0.0 and float(feats[0, 3:, 0, 0].min()) == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------------------------
# per-position normalisation


def test_position_norm_removes_a_fixed_border_pattern():
    gen = torch.Generator().manual_seed(0)
    size = 64
    border = torch.zeros(size, size)
    border[:8], border[-8:], border[:, :8], border[:, -8:] = 1.0, 1.0, 1.0, 1.0
    good = torch.rand(30, size, size, generator=gen) * 0.2 + 2.0 * border  # strong border on every good map
    norm = PositionNorm.fit({"latent": good[:15]}, cell=8)
    z = norm.apply("latent", good[15:])
    inner = z[:, 16:-16, 16:-16].mean()
    band = torch.cat([z[:, :8].flatten(), z[:, -8:].flatten()]).mean()
    assert abs(float(band - inner)) < 0.25
    raw_gap = float(good[15:, :8].mean() - good[15:, 16:-16, 16:-16].mean())
    assert raw_gap > 1.5  # without it the border dominates
    # A defect in the centre now outscores the border of a good map.
    defect = good[15:16].clone()
    defect[0, 30:34, 30:34] += 0.5
    assert float(norm.apply("latent", defect)[0, 30:34, 30:34].mean()) > float(norm.apply("latent", good[16:17]).max())
    restored = PositionNorm.from_tensors(norm.tensors())
    assert torch.equal(restored.apply("latent", good[:2]), norm.apply("latent", good[:2]))
    with pytest.raises(KeyError, match="knn"):
        norm.apply("knn", good[:1])


# ----------------------------------------------------------------------------------------------------------------
# recipes


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


def _fit_production(path, size=64):
    config = DDADConfig(
        image_size=size, knn_k=3, da_epochs=0, knn_weight=0.5, component_norm="position", feature_pool=3,
        knn_bank_size=256,
    )  # fmt: skip
    train = TrainConfig(preset="tiny", epochs=2, batch_size=8, holdout_fraction=0.5, timestep_max=160, ema_decay=0.9)
    torch.manual_seed(0)
    ae = ConvAutoencoder(latent_channels=4, widths=(8, 16, 16))
    images = synthetic_textures(24, size, seed=0)
    return fit_images(
        images, path, config=config, train_config=train, autoencoder=ae, backbone=TINY_BACKBONE, device="cpu",
        batch_size=8, log=None, progress=False, recipe="production", image_names=[f"{i}.png" for i in range(24)],
        target_fpr=0.1,
    )  # fmt: skip


@pytest.fixture(scope="module")
def production_bundle(tmp_path_factory):
    return _fit_production(tmp_path_factory.mktemp("prod") / "bundle")


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
    """The map of unseen good images has no fixed border band above the interior (issue 13, item 4)."""
    pipe = DDADPipeline.from_bundle(production_bundle)
    maps = pipe(synthetic_textures(8, 64, seed=11)).anomaly_map
    band = torch.cat(
        [maps[:, :8].flatten(), maps[:, -8:].flatten(), maps[:, :, :8].flatten(), maps[:, :, -8:].flatten()]
    )
    inner = maps[:, 16:-16, 16:-16].flatten()
    spread = float(maps.std())
    assert float(band.mean() - inner.mean()) < 0.5 * spread


def test_with_settings_shares_weights_and_refuses_refit_fields(production_bundle):
    pipe = DDADPipeline.from_bundle(production_bundle)
    other = pipe.with_settings(guidance=0.0, max_noise_step=150)
    assert other.unet is pipe.unet and other.patch_knn is pipe.patch_knn
    assert other.config.guidance == 0.0 and pipe.config.guidance != 0.0
    block2 = pipe.features(torch.zeros(2, 3, 64, 64))[1]
    assert set(other.noise_level(block2).tolist()) <= set(range(20, 151, 10))
    with pytest.raises(ValueError, match="refitting"):
        pipe.with_settings(knn_k=5)
    with pytest.raises(ValueError, match="omega"):
        pipe.with_settings(omega=2.0)


def test_old_bundle_without_recipe_still_loads(production_bundle, tmp_path):
    import shutil

    from ddad_core.evaluation.evaluate import evaluate

    from ._helpers import tiny_bundle, write_mvtec

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


# ----------------------------------------------------------------------------------------------------------------
# training settings


def _train(cfg: TrainConfig):
    torch.manual_seed(0)
    unet = build_unet("tiny", 4, 8, seed=0)
    cache = LatentCache(torch.randn(16, 4, 8, 8), torch.zeros(16, 4, 8, 8))
    return unet, train_unet(unet, cache, NoiseSchedule(), cfg, "cpu", progress=False)


def test_ema_and_cosine_and_timestep_range_change_training():
    base = TrainConfig(preset="tiny", epochs=3, batch_size=8, lr=1e-3)
    unet_a, _ = _train(base)
    unet_b, _ = _train(base.model_copy(update={"ema_decay": 0.5}))
    unet_c, _ = _train(base.model_copy(update={"lr_schedule": "cosine"}))
    unet_d, _ = _train(base.model_copy(update={"timestep_max": 100}))
    ref = dict(unet_a.named_parameters())
    for other in (unet_b, unet_c, unet_d):
        diff = max(float((p - ref[n]).abs().max()) for n, p in other.named_parameters())
        assert diff > 0


def test_timestep_max_limits_the_sampled_range(monkeypatch):
    seen = []
    original = NoiseSchedule.add_noise

    def spy(self, z0, noise, t):
        seen.append(t.clone())
        return original(self, z0, noise, t)

    monkeypatch.setattr(NoiseSchedule, "add_noise", spy)
    _train(TrainConfig(preset="tiny", epochs=4, batch_size=8, timestep_max=50))
    assert int(torch.cat(seen).max()) < 50
    seen.clear()
    _train(TrainConfig(preset="tiny", epochs=4, batch_size=8))
    assert int(torch.cat(seen).max()) >= 50


# ----------------------------------------------------------------------------------------------------------------
# pixel threshold from synthetic defects, masks, per-product selection


def test_synthetic_defects_set_a_pixel_threshold_that_fits_the_defect():
    from ddad_core.anomaly_map import MapNormalization
    from ddad_core.fitting.calibration import fit_calibration
    from ddad_core.scoring import score_maps

    gen = torch.Generator().manual_seed(0)
    good = torch.rand(10, 32, 32, generator=gen) * 0.3
    masks = torch.zeros(10, 32, 32, dtype=torch.bool)
    masks[:, 10:16, 10:16] = True
    defects = torch.rand(10, 32, 32, generator=gen) * 0.3
    defects[:, 8:18, 8:18] += 0.4  # halo around the defect
    defects[masks] += 0.6  # the defect itself
    norm = MapNormalization(0, 1, 0, 1)
    plain = fit_calibration(good, norm, target_fpr=0.1)
    cal = fit_calibration(good, norm, target_fpr=0.1, synthetic_maps=defects, synthetic_masks=masks)
    assert cal.image_threshold == plain.image_threshold  # synthetic defects never move the image threshold
    assert cal.pixel_threshold > cal.image_threshold and cal.info["pixel_method"] == "synthetic_f1"
    _, _, label, mask = score_maps(defects, cal)
    iou = (mask & masks).sum() / (mask | masks).sum()
    _, _, _, mask_plain = score_maps(defects, plain)
    iou_plain = (mask_plain & masks).sum() / (mask_plain | masks).sum()
    assert bool(label.all()) and float(iou) > 0.9 > float(iou_plain)


def test_flagged_image_below_the_pixel_threshold_still_gets_a_mask():
    from ddad_core.anomaly_map import MapNormalization
    from ddad_core.scoring import Calibration, score_maps

    cal = Calibration(MapNormalization(0, 1, 0, 1), image_threshold=1.0, pixel_threshold=2.0, image_min=0.0,
                      image_max=2.0, pixel_min=0.0, pixel_max=3.0)  # fmt: skip
    maps = torch.zeros(3, 4, 4)
    maps[0, 0, 0] = 1.5  # flagged, weak: below the pixel threshold
    maps[1, 1, 1], maps[1, 2, 2] = 2.5, 1.5  # flagged, strong: only the pixel above 2
    maps[2, 3, 3] = 0.9  # not flagged
    _, _, label, mask = score_maps(maps, cal)
    assert label.tolist() == [True, True, False]
    assert mask[0].sum() == 1 and bool(mask[0, 0, 0])
    assert mask[1].sum() == 1 and bool(mask[1, 1, 1])
    assert not mask[2].any()


def test_select_settings_scores_the_grid_and_keeps_the_recipe_first(production_bundle):
    from ddad_core.fitting.select import select_settings
    from ddad_core.fitting.synthetic import make_synthetic_defects
    from ddad_core.preprocess import preprocess

    pipe = DDADPipeline.from_bundle(production_bundle)
    images = preprocess(synthetic_textures(24, 64, seed=0), image_size=64)  # the fit's good images, in bank order
    synthetic = make_synthetic_defects(images[16:20], seed=0)
    grid = {"guidance": (0.0, 4.0), "knn_weight": (0.5, 1.0)}
    result = select_settings(pipe, images, synthetic.images, synthetic.masks, [16, 17, 18, 19], grid=grid)
    table = result["table"]
    assert len(table) == 4 and table[0]["settings"] == {"guidance": pipe.config.guidance, "knn_weight": 0.5}
    assert result["chosen"] == max(table, key=lambda r: r["score"])["settings"]
    assert all(0.0 <= r["score"] <= 1.0 for r in table)


def test_fit_with_select_records_the_choice(tmp_path):
    config = DDADConfig(image_size=64, knn_k=3, da_epochs=0, knn_weight=0.5, component_norm="position",
                        knn_bank_size=128)  # fmt: skip
    train = TrainConfig(preset="tiny", epochs=1, batch_size=8, holdout_fraction=0.5)
    torch.manual_seed(0)
    ae = ConvAutoencoder(latent_channels=4, widths=(8, 16, 16))
    bundle = fit_images(
        synthetic_textures(16, 64, seed=0), tmp_path / "b", config=config, train_config=train, autoencoder=ae,
        backbone=TINY_BACKBONE, device="cpu", batch_size=8, log=None, progress=False, select=True,
        select_grid={"knn_weight": (0.5, 1.0)}, target_fpr=0.1,
    )  # fmt: skip
    cfg = read_bundle_config(bundle)
    selection = cfg.metadata["selection"]
    assert cfg.ddad.knn_weight == selection["chosen"]["knn_weight"] and len(selection["table"]) == 2
    assert cfg.calibration["info"]["pixel_method"] == "synthetic_f1"


def test_recalibrate_changes_map_settings_without_refitting(tmp_path, capsys):
    from ddad_core.cli import main

    from ._helpers import write_mvtec

    data = write_mvtec(tmp_path / "data", n_train=16, n_good=2, n_bad=2)
    argv = [
        "fit", str(data), "--out", str(tmp_path / "b"), "--epochs", "1", "--image-size", "64", "--autoencoder", "conv",
        "--ae-epochs", "1", "--backbone", "test_resnet:random", "--batch-size", "8", "--quiet", "--target-fpr", "0.1",
    ]  # fmt: skip
    assert main(argv) == 0
    before = read_bundle_config(tmp_path / "b")
    assert main(["calibrate", str(tmp_path / "b"), "--out", str(tmp_path / "c"), "--recipe", "paper"]) == 2
    assert "trains differently" in capsys.readouterr().err  # the paper recipe trains on every timestep
    from ddad_core.fitting.fit import recalibrate

    recalibrate(tmp_path / "b", tmp_path / "c", knn_weight=1.0, log=None)
    after = read_bundle_config(tmp_path / "c")
    assert after.ddad.knn_weight == 1.0 and before.ddad.knn_weight != 1.0
    assert after.files["unet"] == before.files["unet"] and after.model_version != before.model_version
    assert after.metadata["recalibrated_from"] == before.model_version
    DDADPipeline.from_bundle(tmp_path / "c")(synthetic_textures(2, 64, seed=3))
    with pytest.raises(SettingError, match="refitting"):
        recalibrate(tmp_path / "b", tmp_path / "d", image_size=32, log=None)
    # A new bank size rebuilds the banks over the recorded good images (the networks stay).
    recalibrate(tmp_path / "b", tmp_path / "e", knn_bank_size=8, log=None)
    rebuilt = DDADPipeline.from_bundle(tmp_path / "e")
    assert rebuilt.patch_knn.bank.shape[0] == 8 and len(rebuilt.noise_level.bank) == 16


def test_patch_features_zero_padded_damps_borders():
    blocks = [torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 4, 4), torch.ones(1, 1, 2, 2)]
    inside = patch_features(blocks)
    padded = patch_features(blocks, zero_padded=True)
    assert float(inside[0, 0, 0, 0]) == pytest.approx(1.0)  # averages only the pixels inside
    assert float(padded[0, 0, 0, 0]) == pytest.approx(4 / 9)  # PatchCore's AvgPool2d(3, 1, 1): zeros outside
    assert float(padded[0, 0, 1, 1]) == pytest.approx(1.0)


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


def test_select_on_a_fast_bundle_chooses_only_the_normalisation(tmp_path):
    config, train = make_configs("cpu", image_size=64, recipe="fast", ddad_overrides={"knn_k": 3})
    bundle = fit_images(
        synthetic_textures(20, 64, seed=0), tmp_path / "fast", config=config, train_config=train,
        backbone=TINY_BACKBONE, device="cpu", batch_size=8, log=None, progress=False, recipe="fast", target_fpr=0.1,
        select=True,
    )  # fmt: skip
    selection = read_bundle_config(bundle).metadata["selection"]
    assert [set(row["settings"]) for row in selection["table"]] == [{"component_norm"}] * 2
    assert read_bundle_config(bundle).ddad.component_norm == selection["chosen"]["component_norm"]
