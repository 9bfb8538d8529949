"""Clean-ups on the exported ONNX graph that the exporter's optimiser leaves undone."""

from __future__ import annotations

import onnx
from onnx import numpy_helper


def _constant_values(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """Integer constants (initializers and Constant nodes) by value name."""
    values = {init.name: numpy_helper.to_array(init).tolist() for init in graph.initializer
              if init.data_type == onnx.TensorProto.INT64}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensor = node.attribute[0].t
            if tensor.data_type == onnx.TensorProto.INT64:
                values[node.output[0]] = numpy_helper.to_array(tensor).tolist()
    return values


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Shapes by value name: initializers, then whatever shape inference finds."""
    shapes: dict[str, list[int | None]] = {init.name: list(init.dims) for init in model.graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=False).graph
    except Exception:  # shape inference is a best effort here; without it the pass does less
        inferred = model.graph
    for value in [*inferred.value_info, *inferred.input, *inferred.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape"):
            shapes.setdefault(value.name, [d.dim_value if d.HasField("dim_value") else None for d in dims])
    return shapes


def _batch_only_expand(expand: onnx.NodeProto | None, constants, shapes) -> str | None:
    """The 2-D source of an Expand that only adds leading (batch) dimensions, else None."""
    if expand is None or expand.op_type != "Expand":
        return None
    source, target = expand.input[0], constants.get(expand.input[1])
    source_shape = shapes.get(source)
    if target is None or source_shape is None or len(source_shape) != 2 or None in source_shape or len(target) < 2:
        return None
    return source if all(t in (1, s) for t, s in zip(target[-2:], source_shape)) else None


def drop_matmul_broadcast_expands(model: onnx.ModelProto) -> int:
    """Feed MatMul the un-expanded matrix where an Expand only adds batch dimensions.

    Autograd's batched matmul (``bmm``) expands a ``[K, M]`` weight to ``[B, K, M]`` (and
    in the backward, transposes that) before multiplying; ONNX ``MatMul`` broadcasts batch
    dimensions by itself, so the Expand only costs memory (ViT-B: 1.4 GB per attention
    block). Returns how many MatMul operands were rewired; Expand nodes left without
    consumers are removed.
    """
    graph = model.graph
    constants = _constant_values(graph)
    shapes = _static_shapes(model)
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    reshaped: set[str] = set()

    # Expand → Transpose(swap last two) → MatMul only: transpose the 2-D source instead
    for node in graph.node:
        if node.op_type != "Transpose" or node.output[0] in outputs:
            continue
        source = _batch_only_expand(producers.get(node.input[0]), constants, shapes)
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        if source is None or perm is None or perm[-2:] != [len(perm) - 1, len(perm) - 2] \
                or perm[:-2] != list(range(len(perm) - 2)):
            continue
        if all(c.op_type == "MatMul" for c in consumers.get(node.output[0], [])):
            node.input[0] = source
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("perm", [1, 0]))
            reshaped.add(node.output[0])

    rewired = 0
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        for slot, name in enumerate(node.input):
            source = _batch_only_expand(producers.get(name), constants, shapes)
            if source is not None:
                node.input[slot] = source
                rewired += 1
    used = {name for node in graph.node for name in node.input} | outputs
    for node in [n for n in graph.node if n.op_type == "Expand" and not any(o in used for o in n.output)]:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | outputs
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    for value in [v for v in graph.value_info if v.name in reshaped]:
        graph.value_info.remove(value)  # its recorded shape was the 3-D one
    return rewired


def _identity_aliases(graph: onnx.GraphProto, name: str) -> set[str]:
    """``name`` and every tensor equal to it through chains of Identity nodes."""
    producers = {output: node for node in graph.node for output in node.output}
    root = name
    while root in producers and producers[root].op_type == "Identity":
        root = producers[root].input[0]
    aliases, pending = {root}, [root]
    while pending:
        current = pending.pop()
        for node in graph.node:
            if node.op_type == "Identity" and node.input[0] == current and node.output[0] not in aliases:
                aliases.add(node.output[0])
                pending.append(node.output[0])
    return aliases


def find_tails(model: onnx.ModelProto, markers: list[str], shapes: list[list[int]],
               output: str) -> list[tuple[str, list[str]] | None]:
    """For each marker output (the layer output the rest of the model reads; ``shapes``: its
    shape without the batch), the tensor from which ``output`` can be computed (the model's
    tail, for Ablation-CAM) with the side tensors it also reads (``subgraph.tail_sides``: an
    FPN's other stages), or None where no tail can be cut. The marker outputs are removed."""
    from onnxcam.runtime.subgraph import find_tail, needed_nodes

    graph = model.graph
    tails: list[tuple[str, list[str]] | None] = []
    for marker, shape in zip(markers, shapes):
        aliases = _identity_aliases(graph, marker)
        _, reads = needed_nodes(graph, [output], stop_at=aliases)
        read = reads & aliases
        tail = read.pop() if len(read) == 1 else None
        sides = find_tail(model, tail, shape) if tail is not None else None
        tails.append(None if sides is None else (tail, sides))
    kept = [output for output in graph.output if output.name not in set(markers)]
    del graph.output[:]
    graph.output.extend(kept)
    return tails
