"""Grad-CAM (Selvaraju et al., 2017, arXiv:1610.02391): ``w_c = mean_ij ∂y/∂A_cij``."""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.graphkit import spatial_mean
from onnxcam.runtime.methods.base import Method


def weights(activation: np.ndarray, gradient: np.ndarray, cam_weight: np.ndarray | None = None) -> np.ndarray:
    """→ ``[N, C]``."""
    return gradient.mean(axis=(2, 3))


def graph_weights(b, activation: str, gradient: str | None, cam_weight: str | None, size=None) -> str:
    """``[N, C, 1, 1]``: spatial mean of the gradient (pushed through the convolution that made it,
    ``graphkit.spatial_mean``, so the full gradient need not be computed)."""
    return spatial_mean(b, gradient, size)


METHOD = Method("gradcam", weights=weights, graph_weights=graph_weights)
