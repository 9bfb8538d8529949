"""An existing ONNX model → explainer graph, at the ONNX level: no PyTorch, no source.

``augment`` finds the nodes between a chosen layer and the output to explain (class
scores, one logit, an embedding, a segmentation or probability map), appends their
reverse-mode derivative driven by the ``seed`` input as plain ONNX nodes (rules in
``onnx_grad.py``) and gives the graph exactly the explainer contract
(docs/explainer-graph.md): inputs ``input`` (float32 ``[N,C,H,W]``) and ``seed``
(``[N, K, *output]``); outputs ``output``, ``activation_0``, ``gradient_0`` and, after a
global-average-pool + linear head, ``cam_weight_0``. Needs onnx, numpy and (for shape
probing and a final trial run) onnxruntime; never torch.
"""

from __future__ import annotations

import difflib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxcam.export import onnx_grad
from onnxcam.export.onnx_grad import Builder, GradientError, ancestors, float_tensors_from, path_nodes
from onnxcam.export.onnx_io import onnxcam_version, write_explainer
from onnxcam.export.tokens import token_grid
from onnxcam.runtime import contract, graphkit, subgraph

OPSET = 18
MAX_IR_VERSION = 10  # what onnxruntime >= 1.18 reads
PASS_THROUGH = {"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Dropout"}
# after the pooling of a GAP + linear head: ops that keep the score linear in the pooled vector
LINEAR_HEAD = {"Identity", "Cast", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Gemm", "MatMul",
               "Add", "Sub", "Mul", "Div"}
RESERVED = {contract.INPUT, contract.SEED, contract.OUTPUT, contract.TARGET, contract.LOGITS,
            contract.RESOLVED_TARGET, contract.activation_name(0), contract.gradient_name(0),
            contract.cam_weight_name(0)}


class AugmentError(ValueError):
    """The ONNX file cannot be turned into an explainer graph (what is wrong and what to do)."""


@dataclass
class Augmented:
    """What ``augment`` made: the explainer graph, its metadata record and what it chose."""

    model: onnx.ModelProto
    record: dict[str, Any]
    layer: str
    layer_reason: str
    score: str
    notes: list[str] = field(default_factory=list)


def augment(model: str | Path | onnx.ModelProto, output: str | Path | None = None, layer: str | None = None,
            logits: str | None = None, *, preprocessing: dict[str, Any] | None = None,
            labels: Sequence[str] | None = None, size: Sequence[int] | None = None,
            reshape: str = "auto", architecture: str | None = None) -> Augmented:
    """Turn an inference ONNX model into an explainer graph (written to ``output`` if given).

    layer: tensor name to explain (``[N,C,h,w]``, ``[N,h,w,C]`` or tokens ``[N,T,C]``); default:
    the input of the last global pooling before the output, else the last feature map.
    logits: the tensor to explain (any ``[N, …]`` float tensor); default: the model's first
    output, or, for ``[N, classes]`` scores, the input of its final Softmax. size: ``(H, W)`` where the
    model's input has dynamic height/width. reshape: ``auto``/``none``/``nhwc``/``tokens``.
    preprocessing: keys of the metadata record's ``preprocessing`` (size, resize, mean, std,
    channel_order, scale); missing ones default to ImageNet's, RGB, /255, no resize, the model's size.
    """
    if architecture is None:
        architecture = Path(model).name if isinstance(model, (str, Path)) else (model.graph.name or "onnx model")
    found = _analyse(model, size, logits)
    proto, builder, sink = found.model, found.builder, found.sink
    if layer is None:
        layer, reason = found.default_layer()
    else:
        layer, reason = found.inside(layer), "chosen"
        found.check_layer(layer)
    layout = _layout(proto, builder, layer, sink, reshape)
    described = _build(proto, builder, layer, layout, sink, found.outside(layer))
    described = dataclasses.replace(described, tail=_tail(proto, builder, layer, layout))
    image = found.image
    steps = {**contract.default_preprocessing(image["shape"][1:]), **(preprocessing or {})}
    steps["size"] = list(image["shape"][1:])
    record = contract.metadata_record(
        input_shape=image["shape"], output_shape=builder.shape(sink)[1:], layers=[described], preprocessing=steps,
        labels=labels, architecture=architecture, exporter=f"onnxcam {onnxcam_version()} augment",
        score=found.score, output_source=found.outside(sink),
    )
    record["augment"] = {"source_input": found.outside(image["name"]), "source_layout": image["layout"],
                         "logits_tensor": found.outside(sink), "layer_tensor": found.outside(layer)}
    graphkit.prune(proto.graph)
    graphkit.toposort(proto.graph)
    _verify(proto)
    if output is not None:
        write_explainer(proto, record, Path(output))
    return Augmented(proto, record, found.outside(layer), reason, found.score, found.notes)


def list_layers(model: str | Path | onnx.ModelProto, size: Sequence[int] | None = None,
                logits: str | None = None) -> tuple[list[tuple[str, tuple]], str]:
    """Tensors ``augment`` can explain (name, shape without batch), in graph order, and the default."""
    found = _analyse(model, size, logits)
    names = _feature_maps(found.builder, [o for n in found.model.graph.node for o in n.output
                                          if o in found.live and o in found.feeding and o != found.sink])
    return ([(found.outside(n), tuple(found.builder.shape(n)[1:])) for n in names],
            found.outside(found.default_layer()[0]))


@dataclass
class _Analysis:
    """The prepared model (input replaced, outputs cleared) and what was found in it."""

    model: onnx.ModelProto
    builder: Builder
    image: dict[str, Any]
    sink: str
    score: str
    notes: list[str]
    live: set[str]
    feeding: set[str]

    def default_layer(self) -> tuple[str, str]:
        return _default_layer(self.model, self.builder, self.live, self.feeding, self.sink)

    def check_layer(self, layer: str) -> None:
        _check_layer(self.model, self.builder, layer, self.live, self.feeding, self.sink)

    def inside(self, name: str) -> str:
        """The name of a source tensor in the prepared graph (reserved names get ``_source``)."""
        return self.image["renamed"].get(name, name)

    def outside(self, name: str) -> str:
        """The name of a prepared graph's tensor in the source file."""
        return {new: old for old, new in self.image["renamed"].items()}.get(name, name)


def _analyse(model: str | Path | onnx.ModelProto, size: Sequence[int] | None, logits: str | None) -> _Analysis:
    proto = _upgrade(_load(model))
    graph = proto.graph
    image = _prepare_input(proto, size)
    source_outputs = [o.name for o in graph.output]
    del graph.output[:]
    del graph.value_info[:]
    builder = Builder(proto)
    sink, score, notes = _find_logits(proto, builder, logits and image["renamed"].get(logits, logits), source_outputs)
    live = float_tensors_from(graph, contract.INPUT, builder.types) - {contract.INPUT, image["name"]}
    return _Analysis(proto, builder, image, sink, score, notes, live, ancestors(graph, sink))


# -- loading --------------------------------------------------------------------------------
def _load(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give the path of an ONNX classifier (.onnx)")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf raises assorted types for a file that is not ONNX
        raise AugmentError(f"{path}: not an ONNX model ({_first_line(error)})") from None


def _upgrade(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model at default-domain opset >= 18, which the gradient rules are written for."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None:
        raise AugmentError("the model imports no standard ONNX opset; onnxcam augments ONNX-domain graphs")
    if version < OPSET:
        try:
            model = onnx.version_converter.convert_version(model, OPSET)
        except Exception as error:
            raise AugmentError(f"cannot convert the model from opset {version} to {OPSET} "
                               f"({_first_line(error)}); re-export it at opset {OPSET}") from None
    model.ir_version = min(max(model.ir_version, 8), MAX_IR_VERSION)
    return model


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# -- the image input ------------------------------------------------------------------------
def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if value.name == old:
            value.name = new


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def _prepare_input(model: onnx.ModelProto, size: Sequence[int] | None) -> dict[str, Any]:
    """Replace the model's image input by ``input`` float32 ``[batch, C, H, W]`` (+ Transpose for NHWC)."""
    graph = model.graph
    weights = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    images = [i for i in inputs if len(i.type.tensor_type.shape.dim) == 4
              and i.type.tensor_type.elem_type in onnx_grad.FLOAT_TYPES]
    if len(images) != 1 or len(inputs) != 1:
        described = ", ".join(f"{i.name} {_dims(i)}" for i in inputs) or "none"
        raise AugmentError(f"onnxcam explains models with one image input, float [N,C,H,W] or [N,H,W,C]; "
                           f"this model's inputs are: {described}")
    source = images[0]
    dims = _dims(source)
    if dims[1] in (1, 3, 4):
        layout, channels, spatial = "NCHW", dims[1], dims[2:]
    elif dims[3] in (1, 3, 4):
        layout, channels, spatial = "NHWC", dims[3], dims[1:3]
    else:
        raise AugmentError(f"input {source.name!r} has shape {dims}: cannot tell its channel axis "
                           "(expected 1, 3 or 4 channels first or last)")
    if size is not None:
        if all(spatial) and list(spatial) != [int(s) for s in size]:
            raise AugmentError(f"input {source.name!r} takes {spatial[0]}x{spatial[1]} images, not "
                               f"{size[0]}x{size[1]}; drop --size or give {spatial[0]} {spatial[1]}")
        spatial = [int(s) for s in size]
    if not all(spatial):
        raise AugmentError(f"input {source.name!r} has dynamic height/width {dims}; give the size the model "
                           "expects with --size H W (or size=(H, W))")
    renamed = {}
    for name in RESERVED & ({o for n in graph.node for o in n.output} | weights | {source.name}):
        renamed[name] = f"{name}_source"
        _rename(graph, name, renamed[name])
    original = source.name
    graph.input.remove(source)
    feed = contract.INPUT
    nodes = []
    if source.type.tensor_type.elem_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [feed], ["onnxcam/input_cast"], to=source.type.tensor_type.elem_type))
        feed = "onnxcam/input_cast"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [feed], [original], perm=[0, 2, 3, 1], name="onnxcam/to_nhwc"))
    else:
        nodes.append(helper.make_node("Identity", [feed], [original], name="onnxcam/input"))
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)
    shape = ["batch", channels, *spatial]
    graph.input.insert(0, helper.make_tensor_value_info(contract.INPUT, TensorProto.FLOAT, shape))
    return {"name": original, "layout": layout, "shape": (channels, *spatial), "renamed": renamed}


# -- logits and layer -----------------------------------------------------------------------
def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _find_logits(model: onnx.ModelProto, b: Builder, name: str | None,
                 outputs: list[str]) -> tuple[str, str, list[str]]:
    """The ``[N, …]`` tensor to differentiate, what it is, and notes for the user. ``[N, classes]``
    scores that end in a Softmax/LogSoftmax/Sigmoid are taken before it (the raw logits, as
    pytorch-grad-cam's ``ClassifierOutputTarget``); other outputs (maps, embeddings) as they are."""
    producers = _producers(model.graph)
    notes: list[str] = []
    if name is None:
        name = outputs[0]
        if len(outputs) > 1:
            notes.append(f"the model has {len(outputs)} outputs ({', '.join(outputs)}); explaining the first, "
                         f"{name!r} (choose another with --logits NAME)")
    elif name not in producers:
        raise AugmentError(f"--logits {name!r} is not a tensor computed by the model; "
                           f"its outputs are: {', '.join(outputs)}")
    score, tensor = "logit", name
    while tensor in producers and producers[tensor].op_type in PASS_THROUGH:
        tensor = producers[tensor].input[0]
    shape = b.shapes.get(name)
    if tensor in producers and producers[tensor].op_type in ("Softmax", "LogSoftmax", "Sigmoid") \
            and shape is not None and len(shape) == 2:
        node = producers[tensor]
        name = node.input[0]
        while name in producers and producers[name].op_type in PASS_THROUGH \
                and b.shapes.get(producers[name].input[0]) == b.shapes.get(name):
            name = producers[name].input[0]  # the scores before a Flatten/Cast that changes nothing
        score = f"logit (the input of the model's final {node.op_type})"
        notes.append(f"the model outputs {node.op_type} {tensor!r}; differentiating its input {name!r}, "
                     "the raw logit of the target class")
    elif tensor in producers and producers[tensor].op_type in ("Softmax", "Sigmoid"):
        score = f"{producers[tensor].op_type.lower()} output"
    shape = b.shapes.get(name)
    if shape is None or not _static(shape[1:]):
        shape = b.probed_shapes().get(name, shape)
    if shape is None or len(shape) < 2 or not _static(shape[1:]) or b.types.get(name) not in onnx_grad.FLOAT_TYPES:
        raise AugmentError(f"output {name!r} has shape {list(shape) if shape else 'unknown'}; onnxcam explains float "
                           "outputs [N, …] with fixed sizes after the batch (fix the input size with --size, or "
                           "choose another tensor with --logits)")
    return name, score, notes


def _static(dims: Sequence) -> bool:
    return all(isinstance(d, int) and d > 0 for d in dims)


def _global_pool_axes(node: onnx.NodeProto, b: Builder) -> tuple[int, ...] | None:
    """The spatial axes when ``node`` averages a 4-D map over all of them (a CAM head), else None."""
    if not node.input or node.op_type not in ("GlobalAveragePool", "ReduceMean", "AveragePool") \
            or _rank(b, node.input[0]) != 4:
        return None
    if node.op_type == "GlobalAveragePool":
        return (2, 3)
    if node.op_type == "ReduceMean":
        try:
            axes = tuple(onnx_grad.reduce_axes(b, node))
        except GradientError:
            return None
        return axes if axes in ((2, 3), (1, 2)) else None
    if node.op_type == "AveragePool" and not any(onnx_grad.attr(node, "pads", None) or []):
        return (2, 3) if list(onnx_grad.attr(node, "kernel_shape")) == list(b.shape(node.input[0])[2:]) else None
    return None


def _rank(b: Builder, name: str) -> int:
    """The rank of ``name`` (0 where even a trial run cannot tell)."""
    return len(b.shapes.get(name) or b.probed_shapes().get(name) or ())


def _feature_maps(b: Builder, names: Sequence[str]) -> list[str]:
    """Candidates for --layer: float tensors of rank 3 or 4."""
    return [n for n in names if b.types.get(n) in onnx_grad.FLOAT_TYPES and _rank(b, n) in (3, 4)]


def _default_layer(model: onnx.ModelProto, b: Builder, live: set[str], feeding: set[str],
                   sink: str) -> tuple[str, str]:
    """The input of the last global pooling before the output, else the last 4-D map (for map
    outputs: the last one with more than one channel and other channels than the output, not
    the output's own logits)."""
    producers = _producers(model.graph)
    out_shape = b.shape(sink)
    for node in reversed(model.graph.node if len(out_shape) == 2 else []):  # a CAM head ends in class scores
        if node.output[0] in feeding and node.input and node.input[0] in live and _global_pool_axes(node, b):
            tensor = node.input[0]
            while tensor in producers and producers[tensor].op_type in ("Cast", "Identity") \
                    and producers[tensor].input[0] in live:
                tensor = producers[tensor].input[0]
            return tensor, f"the input of {node.op_type} {node.name or node.output[0]!r}, the last global pooling"
    for node in reversed(model.graph.node):
        maps = [o for o in node.output if o in live and o in feeding and o != sink and _rank(b, o) == 4]
        if len(out_shape) == 4:
            maps = [o for o in maps if b.shape(o)[1] not in (1, out_shape[1])]
        if maps:
            return maps[0], "the last 4-D feature map before the output (no global pooling found)"
    raise AugmentError("found no 4-D feature map between the input and the logits; name one with --layer")


def _check_layer(model: onnx.ModelProto, b: Builder, layer: str, live: set[str], feeding: set[str],
                 sink: str) -> None:
    if layer in live and layer in feeding and layer != sink:
        if _rank(b, layer) in (3, 4):
            return
        raise AugmentError(f"layer {layer!r} has shape {list(b.shape(layer))}; onnxcam explains "
                           "[N,C,h,w] / [N,h,w,C] feature maps or [N,tokens,C] token sequences")
    candidates = _feature_maps(b, [o for n in model.graph.node for o in n.output if o in live and o in feeding])
    close = difflib.get_close_matches(layer, candidates, n=3, cutoff=0.4) or candidates[-3:]
    raise AugmentError(f"layer {layer!r} is not a tensor between the input and the logits; "
                       f"candidates: {', '.join(repr(c) for c in close)} (list all with `onnxcam augment --list-layers`)")


def _layout(model: onnx.ModelProto, b: Builder, layer: str, sink: str, reshape: str) -> str:
    """How the layer becomes ``[N,C,h,w]``: none, nhwc (a head pooling over axes 1, 2) or tokens."""
    if reshape not in ("auto", "none", "nhwc", "tokens"):
        raise AugmentError(f"unknown reshape {reshape!r}; choose auto, none, nhwc or tokens")
    if reshape != "auto":
        return reshape
    if len(b.shape(layer)) == 3:
        return "tokens"
    nodes, _ = path_nodes(model.graph, layer, sink, b.types)
    for node in nodes:
        axes = _global_pool_axes(node, b)
        if axes:
            return "nhwc" if axes == (1, 2) else "none"
    return "none"


# -- the explainer outputs ------------------------------------------------------------------
def _emit(b: Builder, op_type: str, inputs: Sequence[str], output: str, **attrs) -> str:
    b.nodes.append(helper.make_node(op_type, list(inputs), [output], name=f"onnxcam/{output}", **attrs))
    return output


def _as_map(b: Builder, tensor: str, layout: str, shape: Sequence) -> tuple[str, tuple[int, int, int]]:
    """``tensor`` as ``[N, C, h, w]`` and its static ``(C, h, w)``."""
    if layout == "tokens":
        prefix, height, width = token_grid(shape[1])
        grid = b.op("Slice", tensor, b.ints([prefix]), b.ints([shape[1]]), b.ints([1]))
        grid = b.op("Reshape", grid, b.ints([-1, height, width, shape[2]]))
        return b.op("Transpose", grid, perm=[0, 3, 1, 2]), (shape[2], height, width)
    if layout == "nhwc":
        return b.op("Transpose", tensor, perm=[0, 3, 1, 2]), (shape[3], shape[1], shape[2])
    return tensor, tuple(shape[1:])


def _as_float32(b: Builder, tensor: str) -> str:
    """The contract's outputs are float32 whatever the model computes in."""
    return tensor if b.types.get(tensor, b.dtype) == TensorProto.FLOAT else b.op("Cast", tensor, to=TensorProto.FLOAT)


def _build(model: onnx.ModelProto, b: Builder, layer: str, layout: str, sink: str, name: str) -> contract.Layer:
    """Append the ``seed`` input, the backward pass it drives, the repetition of each image for
    its K targets, and the contract's outputs."""
    out_shape = [int(d) for d in b.shape(sink)[1:]]
    shape = b.shape(layer)
    if not all(isinstance(d, int) for d in shape[1:]):
        raise AugmentError(f"layer {layer!r} has shape {list(shape)}: its non-batch sizes must be fixed")
    b.dtype = b.types.get(sink, TensorProto.FLOAT)
    model.graph.input.append(helper.make_tensor_value_info(contract.SEED, TensorProto.FLOAT,
                                                           ["batch", "targets", *out_shape]))
    seed = b.op("Reshape", contract.SEED, b.ints([-1, *out_shape]))
    if b.dtype != TensorProto.FLOAT:
        seed = b.op("Cast", seed, to=b.dtype)
    _emit(b, "Identity", [_as_float32(b, sink)], contract.OUTPUT)
    gradient = onnx_grad.add_gradient(model, layer, sink, seed, b)
    activation_map, (channels, height, width) = _as_map(b, layer, layout, shape)
    gradient_map, _ = _as_map(b, gradient, layout, shape)
    _emit(b, "Identity", [_as_float32(b, activation_map)], contract.activation_name(0))
    _emit(b, "Identity", [_as_float32(b, gradient_map)], contract.gradient_name(0))
    outputs = [(contract.OUTPUT, TensorProto.FLOAT, ["rows", *out_shape]),
               (contract.activation_name(0), TensorProto.FLOAT, ["rows", channels, height, width]),
               (contract.gradient_name(0), TensorProto.FLOAT, ["rows", channels, height, width])]
    cam_weight = None
    if len(out_shape) == 1 and _has_linear_head(model, b, layer, sink):
        cam_weight = _emit(b, "ReduceSum", [contract.gradient_name(0), b.ints([2, 3])], contract.cam_weight_name(0),
                           keepdims=0)
        outputs.append((cam_weight, TensorProto.FLOAT, ["rows", channels]))
    _repeat_input_rows(model, b)
    b.flush(model)
    model.graph.output.extend(helper.make_tensor_value_info(*o) for o in outputs)
    return contract.Layer(name=name, shape=(channels, height, width), activation=contract.activation_name(0),
                          gradient=contract.gradient_name(0), cam_weight=cam_weight, reshape=layout)


def _repeat_input_rows(model: onnx.ModelProto, b: Builder) -> None:
    """Feed the model each image K times (K = the seed's second size), image-major, so that every
    row of the forward and backward pass belongs to one (image, target): ``[N, …] → [N·K, …]``."""
    targets = b.op("Shape", contract.SEED, start=1, end=2)
    image = b.op("Shape", contract.INPUT, start=1)
    batch = b.op("Shape", contract.INPUT, start=0, end=1)
    tiled = b.op("Expand", b.op("Unsqueeze", contract.INPUT, b.ints([1])),
                 b.op("Concat", batch, targets, image, axis=0))
    rows = b.op("Reshape", tiled, b.op("Concat", b.ints([-1]), image, axis=0))
    for node in model.graph.node:
        node.input[:] = [rows if name == contract.INPUT else name for name in node.input]


def _tail(model: onnx.ModelProto, b: Builder, layer: str, layout: str) -> dict[str, Any] | None:
    """The metadata of the model from ``layer`` on, for Ablation-CAM (``contract.Layer.tail``), or None
    where the logits do not follow from the layer alone or the layer is not float32."""
    shape = [int(d) for d in b.shape(layer)[1:]]
    if b.types.get(layer, TensorProto.FLOAT) != TensorProto.FLOAT:
        return None
    try:
        subgraph.tail_model(model, layer, shape)
    except contract.ContractError:
        return None
    return {"input": layer, "shape": shape, "channel_axis": 1 if layout == "none" else len(shape)}


def _has_linear_head(model: onnx.ModelProto, b: Builder, layer: str, sink: str) -> bool:
    """True where the score is linear in the spatial mean of the layer (GAP + linear head):
    the gradient is then the same at every position, and its spatial sum is the head's row."""
    nodes, live = path_nodes(model.graph, layer, sink, b.types)
    pools = [n for n in nodes if _global_pool_axes(n, b)]
    if len(pools) != 1:
        return False
    first = nodes.index(pools[0])
    for index, node in enumerate(nodes):
        if index == first:
            continue
        if index < first and node.op_type not in ("Cast", "Identity"):
            return False
        if node.op_type not in LINEAR_HEAD:
            return False
        if node.op_type in ("Mul", "Div", "MatMul", "Gemm") and sum(i in live for i in node.input) > 1:
            return False
    return True


def _verify(model: onnx.ModelProto) -> None:
    """onnx.checker, then one run at batch 2: a graph that cannot run is never written."""
    import onnxruntime

    try:
        onnx.checker.check_model(model)
    except Exception as error:  # a bug of onnxcam's, not of the user's file
        raise AugmentError(f"the augmented graph does not pass onnx.checker ({_first_line(error)}); "
                           "please report this with the model") from None
    rng = np.random.default_rng(0)
    shapes = {i.name: [d.dim_value or 2 for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs = session.run(None, feeds)
    except Exception as error:  # onnxruntime's own exception types
        raise AugmentError(f"the augmented graph does not run at batch 2 ({_first_line(error)}); "
                           "if the model fixes its batch size, re-export it with a dynamic batch dimension") from None
    if not all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f"):
        raise AugmentError("the augmented graph gives non-finite values on a random batch; "
                           "check --logits and the layer, or report this with the model")
    if outputs[0].shape[0] != shapes[contract.INPUT][0] * shapes[contract.SEED][1]:
        raise AugmentError("the augmented graph does not give one row per image and target; "
                           "please report this with the model")
