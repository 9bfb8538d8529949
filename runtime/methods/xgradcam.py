"""XGradCAM (Fu et al., 2020, arXiv:2008.02312): ``w_c = Σ_ij g_cij · A_cij / (Σ_ij A_cij + ε)``."""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.methods.base import Method

EPSILON = 1e-7  # pytorch-grad-cam's


def weights(activation: np.ndarray, gradient: np.ndarray, cam_weight: np.ndarray | None = None) -> np.ndarray:
    """→ ``[N, C]``."""
    activation_sum = activation.sum(axis=(2, 3), keepdims=True)
    return (gradient * activation / (activation_sum + EPSILON)).sum(axis=(2, 3))


METHOD = Method("xgradcam", weights=weights)
