"""Parts of an explainer graph as models of their own: the plain forward pass, and the model's tail.

Methods that need extra forward passes (Score-CAM, Ablation-CAM) and the faithfulness
metrics run many perturbed inputs through the model. They must not pay for the
backward part of the explainer graph, so they run a slice of it: the nodes needed to
compute the wanted outputs from the given inputs, nothing else.
"""

from __future__ import annotations

from typing import Sequence

import onnx
from onnx import helper

from onnxcam.runtime import graphkit
from onnxcam.runtime.contract import INPUT, LOGITS, OUTPUT, SEED, TARGET, ContractError

needed_nodes = graphkit.needed_nodes


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


def output_name(model: onnx.ModelProto) -> str:
    """The differentiated output: ``output`` (format 2) or ``logits`` (format 1)."""
    names = {o.name for o in model.graph.output}
    return OUTPUT if OUTPUT in names else LOGITS


def forward_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The explainer graph's plain forward pass: ``input [N,C,H,W] → output [N, …]`` (one target
    an image)."""
    return tail_model(model, INPUT, _input_shape(model.graph))


def _row_rest(graph: onnx.GraphProto, name: str, input_shape: list[int]) -> list[int]:
    """The sizes after the batch axis of a row-defining graph input, as if each row were one
    image with one target: ``input`` → ``[C, H, W]``, ``target`` → ``[1]``, ``seed`` → ``[1, *output]``."""
    if name == INPUT:
        return input_shape
    value = next(i for i in graph.input if i.name == name)
    return [1] + [int(d) for d in graphkit.value_dims(value)[2:]]


def tail_model(model: onnx.ModelProto, tail: str, shape: Sequence[int], sides: Sequence[str] = ()) -> onnx.ModelProto:
    """The model from a layer's output on: ``tail [B, *shape] → output [B, …]`` (Ablation-CAM).

    ``sides``: the tensors the rest of the model also reads that do not depend on the layer
    (``tail_sides``: an FPN's other stages), inputs of the tail model too, ``[B, …]``.

    The rest of the model may read the graph's ``input`` and ``seed`` (``target`` in format 1)
    for their shapes only (the exporter's batch arithmetic, ``N·K`` rows): those ``Shape``
    nodes are rewritten as if the ``B`` rows were ``B`` images with one target each. Any other
    use of them means the output does not follow from the layer alone, and raises ``ContractError``.
    """
    graph = model.graph
    result = output_name(model)
    row_inputs = [name for name in (INPUT, SEED, TARGET) if name != tail and any(i.name == name for i in graph.input)]
    nodes, reads = needed_nodes(graph, [result], stop_at=[tail, *sides, *row_inputs])
    sliced = graphkit.copy_model(model)
    del sliced.graph.node[:]
    sliced.graph.node.extend(nodes)
    del sliced.graph.value_info[:]
    b = graphkit.Builder(sliced.graph, "onnxcam_tail")
    for name in row_inputs:
        others = graphkit.rewrite_shape_reads(sliced.graph, name, tail, 1, _row_rest(graph, name, _input_shape(graph)), b)
        if others:
            node = others[0]
            raise ContractError(f"node {node.name or node.op_type} ({node.op_type}) reads {name!r} after the layer")
    if tail not in reads:
        raise ContractError(f"the output does not depend on {tail!r}")
    graphkit.toposort(sliced.graph)
    value = helper.make_tensor_value_info(tail, onnx.TensorProto.FLOAT, ["rows", *shape])
    if tail == INPUT:
        del sliced.graph.input[:]
    return slice_model(sliced, [result], [value, *(_rows_value(graph, side) for side in sides)])


def _rows_value(graph: onnx.GraphProto, name: str) -> onnx.ValueInfoProto:
    """The value info of inner tensor ``name`` with its first axis named ``rows`` (float32 where unknown)."""
    known = next((v for v in [*graph.value_info, *graph.output] if v.name == name), None)
    if known is None or not known.type.tensor_type.HasField("shape"):
        return helper.make_tensor_value_info(name, known.type.tensor_type.elem_type if known else onnx.TensorProto.FLOAT,
                                             None)
    value = onnx.ValueInfoProto()
    value.CopyFrom(known)
    value.type.tensor_type.shape.dim[0].Clear()
    value.type.tensor_type.shape.dim[0].dim_param = "rows"
    return value


def tail_sides(model: onnx.ModelProto, tail: str) -> list[str]:
    """The tensors the model after ``tail`` reads besides it that the input computes without the
    layer: the frontier where the nodes depending on the layer read the input's other branches
    (a feature pyramid reads earlier stages). ``Shape`` reads carry no values."""
    graph = model.graph
    row_inputs = [name for name in (INPUT, SEED, TARGET) if name != tail and any(i.name == name for i in graph.input)]
    nodes, _ = needed_nodes(graph, [output_name(model)], stop_at=[tail, *row_inputs])
    on_layer, on_input, sides = {tail}, {INPUT}, []
    for node in nodes:  # graph order: producers first
        values = [] if node.op_type == "Shape" else [name for name in graphkit.node_reads(node) if name]
        if any(name in on_layer for name in values):
            on_layer.update(node.output)
            sides += [name for name in values if name in on_input and name not in sides]
        elif any(name in on_input for name in values):
            on_input.update(node.output)
    return sides


def find_tail(model: onnx.ModelProto, tail: str, shape: Sequence[int]) -> list[str] | None:
    """The side inputs the model after ``tail`` needs (``[]``: the layer alone feeds the rest), or
    None where no tail model can be cut (the rest reads the input itself after the layer)."""
    try:
        tail_model(model, tail, shape)
        return []
    except ContractError:
        sides = tail_sides(model, tail)
    if not sides or INPUT in sides:
        return None
    try:
        tail_model(model, tail, shape, sides)
    except ContractError:
        return None
    return sides
