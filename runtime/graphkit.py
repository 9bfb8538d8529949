"""The one graph toolkit: reading and editing ONNX graphs, shared by export, augment, slicing
and the nodes the runtime appends (target seeds, in-graph methods).

Torch-free and onnxruntime-free: ``onnx`` and ``numpy`` only, so both sides of the torch
boundary import it (docs/explainer-graph.md, "How the runtime runs it").
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


class GraphError(ValueError):
    """An edit that would leave the graph invalid (a cycle, a missing tensor)."""


# -- reading -----------------------------------------------------------------------------
def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name → the node that computes it."""
    return {output: node for node in graph.node for output in node.output if output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name → the nodes that read it (directly, not through subgraphs)."""
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                found.setdefault(name, []).append(node)
    return found


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing graph."""
    names: set[str] = set()
    for attribute in node.attribute:
        graphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
        for body in graphs:
            produced = {o for n in body.node for o in n.output} | {i.name for i in body.input}
            produced |= {i.name for i in body.initializer}
            for inner in body.node:
                names |= {i for i in inner.input if i and i not in produced}
                names |= subgraph_inputs(inner)
    return names


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads: its inputs and what its subgraphs read from outside."""
    return [name for name in node.input if name] + sorted(subgraph_inputs(node))


def needed_nodes(graph: onnx.GraphProto, outputs: Sequence[str],
                 stop_at: Iterable[str] = ()) -> tuple[list[onnx.NodeProto], set[str]]:
    """The backward slice: the nodes (in graph order) needed to compute ``outputs`` when the
    tensors in ``stop_at`` are given, and the names the slice reads that no kept node
    produces (graph inputs, initializers, or tensors in ``stop_at``)."""
    made_by = producers(graph)
    stop = set(stop_at)
    index_of = {id(node): i for i, node in enumerate(graph.node)}
    keep: set[int] = set()
    reads: set[str] = set()
    pending, seen = list(outputs), set()
    while pending:
        name = pending.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        node = made_by.get(name)
        if name in stop or node is None:
            reads.add(name)
            continue
        if index_of[id(node)] not in keep:
            keep.add(index_of[id(node)])
            pending.extend(node_reads(node))
    return [graph.node[i] for i in sorted(keep)], reads


def ancestors(graph: onnx.GraphProto, name: str) -> set[str]:
    """Every tensor ``name`` is computed from (itself included)."""
    nodes, reads = needed_nodes(graph, [name])
    return {o for n in nodes for o in n.output} | reads | {name}


def constant_value(graph: onnx.GraphProto, name: str, fold: int = 0) -> np.ndarray | None:
    """The value of an initializer or ``Constant`` node output, else None. With ``fold`` > 0, also
    of a tensor computed from constants alone by at most ``fold`` nodes (an exported backward's
    flipped convolution weight, say), evaluated with onnx's reference evaluator."""
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    node = producers(graph).get(name)
    if node is None:
        return None
    if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return numpy_helper.to_array(node.attribute[0].t)
    if fold <= 0:
        return None
    nodes, reads = needed_nodes(graph, [name])
    weights = {t.name: t for t in graph.initializer}
    if len(nodes) > fold or not reads <= set(weights) or any(subgraph_inputs(n) for n in nodes):
        return None
    from onnx.reference import ReferenceEvaluator

    sliced = helper.make_graph(nodes, "constant", [], [helper.make_empty_tensor_value_info(name)],
                               initializer=[weights[r] for r in reads])
    model = helper.make_model(sliced, opset_imports=[helper.make_opsetid("", 18)])
    try:
        return np.asarray(ReferenceEvaluator(model).run(None, {})[0])
    except Exception:  # an op the reference evaluator lacks: not foldable here
        return None


def value_dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """A value info's dimensions: ints, symbolic names, or None where unknown."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value.type.tensor_type.shape.dim]


# -- editing -----------------------------------------------------------------------------
def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied


def rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Call tensor ``old`` ``new`` everywhere in ``graph``: nodes, inputs, outputs, value infos, initializers."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if value.name == old:
            value.name = new


class Names:
    """Fresh tensor and node names under a prefix, never one already taken."""

    def __init__(self, taken: set[str], prefix: str):
        self.taken, self.prefix, self.count = set(taken), prefix, 0

    def fresh(self, hint: str) -> str:
        while True:
            self.count += 1
            name = f"{self.prefix}/{hint}_{self.count}"
            if name not in self.taken:
                self.taken.add(name)
                return name


def names_in(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a graph defines: node outputs, initializers, inputs."""
    return {o for n in graph.node for o in n.output} | {t.name for t in graph.initializer} | {i.name for i in graph.input}


class Builder:
    """Appends nodes and constants to a graph under a prefix; never reuses a name."""

    def __init__(self, graph: onnx.GraphProto, prefix: str = "onnxcam"):
        self.graph = graph
        self._names = Names(names_in(graph), prefix)

    def name(self, hint: str) -> str:
        return self._names.fresh(hint)

    def op(self, op_type: str, inputs: Sequence[str], output: str | None = None, outputs: int = 1,
           **attributes) -> str | list[str]:
        """Append one node; returns its output name (a list of ``outputs`` names where it has several)."""
        names = [output or self.name(op_type.lower())] if outputs == 1 else \
            [self.name(f"{op_type.lower()}_{i}") for i in range(outputs)]
        self._names.taken.update(names)
        self.graph.node.append(helper.make_node(op_type, list(inputs), names, name=self.name(op_type), **attributes))
        return names[0] if outputs == 1 else names

    def const(self, value, dtype=np.float32) -> str:
        name = self.name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, values: Sequence[int] | int) -> str:
        """An int64 constant: a list, or a scalar for an ``int``."""
        return self.const(values if isinstance(values, int) else list(values), np.int64)


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so that every node comes after the nodes it reads from
    (appended nodes may feed nodes already in the graph); a ``GraphError`` on a cycle."""
    made_by = {output: i for i, node in enumerate(graph.node) for output in node.output if output}
    nodes = list(graph.node)
    waiting = [sum(1 for name in set(node_reads(node)) if name in made_by) for node in nodes]
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in set(node_reads(node)):
            if name in made_by:
                readers.setdefault(made_by[name], []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    order: list[int] = []
    while ready:
        ready.sort()
        current = ready.pop(0)
        order.append(current)
        for reader in readers.get(current, []):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if len(order) != len(nodes):
        stuck = next(nodes[i] for i in range(len(nodes)) if i not in set(order))
        raise GraphError(f"the graph has a cycle through node {stuck.name or stuck.op_type}")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


SAME_SHAPE = ("Cast", "Identity")  # ops whose output has their input's shape


def rewrite_shape_reads(graph: onnx.GraphProto, name: str, rows_from: str, rows_rank: int,
                        rest: Sequence[int], b: Builder) -> list[onnx.NodeProto]:
    """Make every ``Shape`` node that reads ``name`` (or a Cast/Identity of it, as float16 graphs
    have) read the same shape from elsewhere.

    ``name``'s shape is taken to be ``shape(rows_from)[:rows_rank] + rest``: the leading
    (batch) sizes from ``rows_from``, the rest fixed. Used where a tensor is cut out of a
    graph but the graph also reads its shape (the batch arithmetic of ``input``/``seed``).
    Returns the nodes that read ``name`` (or a copy) for anything but its shape.
    """
    aliases, others = {name}, []
    for node in list(graph.node):
        if not aliases.intersection(node.input):
            continue
        if node.op_type in SAME_SHAPE:  # a copy: its own readers decide
            aliases.update(node.output)
            continue
        if node.op_type != "Shape":
            others.append(node)
            continue
        attributes = {a.name: a.i for a in node.attribute}
        full = b.op("Concat", [b.op("Shape", [rows_from], start=0, end=rows_rank), b.ints(rest)], axis=0)
        start, end = attributes.get("start", 0), attributes.get("end", 2 ** 62)
        graph.node.remove(node)
        graph.node.append(helper.make_node("Slice", [full, b.ints([start]), b.ints([end])], list(node.output),
                                           name=b.name("shape_of")))
    return others


def prune(graph: onnx.GraphProto, inputs: bool = False) -> None:
    """Drop the nodes and initializers the graph's outputs do not need (and the graph inputs,
    with ``inputs=True``)."""
    nodes, reads = needed_nodes(graph, [o.name for o in graph.output])
    kept = {id(n) for n in nodes}
    remaining = [n for n in graph.node if id(n) in kept]
    del graph.node[:]
    graph.node.extend(remaining)
    used = reads | {name for n in remaining for name in node_reads(n)}
    weights = [w for w in graph.initializer if w.name in used]
    del graph.initializer[:]
    graph.initializer.extend(weights)
    if inputs:
        kept_inputs = [i for i in graph.input if i.name in used]
        del graph.input[:]
        graph.input.extend(kept_inputs)


# -- precision ---------------------------------------------------------------------------------
# kept in float32: scatter-add (max-pool backward) has no float16 kernel on some providers;
# LayerNormalization's mean and inverse-std outputs (which the backward pass reads) are float32
# by the ONNX spec whatever the input type (its stash_type), and the converter would retype them
# float16, a graph onnxruntime refuses (ConvNeXt, Swin, ViT) — and normalising in float32 is
# also what mixed-precision training does
FLOAT32_OPS = ("ScatterElements", "LayerNormalization")


def detach_outputs(graph: onnx.GraphProto) -> None:
    """Give each graph output its own Identity, so no node consumes an output tensor.

    The float16 converter casts outputs back to float32 under their own names; a node that
    also read such a tensor (ResNet's GAP reads ``activation_0``) would then get float32
    while typed float16, and onnxruntime refuses the model.
    """
    outputs = {o.name for o in graph.output}
    renamed = {name: f"{name}__value" for name in outputs}
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    for value in graph.value_info:
        value.name = renamed.get(value.name, value.name)
    for name in outputs:
        graph.node.append(helper.make_node("Identity", [renamed[name]], [name], name=f"output/{name}"))


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model``: weights and arithmetic in float16 (``FLOAT32_OPS`` excepted),
    inputs and outputs as they were (Casts at the edges). Needs ``onnxconverter-common``."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise ImportError("float16 conversion needs onnxconverter-common; pip install onnxconverter-common") from None
    import warnings

    model = copy_model(model)
    detach_outputs(model.graph)
    block = list(float16.DEFAULT_OP_BLOCK_LIST) + list(FLOAT32_OPS)
    with warnings.catch_warnings():  # one per weight below float16's range, flushed to its smallest value
        warnings.filterwarnings("ignore", "the float32 number", UserWarning)
        return float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)


# -- reductions pushed through the nodes that produce a tensor ------------------------------------
def spatial_mean(b: Builder, tensor: str, size: Sequence[int]) -> str:
    """``[R, C, 1, 1]``: the mean of ``tensor`` ``[R, C, H, W]`` (``size`` = ``(H, W)``) over its
    spatial axes, computed without ``tensor`` itself where it is the output of a stride-1
    convolution (plain or transposed, constant weight; as a layer's gradient usually is), a sum of
    such, or a broadcast of a ``[R, C, 1, 1]`` tensor: the mean of a convolution is a sum, over
    the kernel's taps, of the weight times a window sum of its input. So Grad-CAM's weights
    need no full backward through the last convolution (a segmentation head's 3×3, an
    ASPP). Elsewhere it is a ``ReduceMean``."""
    pushed = _pushed_sum(b, tensor, tuple(int(s) for s in size))
    if pushed is None:
        return b.op("ReduceMean", [tensor, b.ints([2, 3])], keepdims=1)
    return b.op("Unsqueeze", [b.op("Mul", [pushed, b.const(1.0 / (size[0] * size[1]))]), b.ints([2, 3])])


def _pushed_sum(b: Builder, tensor: str, size: tuple[int, int]) -> str | None:
    """``[R, C]``: the spatial sum of ``tensor``, or None where its producer is not understood."""
    node = producers(b.graph).get(tensor)
    if node is None:
        return None
    if node.op_type == "Identity":
        return _pushed_sum(b, node.input[0], size)
    if node.op_type == "Add" and constant_value(b.graph, node.input[0]) is None \
            and constant_value(b.graph, node.input[1]) is None:
        parts = [_pushed_sum(b, name, size) for name in node.input]
        return None if None in parts else b.op("Add", parts)
    if node.op_type in ("Conv", "ConvTranspose"):
        return _convolution_sum(b, node, size)
    return None


def _convolution_sum(b: Builder, node: onnx.NodeProto, size: tuple[int, int]) -> str | None:
    """The spatial sum of a stride-1, group-1 (transposed) convolution's output of ``size``:
    ``Σ_taps W_tap · (window sum of the input)``, one MatMul over the concatenated window sums."""
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    weight = constant_value(b.graph, node.input[1], fold=16)
    if weight is None or weight.ndim != 4 or attributes.get("group", 1) != 1 \
            or any(s != 1 for s in attributes.get("strides", [1, 1])) \
            or attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or "output_shape" in attributes:
        return None
    transposed = node.op_type == "ConvTranspose"
    kernel = weight.shape[2:]
    dilations = list(attributes.get("dilations", [1, 1]))
    pads = list(attributes.get("pads", [0, 0, 0, 0]))
    extra = list(attributes.get("output_padding", [0, 0])) if transposed else [0, 0]
    reach = [d * (k - 1) for d, k in zip(dilations, kernel)]
    # the input's size, from the output's (stride 1)
    inputs = [o - r + pads[a] + pads[a + 2] - e if transposed else o + r - pads[a] - pads[a + 2]
              for a, (o, r, e) in enumerate(zip(size, reach, extra))]
    sums, blocks = [], []
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            bounds = []
            for a, tap in enumerate((i, j)):
                # the input positions this tap carries into an output position in [0, size)
                low = pads[a] - tap * dilations[a] if transposed else tap * dilations[a] - pads[a]
                bounds.append((max(0, low), min(inputs[a], size[a] + low)))
            if any(start >= stop for start, stop in bounds):
                continue
            window = b.op("Slice", [node.input[0], b.ints([bounds[0][0], bounds[1][0]]),
                                    b.ints([bounds[0][1], bounds[1][1]]), b.ints([2, 3])])
            sums.append(b.op("ReduceSum", [window, b.ints([2, 3])], keepdims=0))  # [R, C_in]
            tap = weight[:, :, i, j]  # Conv: [C_out, C_in]; ConvTranspose: [C_in, C_out]
            blocks.append(tap if transposed else tap.T)  # → [C_in, C_out]
    if not sums:
        return None
    total = b.op("MatMul", [b.op("Concat", sums, axis=1), b.const(np.concatenate(blocks, axis=0))])
    if len(node.input) > 2 and node.input[2]:
        bias = constant_value(b.graph, node.input[2], fold=16)
        if bias is None:
            return None
        total = b.op("Add", [total, b.const(bias * (size[0] * size[1]))])
    return total
