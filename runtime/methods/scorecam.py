"""Score-CAM (Wang et al., 2020, arXiv:1910.01279): channel weights from extra forward passes.

Each channel of the layer's activation ``[C, h, w]`` is upsampled to the input (bilinear,
aligned corners, as pytorch-grad-cam's ``torch.nn.UpsamplingBilinear2d``), min-max
normalised to a mask ``M_c``; the image times each mask is scored by the model with the
target's own score ``s`` (a class logit, a softmax probability, a masked sum…), and the
weights are their softmax over channels: ``w_c = softmax_c(s(x ⊙ M_c))``. The forward
passes run on onnxruntime in chunks, never one call per channel.

The masks' one division, by ``max − min + 1e-8``, is never by 0; where float32 overflows in
them (activations near ±3.4e38, or spanning more) they are computed in float64. The softmax of
finite scores is finite; a NaN or ±Inf score is an ``InputError``.
"""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.contract import InputError
from onnxcam.runtime.methods.base import MODEL_HINT, Forward, Method, Passes, Scorer, check_finite, softmax

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


def masks(upsampled: np.ndarray) -> np.ndarray:
    """Each channel ``[c, H, W]`` min-max normalised, ``(u − min) / (max − min + 1e-8)``, in float32
    as pytorch-grad-cam computes it; in float64 where float32 overflows (a span beyond 3.4e38)."""
    low = upsampled.min(axis=(1, 2), keepdims=True)
    high = upsampled.max(axis=(1, 2), keepdims=True)
    with np.errstate(over="ignore", invalid="ignore"):
        normalised = (upsampled - low) / (high - low + EPSILON)
    if np.isfinite(normalised).all():
        return normalised
    low, high = np.float64(low), np.float64(high)
    return np.float32((upsampled - low) / (high - low + EPSILON))


def score_cam_weights(image: np.ndarray, activation: np.ndarray, score: Scorer, forward: Forward,
                      chunk: int = CHUNK, where: str = "the layer") -> np.ndarray:
    """One image's weights: ``image [3, H, W]``, ``activation [C, h, w]``, ``score``: outputs → the
    target's score; ``where``: the layer (and row), for error messages. → ``[C]``. A NaN or ±Inf
    score is an ``InputError``."""
    check_finite(f"{where}: its activation", activation, MODEL_HINT, rows="channel")
    height, width = image.shape[1:]
    rows = align_corners_matrix(activation.shape[1], height)
    columns = align_corners_matrix(activation.shape[2], width)
    scores = np.empty(activation.shape[0], np.float32)
    for start in range(0, activation.shape[0], chunk):
        with np.errstate(over="ignore", invalid="ignore"):
            upsampled = np.einsum("Hh,chw,Ww->cHW", rows, activation[start:start + chunk], columns, optimize=True)
        if not np.isfinite(upsampled).all():  # the interpolation's rounding can pass float32's max
            upsampled = np.einsum("Hh,chw,Ww->cHW", rows, np.float64(activation[start:start + chunk]), columns)
        masked = np.ascontiguousarray(image[None] * masks(upsampled)[:, None], dtype=np.float32)
        scores[start:start + chunk] = score(forward(masked))
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise InputError(f"Score-CAM at {where}: the target's score is NaN or infinite on {len(bad)} of {len(scores)} "
                         f"masked copies of the image (first: channel {bad[0]}'s mask); the model computed it (an "
                         "overflow or NaN inside the network): check the input's preprocessing and scale")
    return softmax(scores)


def passes(context: Passes, layer) -> np.ndarray:
    """``[R, C]``: every row's weights (row ``r`` belongs to image ``r // K``)."""
    activation = context.outputs[layer.activation]
    return np.stack([score_cam_weights(context.batch[r // context.per_image], activation[r], context.scorers[r],
                                       context.forward, where=f"layer {layer.name!r}, row {r}")
                     for r in range(len(context.scorers))])


METHOD = Method("scorecam", passes=passes, needs_gradient=False)
