"""CAM methods that weigh channels by extra forward passes: Score-CAM and Ablation-CAM.

Both are pure functions of the layer's activation, the targets and a callable that runs
the model on a batch (``forward(batch) → logits [B, classes]``); the session passes
onnxruntime forward slices of the explainer graph (``subgraph.py``), called on chunks of
``chunk`` perturbed inputs — never one call per channel.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from onnxcam.runtime.methods import softmax

Forward = Callable[[np.ndarray], np.ndarray]
EPSILON_SCORECAM = 1e-8  # pytorch-grad-cam's ScoreCAM mask normalisation
ABLATION_OFFSET = np.float32(1e7)  # pytorch-grad-cam's AblationLayer, for layers whose minimum is not 0


def align_corners_matrix(source: int, target: int) -> np.ndarray:
    """``[target, source]`` weights of 1-D bilinear interpolation with aligned corners
    (``torch.nn.UpsamplingBilinear2d``, which pytorch-grad-cam's ScoreCAM uses)."""
    if source == 1:
        return np.ones((target, 1), np.float32)
    if target == 1:
        return np.eye(1, source, dtype=np.float32)
    positions = np.arange(target, dtype=np.float64) * (source - 1) / (target - 1)
    low = np.minimum(np.floor(positions).astype(int), source - 2)
    fraction = positions - low
    matrix = np.zeros((target, source), np.float64)
    matrix[np.arange(target), low] = 1 - fraction
    matrix[np.arange(target), low + 1] += fraction
    return matrix.astype(np.float32)


def score_cam_weights(image: np.ndarray, activation: np.ndarray, target: int, forward: Forward,
                      chunk: int = 32) -> np.ndarray:
    """Score-CAM (Wang et al., 2020, arXiv:1910.01279) channel weights of one image.

    Each channel of ``activation`` ``[C, h, w]`` is upsampled to the input (bilinear, aligned
    corners), min-max normalised to a mask ``M_c``; the image ``[3, H, W]`` times each mask
    is scored by the model (raw logit of ``target``), and the weights are the softmax of
    those scores over channels: ``w_c = softmax_c(y_target(x ⊙ M_c))``. → ``[C]``.
    """
    height, width = image.shape[1:]
    rows = align_corners_matrix(activation.shape[1], height)
    columns = align_corners_matrix(activation.shape[2], width)
    scores = np.empty(activation.shape[0], np.float32)
    for start in range(0, activation.shape[0], chunk):
        upsampled = np.einsum("Hh,chw,Ww->cHW", rows, activation[start:start + chunk], columns, optimize=True)
        low = upsampled.min(axis=(1, 2), keepdims=True)
        high = upsampled.max(axis=(1, 2), keepdims=True)
        masks = (upsampled - low) / (high - low + EPSILON_SCORECAM)
        masked = np.ascontiguousarray(image[None] * masks[:, None], dtype=np.float32)
        scores[start:start + chunk] = forward(masked)[:, target]
    return softmax(scores)


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
            current = np.float32(current - ABLATION_OFFSET)
            values[index] = current
    return values


def ablation_cam_weights(layer_output: np.ndarray, target: int, score: float, tail: Forward,
                         channel_axis: int = 0, chunk: int = 32) -> np.ndarray:
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020) channel weights of one image.

    ``layer_output``: the layer's output as the rest of the model reads it, without the batch
    (``[C, h, w]``, or ``[T, C]`` tokens with ``channel_axis=1``); ``tail`` runs the model from
    there on. Channel ``c`` set to the ablation value gives score ``y_c``; the weight is the
    relative drop ``w_c = (y − y_c) / y`` of the target's raw logit ``y = score``. → ``[C]``.
    """
    channels = layer_output.shape[channel_axis]
    values = ablation_values(layer_output, channels, chunk)
    moved = np.moveaxis(layer_output, channel_axis, 0)
    ablated_scores = np.empty(channels, np.float32)
    for start in range(0, channels, chunk):
        indices = np.arange(start, min(start + chunk, channels))
        copies = np.repeat(moved[None], len(indices), axis=0)
        copies[np.arange(len(indices)), indices] = values[indices].reshape(-1, *([1] * (moved.ndim - 1)))
        batch = np.ascontiguousarray(np.moveaxis(copies, 1, channel_axis + 1), dtype=np.float32)
        ablated_scores[start:start + len(indices)] = tail(batch)[:, target]
    score = np.float32(score)
    return (score - ablated_scores) / score
