"""Grad-CAM element-wise (pytorch-grad-cam's variant of HiResCAM): ``relu(g ⊙ A)``, summed over channels."""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.methods.base import Method


def contributions(activation: np.ndarray, gradient: np.ndarray, cam_weight=None) -> np.ndarray:
    """→ ``[N, C, h, w]``."""
    return np.maximum(gradient * activation, 0)


def graph_contributions(b, activation: str, gradient: str) -> str:
    """``[N, C, h, w]``, the same formula as ONNX nodes."""
    return b.op("Relu", [b.op("Mul", [gradient, activation])])


METHOD = Method("gradcam-elementwise", contributions=contributions, graph_contributions=graph_contributions)
