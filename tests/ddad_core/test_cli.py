"""The ``ddad`` command line: fit -> eval (JSON + HTML report) -> predict, and exit codes on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddad_core.cli import main, parser
from ddad_core.fitting.recipes import RECIPES

from ._helpers import write_mvtec

REQUIRED_KEYS = {"image_auroc", "pixel_auroc", "aupro", "aupro_paper", "f1_max", "n_images", "seconds_per_image"}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_mvtec(root / "data", n_train=10, n_good=3, n_bad=3)
    argv = [
        "fit", str(data), "--out", str(root / "bundle"), "--preset", "cpu", "--epochs", "1", "--da-epochs", "1",
        "--guidance", "4", "--image-size", "64", "--autoencoder", "conv", "--ae-epochs", "1",
        "--backbone", "test_resnet:random", "--batch-size", "8", "--quiet", "--target-fpr", "0.1", "--no-select",
    ]  # fmt: skip
    assert main(argv) == 0
    return root, data, root / "bundle"


def test_parser_contract():
    args = parser.parse_args(["fit", "d", "--out", "b"])
    assert args.preset == "cpu" and args.autoencoder is None and args.backbone is None
    args = parser.parse_args(["eval", "b", "d", "--json", "o.json", "--report", "r"])
    assert str(args.json_path) == "o.json" and str(args.report) == "r"
    args = parser.parse_args(["predict", "b", "x.png", "y.png", "--out", "o"])
    assert [str(p) for p in args.images] == ["x.png", "y.png"]
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", "d", "--out", "b", "--preset", "gpu"])


def test_eval_writes_json_and_report(fitted, capsys):
    root, data, bundle = fitted
    assert main(["eval", str(bundle), str(data), "--json", str(root / "r.json"), "--report", str(root / "rep")]) == 0
    results = json.loads((root / "r.json").read_text())
    assert REQUIRED_KEYS <= set(results)
    assert results["n_images"] == 6
    assert REQUIRED_KEYS - {"seconds_per_image"} <= set(results["per_defect_type"]["blob"])
    page = (root / "rep" / "index.html").read_text()
    for marker in ("<svg", "ROC", "PRO curve", "Image scores", "threshold", "Worst misses", "false alarms", "base64"):
        assert marker in page
    assert page.count('class="card ') == 6  # the thumbnail grid holds every test image
    out = capsys.readouterr().out
    assert "image AUROC" in out and "time per step: total " in out
    assert {"evaluation", "metrics", "report"} == set(results["seconds_per_step"])
    assert results["seconds_total"] >= results["seconds_per_step"]["evaluation"] > 0


def test_fit_metadata_times_every_step(fitted):
    from ddad_core.bundle import read_bundle_config

    seconds = read_bundle_config(fitted[2]).metadata["fit_seconds"]
    expected = {"load_images", "preprocess", "autoencoder_training", "latent_cache", "unet", "domain_adaptation"}
    assert expected | {"training_features", "coreset", "calibration", "total"} == set(seconds)


def test_fit_and_eval_progress_lines(fitted, tmp_path, capsys):
    root, data, bundle = fitted
    argv = ["eval", str(bundle), str(data), "--json", str(tmp_path / "r.json"), "--progress", "lines"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "evaluation: started, 6 img" in err and "evaluation: done, 6 img" in err and "metrics: done" in err
    assert main([*argv[:-2], "--progress", "off"]) == 0
    assert "evaluation:" not in capsys.readouterr().err


def test_eval_lists_undecodable_images(fitted, tmp_path, capsys):
    import shutil

    root, data, bundle = fitted
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "test" / "good" / "zz_corrupt.png").write_bytes(b"\x89PNG broken")
    assert main(["eval", str(bundle), str(copy), "--json", str(tmp_path / "r.json")]) == 0
    assert "zz_corrupt.png" in capsys.readouterr().out
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["n_images"] == 6 and results["skipped_images"][0].endswith("zz_corrupt.png")


def test_eval_paper_normalization(fitted, tmp_path, capsys):
    root, data, production = fitted
    bundle = tmp_path / "paper_bundle"
    argv = [
        "fit", str(data), "--out", str(bundle), "--recipe", "paper", "--epochs", "1", "--image-size", "64",
        "--autoencoder", "conv", "--ae-epochs", "1", "--backbone", "test_resnet:random", "--batch-size", "8", "--quiet",
        "--target-fpr", "0.1",
    ]  # fmt: skip
    assert main(argv) == 0
    argv = ["eval", str(bundle), str(data), "--json", str(root / "p.json"), "--normalization", "paper"]
    assert main(argv) == 0
    results = json.loads((root / "p.json").read_text())
    assert results["normalization"] == "paper" and "at_threshold" not in results
    assert results["recipe"] == "paper v1" and results["settings"]["component_norm"] == "minmax"
    # Test-set min-max does not apply to a recipe that normalises per position: one line, exit 2.
    capsys.readouterr()
    argv = ["eval", str(production), str(data), "--json", str(root / "q.json"), "--normalization", "paper"]
    assert main(argv) == 2
    assert "normalises each position" in capsys.readouterr().err


def test_fit_unknown_recipe_fails_before_fitting(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", "d", "--out", str(tmp_path / "b"), "--recipe", "fastest"])
    err = capsys.readouterr().err
    assert "paper" in err and "production" in err and not (tmp_path / "b").exists()


def test_eval_states_the_recipe(fitted):
    root, data, bundle = fitted
    assert main(["eval", str(bundle), str(data), "--json", str(root / "recipe.json")]) == 0
    results = json.loads((root / "recipe.json").read_text())
    assert results["recipe"] == f"production v{RECIPES['production'].version}"
    assert results["settings"]["knn_weight"] > 0 and results["settings"]["component_norm"] == "position"


def test_predict_writes_overlays_and_masks(fitted, capsys):
    import cv2

    from ddad_core.evaluation.visualize import colorbar_width

    root, data, bundle = fitted
    broken = data / "test" / "not_an_image.png"
    broken.write_bytes(b"garbage")
    images = [data / "test" / "blob" / "000.png", data / "test" / "good" / "000.png", broken]
    try:
        assert main(["predict", str(bundle), *map(str, images), "--out", str(root / "pred")]) == 0
    finally:
        broken.unlink()
    out = capsys.readouterr()
    assert "pred_score=" in out.out and "not_an_image.png" in out.err
    # Names: the path relative to the inputs' common folder (test/), separators replaced.
    written = sorted(p.name for p in (root / "pred").iterdir())
    assert written == [
        "blob__000_mask.png", "blob__000_overlay.png", "good__000_mask.png", "good__000_overlay.png",
        "predictions.json",
    ]  # fmt: skip
    summary = json.loads((root / "pred" / "predictions.json").read_text())
    assert list(summary["predictions"]) == [str(images[0]), str(images[1])]  # keyed by input path, input order
    first = summary["predictions"][str(images[0])]
    assert first["overlay"] == "blob__000_overlay.png" and first["mask"] == "blob__000_mask.png"
    assert {"pred_score", "pred_score_raw", "pred_label", "noise_step"} <= set(first)
    assert list(summary["skipped"]) == [str(broken)]
    # The report's overlay style at the input's resolution: picture plus colour bar; the mask at the same size.
    overlay = cv2.imread(str(root / "pred" / "blob__000_overlay.png"))
    mask = cv2.imread(str(root / "pred" / "blob__000_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert overlay.shape == (64, 64 + colorbar_width(64), 3) and mask.shape == (64, 64)
    assert set(np.unique(mask)) <= {0, 255}


def test_bad_option_values_name_the_option(capsys):
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "b", "x.png", "--out", "o", "--sensitivity", "2"])
    assert "--sensitivity" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "b", "d", "--json", "o.json", "--progress-interval", "0"])
    assert "--progress-interval" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", "d", "--out", "b", "--progress", "loud"])
    assert "--progress" in capsys.readouterr().err


def test_errors_exit_with_code_2(fitted, tmp_path, capsys):
    root, data, bundle = fitted
    assert main(["eval", str(bundle), str(tmp_path / "missing"), "--json", str(tmp_path / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), str(data), "--json", str(tmp_path / "x.json")]) == 2
    assert "bundle.json" in capsys.readouterr().err
    argv = ["eval", str(bundle), str(data), "--json", str(tmp_path / "x.json"), "--backbone", "resnet34"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "test_resnet" in err and "resnet34" in err
    (tmp_path / "flat").mkdir()
    assert main(["fit", str(tmp_path / "flat"), "--out", str(tmp_path / "b")]) == 2
    assert "missing folder 'train'" in capsys.readouterr().err
