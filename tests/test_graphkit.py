"""``graphkit.spatial_mean``: the spatial mean of a convolution's output, pushed through the convolution,
against the mean onnxruntime computes from the full output (and the fallback where nothing is pushed)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.runtime import graphkit

rng = np.random.default_rng(0)

CASES = {  # name → (nodes building "y" from "x" [1, 3, 9, 11], weights, whether the mean is pushed)
    "conv 3x3 padded": ([helper.make_node("Conv", ["x", "w", "bias"], ["y"], pads=[1, 1, 1, 1])],
                        {"w": rng.standard_normal((4, 3, 3, 3)), "bias": rng.standard_normal(4)}, True),
    "conv dilated, asymmetric pads": ([helper.make_node("Conv", ["x", "w"], ["y"], pads=[2, 0, 1, 3], dilations=[2, 3])],
                                      {"w": rng.standard_normal((4, 3, 3, 2))}, True),
    "conv valid 5x5": ([helper.make_node("Conv", ["x", "w"], ["y"])], {"w": rng.standard_normal((2, 3, 5, 5))}, True),
    "conv transpose padded": ([helper.make_node("ConvTranspose", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                              {"w": rng.standard_normal((3, 4, 3, 3))}, True),
    "conv transpose dilated": ([helper.make_node("ConvTranspose", ["x", "w", "bias"], ["y"], pads=[2, 1, 0, 3],
                                                 dilations=[2, 2])],
                               {"w": rng.standard_normal((3, 2, 3, 3)), "bias": rng.standard_normal(2)}, True),
    "sum of two convolutions": ([helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
                                 helper.make_node("Conv", ["x", "v"], ["c"], pads=[3, 3, 3, 3], dilations=[3, 3]),
                                 helper.make_node("Add", ["a", "c"], ["y"])],
                                {"w": rng.standard_normal((4, 3, 3, 3)), "v": rng.standard_normal((4, 3, 3, 3))}, True),
    "strided: not pushed": ([helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])],
                            {"w": rng.standard_normal((4, 3, 3, 3))}, False),
    "relu: not pushed": ([helper.make_node("Relu", ["x"], ["y"])], {}, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_spatial_mean_equals_the_mean_of_the_output(name):
    nodes, weights, pushed = CASES[name]
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    graph = helper.make_graph(list(nodes), "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    b = graphkit.Builder(model.graph, "test")
    mean = graphkit.spatial_mean(b, "y", y.shape[2:])
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(mean, TensorProto.FLOAT, None))
    graphkit.prune(model.graph)
    assert any(n.op_type == "ReduceMean" for n in model.graph.node) != pushed
    if pushed:  # the full output is no longer computed
        assert not any(n.output[0] == "y" for n in model.graph.node)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, y.mean(axis=(2, 3), keepdims=True), rtol=1e-4, atol=1e-5)
