"""CAM methods as ONNX nodes appended to the explainer graph, so maps are made where the data lives.

DESIGN.md's performance model: copying full activations and gradients to the host and
reducing them in numpy costs more than the backward itself. For the methods here, the
runtime appends the method to the explainer graph (weights, weighted sum, ReLU,
min-max, resize to the input, fusion over layers) and fetches only ``[N, H, W]`` maps,
logits and targets. The formulas are those of ``methods.py`` (the numpy reference,
which the tests hold both paths to); methods without a builder here run in numpy.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcam.runtime.contract import LOGITS, RESOLVED_TARGET, Contract, Layer
from onnxcam.runtime.methods import EPSILON_GRADCAM_PLUS_PLUS, EPSILON_NORMALISE

MAP = "onnxcam_map"


def raw_map_name(index: int) -> str:
    return f"onnxcam_raw_map_{index}"


def output_names(layer_count: int) -> list[str]:
    """The outputs of an extended graph, in the order the runtime reads them."""
    return [LOGITS, RESOLVED_TARGET, MAP] + [raw_map_name(i) for i in range(layer_count)]


def output_shapes(contract: Contract, layers: Sequence[Layer], targets_shape: tuple[int, ...]) -> list[list[int]]:
    """The shapes of ``output_names`` for a target array of ``targets_shape`` (``[N]`` or ``[N, K]``):
    one row per (image, target)."""
    rows = int(np.prod(targets_shape))
    size = [int(contract.input_shape[1]), int(contract.input_shape[2])]
    return [[rows, contract.classes], list(targets_shape), [rows, *size]] + \
        [[rows, int(layer.shape[1]), int(layer.shape[2])] for layer in layers]


class _Builder:
    """Appends nodes with unique names under a prefix."""

    def __init__(self, graph: onnx.GraphProto, prefix: str = "onnxcam"):
        self.graph, self.prefix, self.count = graph, prefix, 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}/{hint}_{self.count}"

    def op(self, op_type: str, inputs: Sequence[str], output: str | None = None, **attributes) -> str:
        output = output or self.name(op_type.lower())
        self.graph.node.append(helper.make_node(op_type, list(inputs), [output], name=self.name(op_type), **attributes))
        return output

    def const(self, value, dtype=np.float32) -> str:
        name = self.name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name


def _gradcam_weights(b: _Builder, activation: str, gradient: str | None, cam_weight: str | None) -> str:
    """``[N, C, 1, 1]``: spatial mean of the gradient."""
    return b.op("ReduceMean", [gradient, b.const([2, 3], np.int64)], keepdims=1)


def _gradcam_plus_plus_weights(b: _Builder, activation: str, gradient: str | None, cam_weight: str | None) -> str:
    """``[N, C, 1, 1]``: Σ_ij relu(g)·g² / (2g² + ΣA·g³ + ε), α = 0 where g = 0."""
    axes = b.const([2, 3], np.int64)
    grad_2 = b.op("Mul", [gradient, gradient])
    grad_3 = b.op("Mul", [grad_2, gradient])
    activation_sum = b.op("ReduceSum", [activation, axes], keepdims=1)
    denominator = b.op("Add", [b.op("Add", [b.op("Mul", [b.const(2.0), grad_2]), b.op("Mul", [activation_sum, grad_3])]),
                               b.const(EPSILON_GRADCAM_PLUS_PLUS)])
    alpha = b.op("Div", [grad_2, denominator])
    nonzero = b.op("Not", [b.op("Equal", [gradient, b.const(0.0)])])
    alpha = b.op("Where", [nonzero, alpha, b.const(0.0)])
    return b.op("ReduceSum", [b.op("Mul", [b.op("Relu", [gradient]), alpha]), axes], keepdims=1)


def _cam_weights(b: _Builder, activation: str, gradient: str | None, cam_weight: str | None) -> str:
    """``[N, C, 1, 1]``: the classifier's weight row of the target."""
    return b.op("Unsqueeze", [cam_weight, b.const([2, 3], np.int64)])


WEIGHT_BUILDERS: dict[str, Callable[..., str]] = {
    "cam": _cam_weights,
    "gradcam": _gradcam_weights,
    "gradcam++": _gradcam_plus_plus_weights,
}


def _weighted_sum(b: _Builder, weights: str, layer: Layer, output: str) -> str:
    """``Σ_c w_c · A_c`` as one batched MatMul: ``[N,1,C] @ [N,C,h·w]`` → ``[N, h, w]``."""
    row = b.op("Reshape", [weights, b.const([0, 1, -1], np.int64)])
    planes = b.op("Reshape", [layer.activation, b.const([0, 0, -1], np.int64)])
    product = b.op("MatMul", [row, planes])
    return b.op("Reshape", [product, b.const([0, layer.shape[1], layer.shape[2]], np.int64)], output=output)


def _normalise(b: _Builder, maps: str) -> str:
    """Per-image min-max of ``[N, h, w]`` maps (``methods.normalise``)."""
    axes = b.const([1, 2], np.int64)
    shifted = b.op("Sub", [maps, b.op("ReduceMin", [maps, axes], keepdims=1)])
    scale = b.op("Add", [b.op("ReduceMax", [shifted, axes], keepdims=1), b.const(EPSILON_NORMALISE)])
    return b.op("Div", [shifted, scale])


def _resize(b: _Builder, maps: str, size: tuple[int, int]) -> str:
    """Bilinear, half-pixel resize of ``[N, h, w]`` to ``[N, H, W]`` (OpenCV's INTER_LINEAR)."""
    planes = b.op("Unsqueeze", [maps, b.const([1], np.int64)])
    batch = b.op("Slice", [b.op("Shape", [planes]), b.const([0], np.int64), b.const([1], np.int64)])
    sizes = b.op("Concat", [batch, b.const([1, size[0], size[1]], np.int64)], axis=0)
    resized = b.op("Resize", [planes, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel")
    return b.op("Squeeze", [resized, b.const([1], np.int64)])


def supports(method: str) -> bool:
    return method in WEIGHT_BUILDERS


def append_method(model: onnx.ModelProto, contract: Contract, method: str, layers: Sequence[Layer]) -> onnx.ModelProto:
    """A copy of the explainer ``model`` whose outputs are logits, resolved targets, the fused
    ``[N, H, W]`` map of ``method`` over ``layers`` and each layer's raw ``[N, h, w]`` map."""
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    graph = extended.graph
    outputs = {o.name: o for o in graph.output}
    b = _Builder(graph)
    size = (int(contract.input_shape[1]), int(contract.input_shape[2]))
    weights_of = WEIGHT_BUILDERS[method]
    scaled = []
    for index, layer in enumerate(layers):
        weights = weights_of(b, layer.activation, layer.gradient, layer.cam_weight)
        raw = _weighted_sum(b, weights, layer, raw_map_name(index))
        scaled.append(_resize(b, _normalise(b, b.op("Relu", [raw])), size))
    if len(scaled) == 1:
        fused = scaled[0]  # the mean of one map is itself, and it is ≥ 0 already
    else:
        stacked = b.op("Concat", [b.op("Unsqueeze", [s, b.const([1], np.int64)]) for s in scaled], axis=1)
        fused = b.op("ReduceMean", [b.op("Relu", [stacked]), b.const([1], np.int64)], keepdims=0)
    b.op("Identity", [_normalise(b, fused)], output=MAP)

    del graph.output[:]
    graph.output.extend([outputs[LOGITS], outputs[RESOLVED_TARGET]])
    graph.output.append(helper.make_tensor_value_info(MAP, TensorProto.FLOAT, ["rows", size[0], size[1]]))
    for index, layer in enumerate(layers):
        graph.output.append(helper.make_tensor_value_info(raw_map_name(index), TensorProto.FLOAT,
                                                          ["rows", layer.shape[1], layer.shape[2]]))
    return extended
