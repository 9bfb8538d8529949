"""An existing ONNX model → explainer graph, at the ONNX level: no PyTorch, no source.

``augment`` finds the nodes between a chosen layer and the output to explain (class
scores, one logit, an embedding, a segmentation or probability map), appends their
reverse-mode derivative driven by the ``seed`` input as plain ONNX nodes (rules in
``onnx_grad.py``) and gives the graph exactly the explainer contract
(docs/explainer-graph.md): inputs ``input`` (float32 ``[N,C,H,W]``) and ``seed``
(``[N, K, *output]``); outputs ``output``, ``activation_0``, ``gradient_0`` and, after a
global-average-pool + linear head, ``cam_weight_0``. Needs onnx, numpy and (for shape
probing and the final check against the source model) onnxruntime; never torch.
"""

from __future__ import annotations

import difflib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxcam.export import onnx_grad
from onnxcam.export.onnx_grad import Builder, GradientError, ancestors, float_tensors_from, path_nodes
from onnxcam.export.onnx_io import check_explainer, onnxcam_version, write_checked
from onnxcam.export.tokens import token_layout
from onnxcam.runtime import contract, graphkit, subgraph
from onnxcam.runtime.contract import first_line

OPSET = 18
MAX_IR_VERSION = 10  # what onnxruntime >= 1.18 reads
PASS_THROUGH = {"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Dropout"}
# after the pooling of a GAP + linear head: ops that keep the score linear in the pooled vector
LINEAR_HEAD = {"Identity", "Cast", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Gemm", "MatMul",
               "Add", "Sub", "Mul", "Div"}
# How far the augmented graph's ``output`` may be from the source file's own output (both run by
# onnxruntime on the same random batch), relative to the largest |output|. Measured: float32 at
# most 9.3e-7 (test_augment's torchvision files, rapidocr-cls, open-nsfw, DBNet: fusions differ
# once gradients are taken), float16 files at most 2.1e-3 (the same files converted to float16).
FORWARD_TOLERANCE = {"float32": 1e-4, "float16": 2e-2}
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
            reshape: str = "auto", architecture: str | None = None, detector: str | None = None,
            detection_params: dict[str, Any] | None = None) -> Augmented:
    """Turn an inference ONNX model into an explainer graph (written to ``output`` if given).

    layer: tensor name to explain (``[N,C,h,w]``, ``[N,h,w,C]`` or tokens ``[N,T,C]``); default:
    the input of the last global pooling before the output, else the last feature map.
    logits: the tensor to explain (any ``[N, …]`` float tensor); default: the model's first
    output, or, for ``[N, classes]`` scores, the input of its final Softmax. size: ``(H, W)`` where the
    model's input has dynamic height/width. reshape: ``auto``/``none``/``nhwc``/``tokens``; ``auto``
    reads a 4-D layer's layout off the graph (``_layout_evidence``) and refuses where it does not say.
    preprocessing: keys of the metadata record's ``preprocessing`` (size, resize, mean, std,
    channel_order, scale); missing ones default to ImageNet's, RGB, /255, no resize, the model's size.
    detector: ``yolo`` or ``picodet``, a detector file's export layout (``detection_layouts.py``): the recipe
    chooses the output, the default layer, the preprocessing defaults and the record's ``detection`` entry
    (``labels`` go there); detection_params: its post-processing parameters (``conf``, ``iou``, ``max_det``…).

    Before anything is written (or returned), the graph passes onnx.checker, is loaded with
    onnxruntime and run on a random batch, and its ``output`` must equal the source file's own
    output on that batch within ``FORWARD_TOLERANCE`` (``check_explainer``); the file is written
    to a temporary name beside ``output`` and renamed only once it has passed.
    """
    if architecture is None:
        architecture = Path(model).name if isinstance(model, (str, Path)) else (model.graph.name or "onnx model")
    source, recipe = _load(model), None
    if detector is not None:
        source, recipe, logits = _detector_recipe(source, detector, size, logits, detection_params)
    found = _analyse(source, size, logits)
    proto, builder, sink = found.model, found.builder, found.sink
    if layer is None:
        chosen = recipe and recipe.default_layer(proto, builder, found.live, found.feeding, sink)
        layer, reason = chosen or found.default_layer()
    else:
        layer, reason = found.inside(layer), "chosen"
        found.check_layer(layer)
    layout = _layout(proto, builder, layer, found.live, reshape)
    tokens = _tokens(proto, builder, layer, layout)
    described = _build(proto, builder, layer, layout, sink, found.outside(layer), tokens)
    described = dataclasses.replace(described, tail=_tail(proto, builder, layer, layout))
    image = found.image
    steps = {**contract.default_preprocessing(image["shape"][1:]), **(recipe.preprocessing if recipe else {}),
             **(preprocessing or {})}
    steps["size"] = list(image["shape"][1:])
    score = recipe.score if recipe else found.score
    record = contract.metadata_record(
        input_shape=image["shape"], output_shape=builder.shape(sink)[1:], layers=[described], preprocessing=steps,
        labels=None if recipe else labels, architecture=architecture, exporter=f"onnxcam {onnxcam_version()} augment",
        score=score, output_source=found.outside(sink), tokens=tokens,
    )
    if recipe is not None:
        record["detection"] = recipe.record(labels)
    record["augment"] = {"source_input": found.outside(image["name"]), "source_layout": image["layout"],
                         "logits_tensor": found.outside(sink), "layer_tensor": found.outside(layer)}
    graphkit.prune(proto.graph)
    graphkit.toposort(proto.graph)
    _check_proto(proto)
    precision = "float16" if builder.dtype in (TensorProto.FLOAT16, TensorProto.BFLOAT16) else "float32"
    reference = _source_reference(source, found)

    def check(graph: Path | bytes) -> None:
        check_explainer(graph, reference, FORWARD_TOLERANCE[precision], what="the augmented graph", error=AugmentError,
                        advice="check --logits and --layer, or report this with the model",
                        run_advice="if the model fixes its batch size, re-export it with a dynamic batch dimension")

    if output is not None:
        write_checked(proto, record, Path(output), check)
    else:
        check(proto.SerializeToString())
    return Augmented(proto, record, found.outside(layer), reason, score, found.notes + (recipe.notes if recipe else []))


def _detector_recipe(source: onnx.ModelProto, detector: str, size: Sequence[int] | None, logits: str | None,
                     params: dict[str, Any] | None):
    """``(source with the recipe's nodes, recipe, the tensor to differentiate)`` (``detection_layouts.py``)."""
    from onnxcam.export import detection_layouts

    if logits is not None:
        raise AugmentError(f"--logits and --detector {detector} exclude each other: the detector's recipe chooses "
                           "the output (drop --logits, or --detector to explain another tensor)")
    source, recipe = detection_layouts.prepare(source, detector, size, params)
    return source, recipe, recipe.output


def list_layers(model: str | Path | onnx.ModelProto, size: Sequence[int] | None = None,
                logits: str | None = None, detector: str | None = None) -> tuple[list[tuple[str, tuple]], str]:
    """Tensors ``augment`` can explain (name, shape without batch), in graph order, and the default."""
    recipe = None
    if detector is not None:
        model, recipe, logits = _detector_recipe(_load(model), detector, size, logits, None)
    found = _analyse(model, size, logits)
    names = _feature_maps(found.builder, [o for n in found.model.graph.node for o in n.output
                                          if o in found.live and o in found.feeding and o != found.sink])
    chosen = recipe and recipe.default_layer(found.model, found.builder, found.live, found.feeding, found.sink)
    return ([(found.outside(n), tuple(found.builder.shape(n)[1:])) for n in names],
            found.outside((chosen or found.default_layer())[0]))


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
        raise AugmentError(f"{path}: not an ONNX model ({first_line(error)})") from None


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
                               f"({first_line(error)}); re-export it at opset {OPSET}") from None
    model.ir_version = min(max(model.ir_version, 8), MAX_IR_VERSION)
    return model


# -- the image input ------------------------------------------------------------------------

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
        graphkit.rename(graph, name, renamed[name])
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


def _layout(model: onnx.ModelProto, b: Builder, layer: str, live: set[str], reshape: str) -> str:
    """How the layer becomes ``[N,C,h,w]``: ``tokens`` for ``[N,T,C]``; for a 4-D map ``none``
    (channels first) or ``nhwc`` (channels last), as the graph around it says (``_layout_evidence``).
    An explicit ``reshape`` wins; where the graph says nothing, or contradicts itself, refuse."""
    if reshape not in ("auto", "none", "nhwc", "tokens"):
        raise AugmentError(f"unknown reshape {reshape!r}; choose auto, none, nhwc or tokens")
    if reshape != "auto":
        return reshape
    if _rank(b, layer) == 3:
        return "tokens"
    evidence = _layout_evidence(model, b, layer, live)
    sizes = [d if isinstance(d, int) else "N" for d in b.shape(layer)]
    shape = f"[{', '.join(map(str, sizes))}]"
    if len(evidence) == 1:
        return next(iter(evidence))
    channels_last = f"--reshape nhwc if it is [N,h,w,C] (C = {sizes[3]})"
    channels_first = f"--reshape none if it is [N,C,h,w] (C = {sizes[1]})"
    if not evidence:
        raise AugmentError(f"the layout of layer {layer!r} {shape} could not be told from the graph (no convolution, "
                           "pooling or transpose next to it says where its channels are); pass "
                           f"{channels_last}, or {channels_first}")
    said = "; ".join(f"{node} says {'channels last' if layout == 'nhwc' else 'channels first'}"
                     for layout, node in sorted(evidence.items()))
    raise AugmentError(f"the layout of layer {layer!r} {shape} could not be told from the graph: the nodes around it "
                       f"disagree ({said}); pass {channels_last}, or {channels_first}")


# ops whose output has its (4-D) inputs' layout: elementwise maths, and moves along the axes
KEEPS_LAYOUT = {"Identity", "Cast", "Dropout", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid",
                "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign", "Clip", "Neg", "Abs", "Exp", "Log",
                "Sqrt", "Reciprocal", "Erf", "Gelu", "Mish", "ThresholdedRelu", "Floor", "Ceil", "Round", "Sign",
                "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Pad", "Slice", "Resize",
                "Upsample", "Concat", "Split"}
# ops that read and write [N, C, spatial…] by their ONNX definition
CHANNELS_FIRST = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "DeformConv", "MaxPool", "AveragePool",
                  "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "BatchNormalization",
                  "InstanceNormalization", "GroupNormalization", "LRN", "DepthToSpace", "SpaceToDepth", "MaxUnpool"}
TO_CHANNELS_LAST, TO_CHANNELS_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]


def _layout_evidence(model: onnx.ModelProto, b: Builder, layer: str, live: set[str]) -> dict[str, str]:
    """What the graph says about the layout of the 4-D tensor ``layer``: ``{layout: the first node
    that says so}`` (``none``: channels first, ``nhwc``: channels last; empty where nothing does).

    The layer's layout is shared by every 4-D float tensor joined to it through ``KEEPS_LAYOUT``
    ops, back through its producers and forward through its consumers (a residual ``Add`` joins
    both branches). The nodes at the edge of that set say the layout:

    - made by or read (as data) by a ``CHANNELS_FIRST`` op (convolution, pooling, BatchNormalization):
      channels first;
    - made by a Transpose ``(0,2,3,1)``, or read by a Transpose ``(0,3,1,2)``: channels last; the
      opposite perms: channels first;
    - read by a global mean/max/sum over axes (1, 2): channels last; over (2, 3): channels first;
    - made or read by a LayerNormalization over the last axis only: channels last.

    A Reshape, a Flatten, a MatMul or the model's input says nothing.
    """
    graph = model.graph
    producers = _producers(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            consumers.setdefault(name, []).append(node)

    def joinable(name: str) -> bool:
        return bool(name) and name in live and _rank(b, name) == 4

    def label(node: onnx.NodeProto) -> str:
        return f"{node.op_type} {node.name or node.output[0]!r}"

    evidence: dict[str, str] = {}

    def say(layout: str, node: onnx.NodeProto) -> None:
        evidence.setdefault(layout, label(node))

    joined, queue = {layer}, [layer]
    while queue:
        tensor = queue.pop()
        neighbours = [(producers[tensor], True)] if tensor in producers else []
        neighbours += [(node, False) for node in consumers.get(tensor, [])]
        for node, makes in neighbours:
            if node.name.startswith("onnxcam/"):
                continue  # the input onnxcam put in front of the model: its layout is a guess
            op = node.op_type
            if op in KEEPS_LAYOUT:
                for name in [*node.input, *node.output]:
                    if joinable(name) and name not in joined:
                        joined.add(name)
                        queue.append(name)
            elif op in CHANNELS_FIRST:
                if makes or node.input[0] == tensor:
                    say("none", node)
            elif op == "Transpose":
                perm = list(onnx_grad.attr(node, "perm", None) or [])
                if perm in (TO_CHANNELS_LAST, TO_CHANNELS_FIRST):
                    says_last = (perm == TO_CHANNELS_LAST) == makes
                    say("nhwc" if says_last else "none", node)
            elif op == "LayerNormalization":
                if (makes or node.input[0] == tensor) and int(onnx_grad.attr(node, "axis", -1)) in (-1, 3):
                    say("nhwc", node)
            elif not makes and op in ("ReduceMean", "ReduceMax", "ReduceSum", "ReduceL2", "ReduceLogSumExp"):
                try:
                    axes = tuple(onnx_grad.reduce_axes(b, node))
                except GradientError:
                    continue
                if axes in ((1, 2), (2, 3)):
                    say("nhwc" if axes == (1, 2) else "none", node)
    return evidence


# -- the explainer outputs ------------------------------------------------------------------
def _emit(b: Builder, op_type: str, inputs: Sequence[str], output: str, **attrs) -> str:
    b.nodes.append(helper.make_node(op_type, list(inputs), [output], name=f"onnxcam/{output}", **attrs))
    return output


def _conv_grids(model: onnx.ModelProto, b: Builder) -> list[tuple[int, int]]:
    """The ``(h, w)`` of every ``Conv`` output in graph order (a ViT's patch embedding among them)."""
    grids = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            shape = b.shapes.get(node.output[0]) or ()
            if len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]):
                grids.append((int(shape[2]), int(shape[3])))
    return grids


def _tokens(model: onnx.ModelProto, b: Builder, layer: str, layout: str) -> contract.Tokens | None:
    """The token layout of a ``[N, T, C]`` layer (``tokens.token_layout``), None for maps."""
    return token_layout(int(b.shape(layer)[1]), _conv_grids(model, b)) if layout == "tokens" else None


def _as_map(b: Builder, tensor: str, layout: str, shape: Sequence,
            tokens: contract.Tokens | None = None) -> tuple[str, tuple[int, int, int]]:
    """``tensor`` as ``[N, C, h, w]`` and its static ``(C, h, w)``."""
    if layout == "tokens":
        prefix, (height, width) = tokens.prefix, tokens.grid
        grid = b.op("Slice", tensor, b.ints([prefix]), b.ints([shape[1]]), b.ints([1]))
        grid = b.op("Reshape", grid, b.ints([-1, height, width, shape[2]]))
        return b.op("Transpose", grid, perm=[0, 3, 1, 2]), (shape[2], height, width)
    if layout == "nhwc":
        return b.op("Transpose", tensor, perm=[0, 3, 1, 2]), (shape[3], shape[1], shape[2])
    return tensor, tuple(shape[1:])


def _as_float32(b: Builder, tensor: str) -> str:
    """The contract's outputs are float32 whatever the model computes in."""
    return tensor if b.types.get(tensor, b.dtype) == TensorProto.FLOAT else b.op("Cast", tensor, to=TensorProto.FLOAT)


def _build(model: onnx.ModelProto, b: Builder, layer: str, layout: str, sink: str, name: str,
           tokens: contract.Tokens | None = None) -> contract.Layer:
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
    activation_map, (channels, height, width) = _as_map(b, layer, layout, shape, tokens)
    gradient_map, _ = _as_map(b, gradient, layout, shape, tokens)
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
    sides = subgraph.find_tail(model, layer, shape)
    if sides is None:
        return None
    return {"input": layer, "shape": shape, "channel_axis": 1 if layout == "none" else len(shape), "sides": sides}


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


def _check_proto(model: onnx.ModelProto) -> None:
    """onnx.checker: a graph it refuses is a bug of onnxcam's, not of the user's file."""
    try:
        onnx.checker.check_model(model)
    except Exception as error:
        raise AugmentError(f"the augmented graph does not pass onnx.checker ({first_line(error)}); "
                           "please report this with the model") from None


def _source_reference(source: onnx.ModelProto, found: _Analysis) -> Callable[[np.ndarray], np.ndarray]:
    """``images [N,C,H,W] → the explained tensor [N, …]`` computed by the untouched source file in
    onnxruntime (only its batch size made dynamic, and the tensor made an output of its own)."""
    model = source  # a private copy (``_load``)
    graph = model.graph
    name, sink = found.outside(found.image["name"]), found.outside(found.sink)
    value = next(i for i in graph.input if i.name == name)
    value.type.tensor_type.shape.dim[0].dim_param = "batch"
    dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(sink, found.builder.types.get(found.sink, TensorProto.FLOAT),
                                                      None))
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    sessions = []

    def run(images: np.ndarray) -> np.ndarray:
        import onnxruntime

        images = images.transpose(0, 2, 3, 1) if found.image["layout"] == "NHWC" else images
        try:
            if not sessions:
                sessions.append(onnxruntime.InferenceSession(model.SerializeToString(),
                                                             providers=["CPUExecutionProvider"]))
            return sessions[0].run([sink], {name: np.ascontiguousarray(images.astype(dtype))})[0]
        except Exception as error:  # onnxruntime's own exception types
            raise AugmentError(f"the model itself does not run in onnxruntime on a random batch "
                               f"({first_line(error)}), so the augmented graph cannot be checked against it; "
                               "please report this with the model") from None

    return run
