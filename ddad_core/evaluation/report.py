"""The evaluation report: one self-contained HTML page (``index.html``) over an evaluated test set.

``write_report`` renders metrics, ROC and PRO curves, the score histogram with the threshold, the worst misses and
false alarms (image, heatmap overlay, predicted and true outline), and a sortable thumbnail grid of every test image.
``operating_text`` is the page's summary of the operating figures.

Why hand-written SVG: the page must be a single file that opens anywhere (mailed, attached to a ticket, served as a
static file) and the report is written by ``ddad eval`` in the runtime image, which carries no plotting library --
matplotlib is only in the ``bench`` extra (``pyproject.toml``) for the benchmarks' PNG figures. anomalib's
visualiser or matplotlib would add a heavy dependency (and a font / backend set-up) for a handful of small charts
(ROC and PRO curves, the score histogram, the colour-bar key), drawn here by a few short SVG helpers (``_Axes``,
``svg_line_chart``, ``svg_histogram``, ``_colorbar_svg``). Curves are inline SVG; pictures are base64 PNG / JPEG
made with OpenCV (``visualize.render_overlay``).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from ddad_core.evaluation.metrics import aupro, roc_curve
from ddad_core.evaluation.visualize import jet, render_overlay, to_rgb
from ddad_core.scoring import normalize_map

if TYPE_CHECKING:
    from ddad_core.evaluation.evaluate import EvaluationData
    from ddad_core.pipeline import DDADPipeline

__all__ = [
    "REPORT_IMAGE_SIZE",
    "THUMBNAIL_SIZE",
    "nice_ticks",
    "operating_text",
    "svg_histogram",
    "svg_line_chart",
    "write_report",
]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_HIST_COLORS = ("#2ca02c", "#d62728", "#1f77b4")
#: Side of the pictures in the worst-case tables and of the thumbnails in the grid of all test images (pixels).
REPORT_IMAGE_SIZE, THUMBNAIL_SIZE = 256, 128


def _pct(rate: float) -> str:
    return "n/a" if rate is None or not np.isfinite(rate) else f"{100 * rate:.1f} %"


def operating_text(results: dict[str, Any]) -> str:
    """The operating figures of an evaluation in one paragraph (the report's summary line)."""
    parts = []
    if "recall_at_1pct_fpr" in results:
        parts.append(
            f"Recall at 1 % false alarms {_pct(results['recall_at_1pct_fpr'])}, at 5 % "
            f"{_pct(results['recall_at_5pct_fpr'])} (read off the ROC curve)."
        )
    at = results.get("at_threshold")
    if at:
        fa, miss = at["false_alarm_rate_ci95"], at["miss_rate_ci95"]
        parts.append(
            f"At the bundle's threshold (sensitivity {results.get('sensitivity', 0.5):g}): false alarms "
            f"{at['false_alarms']} of {at['n_good']} good images = {_pct(at['false_alarm_rate'])} "
            f"(95 % interval {_pct(fa[0])} to {_pct(fa[1])}), misses {at['misses']} of {at['n_defective']} "
            f"defective = {_pct(at['miss_rate'])} ({_pct(miss[0])} to {_pct(miss[1])})."
        )
        statement = (results.get("operating_point") or {}).get("statement")
        if statement:
            parts.append(f"Calibration: {statement}.")
    else:
        parts.append(
            "Paper-style normalisation: the bundle's threshold does not apply; masks use the F1-max threshold."
        )
    ci = results.get("ci95") or {}
    if ci:
        parts.append(
            "95 % bootstrap intervals: "
            + ", ".join(f"{name} {v['value']:.3f} ({v['low']:.3f}-{v['high']:.3f})" for name, v in ci.items())
            + "."
        )
    if results.get("half", "all") != "all":
        parts.append(f"Evaluated on the {results['half']} half of the test set.")
    return " ".join(parts)


def nice_ticks(low: float, high: float, count: int = 5) -> np.ndarray:
    """Round tick values covering ``[low, high]``: steps of 1, 2 or 5 times a power of ten, about ``count`` ticks.

    Example:
        >>> nice_ticks(0, 1).tolist(), nice_ticks(0, 37).tolist()
        ([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], [0.0, 10.0, 20.0, 30.0, 40.0])
    """
    span = high - low
    if not np.isfinite(span) or span <= 0:
        return np.array([low])
    raw = span / max(count, 1)
    magnitude = 10 ** np.floor(np.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * 0.999)
    first, last = np.floor(low / step + 1e-9) * step, np.ceil(high / step - 1e-9) * step
    return np.round(np.arange(first, last + step / 2, step), 12)


def _tick_text(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1e-12 else "0"


def _thin(xs: np.ndarray, ys: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Resample a monotone curve with up to millions of points onto a grid for drawing."""
    if len(xs) <= points:
        return xs, ys
    grid = np.linspace(xs.min(), xs.max(), points)
    return grid, np.interp(grid, xs, ys)


class _Axes:
    """Plot-area geometry of one SVG chart: data -> pixel coordinates, frame, ticks with grid lines, axis titles,
    and a legend *below* the x-axis title, so it never covers the data."""

    left, right, top, tick_band = 56, 14, 22, 34

    def __init__(self, width: int, xlim, ylim, legend_rows: int) -> None:
        self.width, self.xlim, self.ylim = width, xlim, ylim
        self.plot_height = 210
        self.pw = width - self.left - self.right
        self.legend_top = self.top + self.plot_height + self.tick_band + 18
        self.height = self.legend_top + 16 * legend_rows + 6
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{self.height}" font-size="11" '
            'font-family="sans-serif">'
        ]

    def px(self, x: float, y: float) -> tuple[float, float]:
        u = self.left + (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * self.pw
        v = self.top + (1 - (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0])) * self.plot_height
        return u, v

    def frame(self, xticks, yticks, xlabel: str, ylabel: str) -> None:
        top, bottom, left = self.top, self.top + self.plot_height, self.left
        for fx in xticks:
            u, _ = self.px(fx, self.ylim[0])
            self.parts.append(f'<line x1="{u:.1f}" y1="{top}" x2="{u:.1f}" y2="{bottom}" stroke="#eee"/>')
            self.parts.append(f'<line x1="{u:.1f}" y1="{bottom}" x2="{u:.1f}" y2="{bottom + 4}" stroke="#555"/>')
            self.parts.append(
                f'<text class="xtick" x="{u:.1f}" y="{bottom + 16}" text-anchor="middle">{_tick_text(fx)}</text>'
            )
        for fy in yticks:
            _, v = self.px(self.xlim[0], fy)
            self.parts.append(
                f'<line x1="{left}" y1="{v:.1f}" x2="{left + self.pw}" y2="{v:.1f}" stroke="#eee"/>'
                f'<line x1="{left - 4}" y1="{v:.1f}" x2="{left}" y2="{v:.1f}" stroke="#555"/>'
            )
            self.parts.append(
                f'<text class="ytick" x="{left - 6}" y="{v + 4:.1f}" text-anchor="end">{_tick_text(fy)}</text>'
            )
        self.parts.append(
            f'<rect class="frame" x="{left}" y="{top}" width="{self.pw}" height="{self.plot_height}" fill="none" '
            'stroke="#888"/>'
        )
        self.parts.append(
            f'<text class="xlabel" x="{left + self.pw / 2}" y="{bottom + self.tick_band}" text-anchor="middle" '
            f'font-weight="bold">{html.escape(xlabel)}</text>'
        )
        mid = top + self.plot_height / 2
        self.parts.append(
            f'<text class="ylabel" x="14" y="{mid}" text-anchor="middle" font-weight="bold" '
            f'transform="rotate(-90 14 {mid})">'
            f"{html.escape(ylabel)}</text>"
        )

    def legend(self, row: int, color: str, label: str, dashed: bool = False, box: bool = False) -> None:
        y = self.legend_top + 16 * row
        x = self.left
        if box:
            self.parts.append(
                f'<rect class="legend" x="{x}" y="{y - 9}" width="18" height="10" fill="{color}" fill-opacity="0.45"/>'
            )
        else:
            dash = ' stroke-dasharray="4"' if dashed else ""
            self.parts.append(
                f'<line class="legend" x1="{x}" y1="{y - 4}" x2="{x + 18}" y2="{y - 4}" stroke="{color}" '
                f'stroke-width="2"{dash}/>'
            )
        self.parts.append(f'<text class="legend" x="{x + 24}" y="{y}">{html.escape(label)}</text>')

    def svg(self) -> str:
        return "".join(self.parts) + "</svg>"


def svg_line_chart(
    series: list[tuple[np.ndarray, np.ndarray, str]],
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float] = (0.0, 1.0),
    ylim: tuple[float, float] = (0.0, 1.0),
    vline: float | None = None,
    width: int = 360,
    diagonal: bool = False,
) -> str:
    """A small inline SVG line chart: ticks and grid lines on both axes, axis titles, the legend under the plot.

    Args:
        series: ``(xs, ys, label)`` per line.
        xlabel: x-axis title.
        ylabel: y-axis title.
        xlim: x range.
        ylim: y range.
        vline: Optional dashed vertical marker.
        width: Pixel width (the height follows from the legend).
        diagonal: Draw the chance line y = x (ROC), labelled in the legend.

    Returns:
        ``<svg>`` markup.
    """
    axes = _Axes(width, xlim, ylim, legend_rows=len(series) + int(diagonal))
    axes.frame(nice_ticks(*xlim), nice_ticks(*ylim), xlabel, ylabel)
    if vline is not None and xlim[0] <= vline <= xlim[1]:
        u, _ = axes.px(vline, 0)
        axes.parts.append(
            f'<line x1="{u:.1f}" y1="{axes.top}" x2="{u:.1f}" y2="{axes.top + axes.plot_height}" stroke="#444" '
            'stroke-dasharray="4"/>'
        )
    if diagonal:
        (u0, v0), (u1, v1) = axes.px(xlim[0], ylim[0]), axes.px(xlim[1], ylim[1])
        axes.parts.append(f'<line x1="{u0}" y1="{v0}" x2="{u1}" y2="{v1}" stroke="#999" stroke-dasharray="4"/>')
    for k, (xs, ys, label) in enumerate(series):
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        if xs.size and xs[-1] > xlim[1]:
            # Cut the (monotone) curve at the right edge, interpolating the end point, before thinning.
            keep = xs <= xlim[1]
            xs, ys = np.r_[xs[keep], xlim[1]], np.r_[ys[keep], np.interp(xlim[1], xs, ys)]
        xs, ys = _thin(xs, ys)
        inside = (xs >= xlim[0]) & (xs <= xlim[1])
        points = " ".join(
            f"{u:.1f},{v:.1f}" for u, v in (axes.px(x, y) for x, y in zip(xs[inside], ys[inside], strict=True))
        )
        color = _COLORS[k % len(_COLORS)]
        axes.parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        axes.legend(k, color, label)
    if diagonal:
        axes.legend(len(series), "#999", "chance", dashed=True)
    return axes.svg()


def svg_histogram(
    groups: list[tuple[np.ndarray, str]], threshold: float | None, bins: int = 40, width: int = 420
) -> str:
    """Overlaid histograms (e.g. good vs defective image scores) with a threshold marker, as inline SVG: counts on a
    ticked y-axis, the threshold's label above the plot (never on the bars), the legend under it."""
    values = np.concatenate([g for g, _ in groups if len(g)])
    low, high = float(values.min()), float(values.max())
    if threshold is not None:
        low, high = min(low, threshold), max(high, threshold)
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    counts = [np.histogram(g, edges)[0] for g, _ in groups]
    peak = max(int(c.max()) for c in counts) or 1
    yticks = nice_ticks(0, max(peak, 2), 4)
    yticks = yticks[yticks == np.round(yticks)]  # whole images only (at least 0, 1, 2)
    rows = len(groups) + int(threshold is not None)
    axes = _Axes(width, (low, high), (0, float(max(yticks[-1], peak))), legend_rows=rows)
    xticks = [t for t in nice_ticks(low, high, 8) if low - 1e-12 <= t <= high + 1e-12]
    axes.frame(xticks, yticks, "image score (raw)", "images")
    bar = axes.pw / bins
    for k, ((_, label), c) in enumerate(zip(groups, counts, strict=True)):
        color = _HIST_COLORS[k % len(_HIST_COLORS)]
        for i, n in enumerate(c):
            if n:
                _, v = axes.px(low, n)
                h = axes.top + axes.plot_height - v
                axes.parts.append(
                    f'<rect x="{axes.left + i * bar:.1f}" y="{v:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                    f'fill="{color}" fill-opacity="0.45"/>'
                )
        axes.legend(k, color, f"{label} ({int(c.sum())})", box=True)
    if threshold is not None:
        u, _ = axes.px(threshold, 0)
        axes.parts.append(
            f'<line x1="{u:.1f}" y1="{axes.top}" x2="{u:.1f}" y2="{axes.top + axes.plot_height}" stroke="#000" '
            'stroke-dasharray="4" stroke-width="1.5"/>'
        )
        anchor = "end" if u > axes.left + axes.pw * 0.7 else "start"
        axes.parts.append(
            f'<text class="threshold" x="{u:.1f}" y="{axes.top - 6}" text-anchor="{anchor}">'
            f"threshold {_tick_text(threshold)}</text>"
        )
        axes.legend(len(groups), "#000", "image threshold (above = flagged)", dashed=True)
    return axes.svg()


def _encoded(image: np.ndarray, fmt: str = ".png") -> str:
    """``data:`` URI of an RGB (or gray) uint8 image, PNG or JPEG."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 88] if fmt == ".jpg" else []
    ok, buf = cv2.imencode(fmt, image, params)
    if not ok:
        raise ValueError(f"{fmt} encoding failed")
    mime = "jpeg" if fmt == ".jpg" else "png"
    return f"data:image/{mime};base64," + base64.b64encode(buf.tobytes()).decode()


def _colorbar_svg(threshold: float, height: int = 200) -> str:
    """The report's colour-bar legend (the same JET scale as the pictures), with the threshold marked."""
    offsets = np.linspace(0, 1, 11)
    colors = jet(1 - offsets)
    stops = "".join(
        f'<stop offset="{o:.2f}" stop-color="rgb({r},{g},{b})"/>' for o, (r, g, b) in zip(offsets, colors, strict=True)
    )
    top, bar_h = 10, height - 20
    y_thr = top + (1 - threshold) * bar_h
    ticks = "".join(
        f'<text x="34" y="{top + (1 - v) * bar_h + 4:.1f}">{v:g}</text>'
        for v in (0, 0.25, 0.5, 0.75, 1)
        if abs(v - threshold) >= 0.09
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="120" height="{height}" font-size="11" '
        f'font-family="sans-serif"><defs><linearGradient id="jet" x1="0" y1="0" x2="0" y2="1">{stops}'
        f'</linearGradient></defs><rect x="8" y="{top}" width="20" height="{bar_h}" fill="url(#jet)" stroke="#666"/>'
        f'{ticks}<line x1="4" y1="{y_thr:.1f}" x2="32" y2="{y_thr:.1f}" stroke="#000" stroke-width="2"/>'
        f'<text x="34" y="{y_thr + 4:.1f}" font-weight="bold">threshold</text></svg>'
    )


def write_report(
    report_dir: str | Path,
    data: EvaluationData,
    results: dict[str, Any],
    pipe: DDADPipeline,
    per_group: int = 8,
    on_image: Callable[[int], None] | None = None,
) -> Path:
    """Write ``index.html``: metrics, ROC / PRO curves, score histogram, worst misses and false alarms, and a
    thumbnail grid of every test image (sortable by score, name or defect type).

    Pictures (``visualize.render_overlay``): heatmap blended over the image, predicted outline magenta, true
    outline white, colour bar with the threshold; worst cases at ``REPORT_IMAGE_SIZE`` px (plus the bar),
    thumbnails at ``THUMBNAIL_SIZE`` px. ``on_image(1)`` is called per test image drawn (progress).
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    scores = data.scores
    threshold = data.threshold
    # Heatmaps on one scale: 0.5 = the pixel threshold in fixed mode; min-max over the set in paper mode, with the
    # F1-max cut as the mark.
    if threshold is not None and pipe.calibration is not None:
        heat = normalize_map(torch.from_numpy(data.maps), pipe.calibration).numpy()
        pred_masks = data.pred_masks
        heat_threshold = 0.5
        flagged = scores > threshold
    else:
        lo, hi = float(data.maps.min()), float(data.maps.max())
        heat = (data.maps - lo) / max(hi - lo, 1e-12)
        cut = results.get("f1_max_threshold", float("nan"))
        pred_masks = data.maps > cut if np.isfinite(cut) else np.zeros_like(data.masks)
        heat_threshold = float(np.clip((cut - lo) / max(hi - lo, 1e-12), 0, 1)) if np.isfinite(cut) else 0.5
        flagged = scores > cut if np.isfinite(cut) else np.zeros(len(scores), bool)

    fpr, tpr, _ = roc_curve(scores, data.labels)
    roc_svg = svg_line_chart(
        [(fpr, tpr, f"image ROC, AUROC {results['image_auroc']:.3f}")],
        "false-positive rate (good images flagged)",
        "true-positive rate",
        diagonal=True,
    )
    pro_svg = "<p>no defect regions</p>"
    pix = data.has_mask
    if data.masks[pix].any():
        value, curve = aupro(data.maps[pix], data.masks[pix], return_curve=True)
        pro_svg = svg_line_chart(
            [(curve.fpr, curve.pro, f"PRO, AUPRO(0.3) {value:.3f}")],
            "pixel false-positive rate",
            "per-region overlap",
            xlim=(0, 0.3),
        )
    hist_svg = svg_histogram([(scores[data.labels == 0], "good"), (scores[data.labels == 1], "defective")], threshold)

    def overlay(i: int, size: int, bar: bool) -> np.ndarray:
        true = data.masks[i] if data.labels[i] == 1 else None
        return render_overlay(
            data.thumbnails[i], heat[i], pred_masks[i], true, threshold=heat_threshold, size=size, with_colorbar=bar
        )

    def verdict(i: int) -> tuple[str, str]:
        bad, hit = bool(data.labels[i]), bool(flagged[i])
        if bad:
            return ("caught", "ok") if hit else ("missed", "wrong")
        return ("false alarm", "wrong") if hit else ("passed", "ok")

    def caption(i: int) -> str:
        word, _ = verdict(i)
        return (
            f"{html.escape(data.paths[i].name)}<br>{html.escape(data.defect_types[i])}<br>score {scores[i]:.4f} "
            f"({word})<br>T&#770; = {int(data.noise_steps[i])}"
        )

    def row(i: int) -> str:
        size = REPORT_IMAGE_SIZE
        image = cv2.resize(to_rgb(data.thumbnails[i]), (size, size), interpolation=cv2.INTER_LINEAR)
        return (
            f'<tr><td>{caption(i)}</td><td><img class="picture" src="{_encoded(image, ".jpg")}" width="{size}" '
            f'height="{size}" alt="image"></td><td><img class="overlay" src="{_encoded(overlay(i, size, True))}" '
            f'alt="heatmap overlay"></td></tr>'
        )

    header = (
        "<tr><th></th><th>image</th><th>heatmap, <span class=pred>predicted</span> and "
        "<span class=true>true</span> outline, score scale</th></tr>"
    )
    bad = np.flatnonzero(data.labels == 1)
    good = np.flatnonzero(data.labels == 0)
    misses = bad[np.argsort(scores[bad], kind="stable")][:per_group]
    alarms = good[np.argsort(-scores[good], kind="stable")][:per_group]
    worst_misses = "".join(row(i) for i in misses)
    worst_alarms = "".join(row(i) for i in alarms)

    cards = []
    for i in np.argsort(-scores, kind="stable"):
        word, state = verdict(i)
        thumb = _encoded(overlay(i, THUMBNAIL_SIZE, False), ".jpg")
        cards.append(
            f'<figure class="card {state}" data-score="{scores[i]:.6f}" data-name="{html.escape(str(data.paths[i]))}" '
            f'data-type="{html.escape(data.defect_types[i])}"><img class="thumb" src="{thumb}" '
            f'width="{THUMBNAIL_SIZE}" height="{THUMBNAIL_SIZE}" alt="{html.escape(data.paths[i].name)}">'
            f"<figcaption>{html.escape(data.defect_types[i])}/{html.escape(data.paths[i].name)}<br>"
            f"{scores[i]:.4f} {word}</figcaption></figure>"
        )
        if on_image is not None:
            on_image(1)

    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.4f}"

    keys = ("image_auroc", "pixel_auroc", "aupro", "aupro_paper", "f1_max", "image_ap", "pixel_ap", "n_images")
    table = ["<tr><th>subset</th>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"]
    for name, res in [("all", results), *results["per_defect_type"].items()]:
        cells = "".join(f"<td>{fmt(res[k]) if k != 'n_images' else res[k]}</td>" for k in keys)
        table.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    at_text = html.escape(operating_text(results))
    scale_note = (
        "normalised so that 0.5 is the bundle's pixel threshold"
        if threshold is not None
        else "min-max over this set; the mark is the F1-max threshold"
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>D3AD evaluation</title>
<style>body{{font-family:sans-serif;margin:20px}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;
padding:4px;font-size:12px;text-align:center}} .charts{{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}}
.pred{{color:#c0c;font-weight:bold}} .true{{color:#000;background:#ddd;font-weight:bold;padding:0 2px}}
.key{{display:flex;gap:16px;align-items:center;font-size:13px}}
#grid{{display:flex;flex-wrap:wrap;gap:8px}} .card{{margin:0;padding:3px;border:3px solid #ccc;font-size:11px;
width:{THUMBNAIL_SIZE}px}} .card.wrong{{border-color:#d62728}} .card figcaption{{word-break:break-all}}
button{{margin-right:6px}}</style></head><body>
<h1>D3AD evaluation: {html.escape(Path(results.get("data_dir", "")).name)}</h1>
<p>bundle {html.escape(str(results.get("bundle")))} ({html.escape(str(results.get("model_version")))}), backbone
{html.escape(str(results.get("backbone")))}, {results["n_images"]} images at {results.get("resolution")} px,
{results["seconds_per_image"]:.3f} s/image on {html.escape(str(results.get("device")))},
{html.escape(str(results.get("normalization")))} normalisation. AUPRO is the exact MVTec metric (FPR &le; 0.3);
aupro_paper is the reference code's 200-threshold variant.</p>
<table id="metrics">{"".join(table)}</table><p>{at_text}</p>
<div class="charts"><div id="roc"><h3>ROC</h3>{roc_svg}</div><div id="pro"><h3>PRO curve</h3>{pro_svg}</div>
<div id="histogram"><h3>Image scores</h3>{hist_svg}</div></div>
<h2>How to read the pictures</h2>
<div class="key"><div>{_colorbar_svg(heat_threshold)}</div><div>Heatmap colour = anomaly score, {scale_note};
it is transparent where the part looks normal and covers it where the score is high.<br>
<span class="pred">magenta outline</span>: predicted defect; <span class="true">white outline</span>: true defect
(ground truth).</div></div>
<h2>Worst misses (defective, lowest scores)</h2><table id="misses">{header}{worst_misses}</table>
<h2>Worst false alarms (good, highest scores)</h2><table id="alarms">{header}{worst_alarms}</table>
<h2>All test images</h2>
<p>Sort: <button id="sort-score-desc" onclick="sortGrid('score', -1)">score, highest first</button><button
id="sort-score-asc" onclick="sortGrid('score', 1)">score, lowest first</button><button id="sort-name"
onclick="sortGrid('name', 1)">file</button><button id="sort-type" onclick="sortGrid('type', 1)">defect type</button>
Red frame = wrong decision (miss or false alarm).</p>
<div id="grid">{"".join(cards)}</div>
<script>
function sortGrid(key, direction) {{
  const grid = document.getElementById("grid");
  const cards = Array.from(grid.children);
  cards.sort((a, b) => {{
    const x = a.dataset[key], y = b.dataset[key];
    const order = key === "score" ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
    return direction * order;
  }});
  cards.forEach((card) => grid.appendChild(card));
}}
</script>
</body></html>"""
    path = report_dir / "index.html"
    path.write_text(page)
    return path
