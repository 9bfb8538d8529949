"""Score-CAM (Wang et al., 2020, arXiv:1910.01279): channel weights from extra forward passes.

Each channel of the layer's activation ``[C, h, w]`` is upsampled to the input (bilinear,
aligned corners, as pytorch-grad-cam's ``torch.nn.UpsamplingBilinear2d``), min-max
normalised to a mask ``M_c``; the image times each mask is scored by the model with the
target's own score ``s`` (a class logit, a softmax probability, a masked sum…), and the
weights are their softmax over channels: ``w_c = softmax_c(s(x ⊙ M_c))``. The forward
passes run on onnxruntime in chunks, never one call per channel.
"""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.methods.base import Forward, Method, Passes, Scorer, softmax

EPSILON = 1e-8  # pytorch-grad-cam's ScoreCAM mask normalisation
CHUNK = 32


def align_corners_matrix(source: int, target: int) -> np.ndarray:
    """``[target, source]`` weights of 1-D bilinear interpolation with aligned corners."""
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


def score_cam_weights(image: np.ndarray, activation: np.ndarray, score: Scorer, forward: Forward,
                      chunk: int = CHUNK) -> np.ndarray:
    """One image's weights: ``image [3, H, W]``, ``activation [C, h, w]``, ``score``: outputs → the
    target's score. → ``[C]``."""
    height, width = image.shape[1:]
    rows = align_corners_matrix(activation.shape[1], height)
    columns = align_corners_matrix(activation.shape[2], width)
    scores = np.empty(activation.shape[0], np.float32)
    for start in range(0, activation.shape[0], chunk):
        upsampled = np.einsum("Hh,chw,Ww->cHW", rows, activation[start:start + chunk], columns, optimize=True)
        low = upsampled.min(axis=(1, 2), keepdims=True)
        high = upsampled.max(axis=(1, 2), keepdims=True)
        masks = (upsampled - low) / (high - low + EPSILON)
        masked = np.ascontiguousarray(image[None] * masks[:, None], dtype=np.float32)
        scores[start:start + chunk] = score(forward(masked))
    return softmax(scores)


def passes(context: Passes, layer) -> np.ndarray:
    """``[R, C]``: every row's weights (row ``r`` belongs to image ``r // K``)."""
    activation = context.outputs[layer.activation]
    return np.stack([score_cam_weights(context.batch[r // context.per_image], activation[r], context.scorers[r],
                                       context.forward) for r in range(len(context.scorers))])


METHOD = Method("scorecam", passes=passes, needs_gradient=False)
