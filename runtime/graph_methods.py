"""CAM methods as ONNX nodes appended to a target graph, so maps are made where the data lives.

The performance model (docs/explainer-graph.md, "How the runtime runs it"): copying full
activations and gradients to the host and reducing them in numpy costs more than the
backward itself. For a method whose file defines ``graph_weights`` or ``graph_contributions``
(``methods/``), the runtime appends the shared steps here (weighted sum, ReLU, min-max, resize to the input,
fusion over layers) and fetches only ``[N, H, W]`` maps and the per-target outputs. The
tests hold this path and the numpy one (each method's own formula) to pytorch-grad-cam.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxcam.runtime.contract import Contract, Layer
from onnxcam.runtime import graphkit
from onnxcam.runtime.graphkit import Builder as _Builder
from onnxcam.runtime.methods import EPSILON_NORMALISE, get_method

MAP = "onnxcam_map"


def raw_map_name(index: int) -> str:
    return f"onnxcam_raw_map_{index}"


def output_names(kept: Sequence[str], layer_count: int) -> list[str]:
    """The outputs of an extended graph, in the order the runtime reads them: ``kept`` (the
    target graph's per-target outputs), the fused map, each layer's raw map."""
    return list(kept) + [MAP] + [raw_map_name(i) for i in range(layer_count)]


def map_shapes(contract: Contract, layers: Sequence[Layer], rows: int) -> list[list[int]]:
    """The shapes of the fused map and the raw maps for ``rows`` rows (image, target)."""
    size = [int(contract.input_shape[1]), int(contract.input_shape[2])]
    return [[rows, *size]] + [[rows, int(layer.shape[1]), int(layer.shape[2])] for layer in layers]


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
    """Whether ``method`` has an in-graph form (its file defines ``graph_weights`` or ``graph_contributions``)."""
    return get_method(method).in_graph


def in_graph_methods() -> list[str]:
    """The names of the methods with an in-graph form, in the registry's order."""
    from onnxcam.runtime.methods import METHODS

    return [name for name, spec in METHODS.items() if spec.in_graph]


def append_method(model: onnx.ModelProto, contract: Contract, method: str, layers: Sequence[Layer],
                  kept: Sequence[str]) -> onnx.ModelProto:
    """A copy of the (target) graph ``model`` whose outputs are ``kept``, the fused ``[rows, H, W]``
    map of ``method`` over ``layers`` and each layer's raw ``[rows, h, w]`` map."""
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    graph = extended.graph
    outputs = {o.name: o for o in graph.output}
    b = _Builder(graph, "onnxcam_method")
    size = (int(contract.input_shape[1]), int(contract.input_shape[2]))
    spec = get_method(method)
    scaled = []
    for index, layer in enumerate(layers):
        if spec.graph_weights is not None:
            weights = spec.graph_weights(b, layer.activation, layer.gradient, layer.cam_weight,
                                         (layer.shape[1], layer.shape[2]))
            raw = _weighted_sum(b, weights, layer, raw_map_name(index))
        else:  # Σ_c of the per-channel contributions [N, C, h, w]
            contributions = spec.graph_contributions(b, layer.activation, layer.gradient)
            raw = b.op("ReduceSum", [contributions, b.ints([1])], output=raw_map_name(index), keepdims=0)
        scaled.append(_resize(b, _normalise(b, b.op("Relu", [raw])), size))
    if len(scaled) == 1:
        fused = scaled[0]  # the mean of one map is itself, and it is ≥ 0 already
    else:
        stacked = b.op("Concat", [b.op("Unsqueeze", [s, b.const([1], np.int64)]) for s in scaled], axis=1)
        fused = b.op("ReduceMean", [b.op("Relu", [stacked]), b.const([1], np.int64)], keepdims=0)
    b.op("Identity", [_normalise(b, fused)], output=MAP)

    del graph.output[:]
    graph.output.extend(outputs[name] for name in kept)
    graph.output.append(helper.make_tensor_value_info(MAP, TensorProto.FLOAT, ["rows", size[0], size[1]]))
    for index, layer in enumerate(layers):
        graph.output.append(helper.make_tensor_value_info(raw_map_name(index), TensorProto.FLOAT,
                                                          ["rows", layer.shape[1], layer.shape[2]]))
    graphkit.prune(graph)  # what the maps do not need (a gradient whose mean was pushed through its convolution)
    return extended
