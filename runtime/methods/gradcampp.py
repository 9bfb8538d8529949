"""Grad-CAM++ (Chattopadhyay et al., 2018, arXiv:1710.11063), eq. 19 with exp(S) ≈ S:
``α_cij = g² / (2 g² + Σ_ab A_cab · g³)``, ``w_c = Σ_ij α_cij · relu(g_cij)`` (α = 0 where g = 0)."""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.methods.base import Method

EPSILON = 1e-6  # pytorch-grad-cam's


def weights(activation: np.ndarray, gradient: np.ndarray, cam_weight: np.ndarray | None = None) -> np.ndarray:
    """→ ``[N, C]``."""
    grad_2 = gradient * gradient
    grad_3 = grad_2 * gradient
    activation_sum = activation.sum(axis=(2, 3), keepdims=True)
    alpha = grad_2 / (2 * grad_2 + activation_sum * grad_3 + EPSILON)
    alpha = np.where(gradient != 0, alpha, 0)
    return (np.maximum(gradient, 0) * alpha).sum(axis=(2, 3))


def graph_weights(b, activation: str, gradient: str | None, cam_weight: str | None, size=None) -> str:
    """``[N, C, 1, 1]``, the same formula as ONNX nodes."""
    axes = b.ints([2, 3])
    grad_2 = b.op("Mul", [gradient, gradient])
    grad_3 = b.op("Mul", [grad_2, gradient])
    activation_sum = b.op("ReduceSum", [activation, axes], keepdims=1)
    denominator = b.op("Add", [b.op("Add", [b.op("Mul", [b.const(2.0), grad_2]), b.op("Mul", [activation_sum, grad_3])]),
                               b.const(EPSILON)])
    alpha = b.op("Div", [grad_2, denominator])
    nonzero = b.op("Not", [b.op("Equal", [gradient, b.const(0.0)])])
    alpha = b.op("Where", [nonzero, alpha, b.const(0.0)])
    return b.op("ReduceSum", [b.op("Mul", [b.op("Relu", [gradient]), alpha]), axes], keepdims=1)


METHOD = Method("gradcam++", weights=weights, graph_weights=graph_weights, aliases=("gradcampp", "gradcamplusplus"))
