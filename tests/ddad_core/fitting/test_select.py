"""Per-product selection: the grid is scored on synthetic defects with the recipe's settings first; a patch-only
bundle chooses only its normalisation."""

from __future__ import annotations

from ddad_core.bundle import read_bundle_config
from ddad_core.fitting.fit import fit_images, make_configs
from ddad_core.fitting.select import select_settings
from ddad_core.fitting.synthetic import make_synthetic_defects
from ddad_core.pipeline import DDADPipeline
from ddad_core.preprocess import preprocess
from ddad_core.testing import TINY_BACKBONE, synthetic_textures


def test_select_settings_scores_the_grid_and_keeps_the_recipe_first(production_bundle):
    pipe = DDADPipeline.from_bundle(production_bundle)
    images = preprocess(synthetic_textures(24, 64, seed=0), image_size=64)  # the fit's good images, in bank order
    synthetic = make_synthetic_defects(images[16:20], seed=0)
    grid = {"guidance": (0.0, 4.0), "knn_weight": (0.5, 1.0)}
    result = select_settings(pipe, images, synthetic.images, synthetic.masks, [16, 17, 18, 19], grid=grid)
    table = result["table"]
    assert len(table) == 4 and table[0]["settings"] == {"guidance": pipe.config.guidance, "knn_weight": 0.5}
    assert result["chosen"] == max(table, key=lambda r: r["score"])["settings"]
    assert all(0.0 <= r["score"] <= 1.0 for r in table)


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
