"""Offline calibration (fit time): from good images -- and labelled defects when available -- to the fixed
``Calibration`` that ``scoring`` applies to every frame.

Good images only (the default, what a new production line has)
    Every good image of the fit is scored out of sample (``out_of_sample.py``). The image threshold is the
    **conformal quantile** of those N scores for the target false-alarm rate alpha (default 1 %): with the scores
    sorted ascending, the threshold is the k-th one, ``k = ceil((N + 1) (1 - alpha))``, and a part is flagged when
    its score exceeds it. If a new good part's score and the N calibration scores are exchangeable (the same
    process made them, and each was scored by a model that did not see it), the new part is flagged with
    probability at most ``1 - k / (N + 1) <= alpha``, for every N and whatever the score distribution: the guarantee
    the bundle states. It is a guarantee on average over fits; one fit's real rate scatters around it (with N = 240
    and alpha = 1 %, the rate of a single fit follows Beta(2, 239): median 0.70 %, below 1.6 % nine times in ten).

    The rule needs ``N >= 1 / alpha - 1`` good images (99 for 1 %). A finer target is refused in one line, or met
    by an explicitly labelled **tail fit** (``tail_fit=True``): a generalised Pareto distribution fitted by maximum
    likelihood to the excesses of the top scores over a high empirical quantile, extrapolated to alpha; it has no
    finite-sample guarantee and says so.

Labelled defects given
    The F1-optimal threshold (anomalib ``F1AdaptiveThreshold``), which falls back to the maximum good score when no
    defect is present and to just below the minimum defect score when no good image is.

Pixel threshold (what ``pred_mask`` and the alert boxes come from)
    With a pixel target (``pixel_target_fpr``): the conformal quantile of the good images' out-of-sample pixel
    values for that share of good pixels. Otherwise, with synthetic defects made on good images: the F1-optimal
    pixel threshold over good and synthetic pixels, so masks fit the defects instead of the blurred halo around
    them. Otherwise the image threshold. An image is flagged exactly when its mask is non-empty
    (``scoring.score_maps``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ddad_core.anomaly_map import MapNormalization, image_scores
from ddad_core.evaluation.metrics import f1_max
from ddad_core.fitting.recipes import SettingError
from ddad_core.scoring import Calibration, check_sensitivity

#: Share of the top scores a tail fit uses (at least ``_TAIL_MIN`` of them).
_TAIL_SHARE = 0.2
_TAIL_MIN = 10
#: Smallest shape a tail fit may take (maximum likelihood is regular above -0.5; Smith 1985).
_MIN_SHAPE = -0.5


def min_good_images(target_fpr: float) -> int:
    """The fewest good images for which the conformal rule can guarantee ``target_fpr``: ``ceil(1/alpha - 1)``.

    Example:
        >>> min_good_images(0.01), min_good_images(0.05)
        (99, 19)
    """
    check_target_fpr(target_fpr)
    return max(1, math.ceil(1.0 / target_fpr - 1.0 - 1e-9))


def check_target_fpr(target_fpr: float) -> float:
    """A false-alarm target must lie in (0, 1)."""
    if not 0.0 < float(target_fpr) < 1.0:
        raise SettingError(f"the target false-alarm rate must be in (0, 1), got {target_fpr}")
    return float(target_fpr)


def check_calibration_size(n_good: int, target_fpr: float, tail_fit: bool = False) -> None:
    """Refuse, in one line, a target finer than ``n_good`` out-of-sample scores allow (unless ``tail_fit``).

    Raises:
        SettingError: names the target, the images needed and had, the finest target allowed and the ways out.
    """
    need = min_good_images(target_fpr)
    if n_good < 2:
        raise SettingError(f"calibration needs at least 2 good images, got {n_good}")
    if n_good >= need or tail_fit:
        return
    finest = 1.0 / (n_good + 1)
    option = math.ceil(finest * 1000) / 1000
    raise SettingError(
        f"a target false-alarm rate of {target_fpr:.3g} needs at least {need} good images, this fit has {n_good} "
        f"(the finest target they allow is {finest:.3g}): add good images, pass --target-fpr {option:g} "
        "or more, or --tail-fit (a generalised Pareto fit to the top scores, without a finite-sample guarantee)"
    )


def conformal_rank(n_good: int, target_fpr: float) -> int:
    """k = ``ceil((N + 1)(1 - alpha))``: the 1-based ascending rank of the threshold among N scores (may exceed
    N when N is too small for alpha).

    Example:
        >>> conformal_rank(240, 0.01), conformal_rank(200, 0.01)
        (239, 199)
    """
    return math.ceil((n_good + 1) * (1.0 - check_target_fpr(target_fpr)) - 1e-9)


def conformal_threshold(good_scores, target_fpr: float = 0.01, tail_fit: bool = False) -> tuple[float, dict[str, Any]]:
    """Image threshold for a target false-alarm rate from out-of-sample good scores (rule ``score > threshold``).

    Args:
        good_scores: Out-of-sample image scores of the N good images.
        target_fpr: alpha, in (0, 1).
        tail_fit: Where N is too small for alpha, extrapolate with a generalised Pareto tail instead of refusing.

    Returns:
        ``(threshold, record)``; the record holds ``rule`` (``conformal`` or ``tail_fit``), ``n_good``, ``rank``,
        ``guaranteed_fpr`` (``1 - k/(N+1)``; None for a tail fit) and ``statement`` (one sentence for users).

    Raises:
        SettingError: too few scores for ``target_fpr`` without ``tail_fit``.

    Example:
        >>> thr, record = conformal_threshold(np.arange(240.0), 0.01)
        >>> thr, record["rank"]
        (238.0, 239)
        >>> print(record["statement"])  # doctest: +NORMALIZE_WHITESPACE
        target 1 %: 240 good images scored out of sample, threshold = the 239th smallest score,
        P(false alarm) <= 0.83 %
    """
    scores = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())
    n = scores.size
    check_calibration_size(n, target_fpr, tail_fit)
    k = conformal_rank(n, target_fpr)
    target = f"target {_percent(target_fpr)}"
    if k <= n:
        bound = 1.0 - k / (n + 1)
        return float(scores[k - 1]), {
            "rule": "conformal",
            "n_good": n,
            "rank": k,
            "guaranteed_fpr": bound,
            "statement": f"{target}: {n} good images scored out of sample, threshold = the {_ordinal(k)} smallest "
            f"score, P(false alarm) <= {_percent(bound)}",
        }
    threshold, tail = pareto_tail_threshold(scores, target_fpr)
    return threshold, {
        "rule": "tail_fit",
        "n_good": n,
        "rank": None,
        "guaranteed_fpr": None,
        **tail,
        "statement": f"{target}: only {n} good images (the conformal rule needs {min_good_images(target_fpr)}); "
        f"threshold extrapolated by a generalised Pareto fit to the top {tail['tail_size']} scores, no "
        "finite-sample guarantee",
    }


def pareto_tail_threshold(scores, target_fpr: float) -> tuple[float, dict[str, Any]]:
    """Threshold where a generalised Pareto tail, fitted to the top scores, puts ``target_fpr`` of the mass above.

    The top ``m = max(10, 0.2 N)`` scores' excesses over the next score ``u`` are fitted by maximum likelihood
    (location 0, shape held at -0.5 if the fit goes below, where the likelihood stops being regular);
    ``P(S > u + y) = (m / N) * (1 - G(y))`` is solved for ``target_fpr``. A target inside the
    observed range (``target_fpr >= m / N``) is read off the empirical quantile instead.
    """
    from scipy.stats import genpareto

    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = s.size
    m = min(n - 1, max(_TAIL_MIN, int(math.ceil(_TAIL_SHARE * n))))
    if m < 3:
        raise SettingError(f"a tail fit needs at least 4 good images, got {n}")
    u = s[n - m - 1]
    excess = s[n - m :] - u
    share = target_fpr * n / m
    if share >= 1.0:
        return float(np.quantile(s, 1.0 - target_fpr)), {"tail_size": m, "tail_shape": None, "tail_scale": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shape, _, scale = genpareto.fit(np.maximum(excess, 0.0), floc=0.0)
        if shape < _MIN_SHAPE:  # below -0.5 the likelihood is irregular (unbounded below -1): hold the shape there
            shape, _, scale = genpareto.fit(np.maximum(excess, 0.0), f0=_MIN_SHAPE, floc=0.0)
    threshold = u + float(genpareto.ppf(1.0 - share, shape, loc=0.0, scale=scale))
    if not math.isfinite(threshold):
        threshold = float(s[-1])
    return max(threshold, float(s[-1])), {"tail_size": m, "tail_shape": float(shape), "tail_scale": float(scale)}


def _percent(rate: float) -> str:
    return f"{100 * rate:.3g} %"


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def f1_adaptive_threshold(scores, labels) -> tuple[float, str]:
    """F1-optimal raw threshold, with anomalib's fallbacks for one-class data.

    Args:
        scores: Image (or pixel) scores.
        labels: 1 = defect, 0 = good.

    Returns:
        ``(threshold, method)`` with method ``f1``, ``max_good`` (no defects) or ``below_min_defect`` (no good).

    Example:
        >>> f1_adaptive_threshold([0.1, 0.2, 0.3], [0, 0, 0])
        (0.3, 'max_good')
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if not y.any():
        warnings.warn("no defective sample for the F1 threshold; using the maximum good score", stacklevel=2)
        return float(s.max()), "max_good"
    if y.all():
        warnings.warn("no good sample for the F1 threshold; flagging every defect (below the minimum)", stacklevel=2)
        low = float(s.min())
        return low - max(abs(low), 1.0) * 1e-6, "below_min_defect"
    _, threshold = f1_max(s, y)
    return threshold, "f1"


def _as_maps(maps: torch.Tensor | np.ndarray) -> torch.Tensor:
    maps = torch.as_tensor(maps).float()
    if maps.ndim != 3:
        raise ValueError(f"anomaly maps must be (N, S, S), got {tuple(maps.shape)}")
    return maps


def fit_calibration(
    good_maps: torch.Tensor,
    normalization: MapNormalization,
    defect_maps: torch.Tensor | None = None,
    defect_masks: torch.Tensor | None = None,
    target_fpr: float = 0.01,
    sensitivity: float = 0.5,
    synthetic_maps: torch.Tensor | None = None,
    synthetic_masks: torch.Tensor | None = None,
    tail_fit: bool = False,
    pixel_target_fpr: float | None = None,
) -> Calibration:
    """Choose thresholds and score statistics from calibration maps (the rules in the module docstring).

    Synthetic defects never move the image threshold (they are not the product's real defects).

    Args:
        good_maps: ``(N, S, S)`` blended out-of-sample maps of the good images.
        normalization: The component statistics the bundle ships (stored alongside).
        defect_maps: Optional ``(M, S, S)`` maps of labelled defective images (switches to the F1 threshold).
        defect_masks: Optional ``(M, S, S)`` binary masks of those images (F1 pixel threshold).
        target_fpr: False-alarm rate on good parts for good-only calibration.
        sensitivity: Default operating point stored in the calibration.
        synthetic_maps: Optional ``(K, S, S)`` maps of synthetic defects (pixel threshold only).
        synthetic_masks: Their ``(K, S, S)`` masks.
        tail_fit: Allow a generalised Pareto tail where N is too small for ``target_fpr``.
        pixel_target_fpr: Share of good pixels allowed above the pixel threshold (conformal over the good
            images' pixels); None: synthetic-defect F1 or the image threshold.

    Returns:
        Calibration; ``info["operating_point"]`` holds the rule, rank and guarantee of the image threshold.

    Raises:
        SettingError: too few good images for ``target_fpr`` (see :func:`check_calibration_size`).
    """
    check_sensitivity(sensitivity)
    good_maps = _as_maps(good_maps)
    if good_maps.shape[0] == 0:
        raise ValueError("calibration needs at least one good image")
    good_scores = image_scores(good_maps).numpy()
    all_maps = [good_maps]
    info: dict = {}
    if defect_maps is None or len(defect_maps) == 0:
        image_threshold, info["operating_point"] = conformal_threshold(good_scores, target_fpr, tail_fit)
        method = info["operating_point"]["rule"]
        pixel_threshold = image_threshold
        n_defect = 0
    else:
        defect_maps = _as_maps(defect_maps)
        all_maps.append(defect_maps)
        defect_scores = image_scores(defect_maps).numpy()
        scores = np.r_[good_scores, defect_scores]
        labels = np.r_[np.zeros(good_scores.size), np.ones(defect_scores.size)]
        image_threshold, method = f1_adaptive_threshold(scores, labels)
        info["f1_image"] = float(f1_max(scores, labels)[0])
        info["operating_point"] = {
            "rule": method,
            "statement": f"F1-optimal threshold between {good_scores.size} good and {defect_scores.size} labelled "
            f"defective images (F1 {info['f1_image']:.3f}; no false-alarm guarantee)",
        }
        pixel_threshold = image_threshold
        if defect_masks is not None:
            masks = torch.as_tensor(defect_masks).bool()
            pixel_scores = torch.cat([good_maps.flatten(), defect_maps.flatten()]).numpy()
            pixel_labels = torch.cat([torch.zeros(good_maps.numel(), dtype=torch.bool), masks.flatten()]).numpy()
            if pixel_labels.any():
                info["f1_pixel"], pixel_threshold = f1_max(pixel_scores, pixel_labels)
        n_defect = int(defect_maps.shape[0])
        target_fpr = None
    if pixel_target_fpr is not None and (defect_maps is None or len(defect_maps) == 0):
        pixel_threshold, record = conformal_threshold(good_maps.flatten().numpy(), pixel_target_fpr)
        info.update(pixel_method="conformal", pixel_target_fpr=float(pixel_target_fpr), pixel_rank=record["rank"])
    elif synthetic_maps is not None and len(synthetic_maps) and (defect_maps is None or len(defect_maps) == 0):
        synthetic_maps = _as_maps(synthetic_maps)
        masks = torch.as_tensor(synthetic_masks).bool()
        pixel_scores = torch.cat([good_maps.flatten(), synthetic_maps.flatten()]).numpy()
        pixel_labels = torch.cat([torch.zeros(good_maps.numel(), dtype=torch.bool), masks.flatten()]).numpy()
        if pixel_labels.any():
            f1, best = f1_max(pixel_scores, pixel_labels)
            pixel_threshold = float(best)
            info.update(pixel_method="synthetic_f1", f1_pixel_synthetic=float(f1), n_synthetic=int(len(masks)))
    info.setdefault("pixel_method", "f1" if "f1_pixel" in info else "image_threshold")
    # Measured on the out-of-sample maps (each good image scored by a model that did not contain it).
    info["good_false_alarm_rate"] = float((good_scores > image_threshold).mean())
    stacked = torch.cat([m.flatten(1) for m in all_maps])
    scores_all = stacked.amax(dim=1)
    return Calibration(
        normalization=normalization,
        image_threshold=float(image_threshold),
        pixel_threshold=float(pixel_threshold),
        image_min=float(scores_all.min()),
        image_max=float(scores_all.max()),
        pixel_min=float(stacked.min()),
        pixel_max=float(stacked.max()),
        sensitivity=float(sensitivity),
        method=method,
        target_fpr=target_fpr,
        n_good=int(good_maps.shape[0]),
        n_defect=n_defect,
        info=info,
    )


def calibrate_pipeline(
    pipe,
    good_images: torch.Tensor,
    target_fpr: float = 0.01,
    batch_size: int = 16,
    seed: int = 0,
    select: bool = False,
    select_grid: dict[str, Sequence[Any]] | None = None,
    log: Callable[[str], None] | None = print,
    progress=False,
    tail_fit: bool = False,
    pixel_target_fpr: float | None = None,
    max_synthetic: int = 64,
    unet_trained: np.ndarray | None = None,
    labelled: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """Fix the map statistics and the thresholds of a fitted pipeline from its good images (optionally selecting
    sampler and map settings first).

    Every good image is scored out of sample (``out_of_sample.py``); synthetic defects are made on up to
    ``max_synthetic`` evenly spaced good images: the DRAEM/CutPaste kinds set the pixel threshold, and with
    ``select`` the subtle kinds (pits, scratches, stains) choose the settings; neither moves the image threshold.
    The pipeline gets the statistics over all good images.

    Args:
        pipe: A fitted ``DDADPipeline`` whose banks hold exactly ``good_images``, in this order.
        good_images: ``(N, 3, S, S)`` preprocessed good images of the fit.
        target_fpr, tail_fit, pixel_target_fpr: See :func:`fit_calibration`.
        batch_size: Images per batch.
        seed: Seed of the synthetic defects.
        select, select_grid: Choose settings on synthetic defects (``ddad_core.fitting.select``).
        log: One line per stage (None: silent).
        progress: Progress of the steps ``selection`` and ``calibration``.
        max_synthetic: Synthetic defects made (one per good image, evenly spaced).
        unet_trained: ``(N,)`` bool, the images the UNet trained on (records ``reconstruction_gap``).
        labelled: ``(good, defects)`` preprocessed images the line produced and operators labelled (a labelled set
            exported by ``python -m services.teacher export``): the good ones join the good maps, the defects make
            the image threshold the F1-optimal one between them (:func:`fit_calibration`).

    Returns:
        ``(pipe, calibration, selection)``: the pipeline with its settings and statistics, its calibration (also set
        on it), and the selection record (None without ``select``).
    """
    from ddad_core.data import evenly_spaced
    from ddad_core.fitting.out_of_sample import (
        deployed_statistics,
        good_components,
        out_of_sample_maps,
        reconstruction_gap,
    )
    from ddad_core.fitting.select import select_settings
    from ddad_core.fitting.synthetic import SUBTLE_KINDS, make_synthetic_defects
    from ddad_core.progress import as_progress

    progress = as_progress(progress)
    n = len(good_images)
    check_calibration_size(n, target_fpr, tail_fit)
    synth_source = evenly_spaced(n, max_synthetic)
    synthetic = make_synthetic_defects(good_images[synth_source], seed=seed)
    selection, comps = None, None
    if select:
        # Settings are ranked on defects like real ones (small, thin, low contrast): their ranking agrees with the
        # real defects' far better than that of the large DRAEM/CutPaste pastes (docs/benchmarks.md).
        selection_defects = make_synthetic_defects(good_images[synth_source], seed=seed, kinds=SUBTLE_KINDS)
        if log is not None:
            log(f"[6/7] selecting settings on {n} good images and {len(synth_source)} synthetic defects")
        selection = select_settings(
            pipe,
            good_images,
            selection_defects.images,
            selection_defects.masks,
            synth_source,
            grid=select_grid,
            batch_size=batch_size,
            log=log,
            progress=progress,
        )
        comps, _ = selection.pop("components")
        pipe = pipe.with_settings(**selection["chosen"])
        if log is not None:
            log(f"[6/7] selected {selection['chosen']} (recipe default {selection['recipe_default']})")
    line = torch.cat(labelled) if labelled is not None else good_images[:0]
    total = (0 if comps is not None else n) + len(synth_source) + len(line)
    with progress.step("calibration", total=total) as step:
        if comps is None:
            comps = good_components(pipe, good_images, batch_size=batch_size, step=step)
        synth_comps = good_components(pipe, synthetic.images, synth_source, batch_size, step)
        not_in_bank = torch.full((len(line),), -1)  # frames of the line: nothing of theirs is in the banks
        line_comps = good_components(pipe, line, not_in_bank, batch_size, step) if len(line) else None
    good_maps = out_of_sample_maps(pipe, comps)
    synthetic_maps = out_of_sample_maps(pipe, comps, synth_comps, synth_source)
    defect_maps = None
    if line_comps is not None:
        line_maps = out_of_sample_maps(pipe, comps, line_comps, not_in_bank)
        good_maps, defect_maps = torch.cat([good_maps, line_maps[: len(labelled[0])]]), line_maps[len(labelled[0]) :]
    normalization, pipe.position_norm = deployed_statistics(pipe, comps)
    calibration = fit_calibration(
        good_maps,
        normalization,
        defect_maps=defect_maps,
        target_fpr=target_fpr,
        synthetic_maps=synthetic_maps,
        synthetic_masks=synthetic.masks,
        tail_fit=tail_fit,
        pixel_target_fpr=pixel_target_fpr,
    )
    if unet_trained is not None:
        gap = reconstruction_gap(comps, unet_trained)
        if gap is not None:
            calibration.info["reconstruction_gap"] = gap
    pipe.calibration = calibration
    if log is not None:
        log(
            f"[6/7] {calibration.info['operating_point']['statement']}; threshold {calibration.image_threshold:.4f}, "
            f"pixel threshold {calibration.pixel_threshold:.4f} ({calibration.info.get('pixel_method')})"
        )
    return pipe, calibration, selection
