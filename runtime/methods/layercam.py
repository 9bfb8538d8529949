"""LayerCAM (Jiang et al., 2021, IEEE TIP 30): ``relu(g) ⊙ A``, summed over channels."""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.methods.base import Method


def contributions(activation: np.ndarray, gradient: np.ndarray, cam_weight=None) -> np.ndarray:
    """→ ``[N, C, h, w]``."""
    return np.maximum(gradient, 0) * activation


def graph_contributions(b, activation: str, gradient: str) -> str:
    """``[N, C, h, w]``, the same formula as ONNX nodes."""
    return b.op("Mul", [b.op("Relu", [gradient]), activation])


METHOD = Method("layercam", contributions=contributions, graph_contributions=graph_contributions)
