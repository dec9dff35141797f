"""Ablations on fitted weights: each sweep re-evaluates the same bundles on the same test images, all from the
*tune* half of each test set (``ddad_core/evaluation/splits.py``): sweeps choose settings, so they never see the
report half that published figures come from.

For every dataset (MVTec layout) the bundles the chosen sweeps run on are fitted once, or reused from ``--work``
when present: ``<work>/<dataset>_paper`` (recipe ``paper``), ``<work>/<dataset>_production`` (recipe
``production``) and, for the ``deep_*`` sweeps, ``<work>/<dataset>_production_timestep_max-400`` (its UNet trained on
t < 400), all with the offline weights (TAEF2, MobileNetV2) and the same training images. Nothing is refitted for a
sweep:

* sampler settings (omega, fixed or dynamic T, T_max, guidance w, feature reference, feature pooling) re-run the
  pipeline with ``DDADPipeline.with_settings`` on the bundle's good images (scored out of sample: the normalisation
  statistics) and the test images; with omega > 0 every point is the mean over ``--seeds`` seeded runs (K is printed);
* map settings (normalisation fixed / paper / per position, latent weight lambda, k-NN weight) re-blend the
  cached raw components of the default run;
* DA epochs 0 vs the bundle's: the ImageNet backbone is loaded again (no adaptation) -- 3 epochs would refit the
  adaptation and is only run with ``--da-refit``.

Output in ``--out``: ``ablations.json`` (every point, with its settings and seeds), ``ablations.md`` (a table
per sweep) and ``<sweep>.png`` (image AUROC, pixel AUROC and AUPRO against the swept value, one line per
dataset). A sweep that does not finish within ``--budget-min`` is reported as partial: its missing points are
listed as not run, never extrapolated. Sweep names and values are checked before anything is fitted.

    python bench/ablations.py --work /tmp/abl --out /tmp/abl/out --max-test-images 150
    python bench/ablations.py --sweeps omega guidance --set omega=0,0.5,1 --seeds 3
"""

from __future__ import annotations

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()  # passive OpenMP waiting, one thread per usable core; before torch (ddad_core/runtime.py)

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_detector import bundle_path, fit_bundle  # bench/ is on sys.path when this file runs as a script

from ddad_core.config import DDADConfig
from ddad_core.data import MVTecFolder, evenly_spaced, load_images, load_mask, resize_mask
from ddad_core.evaluation.metrics import aupro, auroc, f1_max, pixel_auroc
from ddad_core.evaluation.splits import half_of_items
from ddad_core.features import load_backbone
from ddad_core.fitting.out_of_sample import good_components, out_of_sample_maps
from ddad_core.fitting.recipes import SettingError
from ddad_core.pipeline import DDADPipeline, MapComponents
from ddad_core.preprocess import preprocess

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_DATA = [SHARED / "data" / "magnetic_tile", SHARED / "data" / "kolektorsdd"]
METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")


@dataclass(frozen=True)
class Sweep:
    """One ablation: a setting swept over values on one of the two bundles.

    Attributes:
        name: Sweep name (``--sweeps``).
        bundle: The recipe of the bundle it runs on: ``paper``, ``production`` or a recipe with overrides
            (``production:timestep_max=400``, as in ``bench_detector.py --recipes``).
        kind: ``sampler`` (re-run the pipeline), ``map`` (re-blend cached components) or ``backbone``.
        values: The swept values (``--set name=v1,v2`` replaces them).
        question: What the sweep answers (printed with its table).
    """

    name: str
    bundle: str
    kind: str
    values: tuple
    question: str


#: The production recipe with its UNet trained on t < 400 instead of 160, for start levels of 150-400.
DEEP = "production:timestep_max=400"

SWEEPS: dict[str, Sweep] = {
    s.name: s
    for s in (
        Sweep(
            "omega",
            "paper",
            "sampler",
            tuple(round(0.1 * i, 1) for i in range(11)),
            "share of real noise in the start state (paper Fig. 13: omega = 0 best)",
        ),
        Sweep(
            "noise",
            "paper",
            "sampler",
            ("dynamic", 20, 40, 80, 150, 250),
            "dynamic T-hat against one fixed start step T for every image",
        ),
        Sweep("t_max", "paper", "sampler", (80, 150, 250, 400), "largest start step of the dynamic mapping"),
        Sweep("guidance", "paper", "sampler", (0.0, 2.0, 4.0, 7.0, 10.0), "conditioning weight w (paper: 0 or 7-10)"),
        Sweep("da_epochs", "paper", "backbone", (0, 1, 3), "epochs of domain adaptation (3 only with --da-refit)"),
        Sweep(
            "feature_reference",
            "paper",
            "sampler",
            ("input", "reconstruction"),
            "feature term on x (paper) or on D(E(x)) (quirk Q7)",
        ),
        Sweep("feature_pool", "paper", "sampler", (1, 3), "3 x 3 averaging of the feature blocks"),
        Sweep(
            "normalization",
            "paper",
            "map",
            ("fixed", "paper", "position"),
            "min-max from held-out good images, test-set min-max (paper), or per-position z-scores",
        ),
        Sweep("latent_weight", "paper", "map", (0.0, 0.25, 0.5, 0.85, 1.0), "lambda on the latent term"),
        Sweep(
            "knn_weight",
            "production",
            "map",
            (0.0, 0.25, 0.5, 0.75, 1.0),
            "weight of the patch k-NN term against the reconstruction terms",
        ),
        Sweep(
            "component_norm",
            "production",
            "map",
            ("minmax", "position"),
            "production recipe with min-max instead of per-position normalisation",
        ),
        Sweep(
            "prod_latent_weight",
            "production",
            "map",
            (0.0, 0.5, 0.85, 1.0),
            "lambda inside the reconstruction part of the production map",
        ),
        Sweep("prod_guidance", "production", "sampler", (0.0, 4.0, 10.0), "w with the production recipe"),
        Sweep(
            "prod_feature_reference",
            "production",
            "sampler",
            ("input", "reconstruction"),
            "feature term against x or against D(E(x)), so that the autoencoder's own error cancels",
        ),
        Sweep(
            "prod_t_max",
            "production",
            "sampler",
            (80, 150),
            "largest start step, within the production UNet's training range (t < 160)",
        ),
        Sweep(
            "deep_t_max",
            DEEP,
            "sampler",
            (80, 150, 250, 400),
            "largest start step, with a production UNet trained on t < 400 (start levels where a defect is drowned)",
        ),
        Sweep(
            "deep_omega",
            DEEP,
            "sampler",
            (0.0, 0.5, 1.0),
            "share of real noise in the start state at start steps up to 400 (the same deep UNet)",
        ),
    )
}


def sampler_overrides(sweep: str, value) -> dict[str, Any]:
    """``DDADConfig`` fields that a sampler/map sweep point sets."""
    if sweep == "noise":
        return {"dynamic_noise": True} if value == "dynamic" else {"dynamic_noise": False, "max_noise_step": int(value)}
    if sweep in ("t_max", "prod_t_max", "deep_t_max"):
        return {"max_noise_step": int(value)}
    if sweep == "deep_omega":
        return {"omega": float(value), "max_noise_step": 400}
    if sweep in ("guidance", "prod_guidance"):
        return {"guidance": float(value)}
    if sweep in ("omega", "feature_reference", "feature_pool"):
        return {sweep: value}
    if sweep == "prod_feature_reference":
        return {"feature_reference": value}
    return {}


def map_overrides(sweep: str, value) -> dict[str, Any]:
    if sweep in ("latent_weight", "prod_latent_weight"):
        return {"latent_weight": float(value)}
    if sweep == "knn_weight":
        return {"knn_weight": float(value)}
    if sweep == "component_norm":
        return {"component_norm": value}
    if sweep == "normalization":
        return (
            {"normalization": "paper"} if value == "paper" else {"component_norm": value} if value == "position" else {}
        )
    return {}


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def validate(sweeps: list[str], replace: dict[str, tuple]) -> dict[str, Sweep]:
    """The chosen sweeps with replaced values; raises ``SettingError`` naming the valid choices otherwise."""
    unknown = [s for s in [*sweeps, *replace] if s not in SWEEPS]
    if unknown:
        raise SettingError(f"unknown sweep(s) {unknown}; choose from {sorted(SWEEPS)}")
    chosen = {}
    for name in sweeps:
        sweep = SWEEPS[name]
        values = replace.get(name, sweep.values)
        for value in values:
            try:
                if sweep.kind == "backbone":
                    if value not in (0, 1, 3):
                        raise ValueError("da_epochs values are 0, 1 and 3")
                else:
                    DDADConfig(**sampler_overrides(name, value), **map_overrides(name, value))
            except ValueError as exc:
                reason = " ".join(str(exc).split())  # pydantic's message spans lines; the error is one line
                raise SettingError(f"sweep {name}: value {value!r} is not valid ({reason})") from exc
        chosen[name] = Sweep(sweep.name, sweep.bundle, sweep.kind, tuple(values), sweep.question)
    return chosen


# ----------------------------------------------------------------------------------------------------------------
# data and bundles


@dataclass
class TestSet:
    images: torch.Tensor
    masks: np.ndarray
    labels: np.ndarray
    holdout: torch.Tensor = field(default_factory=lambda: torch.zeros(0))


def load_test_set(data_dir: Path, size: tuple[int, int], max_images: int | None) -> TestSet:
    folder = MVTecFolder(data_dir, require_test=True)
    items = half_of_items(folder.test_items, folder.root / "test", "tune")
    items = [items[i] for i in evenly_spaced(len(items), max_images)]
    loaded = load_images([it.path for it in items], warn=False)
    by_path = dict(zip(loaded.paths, loaded.images, strict=True))
    items = [it for it in items if it.path in by_path]
    masks = []
    for it in items:
        image = by_path[it.path]
        mask = np.zeros(size, bool)
        if it.mask_path is not None:
            mask = resize_mask(load_mask(it.mask_path, image.shape), size)
        masks.append(mask)
    images = preprocess([by_path[it.path] for it in items], image_size=size)
    return TestSet(images, np.stack(masks), np.array([it.label for it in items]))


def holdout_images(bundle: Path, data_dir: Path, size: tuple[int, int]) -> torch.Tensor:
    from ddad_core.bundle import read_bundle_config

    names = read_bundle_config(bundle).metadata.get("good_images")
    if not names:
        raise SettingError(f"{bundle} records no good images (fitted before they were recorded); refit it")
    loaded = load_images([Path(data_dir) / n for n in names], warn=False)
    return preprocess(loaded.images, image_size=size)


def ensure_bundle(work: Path, data_dir: Path, recipe: str, args: argparse.Namespace) -> Path:
    bundle = bundle_path(work, data_dir, recipe)
    if (bundle / "bundle.json").exists():
        return bundle
    fit_bundle(data_dir, bundle, args, args.device, recipe)
    return bundle


# ----------------------------------------------------------------------------------------------------------------
# scoring one point


def blend_for(pipe: DDADPipeline, hold: MapComponents, test: MapComponents, overrides: dict) -> torch.Tensor:
    """Blended test maps for map-setting ``overrides``, normalised with the statistics of the bundle's good images
    (or, for min-max with ``normalization="paper"``, of the test set itself, the reference's normalisation)."""
    cfg = pipe.config.model_copy(update=overrides)
    stats = test if cfg.component_norm == "minmax" and cfg.normalization == "paper" else hold
    return out_of_sample_maps(pipe, stats, test, [-1] * len(test), overrides)


def score(maps: torch.Tensor, data: TestSet) -> dict[str, float]:
    m = maps.numpy()
    scores = m.reshape(len(m), -1).max(axis=1)
    return {
        "image_auroc": auroc(scores, data.labels),
        "pixel_auroc": pixel_auroc(m, data.masks),
        "aupro": aupro(m, data.masks),
        "f1_max": f1_max(scores, data.labels)[0],
    }


def run_components(pipe: DDADPipeline, data: TestSet, batch: int) -> tuple[MapComponents, MapComponents]:
    knn = pipe.patch_knn is not None
    hold = good_components(pipe, data.holdout, batch_size=batch, knn=knn)
    return hold, pipe.components_batched(data.images, batch, knn=knn)


def mean_points(points: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([p[k] for p in points])) for k in METRICS}


# ----------------------------------------------------------------------------------------------------------------
# plots and tables


def write_tables(results: dict, sweeps: dict[str, Sweep], path: Path) -> str:
    lines = []
    for name, sweep in sweeps.items():
        lines += [f"### {name} ({sweep.bundle} bundle): {sweep.question}", ""]
        lines.append("| dataset | value | " + " | ".join(METRICS) + " | runs | status |")
        lines.append("|" + "---|" * (len(METRICS) + 4))
        for dataset, per_sweep in results.items():
            for point in per_sweep.get(name, []):
                cells = " | ".join(f"{point[k]:.3f}" if point.get(k) is not None else "n/a" for k in METRICS)
                lines.append(
                    f"| {dataset} | {point['value']} | {cells} | {point.get('runs', '')} | {point['status']} |"
                )
        lines.append("")
    text = "\n".join(lines)
    path.write_text(text)
    return text


def write_plots(results: dict, sweeps: dict[str, Sweep], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, sweep in sweeps.items():
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), constrained_layout=True)
        for ax, metric in zip(axes, ("image_auroc", "pixel_auroc", "aupro"), strict=True):
            for dataset, per_sweep in results.items():
                pts = [p for p in per_sweep.get(name, []) if p.get(metric) is not None]
                if not pts:
                    continue
                labels = [str(p["value"]) for p in pts]
                ax.plot(range(len(pts)), [p[metric] for p in pts], marker="o", label=dataset)
                ax.set_xticks(range(len(pts)), labels)
            ax.set_title(metric.replace("_", " "))
            ax.set_xlabel(name)
            ax.grid(alpha=0.3)
        axes[0].legend(loc="best", fontsize=8)
        fig.suptitle(f"{name} ({sweep.bundle} bundle)")
        path = out / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------------------------
# main


def run_dataset(data_dir: Path, sweeps: dict[str, Sweep], args, deadline: float, log) -> dict[str, list[dict]]:
    device = torch.device(args.device)
    out: dict[str, list[dict]] = {}
    # The production bundle first, and within a bundle the cheap map sweeps before the sampler reruns, so a time
    # budget cuts the expensive points, not the decisive ones.
    recipes = sorted({s.bundle for s in sweeps.values()}, key=lambda r: r != "production")
    bundles = {r: ensure_bundle(args.work, data_dir, r, args) for r in recipes}
    order = {"map": 0, "backbone": 1, "sampler": 2}
    sweeps = dict(sorted(sweeps.items(), key=lambda kv: order[kv[1].kind]))
    for recipe, bundle in bundles.items():
        pipe = DDADPipeline.from_bundle(bundle, device=device)
        data = load_test_set(data_dir, pipe.input_shape, args.max_test_images)
        data.holdout = holdout_images(bundle, data_dir, pipe.input_shape)
        t0 = time.perf_counter()
        default = run_components(pipe, data, args.batch_size)
        per_run = time.perf_counter() - t0
        log(
            f"{data_dir.name}/{recipe}: {len(data.labels)} test + {len(data.holdout)} held-out images, "
            f"one run {per_run:.0f} s"
        )
        for name, sweep in sweeps.items():
            if sweep.bundle != recipe:
                continue
            points = out.setdefault(name, [])
            for value in sweep.values:
                point: dict[str, Any] = {"value": value, "status": "done"}
                alone: list[dict] = []
                extra: list[dict] = []
                if time.perf_counter() > deadline:
                    point["status"] = "not run (time budget)"
                    points.append(point)
                    continue
                if sweep.kind == "map":
                    point.update(score(blend_for(pipe, *default, map_overrides(name, value)), data), runs=1)
                elif sweep.kind == "backbone":
                    da = pipe.config.da_epochs
                    if value == da:
                        point.update(score(blend_for(pipe, *default, {}), data), runs=1)
                    elif value == 0:
                        plain = pipe.with_settings()
                        spec = (pipe.bundle_config.backbone or {}).get("spec")
                        plain.features = load_backbone(spec).to(device).eval().requires_grad_(False)
                        hold, test = run_components(plain, data, args.batch_size)
                        point.update(score(blend_for(plain, hold, test, {}), data), runs=1)
                    else:
                        point["status"] = "not run (needs a DA refit: --da-refit)"
                else:
                    overrides = sampler_overrides(name, value)
                    random = float(overrides.get("omega", pipe.config.omega)) > 0
                    seeds = list(range(args.seeds)) if random else [0]
                    runs = []
                    unchanged = all(getattr(pipe.config, k) == v for k, v in overrides.items())
                    for seed in seeds:
                        variant = pipe.with_settings(seed=args.seed + seed, **overrides)
                        # The bundle's own setting (deterministic): the default run's components, not a rerun.
                        hold, test = (
                            default if unchanged and not random else run_components(variant, data, args.batch_size)
                        )
                        runs.append(score(blend_for(variant, hold, test, {}), data))
                        if pipe.patch_knn is not None:  # what the reconstruction alone makes of the setting
                            alone.append(score(blend_for(variant, hold, test, {"knn_weight": 0.0}), data))
                    point.update(
                        mean_points(runs),
                        runs=len(runs),
                        seeds=[args.seed + s for s in seeds],
                        per_seed=runs if len(runs) > 1 else None,
                    )
                    if alone:
                        extra.append({"value": f"{value} (reconstruction alone)", "status": "done",
                                      **mean_points(alone), "runs": len(alone)})  # fmt: skip
                points.append(point)
                points.extend(extra)
                log(
                    f"  {data_dir.name} {name}={value}: "
                    + ", ".join(f"{k} {point[k]:.3f}" for k in METRICS if point.get(k) is not None)
                    + f" [{point['status']}]"
                )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ddad_ablations"), help="bundles (reused if present)")
    parser.add_argument("--out", type=Path, default=None, help="results (default: <work>/out)")
    parser.add_argument("--sweeps", nargs="+", default=list(SWEEPS), help=f"any of {list(SWEEPS)}")
    parser.add_argument("--set", nargs="*", default=[], metavar="SWEEP=V1,V2", help="replace a sweep's values")
    parser.add_argument("--seeds", type=int, default=2, help="K seeded runs per point with omega > 0")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--max-test-images", type=int, default=150)
    parser.add_argument("--max-train-images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=100, help="UNet epochs of the bundles fitted here")
    parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu", help="UNet size of bundles fitted here")
    parser.add_argument("--target-fpr", type=float, default=0.01, help="false-alarm rate the bundles are calibrated at")
    parser.add_argument("--quiet", action="store_true", help="no fit progress")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--autoencoder", default=f"tae:{SHARED / 'weights' / 'taef2'}")
    parser.add_argument("--backbone", default="mobilenetv2_100:offline")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--budget-min", type=float, default=120.0, help="stop starting points after this")
    parser.add_argument("--da-refit", action="store_true", help="also refit 3 epochs of domain adaptation")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        replace = {}
        for item in args.set:
            name, _, values = item.partition("=")
            replace[name] = tuple(parse_value(v) for v in values.split(",") if v)
        sweeps = validate(args.sweeps, replace)
    except SettingError as exc:
        parser.exit(2, f"ablations: error: {exc}\n")
    out = args.out or args.work / "out"
    out.mkdir(parents=True, exist_ok=True)
    print(f"sweeps {list(sweeps)}; omega > 0 points average K = {args.seeds} seeds starting at {args.seed}", flush=True)
    deadline = time.perf_counter() + 60 * args.budget_min
    results = {}
    for data_dir in args.data:
        results[data_dir.name] = run_dataset(data_dir, sweeps, args, deadline, lambda m: print(m, flush=True))
        (out / "ablations.json").write_text(
            json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1)
        )
    print(write_tables(results, sweeps, out / "ablations.md"))
    for path in write_plots(results, sweeps, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
