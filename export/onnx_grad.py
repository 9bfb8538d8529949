"""Reverse-mode gradients written as ONNX nodes (torch-free): a builder and one rule per op.

A rule takes ``(builder, node, output_grads, needed)``: ``output_grads[k]`` is the name of
∂score/∂``node.output[k]`` (None where no gradient reaches that output) and ``needed[i]``
says whether ``node.input[i]`` depends on the differentiated tensor. It appends nodes
through the builder and returns one gradient name (or None) per input. Inputs that are
not needed (weights, shapes, constants) get None and no nodes are built for them.

:func:`add_gradient` runs the rules backwards over the nodes between two tensors.
Everything targets ONNX opset >= 18 (``augment`` converts older models first).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcam.runtime import graphkit
from onnxcam.runtime.contract import first_line

Shape = tuple  # of int (static), str (symbolic) or None (unknown) per axis
Grads = list  # of str | None, one per node input

# ops whose outputs never carry a gradient (indices, booleans, shapes)
NON_DIFFERENTIABLE = {
    "Shape", "Size", "ArgMax", "ArgMin", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual",
    "Not", "And", "Or", "Xor", "NonZero", "IsNaN", "IsInf", "Sign", "Floor", "Ceil", "Round",
    "ConstantOfShape", "Range", "EyeLike", "RandomNormalLike", "RandomUniformLike",
}
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


class GradientError(ValueError):
    """The graph between the layer and the logits holds something onnxcam cannot differentiate."""


def unsupported(node: onnx.NodeProto, why: str) -> GradientError:
    return GradientError(f"cannot differentiate {node.op_type} node {node.name or node.output[0]!r}: {why}")


def attr(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


class Builder:
    """Appends gradient nodes and constants to a graph, knowing the forward tensors' shapes."""

    def __init__(self, model: onnx.ModelProto, dtype: int = TensorProto.FLOAT, prefix: str = "onnxcam_grad"):
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        graph = inferred.graph
        self.shapes: dict[str, Shape | None] = {}
        self.types: dict[str, int] = {}
        for value in [*graph.input, *graph.value_info, *graph.output]:
            tensor_type = value.type.tensor_type
            self.types[value.name] = tensor_type.elem_type
            if tensor_type.HasField("shape"):
                self.shapes[value.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)
        # constant tensors, read into numpy only when a rule needs their values (axes, pads…)
        self._constants: dict[str, onnx.TensorProto] = {i.name: i for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant":
                self._constants[node.output[0]] = _constant_tensor(node)
        for name, tensor in self._constants.items():
            self.shapes[name] = tuple(tensor.dims)
            self.types[name] = tensor.data_type
        self.dtype = dtype
        self._model, self._forward_nodes, self._probe = model, len(model.graph.node), None
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names = graphkit.Names({o for n in model.graph.node for o in n.output} | set(self.shapes), prefix)

    @property
    def np_dtype(self) -> np.dtype:
        return helper.tensor_dtype_to_np_dtype(self.dtype)

    def flush(self, model: onnx.ModelProto) -> None:
        """Move the nodes and constants built so far into ``model``'s graph."""
        model.graph.node.extend(self.nodes)
        model.graph.initializer.extend(self.initializers)
        self.nodes, self.initializers = [], []

    # -- naming and nodes -------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        return self._names.fresh(hint)

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs) -> str | list[str]:
        names = [self.fresh(op_type) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value, dtype=None) -> str:
        """A constant tensor (float of the graph's dtype unless ``dtype`` is given)."""
        name = self.fresh("const")
        array = np.asarray(value, dtype=dtype or self.np_dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, values: Sequence[int]) -> str:
        return self.const(list(values), np.int64)

    # -- shapes ---------------------------------------------------------------------------
    def shape(self, name: str) -> Shape:
        shape = self.shapes.get(name)
        if not _static(shape):
            shape = self.probed_shapes().get(name, shape)
        if shape is None:
            raise GradientError(f"the shape of {name!r} is unknown (ONNX shape inference could not find its rank)")
        return shape

    def probed_shapes(self) -> dict[str, Shape]:
        """Shapes ONNX inference left open, measured by running the forward graph at batch 2 and 3:
        sizes that change with the batch become the symbol ``batch``."""
        if self._probe is None:
            import onnxruntime

            model = onnx.ModelProto()
            model.CopyFrom(self._model)
            del model.graph.node[self._forward_nodes:]
            open_ = [o for n in model.graph.node for o in n.output
                     if o and o in self.types and not _static(self.shapes.get(o))]
            del model.graph.output[:]
            model.graph.output.extend(helper.make_tensor_value_info(o, self.types[o], None) for o in open_)
            try:
                session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
                runs = [dict(zip(open_, session.run(open_, self._feeds(model, batch)))) for batch in (2, 3)]
            except Exception as error:  # onnxruntime's own exception types
                raise GradientError(f"ONNX shape inference left some shapes open, and a trial run at batch 2 and 3 "
                                    f"to measure them failed ({first_line(error)}); a model that "
                                    "fixes its batch size needs re-exporting with a dynamic batch") from None
            self._probe = {name: tuple(_batch_size(a, b) for a, b in zip(runs[0][name].shape, runs[1][name].shape))
                           for name in open_}
        return self._probe

    @staticmethod
    def _feeds(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
        weights = {i.name for i in model.graph.initializer}
        feeds = {}
        for value in model.graph.input:
            if value.name in weights:
                continue
            tensor_type = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else batch for d in tensor_type.shape.dim]
            np_dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            feeds[value.name] = (np.random.default_rng(0).standard_normal(shape).astype(np_dtype)
                                 if tensor_type.elem_type in FLOAT_TYPES else np.zeros(shape, np_dtype))
        return feeds

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def static_dims(self, name: str, axes: Sequence[int], node: onnx.NodeProto) -> list[int]:
        shape = self.shape(name)
        dims = [shape[a] for a in axes]
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise unsupported(node, f"needs static sizes on axes {list(axes)} of {name!r}, got {list(shape)}")
        return dims

    def value(self, name: str, node: onnx.NodeProto) -> np.ndarray:
        if name not in self._constants:
            raise unsupported(node, f"input {name!r} must be a constant")
        return numpy_helper.to_array(self._constants[name])

    def shape_of(self, name: str) -> str:
        return self.op("Shape", name)

    def zeros_like(self, name: str) -> str:
        return self.op("ConstantOfShape", self.shape_of(name),
                       value=numpy_helper.from_array(np.zeros(1, self.np_dtype)))

    def reshape_like(self, grad: str, like: str) -> str:
        return self.op("Reshape", grad, self.shape_of(like))

    def sum(self, grads: Sequence[str]) -> str | None:
        total = None
        for grad in grads:
            total = grad if total is None else self.op("Add", total, grad)
        return total

    def scale(self, grad: str, factor: float) -> str:
        return grad if factor == 1.0 else self.op("Mul", grad, self.const(factor))

    def unbroadcast(self, grad: str, operand: str, like: Shape) -> str:
        """Sum ``grad`` (shaped ``like``, the broadcast result) down to the shape of ``operand``."""
        mine = self.shape(operand)
        lead = len(like) - len(mine)
        if lead > 0:
            grad = self.op("ReduceSum", grad, self.ints(range(lead)), keepdims=0)
        axes, dynamic = [], False
        for axis, (a, r) in enumerate(zip(mine, like[lead:])):
            if a == 1 and r != 1:
                axes.append(axis)
            elif a != r and not (isinstance(a, int) and a > 1):
                dynamic = True  # unknown, or symbolic on one side only: decide at run time
        if dynamic:
            one = self.ints([1])
            keep = self.op("Not", self.op("Equal", self.shape_of(grad), one))
            mask = self.op("And", self.op("Equal", self.shape_of(operand), one), keep)
            found = self.op("Compress", self.ints(range(len(mine))), mask, axis=0)
            return self.op("ReduceSum", grad, found, keepdims=1, noop_with_empty_axes=1)
        if axes:
            grad = self.op("ReduceSum", grad, self.ints(axes), keepdims=1)
        return grad

    def where(self, condition: str, grad: str, otherwise: str | None = None) -> str:
        return self.op("Where", condition, grad, otherwise or self.const(0.0))


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto:
    """The value of a ``Constant`` node as a TensorProto, whichever attribute holds it."""
    tensor = attr(node, "value")
    if tensor is not None:
        return tensor
    for name, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                        ("value_int", np.int64), ("value_ints", np.int64)):
        value = attr(node, name)
        if value is not None:
            return numpy_helper.from_array(np.asarray(value, dtype=dtype))
    return numpy_helper.from_array(np.zeros(0, np.float32))  # sparse or string constants: never a float input


def _batch_size(at_2: int, at_3: int) -> int | str:
    """A size measured at batch 2 and 3: an int, ``batch``, or ``batch*k`` (batch times heads, say)."""
    if at_2 == at_3:
        return at_2
    return "batch" if at_2 == 2 else f"batch*{at_2 // 2}"


def _static(shape: Shape | None) -> bool:
    """Known rank and sizes (the batch symbol of the explainer's input aside)."""
    return shape is not None and all(isinstance(d, int) or d == "batch" for d in shape)


Rule = Callable[[Builder, onnx.NodeProto, list, list], Grads]
RULES: dict[str, Rule] = {}


def rule(*op_types: str):
    def register(function: Rule) -> Rule:
        for op_type in op_types:
            RULES[op_type] = function
        return function
    return register


def _only_first(node: onnx.NodeProto, needed: list, what: str) -> None:
    if any(needed[1:]):
        raise unsupported(node, f"its {what} depends on the differentiated layer; only its first input may")


# -- pass-through and shape ops -------------------------------------------------------------
@rule("Identity", "Dropout")
def _identity(b, node, g, needed):
    return [g[0]]


@rule("Cast")
def _cast(b, node, g, needed):
    return [b.op("Cast", g[0], to=b.types.get(node.input[0], b.dtype))]


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(b, node, g, needed):
    return [b.reshape_like(g[0], node.input[0])]


@rule("Expand")
def _expand(b, node, g, needed):
    return [b.unbroadcast(g[0], node.input[0], b.shape(node.output[0]))]


@rule("Transpose")
def _transpose(b, node, g, needed):
    perm = attr(node, "perm") or list(reversed(range(b.rank(node.input[0]))))
    return [b.op("Transpose", g[0], perm=[int(i) for i in np.argsort(perm)])]


def _axis(node: onnx.NodeProto, b: Builder, name: str, default: int = 0) -> int:
    axis = attr(node, "axis", default)
    return axis + b.rank(name) if axis < 0 else axis


def _sizes_along(b: Builder, names: Sequence[str], axis: int) -> str:
    """``int64 [len(names)]``: each tensor's size on ``axis`` (static where known)."""
    dims = [b.shape(n)[axis] for n in names]
    if all(isinstance(d, int) for d in dims):
        return b.ints(dims)
    parts = [b.op("Slice", b.shape_of(n), b.ints([axis]), b.ints([axis + 1])) for n in names]
    return b.op("Concat", *parts, axis=0)


@rule("Concat")
def _concat(b, node, g, needed):
    axis = _axis(node, b, node.input[0])
    pieces = b.op("Split", g[0], _sizes_along(b, node.input, axis), axis=axis, outputs=len(node.input))
    return [pieces] if len(node.input) == 1 else pieces


@rule("Split")
def _split(b, node, g, needed):
    axis = _axis(node, b, node.input[0])
    parts = [grad if grad is not None else b.zeros_like(out) for grad, out in zip(g, node.output)]
    return [b.op("Concat", *parts, axis=axis)] + [None] * (len(node.input) - 1)


@rule("Slice")
def _slice(b, node, g, needed):
    """Constant starts and ends with steps of 1: the gradient is ``g`` padded back to the input's
    shape. Otherwise (starts/ends computed at run time, as exporters write ``chunk`` on a
    dynamic shape, or steps other than 1): ``_slice_scatter``."""
    x = node.input[0]
    shape = b.shape(x)
    inputs = list(node.input) + [""] * (5 - len(node.input))
    if not all(name in b._constants for name in inputs[1:] if name):
        return _slice_scatter(b, node, g)
    starts, ends = b.value(inputs[1], node), b.value(inputs[2], node)
    axes = b.value(inputs[3], node) if inputs[3] else range(len(starts))
    steps = b.value(inputs[4], node) if inputs[4] else [1] * len(starts)
    if any(int(s) != 1 for s in steps):
        return _slice_scatter(b, node, g)
    pads = [0] * (2 * len(shape))
    for start, end, axis in zip(starts, ends, axes):
        axis = int(axis) % len(shape)
        (dim,) = b.static_dims(x, [axis], node)
        begin = min(max(int(start) + dim if start < 0 else int(start), 0), dim)
        stop = min(max(int(end) + dim if end < 0 else int(end), begin), dim)
        pads[axis], pads[axis + len(shape)] = begin, dim - stop
    return [b.op("Pad", g[0], b.ints(pads))] + [None] * (len(node.input) - 1)


def _slice_scatter(b: Builder, node: onnx.NodeProto, g: list) -> Grads:
    """Slice with run-time starts/ends/steps (constant axes): along each sliced axis, the positions
    the slice took are the same Slice applied to ``arange(size)``; ``g`` is scattered back to them
    into zeros (the positions are distinct, so no accumulation), one axis after the other."""
    x = node.input[0]
    rank = b.rank(x)
    inputs = list(node.input) + [""] * (5 - len(node.input))
    count = b.shape(inputs[1])[0]
    if inputs[3]:
        axes = [int(a) % rank for a in b.value(inputs[3], node)]
    elif isinstance(count, int):
        axes = list(range(count))
    else:
        raise unsupported(node, "neither its axes nor the number of its starts are known")
    grad = g[0]
    for k, axis in enumerate(axes):
        def part(name: str) -> str:  # the k-th entry of starts / ends / steps: int64 [1] (they may be int32)
            return b.op("Cast", b.op("Slice", name, b.ints([k]), b.ints([k + 1])), to=TensorProto.INT64)

        size = b.op("Slice", b.shape_of(x), b.ints([axis]), b.ints([axis + 1]))  # int64 [1]
        ramp = b.op("Range", b.const(0, np.int64), b.op("Squeeze", size, b.ints([0])), b.const(1, np.int64))
        taken = [ramp, part(inputs[1]), part(inputs[2]), b.ints([0])] + ([part(inputs[4])] if inputs[4] else [])
        where = b.op("Reshape", b.op("Slice", *taken), b.ints([1] * axis + [-1] + [1] * (rank - axis - 1)))
        grad_shape = b.shape_of(grad)
        full = b.op("Concat", b.op("Slice", grad_shape, b.ints([0]), b.ints([axis])), size,
                    b.op("Slice", grad_shape, b.ints([axis + 1]), b.ints([rank])), axis=0)
        zeros = b.op("ConstantOfShape", full, value=numpy_helper.from_array(np.zeros(1, b.np_dtype)))
        grad = b.op("ScatterElements", zeros, b.op("Expand", where, grad_shape), grad, axis=axis)
    return [grad] + [None] * (len(node.input) - 1)


@rule("Pad")
def _pad(b, node, g, needed):
    """Constant-mode padding: the gradient is the un-padded middle of ``g``."""
    if attr(node, "mode", "constant") != "constant":
        raise unsupported(node, f"only constant-mode Pad is supported, not {attr(node, 'mode')!r}")
    x = node.input[0]
    rank = b.rank(x)
    pads = b.value(node.input[1], node).tolist()
    axes = b.value(node.input[3], node).tolist() if len(node.input) > 3 and node.input[3] else range(rank)
    count = len(pads) // 2
    starts = [pads[i] for i in range(count)]
    ends = [-pads[count + i] if pads[count + i] else np.iinfo(np.int64).max for i in range(count)]
    if any(p < 0 for p in pads):
        raise unsupported(node, "negative pads (cropping)")
    return [b.op("Slice", g[0], b.ints(starts), b.ints(ends), b.ints([a % rank for a in axes]))] + \
        [None] * (len(node.input) - 1)


@rule("Gather")
def _gather(b, node, g, needed):
    x, indices = node.input[0], node.input[1]
    rank, axis = b.rank(x), _axis(node, b, node.input[0])
    shape_of_x = b.shape_of(x)
    # g: x.shape[:axis] + indices.shape + x.shape[axis+1:] -> one axis of len(indices) at ``axis``
    flat_shape = b.op("Concat", b.op("Slice", shape_of_x, b.ints([0]), b.ints([axis])), b.ints([-1]),
                      b.op("Slice", shape_of_x, b.ints([axis + 1]), b.ints([rank])), axis=0)
    grad = b.op("Reshape", g[0], flat_shape)
    where = b.op("Reshape", indices, b.ints([1] * axis + [-1] + [1] * (rank - axis - 1)))
    where = b.op("Expand", where, b.shape_of(grad))
    return [b.op("ScatterElements", b.zeros_like(x), where, grad, axis=axis, reduction="add"), None]


# -- elementwise arithmetic -------------------------------------------------------------------
def _binary(b: Builder, node: onnx.NodeProto, needed: list, grad_a, grad_b) -> Grads:
    """Gradients of a broadcasting binary op; ``grad_a``/``grad_b`` build them at full shape."""
    like = b.shape(node.output[0])
    a, c = node.input[0], node.input[1]
    return [b.unbroadcast(grad_a(), a, like) if needed[0] else None,
            b.unbroadcast(grad_b(), c, like) if needed[1] else None]


@rule("Add")
def _add(b, node, g, needed):
    return _binary(b, node, needed, lambda: g[0], lambda: g[0])


@rule("Sub")
def _sub(b, node, g, needed):
    return _binary(b, node, needed, lambda: g[0], lambda: b.op("Neg", g[0]))


@rule("Mul")
def _mul(b, node, g, needed):
    a, c = node.input[:2]
    return _binary(b, node, needed, lambda: b.op("Mul", g[0], c), lambda: b.op("Mul", g[0], a))


@rule("Div")
def _div(b, node, g, needed):
    a, c = node.input[:2]
    quotient = lambda: b.op("Div", g[0], c)  # noqa: E731
    return _binary(b, node, needed, quotient,
                   lambda: b.op("Neg", b.op("Mul", b.op("Div", g[0], c), node.output[0])))


@rule("Pow")
def _pow(b, node, g, needed):
    x, p = node.input[:2]
    y = node.output[0]
    if not needed[1] and b.types.get(p, b.dtype) != b.types.get(x, b.dtype):
        p = b.op("Cast", p, to=b.types.get(x, b.dtype))  # an integer exponent
    dx = lambda: b.op("Mul", g[0], b.op("Mul", p, b.op("Pow", x, b.op("Sub", p, b.const(1.0)))))  # noqa: E731
    return _binary(b, node, needed, dx, lambda: b.op("Mul", g[0], b.op("Mul", y, b.op("Log", x))))


@rule("Where")
def _where(b, node, g, needed):
    condition, x, y = node.input
    like = b.shape(node.output[0])
    zero = b.const(0.0)
    return [None,
            b.unbroadcast(b.where(condition, g[0], zero), x, like) if needed[1] else None,
            b.unbroadcast(b.op("Where", condition, zero, g[0]), y, like) if needed[2] else None]


@rule("Neg")
def _neg(b, node, g, needed):
    return [b.op("Neg", g[0])]


@rule("Reciprocal")
def _reciprocal(b, node, g, needed):
    y = node.output[0]
    return [b.op("Neg", b.op("Mul", g[0], b.op("Mul", y, y)))]


@rule("Sqrt")
def _sqrt(b, node, g, needed):
    return [b.op("Div", b.scale(g[0], 0.5), node.output[0])]


@rule("Exp")
def _exp(b, node, g, needed):
    return [b.op("Mul", g[0], node.output[0])]


@rule("Tanh")
def _tanh(b, node, g, needed):
    y = node.output[0]
    return [b.op("Mul", g[0], b.op("Sub", b.const(1.0), b.op("Mul", y, y)))]


# -- activations ------------------------------------------------------------------------------
@rule("Relu")
def _relu(b, node, g, needed):
    return [b.where(b.op("Greater", node.input[0], b.const(0.0)), g[0])]


@rule("LeakyRelu")
def _leaky_relu(b, node, g, needed):
    alpha = attr(node, "alpha", 0.01)
    return [b.where(b.op("Greater", node.input[0], b.const(0.0)), g[0], b.scale(g[0], alpha))]


@rule("PRelu")
def _prelu(b, node, g, needed):
    _only_first(node, needed, "slope")
    x, slope = node.input[:2]
    return [b.where(b.op("Greater", x, b.const(0.0)), g[0], b.op("Mul", g[0], slope)), None]


@rule("Elu")
def _elu(b, node, g, needed):
    x, y = node.input[0], node.output[0]
    below = b.op("Mul", g[0], b.op("Add", y, b.const(attr(node, "alpha", 1.0))))  # alpha·e^x = y + alpha
    return [b.where(b.op("Greater", x, b.const(0.0)), g[0], below)]


@rule("Softplus")
def _softplus(b, node, g, needed):
    return [b.op("Mul", g[0], b.op("Sigmoid", node.input[0]))]


@rule("Clip")
def _clip(b, node, g, needed):
    """Gradient 1 strictly inside (min, max), as torch's hardtanh/ReLU6 (torch exports both as Clip)."""
    _only_first(node, needed, "min or max")
    x, inside = node.input[0], None
    for bound, op_type in ((1, "Greater"), (2, "Less")):
        if len(node.input) > bound and node.input[bound]:
            test = b.op(op_type, x, node.input[bound])
            inside = test if inside is None else b.op("And", inside, test)
    return [g[0] if inside is None else b.where(inside, g[0])] + [None] * (len(node.input) - 1)


@rule("Sigmoid")
def _sigmoid(b, node, g, needed):
    y = node.output[0]
    return [b.op("Mul", g[0], b.op("Mul", y, b.op("Sub", b.const(1.0), y)))]


@rule("HardSigmoid")
def _hard_sigmoid(b, node, g, needed):
    alpha, beta = attr(node, "alpha", 0.2), attr(node, "beta", 0.5)
    t = b.op("Add", b.scale(node.input[0], alpha), b.const(beta))
    inside = b.op("And", b.op("Greater", t, b.const(0.0)), b.op("Less", t, b.const(1.0)))
    return [b.where(inside, b.scale(g[0], alpha))]


@rule("HardSwish")
def _hard_swish(b, node, g, needed):
    """torch's hardswish_backward: 0 below -3, g·(x/3 + 1/2) up to 3, g above."""
    x = node.input[0]
    slope = b.op("Add", b.op("Div", x, b.const(3.0)), b.const(0.5))
    middle = b.op("Where", b.op("LessOrEqual", x, b.const(3.0)), b.op("Mul", g[0], slope), g[0])
    return [b.where(b.op("Less", x, b.const(-3.0)), b.const(0.0), middle)]


@rule("Erf")
def _erf(b, node, g, needed):
    x = node.input[0]
    density = b.op("Exp", b.op("Neg", b.op("Mul", x, x)))
    return [b.op("Mul", b.scale(g[0], 2.0 / math.sqrt(math.pi)), density)]


@rule("Gelu")
def _gelu(b, node, g, needed):
    x = node.input[0]
    if attr(node, "approximate", "none") == "tanh":
        c, k = math.sqrt(2.0 / math.pi), 0.044715
        x2 = b.op("Mul", x, x)
        t = b.op("Tanh", b.op("Mul", b.scale(x, c), b.op("Add", b.const(1.0), b.scale(x2, k))))
        dt = b.op("Mul", b.op("Sub", b.const(1.0), b.op("Mul", t, t)),
                  b.op("Add", b.const(c), b.scale(x2, 3 * k * c)))
        slope = b.op("Add", b.scale(b.op("Add", b.const(1.0), t), 0.5), b.scale(b.op("Mul", x, dt), 0.5))
    else:
        cdf = b.scale(b.op("Add", b.const(1.0), b.op("Erf", b.scale(x, 1 / math.sqrt(2.0)))), 0.5)
        pdf = b.scale(b.op("Exp", b.scale(b.op("Mul", x, x), -0.5)), 1 / math.sqrt(2 * math.pi))
        slope = b.op("Add", cdf, b.op("Mul", x, pdf))
    return [b.op("Mul", g[0], slope)]


@rule("Softmax")
def _softmax(b, node, g, needed):
    y, axis = node.output[0], attr(node, "axis", -1)
    dot = b.op("ReduceSum", b.op("Mul", g[0], y), b.ints([axis]), keepdims=1)
    return [b.op("Mul", y, b.op("Sub", g[0], dot))]


@rule("LogSoftmax")
def _log_softmax(b, node, g, needed):
    y, axis = node.output[0], attr(node, "axis", -1)
    total = b.op("ReduceSum", g[0], b.ints([axis]), keepdims=1)
    return [b.op("Sub", g[0], b.op("Mul", b.op("Exp", y), total))]


# -- normalisation ----------------------------------------------------------------------------
def _channel_vector(b: Builder, values: str, rank: int) -> str:
    """``[C]`` → ``[C, 1, …]`` to broadcast over ``[N, C, spatial…]``."""
    return b.op("Reshape", values, b.ints([-1] + [1] * (rank - 2)))


@rule("BatchNormalization")
def _batch_norm(b, node, g, needed):
    _only_first(node, needed, "scale, bias, mean or variance")
    x, scale, _, _, var = node.input[:5]
    if attr(node, "training_mode", 0):
        raise unsupported(node, "training-mode BatchNormalization; export the model for inference")
    eps = b.const(attr(node, "epsilon", 1e-5), helper.tensor_dtype_to_np_dtype(b.types.get(var, b.dtype)))
    factor = b.op("Div", scale, b.op("Sqrt", b.op("Add", var, eps)))
    factor = b.op("Cast", factor, to=b.types.get(x, b.dtype))
    return [b.op("Mul", g[0], _channel_vector(b, factor, b.rank(x)))] + [None] * 4


@rule("LayerNormalization")
def _layer_norm(b, node, g, needed):
    _only_first(node, needed, "scale or bias")
    if any(grad is not None for grad in g[1:]):
        raise unsupported(node, "its mean / inverse-std outputs are used downstream")
    x, scale = node.input[:2]
    rank = b.rank(x)
    axes = b.ints(range(_axis(node, b, x, -1), rank))
    mean = lambda t: b.op("ReduceMean", t, axes, keepdims=1)  # noqa: E731
    centred = b.op("Sub", x, mean(x))
    inv_std = b.op("Reciprocal", b.op("Sqrt", b.op("Add", mean(b.op("Mul", centred, centred)),
                                                   b.const(attr(node, "epsilon", 1e-5)))))
    normed = b.op("Mul", centred, inv_std)
    gh = b.op("Mul", g[0], scale)
    inner = b.op("Sub", b.op("Sub", gh, mean(gh)), b.op("Mul", normed, mean(b.op("Mul", gh, normed))))
    return [b.op("Mul", inv_std, inner)] + [None] * (len(node.input) - 1)


# -- pooling and reductions -------------------------------------------------------------------
def _spread(b: Builder, grad: str, x: str, axes: Sequence[int], mean: bool, node: onnx.NodeProto) -> str:
    """Gradient of a sum / mean over ``axes`` (kept as size-1 axes in ``grad``): broadcast back to x."""
    grad = b.op("Expand", grad, b.shape_of(x))
    if not mean:
        return grad
    return b.scale(grad, 1.0 / float(np.prod(b.static_dims(x, axes, node))))


@rule("GlobalAveragePool")
def _global_average_pool(b, node, g, needed):
    x = node.input[0]
    return [_spread(b, g[0], x, range(2, b.rank(x)), True, node)]


def reduce_axes(b: Builder, node: onnx.NodeProto) -> list[int]:
    """The axes a Reduce* node reduces (opset 18: second input; before: attribute), normalised."""
    rank = b.rank(node.input[0])
    if len(node.input) > 1 and node.input[1]:
        axes = b.value(node.input[1], node).tolist()
    else:
        axes = attr(node, "axes", None)
    if not axes:
        if attr(node, "noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    return sorted(int(a) % rank for a in axes)


@rule("ReduceMean", "ReduceSum")
def _reduce(b, node, g, needed):
    axes = reduce_axes(b, node)
    grad = g[0] if attr(node, "keepdims", 1) else b.op("Unsqueeze", g[0], b.ints(axes))
    return [_spread(b, grad, node.input[0], axes, node.op_type == "ReduceMean", node)] + [None] * (len(node.input) - 1)


def transposed_geometry(b: Builder, node: onnx.NodeProto, x: str, kernel: Sequence[int]) -> dict:
    """ConvTranspose attributes that map the gradient of a conv/pool output back onto ``x``'s grid."""
    spatial = b.static_dims(x, range(2, b.rank(x)), node)
    out = b.static_dims(node.output[0], range(2, b.rank(x)), node)
    count = len(spatial)
    strides = list(attr(node, "strides", None) or [1] * count)
    dilations = list(attr(node, "dilations", None) or [1] * count)
    pads = list(attr(node, "pads", None) or [0] * (2 * count))
    auto_pad = attr(node, "auto_pad", "NOTSET")
    output_padding = []
    for i in range(count):
        span = (kernel[i] - 1) * dilations[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max((out[i] - 1) * strides[i] + span - spatial[i], 0)
            small, large = total // 2, total - total // 2
            pads[i], pads[i + count] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        elif auto_pad == "VALID":
            pads[i] = pads[i + count] = 0
        missing = spatial[i] - (strides[i] * (out[i] - 1) + span - pads[i] - pads[i + count])
        output_padding.append(max(missing, 0))
        pads[i + count] += max(-missing, 0)  # ceil_mode windows that overhang the input
    return {"strides": strides, "dilations": dilations, "pads": pads, "output_padding": output_padding}


@rule("Conv")
def _conv(b, node, g, needed):
    _only_first(node, needed, "weight or bias")
    x, weight = node.input[:2]
    kernel = b.static_dims(weight, range(2, b.rank(weight)), node)
    geometry = transposed_geometry(b, node, x, kernel)
    grad = b.op("ConvTranspose", g[0], weight, group=attr(node, "group", 1), **geometry)
    return [grad] + [None] * (len(node.input) - 1)


@rule("ConvTranspose")
def _conv_transpose(b, node, g, needed):
    """The adjoint of a transposed convolution is the convolution with the same weight
    (``[C_in, C_out/group, k…]`` is a Conv weight from C_out to C_in channels) and geometry;
    ``output_padding`` only adds rows the convolution's floor division drops again."""
    _only_first(node, needed, "weight or bias")
    if attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID") or attr(node, "output_shape", None):
        raise unsupported(node, "auto_pad SAME_* or output_shape (give explicit pads)")
    x, weight = node.input[:2]
    kernel = b.static_dims(weight, range(2, b.rank(weight)), node)
    spatial = len(kernel)
    geometry = {"strides": list(attr(node, "strides", None) or [1] * spatial),
                "dilations": list(attr(node, "dilations", None) or [1] * spatial),
                "pads": list(attr(node, "pads", None) or [0] * (2 * spatial))}
    grad = b.op("Conv", g[0], weight, group=attr(node, "group", 1), kernel_shape=kernel, **geometry)
    return [grad] + [None] * (len(node.input) - 1)


def _resize_matrix(b: Builder, node: onnx.NodeProto, axis: int, rank: int, size_in: int) -> np.ndarray:
    """``[size_out, size_in]``: what the node's Resize does along ``axis`` to a vector, measured
    by running the same Resize (attributes, scales or sizes) on the identity matrix; nearest,
    linear and cubic resizing are separable, so the whole op is these matrices axis by axis."""
    import onnxruntime

    inputs = list(node.input) + [""] * (4 - len(node.input))
    scales = b.value(inputs[2], node) if inputs[2] else None
    sizes = b.value(inputs[3], node) if inputs[3] else None
    if attr(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize" \
            or attr(node, "axes", None) is not None:
        raise unsupported(node, "tf_crop_and_resize or an axes attribute")  # roi is read only by the former
    if axis == 0:
        raise unsupported(node, "resizing along the batch axis")
    shape = [size_in] + [1] * (rank - 1)  # the basis vectors as a batch, each along ``axis``
    shape[axis] = size_in
    basis = np.eye(size_in, dtype=np.float32).reshape(shape)
    feeds, extra = {"x": basis}, []
    if sizes is not None:
        wanted = np.ones(rank, np.int64)
        wanted[0], wanted[axis] = size_in, int(sizes[axis])
        extra = ["", "", "sizes"]
        initializers = [numpy_helper.from_array(wanted.astype(np.int64), "sizes")]
    else:
        per_axis = np.ones(rank, np.float32)
        per_axis[axis] = float(scales[axis])
        extra = ["", "scales"]
        initializers = [numpy_helper.from_array(per_axis, "scales")]
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    resize = helper.make_node("Resize", ["x", *extra], ["y"], **attributes)
    graph = helper.make_graph([resize], "resize_matrix",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(basis.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, feeds)[0]  # [size_in (basis vectors), …, size_out, …]
    return np.moveaxis(out.reshape(size_in, -1), 0, 1)  # [size_out, size_in]


@rule("Resize")
def _resize(b, node, g, needed):
    """Nearest, linear or cubic resizing is linear in the input: ``y = A_h · x · A_wᵀ`` per plane,
    so ``∂x = A_hᵀ · ∂y · A_w``, with the matrices read off the op itself (static sizes)."""
    _only_first(node, needed, "roi, scales or sizes")
    x = node.input[0]
    rank = b.rank(x)
    sizes = b.static_dims(x, range(1, rank), node)
    grad = g[0]
    for axis, size_in in zip(range(1, rank), sizes):
        matrix = _resize_matrix(b, node, axis, rank, size_in)  # [out, in]
        if matrix.shape[0] == size_in and np.array_equal(matrix, np.eye(size_in, dtype=np.float32)):
            continue
        moved = b.op("Transpose", grad, perm=[*(a for a in range(rank) if a != axis), axis])
        product = b.op("MatMul", moved, b.const(matrix))  # [..., out] @ [out, in]
        back = list(range(rank - 1))
        back.insert(axis, rank - 1)
        grad = b.op("Transpose", product, perm=back)
    return [grad] + [None] * (len(node.input) - 1)


@rule("AveragePool")
def _average_pool(b, node, g, needed):
    x = node.input[0]
    kernel = list(attr(node, "kernel_shape"))
    (channels,) = b.static_dims(x, [1], node)
    geometry = transposed_geometry(b, node, x, kernel)
    ones = b.const(np.ones([channels, 1, *kernel]))
    overhang = geometry["pads"] != list(attr(node, "pads", None) or [0] * (2 * len(kernel)))
    if attr(node, "count_include_pad", 0):
        if overhang:
            raise unsupported(node, "ceil_mode windows past the padding with count_include_pad=1")
        divisor = b.const(float(np.prod(kernel)))
    else:  # the number of real (non-pad) elements under each window
        window = {k: geometry[k] for k in ("strides", "dilations", "pads")}
        divisor = b.op("Conv", b.op("Add", b.zeros_like(x), b.const(1.0)), ones, group=channels, **window)
    return [b.op("ConvTranspose", b.op("Div", g[0], divisor), ones, group=channels, **geometry)]


@rule("MaxPool")
def _max_pool(b, node, g, needed):
    if len(node.output) > 1 and node.output[1] and g[1:] and g[1] is not None:
        raise unsupported(node, "its indices output is differentiated")
    x = node.input[0]
    pool_attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "storage_order"}
    _, indices = b.op("MaxPool", x, outputs=2, **pool_attrs)
    flat = b.op("ScatterElements", b.op("Reshape", b.zeros_like(x), b.ints([-1])),
                b.op("Reshape", indices, b.ints([-1])), b.op("Reshape", g[0], b.ints([-1])),
                axis=0, reduction="add")
    return [b.reshape_like(flat, x)]


# -- linear layers ----------------------------------------------------------------------------
@rule("Gemm")
def _gemm(b, node, g, needed):
    a, w = node.input[:2]
    alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
    trans_a, trans_b = attr(node, "transA", 0), attr(node, "transB", 0)
    grads: Grads = [None] * len(node.input)
    if needed[0]:
        grads[0] = (b.op("Gemm", w, g[0], alpha=alpha, transA=trans_b, transB=1) if trans_a
                    else b.op("Gemm", g[0], w, alpha=alpha, transB=1 - trans_b))
    if needed[1]:
        grads[1] = (b.op("Gemm", g[0], a, alpha=alpha, transA=1, transB=trans_a) if trans_b
                    else b.op("Gemm", a, g[0], alpha=alpha, transA=1 - trans_a))
    if len(node.input) > 2 and needed[2]:
        grads[2] = b.unbroadcast(b.scale(g[0], beta), node.input[2], b.shape(node.output[0]))
    return grads


def _swap_last(b: Builder, name: str, rank: int) -> str:
    return b.op("Transpose", name, perm=[*range(rank - 2), rank - 1, rank - 2])


@rule("MatMul")
def _matmul(b, node, g, needed):
    a, w = node.input[:2]
    rank_a, rank_w = b.rank(a), b.rank(w)
    if rank_a < 2 or rank_w < 2:
        raise unsupported(node, "MatMul with a 1-D operand")
    out = b.shape(node.output[0])
    grads: Grads = [None, None]
    if needed[0]:
        grad = b.op("MatMul", g[0], _swap_last(b, w, rank_w))
        grads[0] = b.unbroadcast(grad, a, out[:-2] + b.shape(a)[-2:])
    if needed[1]:
        grad = b.op("MatMul", _swap_last(b, a, rank_a), g[0])
        grads[1] = b.unbroadcast(grad, w, out[:-2] + b.shape(w)[-2:])
    return grads


# -- the backward pass ------------------------------------------------------------------------
def float_tensors_from(graph: onnx.GraphProto, source: str, types: dict[str, int]) -> set[str]:
    """Tensors that depend on ``source`` through float values (integer shape sub-graphs excluded)."""
    live = {source}
    for node in graph.node:
        if node.op_type in NON_DIFFERENTIABLE or not live.intersection(node.input):
            continue
        live.update(o for o in node.output if o and types.get(o, TensorProto.FLOAT) in FLOAT_TYPES)
    return live


def ancestors(graph: onnx.GraphProto, sink: str) -> set[str]:
    """Tensors ``sink`` is computed from (including itself)."""
    needed = {sink}
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            needed.update(i for i in node.input if i)
    return needed


def path_nodes(graph: onnx.GraphProto, source: str, sink: str, types: dict[str, int]) -> tuple[list, set[str]]:
    """Nodes that carry ``source`` into ``sink`` (graph order) and the tensors that depend on ``source``."""
    live = float_tensors_from(graph, source, types)
    wanted = ancestors(graph, sink)
    nodes = [n for n in graph.node if live.intersection(n.input) and live.intersection(n.output)
             and wanted.intersection(n.output)]
    return nodes, live


def add_gradient(model: onnx.ModelProto, source: str, sink: str, seed: str,
                 builder: Builder | None = None) -> str:
    """Append to ``model`` the nodes computing ``Σ seed · ∂sink/∂source`` (the shape of ``source``).

    ``seed`` is a tensor shaped like ``sink`` (a one-hot row per image for Grad-CAM). Raises
    :class:`GradientError` naming the first op on the path without a rule.
    """
    builder = builder or Builder(model)
    builder.dtype = builder.types.get(source, builder.dtype)
    nodes, live = path_nodes(model.graph, source, sink, builder.types)
    if not nodes:
        raise GradientError(f"{sink!r} does not depend on {source!r}: choose a layer between the input and the logits")
    for node in nodes:  # refuse before building anything
        if node.op_type not in RULES:
            raise unsupported(node, f"onnxcam has no gradient rule for {node.op_type} "
                                    f"(supported: {', '.join(sorted(RULES))})")
    grads: dict[str, list[str]] = {sink: [seed]}
    for node in reversed(nodes):
        outputs = [builder.sum(grads.pop(o, [])) for o in node.output]
        if all(o is None for o in outputs):
            continue
        needed = [bool(i) and i in live for i in node.input]
        for name, grad in zip(node.input, RULES[node.op_type](builder, node, outputs, needed)):
            if grad is not None and name in live:
                grads.setdefault(name, []).append(grad)
    result = builder.sum(grads.get(source, [])) or builder.zeros_like(source)
    builder.flush(model)
    return result
