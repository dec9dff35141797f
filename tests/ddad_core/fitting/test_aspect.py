"""Input geometry: ``--aspect keep`` fits long, narrow parts at their own aspect ratio, end to end (fit with the
reconstruction and the patch term, serve, evaluate on masks), and the shape rule itself."""

from __future__ import annotations

import numpy as np
import pytest

from ddad_core.bundle import read_bundle_config
from ddad_core.config import DDADConfig
from ddad_core.evaluation.evaluate import evaluate
from ddad_core.fitting.fit import fit, input_shape_for, keeps_aspect, make_configs
from ddad_core.fitting.recipes import SettingError
from ddad_core.pipeline import DDADPipeline
from ddad_core.preprocess import preprocess
from ddad_core.testing import synthetic_textures

from .._helpers import TINY_FIT, _save


def _tall_mvtec(root, height=160, width=64, n_train=12, n_bad=3, seed=0):
    """An MVTec-layout folder of tall images (width : height = 2 : 5) with bright square defects and masks."""
    rng = np.random.default_rng(seed)
    textures = synthetic_textures(n_train + 2 + n_bad, height, seed)
    images = [t[:, :width] for t in textures]
    for i in range(n_train):
        _save(root / "train" / "good" / f"{i:03d}.png", images[i])
    for i in range(2):
        _save(root / "test" / "good" / f"{i:03d}.png", images[n_train + i])
    for i in range(n_bad):
        image, mask = images[n_train + 2 + i].copy(), np.zeros((height, width), np.uint8)
        y, x = int(rng.integers(8, height - 24)), int(rng.integers(8, width - 24))
        image[y : y + 14, x : x + 14] = 255
        mask[y : y + 14, x : x + 14] = 255
        _save(root / "test" / "blob" / f"{i:03d}.png", image)
        _save(root / "ground_truth" / "blob" / f"{i:03d}_mask.png", mask)
    return root


def test_input_shape_keeps_the_median_ratio_and_the_pixel_count():
    tall = [np.zeros((630, 250), np.uint8)] * 3 + [np.zeros((100, 400), np.uint8)]  # one odd image out
    h, w = input_shape_for(tall, 256, 16)
    assert (h, w) == (400, 160) and abs(h * w / 256**2 - 1) < 0.05 and abs(w / h - 250 / 630) < 0.02
    assert input_shape_for([np.zeros((512, 512, 3), np.uint8)], 256, 64) == (256, 256)
    assert input_shape_for([np.zeros((10, 1000), np.uint8)], 256, 64) == (64, 2560 // 64 * 64)  # never below one step


def test_auto_keeps_a_shared_ratio_that_is_not_square():
    def images(*sizes):
        return [np.zeros(size, np.uint8) for size in sizes]

    assert keeps_aspect(images(*[(630, 250)] * 5, (640, 250)))  # long strips, one a little longer
    assert keeps_aspect(images(*[(230, 565)] * 4))  # wide ones
    assert not keeps_aspect(images(*[(512, 512)] * 4))  # square
    assert not keeps_aspect(images((300, 280), (260, 300)))  # nearly square
    assert not keeps_aspect(images((286, 123), (266, 218), (380, 265), (100, 240)))  # many shapes


def test_config_refuses_shapes_the_autoencoder_cannot_take():
    assert DDADConfig(image_shape=(400, 160)).input_shape == (400, 160)
    assert DDADConfig().input_shape == (256, 256)
    with pytest.raises(ValueError, match="multiple of 8"):
        DDADConfig(image_shape=(400, 162))


def test_aspect_keep_fits_serves_and_evaluates_tall_parts(tmp_path):
    data = _tall_mvtec(tmp_path / "data")
    config, train = make_configs("cpu", image_size=64, recipe="production", ddad_overrides={"knn_k": 3})
    settings = {**TINY_FIT, "config": config, "train_config": TINY_FIT["train_config"]}
    bundle = fit(data, tmp_path / "bundle", aspect="keep", select=False, **settings)
    cfg = read_bundle_config(bundle).ddad
    h, w = cfg.input_shape
    assert h > w and h % 16 == 0 and w % 16 == 0  # the tiny UNet's two levels and the autoencoder divide it
    pipe = DDADPipeline.from_bundle(bundle)
    assert pipe.reconstructs and pipe.input_shape == (h, w)
    frame = np.asarray(synthetic_textures(1, 160, seed=5)[0][:, :64])
    out = pipe([frame, frame])
    assert tuple(out.anomaly_map.shape) == (2, h, w)
    assert tuple(pipe.components(preprocess([frame], image_size=(h, w))).knn_map.shape) == (1, h, w)
    results = evaluate(bundle, data, log=None)
    assert results["resolution"] == f"{w} x {h}" and results["n_images"] == 5
    assert np.isfinite(results["pixel_auroc"]) and np.isfinite(results["image_auroc"])


def test_aspect_keep_needs_decoded_images(tmp_path):
    config, _ = make_configs("cpu", image_size=64, recipe="fast")
    x = preprocess(synthetic_textures(12, 64, 0), image_size=64)
    from ddad_core.fitting.fit import fit_images

    with pytest.raises(SettingError, match="decoded"):
        fit_images(x, tmp_path / "b", config=config, aspect="keep", backbone="test_resnet:random", log=None,
                   progress=False, target_fpr=0.1)  # fmt: skip
