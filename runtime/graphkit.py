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


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of an initializer or ``Constant`` node output, else None."""
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    node = producers(graph).get(name)
    if node is not None and node.op_type == "Constant" and node.attribute \
            and node.attribute[0].name == "value":
        return numpy_helper.to_array(node.attribute[0].t)
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
