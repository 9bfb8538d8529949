"""CAM (Zhou et al., 2016, arXiv:1512.04150): ``w_c = (Wᵀ·seed)_c``, the classifier's weight row of
the target, for a layer followed by a global-average-pool + linear head (``cam_weight_i``)."""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.methods.base import Method


def weights(activation: np.ndarray, gradient: np.ndarray | None, cam_weight: np.ndarray | None) -> np.ndarray:
    """→ ``[N, C]``."""
    if cam_weight is None:
        raise ValueError("CAM needs the classifier's weight rows, which this graph does not carry")
    return cam_weight


def graph_weights(b, activation: str, gradient: str | None, cam_weight: str | None, size=None) -> str:
    """``[N, C, 1, 1]``: the head's weight row of the target."""
    return b.op("Unsqueeze", [cam_weight, b.ints([2, 3])])


METHOD = Method("cam", weights=weights, graph_weights=graph_weights, needs_gradient=False, needs_cam_weight=True)
