"""Attention rollout (Abnar & Zuidema, 2020, arXiv:2005.00928, eq. 1 and section 3).

Per block: fuse the heads (``mean``, ``max`` or ``min`` over heads), optionally zero the
``discard_ratio`` lowest weights of the fused matrix (jacobgil/vit-explain's addition; the
class token's own weight, index 0, is kept), add the residual as ``(A + I) / 2`` and
renormalise every **row** to sum to 1 (the paper's row-stochastic matrix; vit-explain divides
by the row sums along the wrong axis, its issue #16); then ``R ← Ã · R`` from ``R = I``, block
after block. The map is the class token's row over the patch tokens. It does not depend on
the target: every target of an image gets the same map.
"""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.contract import InputError
from onnxcam.runtime.methods.base import Method, class_token_row

FUSIONS = {"mean": np.mean, "max": np.max, "min": np.min}


def fuse_heads(probabilities: np.ndarray, fusion: str) -> np.ndarray:
    """``[R, heads, T, T]`` → ``[R, T, T]``."""
    if fusion not in FUSIONS:
        raise InputError(f"head fusion {fusion!r} is unknown; choose {', '.join(FUSIONS)}")
    return FUSIONS[fusion](probabilities, axis=1)


def discard_lowest(fused: np.ndarray, ratio: float) -> np.ndarray:
    """Zero the ``ratio`` share of the lowest weights of each ``[T, T]`` matrix (over all its T²
    entries), except entry ``[0, 0]``. ``[R, T, T]`` → same."""
    if not 0 <= ratio < 1:
        raise InputError(f"discard ratio {ratio} is out of range; give a number in [0, 1)")
    flat = fused.reshape(len(fused), -1).copy()
    count = int(flat.shape[1] * ratio)
    if count:
        lowest = np.argpartition(flat, count - 1, axis=1)[:, :count]
        rows = np.repeat(np.arange(len(flat)), count).reshape(len(flat), count)
        keep = lowest == 0
        flat[rows[~keep], lowest[~keep]] = 0
    return flat.reshape(fused.shape)


def rollout(probabilities: list[np.ndarray], gradients: list[np.ndarray] | None, prefix: int,
            head_fusion: str = "mean", discard_ratio: float = 0.9) -> np.ndarray:
    """``[R, heads, T, T]`` per block → ``[R, T - prefix]`` (float64)."""
    count = probabilities[0].shape[-1]
    identity = np.eye(count)
    relevance = np.broadcast_to(identity, (len(probabilities[0]), count, count))
    for block in probabilities:
        fused = discard_lowest(fuse_heads(block.astype(np.float64), head_fusion), float(discard_ratio))
        mixed = (fused + identity) / 2
        mixed = mixed / mixed.sum(axis=-1, keepdims=True)
        relevance = mixed @ relevance
    return class_token_row(relevance, prefix)


METHOD = Method("attention-rollout", attention=rollout, needs_gradient=False,
                options={"head_fusion": "mean", "discard_ratio": 0.9}, aliases=("rollout",))
