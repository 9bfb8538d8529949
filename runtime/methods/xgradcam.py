"""XGradCAM (Fu et al., 2020, arXiv:2008.02312): ``w_c = Σ_ij g_cij · A_cij / (Σ_ij A_cij + ε)``."""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.methods.base import Method

EPSILON = 1e-7  # pytorch-grad-cam's


def weights(activation: np.ndarray, gradient: np.ndarray, cam_weight: np.ndarray | None = None) -> np.ndarray:
    """→ ``[N, C]``."""
    activation_sum = activation.sum(axis=(2, 3), keepdims=True)
    return (gradient * activation / (activation_sum + EPSILON)).sum(axis=(2, 3))


def graph_weights(b, activation: str, gradient: str | None, cam_weight: str | None, size=None) -> str:
    """``[N, C, 1, 1]``, the same formula as ONNX nodes."""
    axes = b.ints([2, 3])
    activation_sum = b.op("ReduceSum", [activation, axes], keepdims=1)
    scaled = b.op("Div", [b.op("Mul", [gradient, activation]), b.op("Add", [activation_sum, b.const(EPSILON)])])
    return b.op("ReduceSum", [scaled, axes], keepdims=1)


METHOD = Method("xgradcam", weights=weights, graph_weights=graph_weights)
