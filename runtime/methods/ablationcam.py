"""Ablation-CAM (Desai & Ramaswamy, WACV 2020): channel weights from the model after the layer.

Channel ``c`` of the layer's output set to the ablation value gives score ``y_c``; the weight
is the relative drop ``w_c = (y − y_c) / y`` of the target's own score ``y``. Only the model
from the layer on runs (the graph's ``tail``, docs/explainer-graph.md), in chunks.

Where ``y = 0`` the relative drop is undefined (pytorch-grad-cam returns NaN or ±Inf weights,
and so a NaN map). The map is min-max normalised, which no positive factor changes (but for
its 1e-7), so onnxcam takes the limit of the map as ``y → 0⁺``: the drops scaled by the
largest, ``w_c = (y − y_c) / max_k |y − y_k|`` — the same where ``y`` is so near 0 that the
quotient overflows float32, signed as ``y`` there, as pytorch-grad-cam's quotient is — and 0
where no ablation changes the score (``relative_drops``). A NaN or ±Inf score, unablated
or ablated, is an ``InputError``.
"""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.contract import InputError
from onnxcam.runtime.methods.base import MODEL_HINT, Forward, Method, Passes, Scorer, check_finite

OFFSET = np.float32(1e7)  # pytorch-grad-cam's AblationLayer, for layers whose minimum is not 0
CHUNK = 32


def ablation_values(layer_output: np.ndarray, count: int, chunk: int) -> np.ndarray:
    """The value each ablated channel is set to, ``[count]`` (pytorch-grad-cam's AblationLayer):
    0 where the layer's minimum is 0 (after a ReLU); otherwise ``min − 10⁷``, where the minimum is
    taken again after each ablation of a chunk, so it sinks by 10⁷ per channel within a chunk."""
    minimum = np.float32(layer_output.min())
    if minimum == 0:
        return np.zeros(count, np.float32)
    values = np.empty(count, np.float32)
    for start in range(0, count, chunk):
        current = minimum
        for index in range(start, min(start + chunk, count)):
            current = np.float32(current - OFFSET)
            values[index] = current
    return values


def relative_drops(full: float, ablated: np.ndarray) -> np.ndarray:
    """``[C]`` weights from the target's score ``full`` (``y``) and its scores with each channel
    ablated ``[C]`` (``y_c``): ``(y − y_c) / y`` in float32, as pytorch-grad-cam computes it, where
    that is finite; where ``y = 0``, or ``|y|`` is so small that the quotient overflows float32,
    ``± (y − y_c) / max_k |y − y_k|`` (+ for ``y = 0``, else the sign of ``y``): the limit of the
    normalised map as ``y → 0⁺`` (module docstring); zeros where every ``y_c = y``."""
    full, ablated = np.float32(full), np.asarray(ablated, np.float32)
    if full != 0:
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            weights = (full - ablated) / full
        if np.isfinite(weights).all():
            return weights
    drops = np.float64(full) - ablated.astype(np.float64)
    largest = np.abs(drops).max(initial=0.0)
    if largest == 0:
        return np.zeros(len(ablated), np.float32)
    return np.float32((-1.0 if full < 0 else 1.0) * drops / largest)


def ablation_cam_weights(layer_output: np.ndarray, score: Scorer, full: float, tail: Forward, channel_axis: int = 0,
                         chunk: int = CHUNK, where: str = "the layer") -> np.ndarray:
    """One row's weights. ``layer_output``: the layer's output as the rest of the model reads it,
    without the batch (``[C, h, w]``, or ``[T, C]`` tokens with ``channel_axis=1``); ``tail`` runs
    the model from there on; ``score``: outputs → the target's score; ``full``: that score on the
    unablated model; ``where``: the layer (and row), for error messages. → ``[C]``
    (``relative_drops``). A NaN or ±Inf score is an ``InputError``."""
    check_finite(f"{where}: its output", layer_output, MODEL_HINT)
    if not np.isfinite(full):
        raise InputError(f"Ablation-CAM at {where}: the target's score is {float(full)}; the model computed it "
                         "from this input (an overflow or NaN inside the network): check the input's preprocessing "
                         "and scale")
    channels = layer_output.shape[channel_axis]
    values = ablation_values(layer_output, channels, chunk)
    moved = np.moveaxis(layer_output, channel_axis, 0)
    ablated_scores = np.empty(channels, np.float32)
    for start in range(0, channels, chunk):
        indices = np.arange(start, min(start + chunk, channels))
        copies = np.repeat(moved[None], len(indices), axis=0)
        copies[np.arange(len(indices)), indices] = values[indices].reshape(-1, *([1] * (moved.ndim - 1)))
        batch = np.ascontiguousarray(np.moveaxis(copies, 1, channel_axis + 1), dtype=np.float32)
        ablated_scores[start:start + len(indices)] = score(tail(batch))
    bad = np.flatnonzero(~np.isfinite(ablated_scores))
    if len(bad):
        raise InputError(f"Ablation-CAM at {where}: the target's score is NaN or infinite with {len(bad)} of "
                         f"{channels} channel(s) ablated (first: channel {bad[0]}, set to {values[bad[0]]:g}); the "
                         "model after the layer overflows on the ablated activations: use another method (e.g. "
                         "scorecam) here")
    return relative_drops(full, ablated_scores)


def row_sides(outputs: dict[str, np.ndarray], sides, row: int, rows: int) -> dict[str, np.ndarray]:
    """Row ``row`` of ``rows``'s values ``[1, …]`` of the tail's side tensors, fetched ``[rows, …]``
    or, computed before the rows repeat per target, ``[N, …]``."""
    return {side: outputs[side][row * len(outputs[side]) // rows][None] for side in sides}


def passes(context: Passes, layer) -> np.ndarray:
    """``[R, C]``: every row's weights."""
    tail, layer_output = context.tail(layer), context.outputs[layer.tail["input"]]
    rows, sides = len(context.scorers), layer.tail.get("sides", ())
    return np.stack([ablation_cam_weights(layer_output[r], context.scorers[r],
                                          context.scorers[r](context.model_output[r:r + 1])[0],
                                          (lambda batch, r=r: tail(batch, row_sides(context.outputs, sides, r, rows)))
                                          if sides else tail,
                                          channel_axis=layer.tail["channel_axis"] - 1,
                                          where=f"layer {layer.name!r}, row {r}")
                     for r in range(rows)])


METHOD = Method("ablationcam", passes=passes, needs_gradient=False, needs_tail=True)
