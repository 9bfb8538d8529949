"""Every ONNX gradient rule against central finite differences, on small random graphs.

Each case is a tiny graph ``inputs → nodes → y``; ``add_gradient`` appends
``∂ Σ(seed · y) / ∂ input`` for each graph input, and onnxruntime's value is compared with
central differences of ``Σ(seed · y)`` run through the same forward graph. Float64
where onnxruntime's CPU provider has double kernels; Conv, ConvTranspose, AveragePool,
GlobalAveragePool and Erf/Gelu have float32 kernels only, so those cases run in float32
with a looser tolerance (linear ops are then exact up to rounding, with a large step).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.export.onnx_grad import GradientError, RULES, add_gradient

F64, F32 = TensorProto.DOUBLE, TensorProto.FLOAT


def node(op_type, inputs, outputs=("y",), **attrs):
    return helper.make_node(op_type, list(inputs), list(outputs), name=f"{op_type.lower()}_node", **attrs)


class Case:
    """A graph under test: ``inputs`` name → (declared shape, run-time value); ``consts`` become initializers."""

    def __init__(self, nodes, inputs, consts=None, dtype=F64, opset=18, step=1e-6, tol=1e-6):
        self.nodes, self.inputs, self.consts = nodes, inputs, consts or {}
        self.dtype, self.opset, self.step, self.tol = dtype, opset, step, tol

    def model(self, extra_inputs=()) -> onnx.ModelProto:
        np_dtype = helper.tensor_dtype_to_np_dtype(self.dtype)
        graph = helper.make_graph(
            list(self.nodes), "case",
            [helper.make_tensor_value_info(n, self.dtype, s) for n, (s, _) in self.inputs.items()] + list(extra_inputs),
            [helper.make_tensor_value_info("y", self.dtype, None)],
            [numpy_helper.from_array(np.asarray(v, dtype=v.dtype if v.dtype.kind in "iub" else np_dtype), k)
             for k, v in self.consts.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 10
        return model

    def feeds(self) -> dict[str, np.ndarray]:
        np_dtype = helper.tensor_dtype_to_np_dtype(self.dtype)
        return {n: np.asarray(v, dtype=np_dtype) for n, (_, v) in self.inputs.items()}


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def check(case: Case) -> None:
    forward = session(case.model())
    feeds = case.feeds()
    y = forward.run(["y"], feeds)[0]
    seed = np.random.default_rng(3).standard_normal(y.shape).astype(y.dtype)
    score = lambda f: float((forward.run(["y"], f)[0].astype(np.float64) * seed).sum())  # noqa: E731
    for name in case.inputs:
        model = case.model([helper.make_tensor_value_info("seed", case.dtype, list(y.shape))])
        grad = add_gradient(model, name, "y", "seed")
        model.graph.output.append(helper.make_tensor_value_info(grad, case.dtype, None))
        got = session(model).run([grad], {**feeds, "seed": seed})[0]
        assert got.shape == feeds[name].shape, name
        want = np.zeros(feeds[name].shape)
        for index in np.ndindex(*feeds[name].shape):
            plus, minus = dict(feeds), dict(feeds)
            plus[name], minus[name] = feeds[name].copy(), feeds[name].copy()
            plus[name][index] += case.step
            minus[name][index] -= case.step
            want[index] = (score(plus) - score(minus)) / (2 * case.step)
        error = np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)
        assert error <= case.tol, f"∂/∂{name}: relative error {error:.2e} (got {got.ravel()[:4]}, want {want.ravel()[:4]})"


rng = np.random.default_rng(0)


def away(shape, from_=(0.0,), margin=0.05, scale=1.5):
    """Random values at least ``margin`` away from the kinks in ``from_``."""
    x = rng.uniform(-scale, scale, shape)
    for kink in from_:
        close = np.abs(x - kink) < margin
        x[close] = kink + np.where(x[close] >= kink, margin, -margin) * 2
    return x


def rand(*shape):
    return rng.standard_normal(shape)


def x_only(op_type, shape=(2, 3, 4), values=None, **attrs):
    values = rand(*shape) if values is None else values
    return Case([node(op_type, ["x"], **attrs)], {"x": (list(values.shape), values)})


CASES = {
    # activations
    "Relu": x_only("Relu", values=away((2, 3, 4))),
    "LeakyRelu": x_only("LeakyRelu", values=away((2, 3, 4)), alpha=0.1),
    "Sigmoid": x_only("Sigmoid"),
    "HardSigmoid": x_only("HardSigmoid", values=away((3, 8), (-2.5, 2.5), scale=4), alpha=0.2, beta=0.5),
    "HardSwish": x_only("HardSwish", values=away((3, 8), (-3.0, 3.0), scale=5)),
    "Tanh": x_only("Tanh"), "Exp": x_only("Exp"), "Neg": x_only("Neg"),
    "Sqrt": x_only("Sqrt", values=rng.uniform(0.5, 2.0, (2, 5))),
    "Reciprocal": x_only("Reciprocal", values=rng.uniform(0.5, 2.0, (2, 5))),
    "Erf": Case([node("Erf", ["x"])], {"x": ([2, 5], rand(2, 5))}, dtype=F32, step=1e-2, tol=2e-3),
    "Gelu": Case([node("Gelu", ["x"])], {"x": ([2, 5], rand(2, 5))}, dtype=F32, opset=20, step=1e-2, tol=2e-3),
    "Gelu-tanh": Case([node("Gelu", ["x"], approximate="tanh")], {"x": ([2, 5], rand(2, 5))},
                      dtype=F32, opset=20, step=1e-2, tol=2e-3),
    "PRelu": Case([node("PRelu", ["x", "s"])], {"x": ([2, 3, 2], away((2, 3, 2)))}, {"s": rng.uniform(0.1, 0.5, (3, 1))}),
    "Elu": x_only("Elu", values=away((2, 5)), alpha=0.7),
    "Softplus": x_only("Softplus"),
    "Clip-min-max": Case([node("Clip", ["x", "lo", "hi"])], {"x": ([2, 6], away((2, 6), (-0.5, 0.7)))},
                         {"lo": np.array(-0.5), "hi": np.array(0.7)}),
    "Clip-min-only": Case([node("Clip", ["x", "lo"])], {"x": ([2, 6], away((2, 6), (-0.5,)))}, {"lo": np.array(-0.5)}),
    "Softmax": x_only("Softmax", axis=1), "Softmax-last": x_only("Softmax"),
    "LogSoftmax": x_only("LogSoftmax", axis=-1),
    # broadcasting arithmetic: both operands differentiated
    "Add-broadcast": Case([node("Add", ["x", "b"])], {"x": (["N", 3, 2, 2], rand(2, 3, 2, 2)), "b": ([3, 1, 1], rand(3, 1, 1))}),
    "Sub-broadcast": Case([node("Sub", ["b", "x"])], {"x": ([2, 3, 4], rand(2, 3, 4)), "b": ([1, 4], rand(1, 4))}),
    "Mul-broadcast": Case([node("Mul", ["x", "b"])], {"x": (["N", 3, 2, 2], rand(2, 3, 2, 2)), "b": ([1, 3, 1, 1], rand(1, 3, 1, 1))}),
    "Mul-dynamic-broadcast": Case([node("Mul", ["x", "b"])], {"x": (["N", 3], rand(2, 3)), "b": (["M", 3], rand(1, 3))}),
    "Div-broadcast": Case([node("Div", ["x", "b"])], {"x": ([2, 3, 2], rand(2, 3, 2)), "b": ([3, 1], rng.uniform(0.5, 2, (3, 1)))}),
    "Pow": Case([node("Pow", ["x", "p"])], {"x": ([2, 3], rng.uniform(0.5, 2, (2, 3))), "p": ([1], np.array([1.7]))}),
    "Where": Case([node("Where", ["c", "x", "b"])], {"x": ([2, 3], rand(2, 3)), "b": ([3], rand(3))},
                  {"c": np.array([[True, False, True], [False, False, True]])}),
    "Expand": Case([node("Expand", ["x", "s"])], {"x": ([3, 1], rand(3, 1))}, {"s": np.array([2, 3, 4], np.int64)}),
    # shape ops
    "Reshape": Case([node("Reshape", ["x", "s"])], {"x": ([2, 3, 4], rand(2, 3, 4))}, {"s": np.array([2, -1], np.int64)}),
    "Flatten": x_only("Flatten", (2, 3, 2, 2), axis=1),
    "Squeeze": Case([node("Squeeze", ["x", "a"])], {"x": ([2, 1, 3], rand(2, 1, 3))}, {"a": np.array([1], np.int64)}),
    "Unsqueeze": Case([node("Unsqueeze", ["x", "a"])], {"x": ([2, 3], rand(2, 3))}, {"a": np.array([0, 3], np.int64)}),
    "Transpose": x_only("Transpose", (2, 3, 4), perm=[2, 0, 1]),
    "Transpose-default": x_only("Transpose", (2, 3, 4)),
    "Concat": Case([node("Concat", ["x", "b", "x"], axis=1)], {"x": (["N", 2, 2], rand(2, 2, 2)), "b": (["N", 3, 2], rand(2, 3, 2))}),
    "Split": Case([node("Split", ["x", "s"], ["y", "unused"], axis=1)], {"x": ([2, 5], rand(2, 5))},
                  {"s": np.array([2, 3], np.int64)}),
    "Slice": Case([node("Slice", ["x", "st", "en", "ax"])], {"x": ([2, 5, 3], rand(2, 5, 3))},
                  {"st": np.array([1, -2], np.int64), "en": np.array([4, 100], np.int64), "ax": np.array([1, 2], np.int64)}),
    "Pad": Case([node("Pad", ["x", "p"])], {"x": (["N", 2, 3], rand(2, 2, 3))}, {"p": np.array([0, 1, 0, 0, 2, 1], np.int64)}),
    "Pad-axes": Case([node("Pad", ["x", "p", "", "a"])], {"x": ([2, 3, 4], rand(2, 3, 4))},
                     {"p": np.array([1, 0, 0, 2], np.int64), "a": np.array([-1, 1], np.int64)}),
    "Pow-int-exponent": Case([node("Pow", ["x", "k"])], {"x": ([2, 3], rand(2, 3))}, {"k": np.array(3, np.int64)}),
    "Gather-class-token": Case([node("Gather", ["x", "i"], axis=1)], {"x": ([2, 5, 3], rand(2, 5, 3))}, {"i": np.array(0, np.int64)}),
    "Gather-indices": Case([node("Gather", ["x", "i"], axis=0)], {"x": ([4, 3], rand(4, 3))}, {"i": np.array([3, -1, 0], np.int64)}),
    "Identity+Cast": Case([node("Identity", ["x"], ["t"]), node("Cast", ["t"], to=F64)], {"x": ([2, 3], rand(2, 3))}),
    # reductions and pooling
    "ReduceMean-keep": Case([node("ReduceMean", ["x", "a"])], {"x": ([2, 3, 4], rand(2, 3, 4))}, {"a": np.array([1, -1], np.int64)}),
    "ReduceMean-drop": Case([node("ReduceMean", ["x", "a"], keepdims=0)], {"x": ([2, 3, 4], rand(2, 3, 4))}, {"a": np.array([2], np.int64)}),
    "ReduceSum-all": Case([node("ReduceSum", ["x"], keepdims=0)], {"x": ([2, 3], rand(2, 3))}),
    "GlobalAveragePool": Case([node("GlobalAveragePool", ["x"])], {"x": (["N", 3, 4, 5], rand(2, 3, 4, 5))},
                              dtype=F32, step=0.5, tol=1e-5),
    "AveragePool": Case([node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], {"x": ([1, 2, 4, 5], rand(1, 2, 4, 5))},
                        dtype=F32, step=0.5, tol=1e-5),
    "AveragePool-pads-exclude": Case([node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                                     {"x": ([1, 2, 5, 6], rand(1, 2, 5, 6))}, dtype=F32, step=0.5, tol=1e-5),
    "AveragePool-ceil": Case([node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
                             {"x": ([1, 2, 5, 5], rand(1, 2, 5, 5))}, dtype=F32, step=0.5, tol=1e-5),
    "MaxPool": Case([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                    {"x": ([2, 2, 5, 6], rand(2, 2, 5, 6))}),
    "MaxPool-ceil": Case([node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
                         {"x": ([1, 2, 5, 5], rand(1, 2, 5, 5))}),
    # convolutions (weights constant)
    "Conv": Case([node("Conv", ["x", "w", "b"], pads=[1, 1, 1, 1])], {"x": (["N", 3, 5, 5], rand(2, 3, 5, 5))},
                 {"w": rand(4, 3, 3, 3), "b": rand(4)}, dtype=F32, step=0.5, tol=1e-5),
    "Conv-strided-odd": Case([node("Conv", ["x", "w"], strides=[2, 2], pads=[1, 0, 1, 0])], {"x": ([1, 2, 7, 6], rand(1, 2, 7, 6))},
                             {"w": rand(3, 2, 3, 2)}, dtype=F32, step=0.5, tol=1e-5),
    "Conv-grouped-dilated": Case([node("Conv", ["x", "w"], group=2, dilations=[2, 2], pads=[2, 2, 2, 2])],
                                 {"x": ([1, 4, 6, 6], rand(1, 4, 6, 6))}, {"w": rand(6, 2, 3, 3)}, dtype=F32, step=0.5, tol=1e-5),
    "Conv-depthwise-same": Case([node("Conv", ["x", "w"], group=3, strides=[2, 2], auto_pad="SAME_UPPER")],
                                {"x": ([1, 3, 7, 8], rand(1, 3, 7, 8))}, {"w": rand(3, 1, 3, 3)}, dtype=F32, step=0.5, tol=1e-5),
    "ConvTranspose": Case([node("ConvTranspose", ["x", "w", "b"], strides=[2, 2], pads=[0, 0, 0, 0])],
                          {"x": ([1, 3, 4, 5], rand(1, 3, 4, 5))}, {"w": rand(3, 2, 2, 2), "b": rand(2)},
                          dtype=F32, step=0.5, tol=1e-5),
    "ConvTranspose-padded-grouped": Case([node("ConvTranspose", ["x", "w"], strides=[2, 2], pads=[1, 1, 1, 1],
                                               output_padding=[1, 1], group=2)],
                                         {"x": ([1, 4, 3, 3], rand(1, 4, 3, 3))}, {"w": rand(4, 3, 3, 3)},
                                         dtype=F32, step=0.5, tol=1e-5),
    # resizing (DBNet's and YOLO's necks): nearest with integer scales, linear with sizes
    "Resize-nearest-scales": Case([node("Resize", ["x", "", "scales"], mode="nearest",
                                        coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                                  {"x": ([1, 2, 3, 4], rand(1, 2, 3, 4))}, {"scales": np.array([1, 1, 2, 2], np.float32)},
                                  dtype=F32, step=0.5, tol=1e-5),
    "Resize-linear-sizes": Case([node("Resize", ["x", "", "", "sizes"], mode="linear",
                                      coordinate_transformation_mode="half_pixel")],
                                {"x": ([1, 2, 3, 4], rand(1, 2, 3, 4))}, {"sizes": np.array([1, 2, 7, 5], np.int64)},
                                dtype=F32, step=0.5, tol=1e-5),
    "BatchNormalization": Case([node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)],
                               {"x": (["N", 3, 2, 2], rand(2, 3, 2, 2))},
                               {"s": rand(3), "b": rand(3), "m": rand(3), "v": rng.uniform(0.5, 2, 3)}),
    "LayerNormalization": Case([node("LayerNormalization", ["x", "s", "b"], axis=-1, epsilon=1e-5)],
                               {"x": ([2, 3, 6], rand(2, 3, 6))}, {"s": rand(6), "b": rand(6)}),
    "LayerNormalization-2-axes": Case([node("LayerNormalization", ["x", "s"], axis=1)],
                                      {"x": ([2, 3, 4], rand(2, 3, 4))}, {"s": rand(3, 4)}),
    # linear layers: both operands differentiated
    "Gemm": Case([node("Gemm", ["x", "w", "c"], alpha=0.7, beta=1.3)], {"x": ([2, 3], rand(2, 3)), "w": ([3, 4], rand(3, 4)),
                                                                        "c": ([4], rand(4))}),
    "Gemm-transA-transB": Case([node("Gemm", ["x", "w"], transA=1, transB=1)], {"x": ([3, 2], rand(3, 2)), "w": ([4, 3], rand(4, 3))}),
    "Gemm-transB": Case([node("Gemm", ["x", "w", "c"], transB=1)], {"x": ([2, 3], rand(2, 3)), "w": ([4, 3], rand(4, 3)),
                                                                   "c": ([1, 4], rand(1, 4))}),
    "MatMul": Case([node("MatMul", ["x", "w"])], {"x": ([2, 3], rand(2, 3)), "w": ([3, 4], rand(3, 4))}),
    "MatMul-batch-broadcast": Case([node("MatMul", ["x", "w"])], {"x": (["N", 2, 3, 4], rand(2, 2, 3, 4)), "w": ([4, 5], rand(4, 5))}),
    "MatMul-batch-both": Case([node("MatMul", ["x", "w"])], {"x": ([2, 1, 3, 4], rand(2, 1, 3, 4)), "w": ([3, 4, 2], rand(3, 4, 2))}),
    # a tensor with several consumers: gradients accumulate
    "fan-out": Case([node("Mul", ["x", "x"], ["t"]), node("Sigmoid", ["x"], ["s"]), node("Add", ["t", "s"])],
                    {"x": ([2, 3], rand(2, 3))}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_matches_finite_differences(name):
    check(CASES[name])


def test_every_rule_has_a_case():
    covered = {n.op_type for case in CASES.values() for n in case.nodes}
    assert set(RULES) - covered <= {"Dropout"}, set(RULES) - covered


def test_integer_shape_subgraph_is_left_alone():
    # y = Reshape(x * 2, Shape(x)) : the Shape branch depends on x but carries no gradient
    case = Case([node("Mul", ["x", "two"], ["t"]), node("Shape", ["x"], ["s"]), node("Reshape", ["t", "s"])],
                {"x": ([2, 3], rand(2, 3))}, {"two": np.array(2.0)})
    check(case)


@pytest.mark.parametrize("op_type", ["Cos", "TopK"])
def test_op_without_rule_is_refused_by_name(op_type):
    nodes = ([node("Cos", ["x"], ["t"])] if op_type == "Cos"
             else [node("TopK", ["x", "k"], ["t", "i"], axis=1)])
    case = Case(nodes + [node("Relu", ["t"])], {"x": ([2, 5], rand(2, 5))}, {"k": np.array([2], np.int64)})
    model = case.model([helper.make_tensor_value_info("seed", F64, None)])
    with pytest.raises(GradientError, match=f"{op_type} node '{op_type.lower()}_node'"):
        add_gradient(model, "x", "y", "seed")
