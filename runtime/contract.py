"""The explainer-graph contract: the metadata record both sides agree on (docs/explainer-graph.md).

The exporter writes it with :func:`metadata_record`; the runtime reads it back with
:func:`parse_metadata`, which refuses anything that is not an explainer graph.
Torch-free: the export side imports this module, never the other way round.

Format 2 graphs take a *seed* (∂score/∂output, one per image and target) and so serve
every target kind; format 1 graphs have the class target built in and still run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

FORMAT = "onnxcam.explainer"
FORMAT_VERSION = 2
READS_VERSIONS = (1, 2)
METADATA_KEY = "onnxcam"
BAKED_KEY = "onnxcam_baked"  # a baked file's record (runtime/bake.py), in place of METADATA_KEY

INPUT = "input"
SEED = "seed"  # format 2: float32 [batch, targets, *output]
OUTPUT = "output"  # format 2: the differentiated model output, [rows, *output]
TARGET = "target"  # format 1 graphs' input; the class kinds' input of the same name
LOGITS = "logits"  # format 1 graphs' output
RESOLVED_TARGET = "resolved_target"
TARGET_SCORE = "target_score"  # the target's own score per row, added by the runtime's target kinds
# optional outputs: ∂score/∂input, plain (vanilla saliency) or through guided-backprop ReLUs
INPUT_GRADIENT_OUTPUTS = {"plain": "input_gradient", "guided": "guided_gradient"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ContractError(ValueError):
    """The file is not an explainer graph onnxcam can run (what is wrong and what to do)."""


class InputError(ValueError):
    """A batch or target that does not fit the graph (what is wrong and what to do)."""


def shown(path: Any) -> str:
    """A path as text for a message: bytes that are not UTF-8 appear as ``\\udcXX`` (printable)."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def first_line(error: BaseException) -> str:
    """An exception as one line for a message: its text's first line, or its type's name if it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def activation_name(index: int) -> str:
    return f"activation_{index}"


def gradient_name(index: int) -> str:
    return f"gradient_{index}"


def cam_weight_name(index: int) -> str:
    return f"cam_weight_{index}"


def attention_name(index: int) -> str:
    return f"attention_{index}"


def attention_gradient_name(index: int) -> str:
    return f"attention_gradient_{index}"


def default_preprocessing(size: Sequence[int]) -> dict[str, Any]:
    """ImageNet preprocessing at ``size`` = ``(H, W)``: RGB, /255, mean/std, no crop."""
    return {
        "size": [int(size[0]), int(size[1])],
        "resize": None,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "channel_order": "RGB",
        "scale": 255.0,
    }


@dataclass(frozen=True)
class Layer:
    """One explained layer: its name in the source model and its outputs in the graph."""

    name: str
    shape: tuple[int, int, int]  # [C, h, w]
    activation: str
    gradient: str
    cam_weight: str | None
    reshape: str = "none"
    # the model from this layer on, for Ablation-CAM: {"input": tensor the rest of the model
    # reads, "shape": its shape without the batch, "channel_axis": int}; None where a
    # connection bypasses the layer or the graph predates it
    tail: dict[str, Any] | None = None


@dataclass(frozen=True)
class Tokens:
    """How a transformer's token axis lies on the image, found at export from the model (its patch
    embedding's output grid at the exported input size): ``prefix`` leading tokens that are not
    patches (class, distillation, register tokens), then ``grid`` = ``(h, w)`` patches, row-major.
    Tokens = ``prefix + h·w``."""

    prefix: int
    grid: tuple[int, int]

    @property
    def count(self) -> int:
        return self.prefix + self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class Attention:
    """One block's attention probabilities, an output of graphs exported with ``--attention``:
    ``softmax(QKᵀ/√d)`` per head, ``[rows, heads, T, T]`` (query × key), and their gradient
    w.r.t. the target score (same shape)."""

    name: str  # the module that computes it (``encoder.layers.encoder_layer_3.self_attention``)
    shape: tuple[int, int, int]  # [heads, T, T]
    probabilities: str
    gradient: str

    @property
    def heads(self) -> int:
        return self.shape[0]


@dataclass(frozen=True)
class Detection:
    """How to decode a single-stage detector's raw output ``[A, D]`` (``models/detection.py``):
    the family (``retinanet``, ``fcos``, ``ssd``: its box coder and score formula), anchors per
    level, torchvision's post-processing thresholds, the initializer holding the anchor boxes
    ``[A, 4]`` (None where the family needs none), how many leading columns are box regression
    (and centre-ness), the class count and names, the layout: ``anchors_first`` ``[A, D]``,
    or ``columns_first`` ``[D, A]`` (Ultralytics' ``[4 + classes, anchors]``), and whether the
    box columns carry a gradient (false: detached at export, only class columns can be targets),
    and whether the gradient is local (``LocalRawHeads``: exact for one element a row only)."""

    family: str
    levels: tuple[int, ...]
    params: dict[str, Any]
    anchors: str | None
    box_columns: int
    classes: int
    labels: tuple[str, ...] | None = None
    layout: str = "anchors_first"
    box_gradient: bool = True
    local_gradient: bool = False

    def box_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """bool ``shape`` (the output without the batch): True at the box (and centre-ness) columns."""
        columns = np.arange(shape[0] if self.layout == "columns_first" else shape[1]) < self.box_columns
        return np.broadcast_to(columns[:, None] if self.layout == "columns_first" else columns[None], shape)

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if self.labels and 0 <= class_id < len(self.labels) else str(class_id)

    def elements(self, anchors: np.ndarray, columns: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """int64 ``[K]``: flat indices into the output (``shape``, without the batch) of the
        (anchor, column) pairs ``[K]``, ``[K]`` — the ``detection`` target's elements."""
        anchors, columns = np.asarray(anchors, np.int64), np.asarray(columns, np.int64)
        if self.layout == "columns_first":
            return columns * shape[1] + anchors
        return anchors * shape[1] + columns


@dataclass(frozen=True)
class Output:
    """The model output whose gradient the graph carries: its name in the graph, its shape
    without the batch (``[classes]``, ``[1]``, ``[D]``, ``[classes, H, W]``…), what it is,
    and which of the model's outputs it was (a dict key or tuple index; None for a tensor)."""

    name: str
    shape: tuple[int, ...]
    score: str = "logit"
    source: str | None = None

    @property
    def classes(self) -> int | None:
        """The size of the class axis: ``[classes]`` scores and ``[classes, H, W]`` maps; else None."""
        return self.shape[0] if len(self.shape) in (1, 3) else None


@dataclass(frozen=True)
class Contract:
    """Everything the runtime knows about an explainer graph."""

    input_shape: tuple[int, int, int]  # [C, H, W]
    output: Output
    layers: tuple[Layer, ...]
    preprocessing: dict[str, Any]
    labels: tuple[str, ...] | None = None
    architecture: str | None = None
    exporter: str = ""
    precision: str = "float32"  # of the graph's arithmetic; inputs and outputs are always float32
    input_gradients: dict[str, str] = field(default_factory=dict)  # "plain"/"guided" → output name
    version: int = FORMAT_VERSION
    tokens: Tokens | None = None  # the token layout of a transformer (token layers, attention)
    attention: tuple[Attention, ...] = ()  # in the order the model runs them
    attention_complete: bool = False  # every attention block of the model is among them (rollout)
    detection: Detection | None = None  # a detector's raw heads: how to decode them (runtime/detection)

    @property
    def classes(self) -> int | None:
        return self.output.classes

    @property
    def score(self) -> str:
        return self.output.score

    @property
    def seeded(self) -> bool:
        """Format 2: the backward pass is driven by the ``seed`` input (every target kind);
        format 1 graphs have the class target built in (``target`` → ``resolved_target``)."""
        return self.version >= 2

    def layer(self, name_or_index: str | int) -> Layer:
        if isinstance(name_or_index, int):
            if not 0 <= name_or_index < len(self.layers):
                raise ContractError(f"layer index {name_or_index} is out of range; the graph explains "
                                    f"{len(self.layers)} layer(s): {self.layer_names}")
            return self.layers[name_or_index]
        for layer in self.layers:
            if layer.name == name_or_index:
                return layer
        raise ContractError(f"layer {name_or_index!r} is not explained by this graph; "
                            f"it explains {self.layer_names} (re-export with --layer to add it)")

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def attention_block(self, name_or_index: str | int) -> Attention:
        """One block's attention record, by module name or index (negative counts from the end)."""
        if not self.attention:
            raise ContractError("this graph has no attention outputs; re-export it with "
                                "`onnxcam export … --attention all` (a transformer with global self-attention)")
        names = [block.name for block in self.attention]
        if isinstance(name_or_index, str) and name_or_index.lstrip("-").isdigit():
            name_or_index = int(name_or_index)
        if isinstance(name_or_index, int):
            if not -len(names) <= name_or_index < len(names):
                raise ContractError(f"attention block {name_or_index} is out of range; this graph has "
                                    f"{len(names)} block(s): 0..{len(names) - 1} (or -1 for the last)")
            return self.attention[name_or_index]
        for block in self.attention:
            if name_or_index in (block.name, block.name.rsplit(".", 1)[0]):
                return block
        raise ContractError(f"attention block {name_or_index!r} is not in this graph; it has {names} "
                            "(or give an index)")

    def label(self, class_id: int) -> str:
        if self.labels and 0 <= class_id < len(self.labels):
            return self.labels[class_id]
        return f"class {class_id}"

    def class_id(self, text: str) -> int:
        """A class given as an id (``281``, ``-1`` for the top one) or a label (``tabby``, case-insensitive)."""
        try:
            value = int(text)
        except ValueError:
            pass
        else:
            if abs(value) >= 2 ** 62:
                raise InputError(f"target class {text} is out of range; give a class id or a label "
                                 "as `onnxcam info` lists them")
            return value
        lowered = text.strip().lower()
        for index, label in enumerate(self.labels or ()):
            if label.lower() == lowered:
                return index
        if not self.labels:
            raise ContractError(f"class {text!r} is not a number and this graph has no labels; give a class id")
        import difflib

        close = difflib.get_close_matches(lowered, [l.lower() for l in self.labels], n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ContractError(f"class {text!r} is not among this graph's {len(self.labels)} labels{hint}; "
                            "give a class id or a label as `onnxcam info` lists them")


def metadata_record(
    *, input_shape: Sequence[int], output_shape: Sequence[int], layers: Sequence[Layer],
    preprocessing: dict[str, Any] | None, labels: Sequence[str] | None,
    architecture: str | None, exporter: str, score: str = "logit", output_source: str | None = None,
    input_gradients: dict[str, str] | None = None, tokens: Tokens | None = None,
    attention: Sequence[Attention] = (), attention_complete: bool = False,
) -> dict[str, Any]:
    """The JSON-able record stored under ``metadata_props[METADATA_KEY]`` (format 2)."""
    output = Output(OUTPUT, tuple(int(s) for s in output_shape), score, output_source)
    if preprocessing is not None:
        check_preprocessing({**default_preprocessing(input_shape[1:]), **preprocessing})
    if labels is not None and len(labels) != output.classes:
        raise ContractError(f"{len(labels)} labels given for a model output of shape {list(output.shape)} "
                            f"({output.classes or 'no'} classes); give one label per class, or none")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exporter": exporter,
        "architecture": architecture,
        "input": {"name": INPUT, "shape": [int(s) for s in input_shape], "dtype": "float32"},
        "seed": SEED,
        "output": {"name": OUTPUT, "shape": list(output.shape), "score": score, "source": output_source},
        "layers": [
            {"name": l.name, "shape": list(l.shape), "reshape": l.reshape,
             "activation": l.activation, "gradient": l.gradient, "cam_weight": l.cam_weight, "tail": l.tail}
            for l in layers
        ],
        "input_gradients": dict(input_gradients or {}),
        "tokens": None if tokens is None else {"prefix": tokens.prefix, "grid": list(tokens.grid)},
        "attention": [{"name": a.name, "shape": list(a.shape), "probabilities": a.probabilities,
                       "gradient": a.gradient} for a in attention],
        "attention_complete": bool(attention_complete),
        "preprocessing": preprocessing or default_preprocessing(input_shape[1:]),
        "labels": list(labels) if labels is not None else None,
    }


def check_preprocessing(steps: dict[str, Any], what: str = "preprocessing") -> dict[str, Any]:
    """``steps`` (the metadata record's ``preprocessing``) if every value can preprocess an image into
    finite numbers, else a ``ContractError`` naming the bad value and what to give instead."""
    import math

    def numbers(key: str, count: int) -> list[float]:
        values = steps.get(key)
        if not isinstance(values, (list, tuple)) or len(values) != count or \
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ContractError(f"{what}: {key} is {values!r}; it must be {count} finite numbers "
                                "(re-export, or give them to `onnxcam augment`)")
        return [float(v) for v in values]

    size = steps.get("size")
    if not isinstance(size, (list, tuple)) or len(size) != 2 or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise ContractError(f"{what}: size is {size!r}; it must be [height, width], two whole numbers above 0 "
                            "(re-export, or give --size to `onnxcam augment`)")
    resize = steps.get("resize")
    if resize is not None and not (isinstance(resize, int) and not isinstance(resize, bool) and resize > 0):
        raise ContractError(f"{what}: resize is {resize!r}; it must be a whole number above 0 or null "
                            "(re-export, or give --resize to `onnxcam augment`)")
    numbers("mean", 3)
    if any(v == 0 for v in numbers("std", 3)):
        raise ContractError(f"{what}: std is {steps['std']!r}; a std of 0 divides by zero, give each channel's "
                            "standard deviation (ImageNet's: 0.229 0.224 0.225)")
    scale = steps.get("scale", 255.0)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale == 0:
        raise ContractError(f"{what}: scale is {scale!r}; pixel values are divided by it, give a finite number "
                            "other than 0 (255 for [0, 1] inputs, 1 for [0, 255])")
    if str(steps.get("channel_order", "RGB")).upper() not in ("RGB", "BGR"):
        raise ContractError(f"{what}: channel_order is {steps.get('channel_order')!r}; give RGB or BGR")
    return steps


def check_graph(contract: Contract, declared: dict[str, list], what: str = "model") -> None:
    """A ``ContractError`` where the metadata record disagrees with the graph it describes.

    declared: each graph input and output name → its dims (ints, or None where symbolic),
    batch axis included. The record's input shape, output shape (its class count) and layer
    shapes must be the graph's wherever the graph states them.
    """
    def compare(name: str, recorded: Sequence[int], role: str) -> None:
        if name not in declared:
            raise ContractError(f"{what}: the metadata names {role} {name!r}, which the graph does not have; "
                                "the record belongs to another graph: re-export the model")
        dims = declared[name][1:]
        if len(dims) != len(recorded) or any(d is not None and d != r for d, r in zip(dims, recorded)):
            shown_dims = [d if d is not None else "?" for d in dims]
            raise ContractError(f"{what}: the metadata says {role} {name!r} is {list(recorded)} per row, the graph "
                                f"says {shown_dims}; the record was edited or belongs to another graph: re-export")

    compare(INPUT, contract.input_shape, "input")
    compare(contract.output.name, contract.output.shape, "output")
    for layer in contract.layers:
        compare(layer.activation, layer.shape, f"layer {layer.name!r}'s activation")
        compare(layer.gradient, layer.shape, f"layer {layer.name!r}'s gradient")
    for block in contract.attention:
        compare(block.probabilities, block.shape, f"block {block.name!r}'s attention")
        compare(block.gradient, block.shape, f"block {block.name!r}'s attention gradient")


def _detection(entry: dict | None) -> Detection | None:
    if entry is None:
        return None
    labels = entry.get("labels")
    return Detection(family=entry["family"], levels=tuple(int(n) for n in entry["levels"]), params=dict(entry["params"]),
                     anchors=entry["anchors"], box_columns=int(entry["box_columns"]), classes=int(entry["classes"]),
                     labels=tuple(labels) if labels else None, layout=entry.get("layout", "anchors_first"),
                     box_gradient=bool(entry.get("box_gradient", True)),
                     local_gradient=bool(entry.get("local_gradient", False)))


_NOT_EXPLAINER = ("{what}: this is not an onnxcam explainer graph ({why}); "
                  "make one with `onnxcam export` (PyTorch) or `onnxcam augment` (any ONNX model)")


def parse_metadata(metadata: dict[str, str], what: str = "model") -> Contract:
    """Read and validate the record from an ONNX model's ``metadata_props`` mapping."""
    raw = metadata.get(METADATA_KEY)
    if raw is None and BAKED_KEY in metadata:
        raise ContractError(f"{what}: is a baked file (made by `onnxcam bake`): it runs as it is in any onnxruntime "
                            "and gives maps itself (`onnxcam info` shows its inputs and outputs); give onnxcam the "
                            "explainer graph it was baked from")
    if raw is None:
        raise ContractError(_NOT_EXPLAINER.format(what=what, why=f"no {METADATA_KEY!r} metadata record"))
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ContractError(_NOT_EXPLAINER.format(what=what, why=f"its metadata is not JSON: {error}")) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ContractError(_NOT_EXPLAINER.format(what=what, why=f"metadata format is not {FORMAT!r}"))
    version = record.get("format_version")
    if version not in READS_VERSIONS:
        raise ContractError(
            f"{what}: explainer format version {version} is not supported by this onnxcam "
            f"(it reads versions {', '.join(map(str, READS_VERSIONS))}); re-export the model with this onnxcam "
            "or upgrade onnxcam"
        )
    def shape(values: Any, length: int, name: str) -> tuple[int, ...]:
        if not isinstance(values, (list, tuple)) or (length and len(values) != length) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            size = f"{length} whole numbers" if length else "whole numbers"
            raise ContractError(_NOT_EXPLAINER.format(what=what, why=f"{name} {values!r} is not {size} above 0"))
        return tuple(values)

    try:
        if not record["layers"]:
            raise ContractError(_NOT_EXPLAINER.format(what=what, why="its metadata lists no explained layer"))
        for l in record["layers"]:
            shape(l["shape"], 3, f"layer {l.get('name')!r}'s shape [C, h, w]")
        shape(record["input"]["shape"], 3, "the input shape [C, H, W]")
        if version > 1:
            shape(record["output"]["shape"], 0, "the output shape")
        check_preprocessing(record["preprocessing"], f"{what}: metadata preprocessing")
        layers = tuple(
            Layer(name=l["name"], shape=tuple(int(s) for s in l["shape"]), activation=l["activation"],
                  gradient=l["gradient"], cam_weight=l.get("cam_weight"), reshape=l.get("reshape", "none"),
                  tail=l.get("tail"))
            for l in record["layers"]
        )
        tokens = record.get("tokens")
        if tokens is not None:
            grid = shape(tokens["grid"], 2, "the token grid [h, w]")
            if not isinstance(tokens["prefix"], int) or isinstance(tokens["prefix"], bool) or tokens["prefix"] < 0:
                raise ContractError(_NOT_EXPLAINER.format(what=what, why=f"token prefix {tokens['prefix']!r} is "
                                                          "not a whole number ≥ 0"))
            tokens = Tokens(int(tokens["prefix"]), grid)
        attention = tuple(
            Attention(a["name"], shape(a["shape"], 3, f"block {a.get('name')!r}'s attention shape [heads, T, T]"),
                      a["probabilities"], a["gradient"])
            for a in record.get("attention") or ())
        labels = record.get("labels")
        if version == 1:  # the class target built in: [N, classes] logits
            output = Output(LOGITS, (int(record["classes"]),), record.get("score", "logit"))
        else:
            described = record["output"]
            output = Output(described["name"], tuple(int(s) for s in described["shape"]),
                            described.get("score", "logit"), described.get("source"))
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(l, str) for l in labels)
                                   or (labels and len(labels) != output.classes)):
            raise ContractError(f"{what}: the metadata has {len(labels) if isinstance(labels, list) else 'bad'} "
                                f"labels for an output of shape {list(output.shape)}; re-export with one label per "
                                "class (or none)")
        return Contract(
            input_shape=tuple(int(s) for s in record["input"]["shape"]),
            output=output,
            layers=layers,
            preprocessing=dict(record["preprocessing"]),
            labels=tuple(labels) if labels else None,
            architecture=record.get("architecture"),
            exporter=record.get("exporter", ""),
            precision=record.get("precision", "float32"),
            input_gradients=dict(record.get("input_gradients") or {}),
            version=int(version),
            tokens=tokens,
            attention=attention,
            attention_complete=bool(record.get("attention_complete", False)),
            detection=_detection(record.get("detection")),
        )
    except ContractError:
        raise
    except (KeyError, TypeError, ValueError) as error:
        raise ContractError(_NOT_EXPLAINER.format(what=what, why=f"metadata record is incomplete: {error!r}")) from None
