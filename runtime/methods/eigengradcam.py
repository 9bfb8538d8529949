"""EigenGradCAM (pytorch-grad-cam): ``g ⊙ A`` projected on its first principal component."""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.methods.base import Method, first_component_projection


def contributions(activation: np.ndarray, gradient: np.ndarray, cam_weight=None) -> np.ndarray:
    """→ ``[N, C, h, w]``."""
    return gradient * activation


METHOD = Method("eigengradcam", contributions=contributions, projection=first_component_projection)
