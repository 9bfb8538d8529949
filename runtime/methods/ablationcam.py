"""Ablation-CAM (Desai & Ramaswamy, WACV 2020): channel weights from the model after the layer.

Channel ``c`` of the layer's output set to the ablation value gives score ``y_c``; the weight
is the relative drop ``w_c = (y − y_c) / y`` of the target's own score ``y``. Only the model
from the layer on runs (the graph's ``tail``, docs/explainer-graph.md), in chunks.
"""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.methods.base import Forward, Method, Passes, Scorer

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


def ablation_cam_weights(layer_output: np.ndarray, score: Scorer, full: float, tail: Forward, channel_axis: int = 0,
                         chunk: int = CHUNK) -> np.ndarray:
    """One row's weights. ``layer_output``: the layer's output as the rest of the model reads it,
    without the batch (``[C, h, w]``, or ``[T, C]`` tokens with ``channel_axis=1``); ``tail`` runs
    the model from there on; ``score``: outputs → the target's score; ``full``: that score on the
    unablated model. → ``[C]``."""
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
    full = np.float32(full)
    return (full - ablated_scores) / full


def passes(context: Passes, layer) -> np.ndarray:
    """``[R, C]``: every row's weights."""
    tail, layer_output = context.tail(layer), context.outputs[layer.tail["input"]]
    return np.stack([ablation_cam_weights(layer_output[r], context.scorers[r],
                                          context.scorers[r](context.model_output[r:r + 1])[0], tail,
                                          channel_axis=layer.tail["channel_axis"] - 1)
                     for r in range(len(context.scorers))])


METHOD = Method("ablationcam", passes=passes, needs_gradient=False, needs_tail=True)
