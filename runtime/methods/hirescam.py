"""HiResCAM (Draelos & Carin, 2020, arXiv:2011.08891): ``g ⊙ A``, summed over channels."""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.methods.base import Method


def contributions(activation: np.ndarray, gradient: np.ndarray, cam_weight=None) -> np.ndarray:
    """→ ``[N, C, h, w]``."""
    return gradient * activation


def graph_contributions(b, activation: str, gradient: str) -> str:
    """``[N, C, h, w]``, the same product as ONNX nodes."""
    return b.op("Mul", [gradient, activation])


METHOD = Method("hirescam", contributions=contributions, graph_contributions=graph_contributions)
