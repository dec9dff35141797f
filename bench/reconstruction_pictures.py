"""Pictures of what the diffusion reconstruction repairs: for a few defective test images (tune half), side by side,
the input x, the autoencoder's own round trip D(E(x)), the denoised reconstruction D(z0-hat), and the raw maps
of one bundle -- the latent distance, the feature distance against x and against D(E(x)), and the patch k-NN
term -- with the ground-truth outline on each.

A defect the reconstruction repairs shows in D(z0-hat) as normal surface where x has the defect, and lights up the
latent and feature maps; a defect it copies through (the usual case from a low start step) leaves D(z0-hat) equal to
D(E(x)) and the reconstruction maps dark. The feature map against x also carries the autoencoder's own error
everywhere (fine texture D(E(x)) does not reproduce); against D(E(x)) that part cancels.

    python bench/reconstruction_pictures.py --bundle BUNDLE --data DATA_DIR --out OUT [--count 6]

Writes ``OUT/<dataset>_reconstruction.png``. The pictures show research images: keep them out of the repository.
"""

from __future__ import annotations

from ddad_core.runtime import configure_cpu_threads

configure_cpu_threads()  # passive OpenMP waiting, one thread per usable core; before torch (ddad_core/runtime.py)

import argparse
from pathlib import Path

import numpy as np
import torch

from ddad_core.anomaly_map import feature_distance_map
from ddad_core.data import MVTecFolder, evenly_spaced, load_images, load_mask, resize_mask
from ddad_core.evaluation.splits import half_of_items
from ddad_core.features import MAP_BLOCKS
from ddad_core.pipeline import DDADPipeline
from ddad_core.preprocess import preprocess

PANELS = (
    "x",
    "D(E(x))",
    "D(z0-hat)",
    "latent distance",
    "feature distance vs x",
    "feature distance vs D(E(x))",
    "patch k-NN",
)


def defect_items(data_dir: Path, count: int) -> list:
    """Up to ``count`` defective tune-half images with masks, spread over the defect types."""
    folder = MVTecFolder(data_dir, require_test=True)
    items = [it for it in half_of_items(folder.test_items, folder.root / "test", "tune") if it.mask_path is not None]
    return [items[i] for i in evenly_spaced(len(items), count)]


@torch.inference_mode()
def panels_of(pipe: DDADPipeline, x: torch.Tensor) -> list[np.ndarray]:
    """The seven pictures of each image in ``x`` (``(B, 3, H, W)`` preprocessed), as arrays per panel."""
    if not pipe.reconstructs:
        raise SystemExit("the bundle has no reconstruction (fast recipe): pick a production or paper bundle")
    comps = pipe.components(x, keep_recon=True, knn=pipe.patch_knn is not None)
    own = pipe.autoencoder.decode(pipe.autoencoder.encode(x).mean)
    feats_x = pipe.features(x)
    feats_own = pipe.features(own)
    feats_recon = pipe.features(comps.recon_images)
    shape = pipe.input_shape

    def feature_map(reference):
        return feature_distance_map([reference[j] for j in MAP_BLOCKS], [feats_recon[j] for j in MAP_BLOCKS], shape)

    def picture(t):
        return ((t.permute(0, 2, 3, 1).float().cpu() + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()

    knn = comps.knn_map if comps.knn_map is not None else torch.zeros(len(x), *shape)
    return [
        picture(x),
        picture(own),
        picture(comps.recon_images),
        comps.latent_map.cpu().numpy(),
        feature_map(feats_x).cpu().numpy(),
        feature_map(feats_own).cpu().numpy(),
        knn.cpu().numpy(),
    ]


def draw(panels: list[np.ndarray], masks: list[np.ndarray], titles: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(masks), len(PANELS)
    h, w = masks[0].shape
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols * max(w / h, 0.5), 1.9 * rows), squeeze=False)
    for c, name in enumerate(PANELS):
        values = panels[c]
        # Maps share one colour scale per column, so a dark map means "nothing there" rather than "rescaled noise".
        top = float(np.percentile(values, 99.5)) if values.ndim == 3 else None
        for r in range(rows):
            ax = axes[r, c]
            if values.ndim == 4:
                ax.imshow(values[r])
            else:
                ax.imshow(values[r], cmap="inferno", vmin=0.0, vmax=top)
            ax.contour(masks[r], levels=[0.5], colors="cyan", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(titles[r], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle with a reconstruction (production)")
    parser.add_argument("--data", type=Path, required=True, help="MVTec-layout dataset folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=6, help="defective images (spread over the defect types)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    pipe = DDADPipeline.from_bundle(args.bundle, device=args.device)
    items = defect_items(args.data, args.count)
    if not items:
        raise SystemExit(f"{args.data}: no defective test image with a mask in the tune half")
    loaded = load_images([it.path for it in items], warn=False)
    x = preprocess(loaded.images, image_size=pipe.input_shape).to(pipe.device)
    masks = [resize_mask(load_mask(it.mask_path, image.shape), pipe.input_shape)
             for it, image in zip(items, loaded.images, strict=True)]  # fmt: skip
    titles = [f"{it.defect_type}/{Path(it.path).name}" for it in items]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.data.name}_reconstruction.png"
    draw(panels_of(pipe, x), masks, titles, path)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
