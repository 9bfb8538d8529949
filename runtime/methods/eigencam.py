"""EigenCAM (Muhammad & Yeasin, 2020, arXiv:2008.00299): the activations projected on their first
principal component (no gradient, no target)."""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.methods.base import Method, first_component_projection


def contributions(activation: np.ndarray, gradient=None, cam_weight=None) -> np.ndarray:
    """→ ``[N, C, h, w]``: the activations themselves."""
    return activation


METHOD = Method("eigencam", contributions=contributions, projection=first_component_projection, needs_gradient=False)
