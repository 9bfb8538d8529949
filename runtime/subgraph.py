"""Parts of an explainer graph as models of their own: the plain forward pass, and the model's tail.

Methods that need extra forward passes (Score-CAM, Ablation-CAM) and the faithfulness
metrics run many perturbed inputs through the model. They must not pay for the
backward part of the explainer graph, so they run a slice of it: the nodes needed to
compute the wanted outputs from the given inputs, nothing else.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.runtime.contract import INPUT, LOGITS, TARGET, ContractError


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.node for output in node.output if output}


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing graph."""
    names: set[str] = set()
    for attribute in node.attribute:
        graphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
        for body in graphs:
            produced = {o for n in body.node for o in n.output} | {i.name for i in body.input}
            produced |= {i.name for i in body.initializer}
            for inner in body.node:
                names |= {i for i in inner.input if i and i not in produced}
                names |= _subgraph_inputs(inner)
    return names


def needed_nodes(graph: onnx.GraphProto, outputs: Sequence[str], stop_at: Sequence[str] = ()) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes (in graph order) needed to compute ``outputs`` when the tensors in
    ``stop_at`` are given, and the names the slice reads that no kept node produces
    (graph inputs, initializers, or tensors in ``stop_at``)."""
    producers = _producers(graph)
    stop = set(stop_at)
    keep: set[int] = set()
    reads: set[str] = set()
    pending = list(outputs)
    seen: set[str] = set()
    index_of = {id(node): i for i, node in enumerate(graph.node)}
    while pending:
        name = pending.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        node = producers.get(name)
        if name in stop or node is None:
            reads.add(name)
            continue
        if index_of[id(node)] in keep:
            continue
        keep.add(index_of[id(node)])
        pending.extend(node.input)
        pending.extend(_subgraph_inputs(node))
    return [graph.node[i] for i in sorted(keep)], reads


def slice_model(model: onnx.ModelProto, outputs: Sequence[str], inputs: Sequence[onnx.ValueInfoProto]) -> onnx.ModelProto:
    """A model computing ``outputs`` of ``model`` from ``inputs`` (value infos of graph inputs or
    of inner tensors, which become the new graph inputs). Raises ``ContractError`` when the
    outputs also depend on another graph input (the cut is not clean)."""
    graph = model.graph
    input_names = [value.name for value in inputs]
    nodes, reads = needed_nodes(graph, outputs, stop_at=input_names)
    initializers = [t for t in graph.initializer if t.name in reads]
    initializer_names = {t.name for t in initializers}
    sparse = [t for t in graph.sparse_initializer if t.values.name in reads]
    initializer_names |= {t.values.name for t in sparse}
    missing = reads - initializer_names - set(input_names)
    if missing:
        raise ContractError(f"the outputs {list(outputs)} also depend on {sorted(missing)[:3]}, "
                            f"not only on {input_names}")
    value_of = {v.name: v for v in [*graph.value_info, *graph.output, *graph.input]}
    sliced = helper.make_graph(
        nodes, f"{graph.name}_slice", list(inputs), [value_of.get(name) or helper.make_empty_tensor_value_info(name)
                                                    for name in outputs],
        initializer=initializers, sparse_initializer=sparse,
        value_info=[v for v in graph.value_info if v.name not in set(input_names) | set(outputs)],
    )
    result = helper.make_model(sliced, opset_imports=model.opset_import, ir_version=model.ir_version)
    result.functions.extend(model.functions)
    return result


def _input_shape(graph: onnx.GraphProto) -> list[int]:
    """``[C, H, W]`` of the graph's image input."""
    return [d.dim_value for d in next(i for i in graph.input if i.name == INPUT).type.tensor_type.shape.dim[1:]]


def forward_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The explainer graph's plain forward pass: ``input [N,C,H,W] → logits [N, classes]``
    (one target an image, where the graph takes target lists)."""
    return tail_model(model, INPUT, _input_shape(model.graph))


def tail_model(model: onnx.ModelProto, tail: str, shape: Sequence[int]) -> onnx.ModelProto:
    """The model from a layer's output on: ``tail [B, *shape] → logits [B, classes]`` (Ablation-CAM).

    The rest of the model may read the graph's ``input`` and ``target`` for their shapes only
    (the exporter's batch arithmetic, ``N·K`` rows): those ``Shape`` nodes are rewritten as if
    the ``B`` rows were ``B`` images with one target each. Any other use of them means the
    logits do not follow from the layer alone, and raises ``ContractError``.
    """
    graph = model.graph
    nodes, reads = needed_nodes(graph, [LOGITS], stop_at=[tail, INPUT, TARGET])
    input_shape = _input_shape(graph)
    extra: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    rewritten: list[onnx.NodeProto] = []
    for node in nodes:
        read = [name for name in node.input if name in (INPUT, TARGET) and name != tail]
        if not read:
            rewritten.append(node)
            continue
        if node.op_type != "Shape":
            raise ContractError(f"node {node.name or node.op_type} ({node.op_type}) reads {read[0]!r} after the layer")
        prefix = f"onnxcam_tail/{len(extra)}"
        rows = f"{prefix}/rows"
        extra.append(helper.make_node("Shape", [tail], [rows], start=0, end=1))
        rest = f"{prefix}/rest"
        initializers.append(numpy_helper.from_array(
            np.array(input_shape if node.input[0] == INPUT else [1], dtype=np.int64), rest))
        full = f"{prefix}/full"
        extra.append(helper.make_node("Concat", [rows, rest], [full], axis=0))
        attributes = {a.name: a.i for a in node.attribute}
        start, end = f"{prefix}/start", f"{prefix}/end"
        initializers.append(numpy_helper.from_array(np.array([attributes.get("start", 0)], np.int64), start))
        initializers.append(numpy_helper.from_array(np.array([attributes.get("end", 2 ** 62)], np.int64), end))
        extra.append(helper.make_node("Slice", [full, start, end], [node.output[0]]))
    if tail not in reads:
        raise ContractError(f"the logits do not depend on {tail!r}")
    sliced = onnx.ModelProto()
    sliced.CopyFrom(model)
    del sliced.graph.node[:]
    sliced.graph.node.extend(extra + rewritten)
    sliced.graph.initializer.extend(initializers)
    del sliced.graph.value_info[:]
    value = helper.make_tensor_value_info(tail, onnx.TensorProto.FLOAT, ["rows", *shape])
    if tail == INPUT:
        del sliced.graph.input[:]
    return slice_model(sliced, [LOGITS], [value])
