"""The whole fit: configs, hold-out split, a tiny end-to-end fit, bad-input handling, the selection it records, and
recalibration without refitting."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ddad_core.autoencoders import ConvAutoencoder
from ddad_core.bundle import read_bundle_config
from ddad_core.cli import main
from ddad_core.config import DDADConfig, TrainConfig
from ddad_core.data import DatasetLayoutError, EmptyTrainSetError
from ddad_core.features import BackboneMismatchError
from ddad_core.fitting.fit import FIT_PRESETS, fit, fit_images, make_configs, recalibrate, split_holdout
from ddad_core.fitting.recipes import SettingError
from ddad_core.pipeline import DDADPipeline
from ddad_core.testing import TINY_BACKBONE, synthetic_textures

from .._helpers import TINY_FIT, write_mvtec


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
    out = fit(data, tmp_path / "bundle", log=lines.append, **{k: v for k, v in TINY_FIT.items() if k != "log"})
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
    out = fit(data, tmp_path / "bundle", **TINY_FIT)
    with pytest.raises(BackboneMismatchError, match="test_resnet.*test_efficientnet"):
        fit(data, out, **{**TINY_FIT, "backbone": "test_efficientnet:random", "overwrite": False})


def test_bad_data_folders(tmp_path):
    with pytest.raises(DatasetLayoutError, match="'train'"):
        fit(tmp_path, tmp_path / "b", **TINY_FIT)
    (tmp_path / "train" / "good").mkdir(parents=True)
    with pytest.raises(EmptyTrainSetError):
        fit(tmp_path, tmp_path / "b", **TINY_FIT)
    (tmp_path / "train" / "good" / "a.png").write_bytes(b"nope")
    with pytest.raises(EmptyTrainSetError, match="no decodable"):
        fit(tmp_path, tmp_path / "b", **TINY_FIT)


def test_bundle_json_is_plain_json(tmp_path):
    data = write_mvtec(tmp_path / "data", n_train=8)
    out = fit(data, tmp_path / "bundle", **TINY_FIT)
    raw = json.loads((out / "bundle.json").read_text())
    assert raw["backbone"]["spec"] == "test_resnet:random"
    assert raw["calibration"]["method"] == "conformal"


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
    data = write_mvtec(tmp_path / "data", n_train=16, n_good=2, n_bad=2)
    argv = [
        "fit", str(data), "--out", str(tmp_path / "b"), "--epochs", "1", "--image-size", "64", "--autoencoder", "conv",
        "--ae-epochs", "1", "--backbone", "test_resnet:random", "--batch-size", "8", "--quiet", "--target-fpr", "0.1",
        "--no-select", "--timestep-max", "400",
    ]  # fmt: skip
    # Start steps outside the training range, or off the sampler's grid, fail before any work, in one line.
    for bad, message in ((["--max-noise-step", "250", "--timestep-max", "160"], "above the UNet's training range"),
                         (["--max-noise-step", "255"], "multiple of steps_per_image")):  # fmt: skip
        assert main(argv[:-2] + bad) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
    assert main(argv) == 0
    before = read_bundle_config(tmp_path / "b")
    assert before.train.timestep_max == 400
    assert main(["calibrate", str(tmp_path / "b"), "--out", str(tmp_path / "c"), "--recipe", "paper"]) == 2
    assert "trains differently" in capsys.readouterr().err  # the paper recipe trains on every timestep
    calibrate = ["calibrate", str(tmp_path / "b"), "--out", str(tmp_path / "s"), "--no-select", "--max-noise-step"]
    assert main([*calibrate, "500"]) == 2 and "above the UNet's training range" in capsys.readouterr().err
    assert main([*calibrate, "250"]) == 0 and read_bundle_config(tmp_path / "s").ddad.max_noise_step == 250
    recalibrate(tmp_path / "b", tmp_path / "c", knn_weight=1.0, log=None)
    after = read_bundle_config(tmp_path / "c")
    assert after.ddad.knn_weight == 1.0 and before.ddad.knn_weight != 1.0
    assert after.files["unet"] == before.files["unet"] and after.model_version != before.model_version
    assert after.metadata["recalibrated_from"] == before.model_version
    DDADPipeline.from_bundle(tmp_path / "c")(synthetic_textures(2, 64, seed=3))
    with pytest.raises(SettingError, match="refitting"):
        recalibrate(tmp_path / "b", tmp_path / "d", image_size=32, log=None)
    with pytest.raises(SettingError, match="above the UNet's training range"):
        recalibrate(tmp_path / "b", tmp_path / "d", max_noise_step=before.train.timestep_max + 100, log=None)
    # A new bank size rebuilds the banks over the recorded good images (the networks stay).
    recalibrate(tmp_path / "b", tmp_path / "e", knn_bank_size=8, log=None)
    rebuilt = DDADPipeline.from_bundle(tmp_path / "e")
    assert rebuilt.patch_knn.bank.shape[0] == 8 and len(rebuilt.noise_level.bank) == 16


def test_calibrate_takes_a_labelled_set_of_the_line(tmp_path, capsys):
    data = write_mvtec(tmp_path / "data", n_train=16, n_good=3, n_bad=3)
    fit_argv = [
        "fit", str(data), "--out", str(tmp_path / "b"), "--recipe", "fast", "--image-size", "64",
        "--backbone", "test_resnet:random", "--batch-size", "8", "--quiet", "--target-fpr", "0.1", "--no-select",
    ]  # fmt: skip
    assert main(fit_argv) == 0
    # What `python -m services.teacher export` writes: no train/, defects without outlines.
    labelled = tmp_path / "labelled"
    shutil.copytree(data / "test", labelled / "test")
    (labelled / "ground_truth" / "blob").mkdir(parents=True)
    with pytest.warns(UserWarning, match="no mask"):
        assert main(["calibrate", str(tmp_path / "b"), "--out", str(tmp_path / "c"), "--labelled", str(labelled)]) == 0
    cal = read_bundle_config(tmp_path / "c").calibration
    assert (cal["n_good"], cal["n_defect"]) == (16 + 3, 3) and "f1_image" in cal["info"]
    shutil.rmtree(labelled / "test" / "blob")
    assert main(["calibrate", str(tmp_path / "b"), "--out", str(tmp_path / "d"), "--labelled", str(labelled)]) == 2
    assert "has no confirmed defect" in capsys.readouterr().err
