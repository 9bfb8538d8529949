"""The explainer-graph contract: the metadata record both sides agree on (DESIGN.md, "The seam").

The exporter writes it with :func:`metadata_record`; the runtime reads it back with
:func:`parse_metadata`, which refuses anything that is not an explainer graph.
Torch-free: the export side imports this module, never the other way round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

FORMAT = "onnxcam.explainer"
FORMAT_VERSION = 1
METADATA_KEY = "onnxcam"

INPUT = "input"
TARGET = "target"
LOGITS = "logits"
RESOLVED_TARGET = "resolved_target"
# optional outputs: ∂score/∂input, plain (vanilla saliency) or through guided-backprop ReLUs
INPUT_GRADIENT_OUTPUTS = {"plain": "input_gradient", "guided": "guided_gradient"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ContractError(ValueError):
    """The file is not an explainer graph onnxcam can run (what is wrong and what to do)."""


def activation_name(index: int) -> str:
    return f"activation_{index}"


def gradient_name(index: int) -> str:
    return f"gradient_{index}"


def cam_weight_name(index: int) -> str:
    return f"cam_weight_{index}"


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
class Contract:
    """Everything the runtime knows about an explainer graph."""

    input_shape: tuple[int, int, int]  # [C, H, W]
    classes: int
    layers: tuple[Layer, ...]
    preprocessing: dict[str, Any]
    labels: tuple[str, ...] | None = None
    architecture: str | None = None
    score: str = "logit"
    exporter: str = ""
    precision: str = "float32"  # of the graph's arithmetic; inputs and outputs are always float32
    input_gradients: dict[str, str] = field(default_factory=dict)  # "plain"/"guided" → output name

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

    def label(self, class_id: int) -> str:
        if self.labels and 0 <= class_id < len(self.labels):
            return self.labels[class_id]
        return f"class {class_id}"


def metadata_record(
    *, input_shape: Sequence[int], classes: int, layers: Sequence[Layer],
    preprocessing: dict[str, Any] | None, labels: Sequence[str] | None,
    architecture: str | None, exporter: str, score: str = "logit",
    input_gradients: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON-able record stored under ``metadata_props[METADATA_KEY]``."""
    if labels is not None and len(labels) != classes:
        raise ContractError(f"{len(labels)} labels given for a model with {classes} classes")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exporter": exporter,
        "architecture": architecture,
        "input": {"name": INPUT, "shape": [int(s) for s in input_shape], "dtype": "float32"},
        "target": {"name": TARGET, "resolved": RESOLVED_TARGET},
        "logits": LOGITS,
        "classes": int(classes),
        "score": score,
        "layers": [
            {"name": l.name, "shape": list(l.shape), "reshape": l.reshape,
             "activation": l.activation, "gradient": l.gradient, "cam_weight": l.cam_weight, "tail": l.tail}
            for l in layers
        ],
        "input_gradients": dict(input_gradients or {}),
        "preprocessing": preprocessing or default_preprocessing(input_shape[1:]),
        "labels": list(labels) if labels is not None else None,
    }


_NOT_EXPLAINER = ("{what}: this is not an onnxcam explainer graph ({why}). "
                  "Export one with `onnxcam export`, or see `onnxcam export --help`.")


def parse_metadata(metadata: dict[str, str], what: str = "model") -> Contract:
    """Read and validate the record from an ONNX model's ``metadata_props`` mapping."""
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        raise ContractError(_NOT_EXPLAINER.format(what=what, why=f"no {METADATA_KEY!r} metadata record"))
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ContractError(_NOT_EXPLAINER.format(what=what, why=f"its metadata is not JSON: {error}")) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ContractError(_NOT_EXPLAINER.format(what=what, why=f"metadata format is not {FORMAT!r}"))
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise ContractError(
            f"{what}: explainer format version {version} is not supported by this onnxcam "
            f"(it reads version {FORMAT_VERSION}); re-export the model with this onnxcam or upgrade onnxcam"
        )
    try:
        layers = tuple(
            Layer(name=l["name"], shape=tuple(int(s) for s in l["shape"]), activation=l["activation"],
                  gradient=l["gradient"], cam_weight=l.get("cam_weight"), reshape=l.get("reshape", "none"),
                  tail=l.get("tail"))
            for l in record["layers"]
        )
        labels = record.get("labels")
        return Contract(
            input_shape=tuple(int(s) for s in record["input"]["shape"]),
            classes=int(record["classes"]),
            layers=layers,
            preprocessing=dict(record["preprocessing"]),
            labels=tuple(labels) if labels else None,
            architecture=record.get("architecture"),
            score=record.get("score", "logit"),
            exporter=record.get("exporter", ""),
            precision=record.get("precision", "float32"),
            input_gradients=dict(record.get("input_gradients") or {}),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ContractError(_NOT_EXPLAINER.format(what=what, why=f"metadata record is incomplete: {error!r}")) from None
