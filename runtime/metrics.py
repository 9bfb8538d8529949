"""Faithfulness metrics for saliency maps: does the model's confidence follow the map?

Small numpy functions, one per metric, plus :func:`evaluate_maps`, which perturbs a batch
as each metric says and runs the perturbed images through a ``forward`` callable (in
onnxcam: ``Explainer.forward``, forward passes on onnxruntime, no backward). The maps come
from ``Explainer.explain``. Nothing here imports torch; ROAD's sparse solve imports scipy
when it runs.

Conventions shared by all metrics (those of pytorch-grad-cam's ``metrics/``, so that its
classes serve as oracles):

- images are the *preprocessed* tensors ``float32 [C, H, W]`` the model takes, so "black"
  (0) is the dataset's mean colour: ``image ⊙ map`` and deletion's baseline are 0 there;
- the score of an image is the softmax probability of the explained class ``c`` (the class
  the map was made for), what pytorch-grad-cam's ``ClassifierOutputSoftmaxTarget`` returns;
  for other target kinds (segmentation, similarity…) it is the target's own score, given
  as a function of the model's outputs (``targets.Target.scorer``);
- maps are ``[H, W]`` at input resolution in [0, 1] (``Explanation.maps``).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from onnxcam.runtime.methods.base import softmax

METRICS = ("avg-drop", "increase", "deletion", "insertion", "road-morf", "road-lerf", "road")
ROAD_METRICS = frozenset({"road-morf", "road-lerf", "road"})  # the ones that need scipy
# which way is better, for tables: +1 higher is better, -1 lower is better
BETTER = {"avg-drop": -1, "increase": +1, "deletion": -1, "insertion": +1, "road-morf": -1, "road-lerf": +1,
          "road": +1}
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # pytorch-grad-cam's ROADCombined default
ROAD_NOISE = 0.01  # pytorch-grad-cam's NoisyLinearImputer default (absolute, in preprocessed units)
# pytorch-grad-cam's neighbors_weights: (row offset, column offset) → weight; edges 1/6, corners 1/12
ROAD_NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
                   ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))
RISE_BLUR_SIZE, RISE_BLUR_SIGMA = 11, 5.0  # RISE's insertion substrate: gkern(klen=11, nsig=5)
DEFAULT_STEPS = 224  # RISE: 224 pixels per step on 224 × 224 inputs

Forward = Callable[[np.ndarray], np.ndarray]  # float32 [N, C, H, W] → model outputs [N, *O]
Scorer = Callable[[np.ndarray], np.ndarray]  # model outputs [B, *O] → one target's score [B]


# --- scores -----------------------------------------------------------------------------------

def class_scores(forward: Forward, images: np.ndarray, classes: np.ndarray | int) -> np.ndarray:
    """Softmax probability of ``classes`` (one per image, or one for all) for ``images``
    ``[K, C, H, W]`` → ``[K]`` (float64)."""
    probabilities = softmax(np.asarray(forward(np.ascontiguousarray(images, dtype=np.float32)), dtype=np.float64))
    classes = np.broadcast_to(np.asarray(classes, dtype=np.int64), (len(probabilities),))
    return probabilities[np.arange(len(probabilities)), classes]


def target_scores(forward: Forward, images: np.ndarray, target: int | Scorer) -> np.ndarray:
    """One image's target scored on ``images`` ``[K, C, H, W]`` → ``[K]`` (float64): a class id's softmax
    probability (:func:`class_scores`), or a scorer applied to the model's outputs."""
    if callable(target):
        return np.asarray(target(forward(np.ascontiguousarray(images, dtype=np.float32))), np.float64)
    return class_scores(forward, images, target)


# --- Average Drop % and Increase in Confidence % (Grad-CAM++) -----------------------------------

def multiply_by_maps(batch: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """The "explanation map" images of Grad-CAM++ (§ 5.1): ``E = map ⊙ image``, on the preprocessed
    tensor (pytorch-grad-cam's ``multiply_tensor_with_cam``). ``[N, C, H, W]`` × ``[N, H, W]`` → ``[N, C, H, W]``."""
    return (np.asarray(batch, np.float32) * np.asarray(maps, np.float32)[:, None]).astype(np.float32)


def average_drop(full: np.ndarray, explained: np.ndarray) -> np.ndarray:
    """Per-image drop, in %: ``100 · max(0, Y_c − O_c) / Y_c``; its mean over images is the Average Drop %
    of Chattopadhyay et al. 2018 (Grad-CAM++, arXiv:1710.11063, eq. 21). ``Y_c``: class score on the image,
    ``O_c``: on ``map ⊙ image``. ``[N]``, ``[N]`` → ``[N]``; lower is better."""
    full, explained = np.asarray(full, np.float64), np.asarray(explained, np.float64)
    return 100.0 * np.maximum(0.0, full - explained) / full


def increase_in_confidence(full: np.ndarray, explained: np.ndarray) -> np.ndarray:
    """Per image, in %: ``100 · 1[O_c > Y_c]``; its mean over images is the "% Increase in Confidence" of
    Grad-CAM++ (arXiv:1710.11063, § 5.1). ``[N]``, ``[N]`` → ``[N]``; higher is better."""
    return 100.0 * (np.asarray(explained, np.float64) > np.asarray(full, np.float64))


# --- deletion and insertion (RISE) --------------------------------------------------------------

def rise_blur(batch: np.ndarray) -> np.ndarray:
    """RISE's insertion substrate: each channel convolved with an 11 × 11 Gaussian of σ = 5 (normalised to sum 1),
    zero padding as RISE's ``conv2d(padding=klen // 2)``. RISE samples its kernel as scipy's ``gaussian_filter`` of a
    delta; this is the sampled Gaussian itself. ``[N, C, H, W]`` → same."""
    taps = cv2.getGaussianKernel(RISE_BLUR_SIZE, RISE_BLUR_SIGMA, cv2.CV_32F)
    batch = np.asarray(batch, np.float32)
    planes = [cv2.sepFilter2D(plane, -1, taps, taps, borderType=cv2.BORDER_CONSTANT)
              for plane in batch.reshape(-1, *batch.shape[2:])]
    return np.stack(planes).reshape(batch.shape)


def saliency_ranks(map_: np.ndarray) -> np.ndarray:
    """Each pixel's place in the order of decreasing saliency (0 = most salient; ties in raster order).
    ``[H, W]`` → ``int64 [H, W]``."""
    order = np.argsort(-np.asarray(map_, np.float64).ravel(), kind="stable")
    ranks = np.empty_like(order)
    ranks[order] = np.arange(order.size)
    return ranks.reshape(map_.shape)


def causal_steps(pixels: int, steps: int) -> np.ndarray:
    """How many pixels are replaced at each point of a RISE curve: RISE's ``step = ceil(pixels / steps)``
    pixels at a time, from 0 to all. → ``int64 [n + 1]``, ``n = ceil(pixels / step)``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    step = math.ceil(pixels / steps)
    return np.minimum(np.arange(math.ceil(pixels / step) + 1) * step, pixels)


def causal_images(start: np.ndarray, finish: np.ndarray, ranks: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Images of a RISE curve: ``start`` with its ``count`` most salient pixels (by ``ranks``) taken from
    ``finish``, for each count. ``[C, H, W]``, ``[C, H, W]``, ``[H, W]``, ``[K]`` → ``[K, C, H, W]``."""
    replaced = ranks[None] < np.asarray(counts)[:, None, None]
    return np.where(replaced[:, None], finish[None], start[None]).astype(np.float32)


def auc(curves: np.ndarray) -> np.ndarray:
    """Area under curves sampled at equal steps over [0, 1], trapezoid rule (RISE's ``auc``:
    ``(Σ s − s_0/2 − s_n/2) / n``). ``[..., n + 1]`` → ``[...]``."""
    curves = np.asarray(curves, np.float64)
    return (curves.sum(axis=-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / (curves.shape[-1] - 1)


def causal_curve(forward: Forward, start: np.ndarray, finish: np.ndarray, map_: np.ndarray, target: int | Scorer,
                 steps: int = DEFAULT_STEPS, chunk: int = 32) -> np.ndarray:
    """The class-``target`` probability along a RISE curve from ``start`` to ``finish`` (pixels moved in order
    of decreasing ``map_``), ``chunk`` images per ``forward`` call. Deletion: start = image, finish = 0;
    insertion: start = blurred image, finish = image (Petsiuk et al. 2018, RISE, arXiv:1806.07421, § 4.1).
    ``[C, H, W]`` × 2, ``[H, W]`` → ``[n + 1]``."""
    ranks = saliency_ranks(map_)
    counts = causal_steps(ranks.size, steps)
    return np.concatenate([target_scores(forward, causal_images(start, finish, ranks, counts[i:i + chunk]), target)
                           for i in range(0, len(counts), chunk)])


# --- ROAD (Rong et al. 2022), as pytorch-grad-cam 1.5.7 defines it ------------------------------

def road_imputed_pixels(map_: np.ndarray, percentile: float, most_relevant: bool) -> np.ndarray:
    """The pixels ROAD replaces, ``bool [H, W]``: MoRF replaces those at or above the map's ``percentile``-th
    percentile (so percentile 80 removes the top 20 %), LeRF does the same on ``1 − map`` (the least relevant).
    pytorch-grad-cam's ``RemoveMostRelevantFirst`` / ``RemoveLeastRelevantFirst`` keep ``map < threshold``."""
    map_ = np.asarray(map_, np.float32)
    ranked = map_ if most_relevant else np.float32(1) - map_
    threshold = ranked.dtype.type(np.percentile(ranked, percentile))  # compared in float32, as torch does
    return ~(ranked < threshold)


def require_scipy():
    """scipy (with ``scipy.sparse.linalg`` loaded), which ROAD's imputation needs; a one-line
    ``ModuleNotFoundError`` saying how to install it if it is missing."""
    try:
        import scipy
        import scipy.sparse.linalg  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError("ROAD's imputation solves a sparse linear system with scipy, which is not "
                                  "installed; install it with `pip install scipy`, or leave out the road metrics") from None
    return scipy


def _linear_system(image: np.ndarray, missing: np.ndarray):
    """ROAD's linear imputation as a sparse system ``A x = b``: each missing pixel is the weighted mean of its
    in-image 8-neighbours (``ROAD_NEIGHBOURS``), known neighbours moved to ``b``. → (``A`` csc ``[m, m]``,
    ``b [m, C]``, flat indices of the missing pixels ``[m]``)."""
    sparse = require_scipy().sparse
    height, width = missing.shape
    flat = image.reshape(image.shape[0], -1).astype(np.float64)
    where = np.flatnonzero(missing)
    variable = np.full(missing.size, -1, np.int64)
    variable[where] = np.arange(where.size)
    rows, columns = np.divmod(where, width)
    b = np.zeros((where.size, image.shape[0]))
    diagonal = np.zeros(where.size)
    entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for (dy, dx), weight in ROAD_NEIGHBOURS:
        y, x = rows + dy, columns + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        diagonal[inside] -= weight
        equation, neighbour = np.flatnonzero(inside), (y * width + x)[inside]
        known = ~missing.ravel()[neighbour]
        b[equation[known]] -= weight * flat[:, neighbour[known]].T
        entries.append((equation[~known], variable[neighbour[~known]], np.full((~known).sum(), weight)))
    entries.append((np.arange(where.size), np.arange(where.size), diagonal))
    i, j, values = (np.concatenate(parts) for parts in zip(*entries))
    return sparse.csc_matrix((values, (i, j)), shape=(where.size, where.size)), b, where


def noisy_linear_imputation(image: np.ndarray, missing: np.ndarray, noise: float = ROAD_NOISE,
                            rng: np.random.Generator | None = None) -> np.ndarray:
    """ROAD's noisy linear imputation (Rong et al. 2022, arXiv:2202.00449; pytorch-grad-cam's
    ``NoisyLinearImputer``): the ``missing`` pixels get the solution of the linear system in which each one is
    the weighted mean of its 8 neighbours inside the image, per channel, plus ``noise ·`` standard normal noise.
    ``image [C, H, W]``, ``missing bool [H, W]`` → ``float32 [C, H, W]``."""
    missing = np.asarray(missing, bool)
    result = np.array(image, np.float32, copy=True)
    if not missing.any():
        return result
    matrix, b, where = _linear_system(result, missing)
    solution = require_scipy().sparse.linalg.spsolve(matrix, b).reshape(where.size, -1).T  # [C, m]
    if noise:
        solution = solution + noise * (rng or np.random.default_rng()).standard_normal(solution.shape)
    flat = result.reshape(result.shape[0], -1)
    flat[:, where] = solution
    return result


def road_scores(forward: Forward, image: np.ndarray, map_: np.ndarray, target: int | Scorer,
                percentiles: Sequence[float] = ROAD_PERCENTILES, noise: float = ROAD_NOISE,
                rng: np.random.Generator | None = None) -> dict[str, float]:
    """ROAD for one image, as pytorch-grad-cam's ``ROADMostRelevantFirstAverage``, ``...LeastRelevantFirstAverage``
    and ``ROADCombined`` define it: at each percentile, the class probability after imputation minus before,
    averaged over percentiles. ``road = (lerf − morf) / 2`` (higher is better). ``[C, H, W]``, ``[H, W]`` →
    ``{"road-morf", "road-lerf", "road"}``."""
    rng = rng or np.random.default_rng()
    imputed = [noisy_linear_imputation(image, road_imputed_pixels(map_, p, most_relevant), noise, rng)
               for most_relevant in (True, False) for p in percentiles]
    scores = target_scores(forward, np.stack([image, *imputed]), target)
    changes = (scores[1:] - scores[0]).reshape(2, len(percentiles)).mean(axis=1)
    return {"road-morf": float(changes[0]), "road-lerf": float(changes[1]),
            "road": float((changes[1] - changes[0]) / 2)}


# --- all metrics over a batch -------------------------------------------------------------------

def check_metrics(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` checked against :data:`METRICS` (case-insensitive), in :data:`METRICS` order, once each."""
    wanted = {name.lower() for name in names}
    unknown = sorted(wanted - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; choose from: {', '.join(METRICS)}")
    return tuple(name for name in METRICS if name in wanted)


def evaluate_maps(forward: Forward, batch: np.ndarray, maps: np.ndarray, targets: np.ndarray,
                  metrics: Sequence[str] = METRICS, steps: int = DEFAULT_STEPS, chunk: int = 32,
                  percentiles: Sequence[float] = ROAD_PERCENTILES, noise: float = ROAD_NOISE, seed: int = 0,
                  progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Every metric in ``metrics`` for each image: ``batch [N, C, H, W]`` (preprocessed), ``maps [N, H, W]``
    in [0, 1], ``targets``: the explained classes ``int [N]``, or one scorer per image (other target
    kinds) → ``{metric: float64 [N]}``. The mean over images is
    the paper's figure (for ``avg-drop`` and ``increase`` it is the percentage). ``progress(1)`` after each image.
    ROAD's noise comes from ``numpy.random.default_rng(seed)``."""
    metrics = check_metrics(metrics)
    batch = np.asarray(batch, np.float32)
    maps = np.asarray(maps, np.float32)
    scorers = isinstance(targets, (list, tuple)) and all(callable(t) for t in targets)
    targets = list(targets) if scorers else np.asarray(targets, np.int64)
    if maps.shape != (batch.shape[0], *batch.shape[2:]) or len(targets) != batch.shape[0] \
            or (not scorers and targets.ndim != 1):
        raise ValueError(f"maps {maps.shape} and targets {np.shape(targets) if not scorers else len(targets)} "
                         f"do not fit a batch of shape {batch.shape}")
    results = {name: np.zeros(len(batch)) for name in metrics}
    if {"avg-drop", "increase"} & set(metrics):
        explained_images = multiply_by_maps(batch, maps)
        if scorers:
            full = np.array([target_scores(forward, batch[i:i + 1], t)[0] for i, t in enumerate(targets)])
            explained = np.array([target_scores(forward, explained_images[i:i + 1], t)[0] for i, t in enumerate(targets)])
        else:
            full = class_scores(forward, batch, targets)
            explained = class_scores(forward, explained_images, targets)
        if "avg-drop" in results:
            results["avg-drop"] = average_drop(full, explained)
        if "increase" in results:
            results["increase"] = increase_in_confidence(full, explained)
    rng = np.random.default_rng(seed)
    for i in range(len(batch)):
        for name, start, finish in _causal_ends(metrics, batch[i]):
            results[name][i] = auc(causal_curve(forward, start, finish, maps[i], _one(targets[i]), steps, chunk))
        if ROAD_METRICS & set(metrics):
            for name, value in road_scores(forward, batch[i], maps[i], _one(targets[i]), percentiles, noise, rng).items():
                if name in results:
                    results[name][i] = value
        if progress is not None:
            progress(1)
    return results


def _one(target):
    return target if callable(target) else int(target)


def evaluate_method(explainer, batch: np.ndarray, method: str, metrics: Sequence[str] = METRICS,
                    layers: Sequence[str | int] | None = None, steps: int = DEFAULT_STEPS, batch_size: int = 16,
                    seed: int = 0, progress: Callable[[int], None] | None = None,
                    target=None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``method``'s maps of ``batch [N, C, H, W]`` from ``explainer.explain`` (``target``: any target, default
    each image's top class; ``batch_size`` images per call), scored by :func:`evaluate_maps` with
    ``explainer.forward`` as the forward pass (onnxcam's ``Explainer``). Class targets are scored by their
    softmax probability, other kinds by their own score. → (``{metric: [N]}``, the explained classes
    ``int64 [N]``, or the target scores where the kind has no classes)."""
    chunks = [batch[i:i + batch_size] for i in range(0, len(batch), batch_size)]
    explained = [explainer.explain(chunk, method=method, layers=layers, targets=target) for chunk in chunks]
    maps = np.concatenate([e.maps for e in explained])
    kind = explained[0].kind
    if kind == "class":
        targets = np.concatenate([e.targets for e in explained])
        scored = targets
    else:
        chosen = explainer.target(target)
        scored = []
        for chunk, result in zip(chunks, explained):
            feeds = chosen.feeds(explainer.contract, len(chunk))
            scored += [chosen.scorer(i, feeds, result.targets, result.logits[i]) for i in range(len(chunk))]
        targets = (np.concatenate([e.targets for e in explained]) if explained[0].targets is not None
                   else np.concatenate([e.target_scores for e in explained]))

    def forward(images: np.ndarray) -> np.ndarray:
        return explainer.forward(images, chunk=batch_size)

    return evaluate_maps(forward, batch, maps, scored, metrics, steps=steps, chunk=batch_size, seed=seed,
                         progress=progress), targets


def _causal_ends(metrics: Sequence[str], image: np.ndarray) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(metric, start, finish) of the RISE curves asked for, for one image ``[C, H, W]``."""
    if "deletion" in metrics:
        yield "deletion", image, np.zeros_like(image)
    if "insertion" in metrics:
        yield "insertion", rise_blur(image[None])[0], image


# --- several instances of one class (Grad-CAM++'s motivating case) ------------------------------

def box_mass_shares(maps: np.ndarray, boxes: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """The share of each map's total mass inside each box ``(top, left, bottom, right)`` (pixel rows
    ``top:bottom``, columns ``left:right``; boxes should not overlap). ``[N, H, W]`` → ``[N, len(boxes)]``;
    a map with no mass gives zeros."""
    maps = np.asarray(maps, np.float64)
    total = maps.sum(axis=(1, 2))
    inside = np.stack([maps[:, top:bottom, left:right].sum(axis=(1, 2)) for top, left, bottom, right in boxes],
                      axis=1)
    return np.divide(inside, total[:, None], out=np.zeros_like(inside), where=total[:, None] > 0)


# --- reporting ----------------------------------------------------------------------------------

def summarise(per_image: dict[str, np.ndarray]) -> dict[str, float]:
    """The mean over images of each metric: ``{metric: [N]}`` → ``{metric: float}``."""
    return {name: float(np.mean(values)) for name, values in per_image.items()}


def format_value(metric: str, value: float) -> str:
    """Percentages (``avg-drop``, ``increase``) with 2 decimals, AUCs and ROAD with 4."""
    return f"{value:.2f}" if metric in ("avg-drop", "increase") else f"{value:.4f}"


def markdown_table(means: dict[str, dict[str, float]], metrics: Sequence[str], first: str = "method") -> str:
    """A markdown table, one row per key of ``means`` (``{row name: {metric: mean}}``), one column per metric."""
    lines = [f"| {first} | " + " | ".join(metrics) + " |", "| --- | " + " | ".join("---:" for _ in metrics) + " |"]
    lines += [f"| {name} | " + " | ".join(format_value(m, row[m]) for m in metrics) + " |" for name, row in means.items()]
    return "\n".join(lines)


def direction_note(metrics: Sequence[str]) -> str:
    """One line saying which metrics are better high and which low."""
    higher = [m for m in metrics if BETTER[m] > 0]
    lower = [m for m in metrics if BETTER[m] < 0]
    parts = ([f"higher is better: {', '.join(higher)}"] if higher else []) + \
            ([f"lower is better: {', '.join(lower)}"] if lower else [])
    return "; ".join(parts)
