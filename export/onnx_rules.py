"""ONNX translations (onnxscript) for the backward ops that neither torch's decompositions
reach nor the exporter's torchlib translates (torch 2.14: ``silu_backward``,
``mish_backward``). Passed to ``torch.onnx.export(custom_translation_table=...)``."""

from __future__ import annotations

import torch
from onnxscript import opset18 as op

aten = torch.ops.aten


def silu_backward(grad_output, self):
    """d/dx x·σ(x) = σ(x)·(1 + x·(1 − σ(x)))."""
    sigmoid = op.Sigmoid(self)
    one = op.CastLike(1.0, self)
    return op.Mul(grad_output, op.Mul(sigmoid, op.Add(one, op.Mul(self, op.Sub(one, sigmoid)))))


def mish_backward(grad_output, self):
    """d/dx x·tanh(softplus(x)) = tanh(sp) + x·σ(x)·(1 − tanh(sp)²)."""
    tanh_softplus = op.Tanh(op.Softplus(self))
    one = op.CastLike(1.0, self)
    slope = op.Mul(op.Mul(self, op.Sigmoid(self)), op.Sub(one, op.Mul(tanh_softplus, tanh_softplus)))
    return op.Mul(grad_output, op.Add(tanh_softplus, slope))


def table() -> dict:
    return {aten.silu_backward.default: silu_backward, aten.mish_backward.default: mish_backward}
