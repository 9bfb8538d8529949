"""Recipes for bare ONNX object detectors (``onnxcam augment --detector yolo|picodet``).

A recipe recognises the export layout of a detector file, checks its outputs' shapes at the
fixed input size, names the tensor ``augment`` differentiates (appending a ``Concat`` where the
file has several head outputs), picks a default layer, and writes the record's ``detection``
entry that ``runtime/detection`` decodes (docs/explainer-graph.md, "Detection", "ONNX detectors
through augment"):

- ``yolo`` (Ultralytics YOLOv8 / YOLO11): one output ``[N, 4 + C, A]``, boxes decoded (cx, cy, w,
  h, input pixels), sigmoid class scores; A = the cells of the stride 8, 16, 32 (P6 models: and 64)
  grids. Layout ``columns_first``; box columns 4.
- ``picodet`` (PaddleDetection PP-PicoDet without post-processing): per level (stride 8, 16, 32, 64;
  older models 8, 16, 32) sigmoid scores ``[N, A_l, C]`` and DFL box logits ``[N, A_l, 4·(reg_max+1)]``.
  The contract has one differentiated output, so the recipe appends
  ``Concat(Concat(boxes_l, axis 1), Concat(scores_l, axis 1), axis 2)`` = ``[N, A, 4·(reg_max+1) + C]``,
  levels in order; layout ``anchors_first``; box columns 4·(reg_max+1).

The input has dynamic height and width in both; the size comes from ``--size``. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper

from onnxcam.export.augment import AugmentError, _dims, _producers, _rank
from onnxcam.runtime.contract import first_line
from onnxcam.runtime.detection import picodet, yolo

DETECTORS = ("yolo", "picodet")
STRIDES = {"yolo": ((8, 16, 32), (8, 16, 32, 64)), "picodet": ((8, 16, 32, 64), (8, 16, 32))}
DEFAULTS = {"yolo": yolo.DEFAULTS, "picodet": picodet.DEFAULTS}
ALIASES = {"yolo": yolo.ALIASES, "picodet": picodet.ALIASES}
# the preprocessing the recipe records unless the user gives other values: Ultralytics feeds RGB / 255
# (no mean, no std); PaddleDetection's PicoDet configs normalise with ImageNet's mean and std
PREPROCESSING = {"yolo": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "scale": 255.0, "channel_order": "RGB"},
                 "picodet": {}}
SCORES = {"yolo": "YOLO output: boxes (cx, cy, w, h, input pixels), then sigmoid class scores",
          "picodet": "PicoDet heads, concatenated: DFL box logits, then sigmoid class scores"}
CONCAT = "onnxcam_picodet_heads"  # the appended output [N, A, 4·(reg_max+1) + C]
# ops between a head's Sigmoid and the file's output that keep its values (PicoDet's score outputs)
_KEEPS_VALUES = {"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}


@dataclass(frozen=True)
class Recipe:
    """A detector file as a recipe reads it: the tensor to differentiate (in the prepared source),
    the levels' strides and grids ``(h, w)``, the class count, the output's layout and box columns,
    the post-processing parameters, the preprocessing defaults, and notes for the user."""

    family: str
    output: str
    strides: tuple[int, ...]
    grids: tuple[tuple[int, int], ...]
    classes: int
    box_columns: int
    layout: str
    params: dict[str, Any]
    preprocessing: dict[str, Any]
    score: str
    notes: list[str] = field(default_factory=list)

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(h * w for h, w in self.grids)

    def record(self, labels: Sequence[str] | None) -> dict[str, Any]:
        """The metadata record's ``detection`` entry (``contract.Detection``)."""
        if labels is not None and len(labels) != self.classes:
            raise AugmentError(f"{len(labels)} labels given for a {self.family} detector with {self.classes} "
                               "classes; give one label per class, or none")
        return {"family": self.family, "levels": list(self.levels), "params": dict(self.params), "anchors": None,
                "box_columns": self.box_columns, "classes": self.classes,
                "labels": list(labels) if labels is not None else None, "layout": self.layout}

    def default_layer(self, model: onnx.ModelProto, b, live: set[str], feeding: set[str],
                      sink: str) -> tuple[str, str] | None:
        """The neck's output at the finest level: the last 4-D map (graph order) of the first level's grid
        that two or more ``Conv`` nodes read (the head's branches, the neck's next downsampling); None
        where there is none."""
        readers: dict[str, int] = {}
        for node in model.graph.node:
            if node.op_type == "Conv" and node.input:
                readers[node.input[0]] = readers.get(node.input[0], 0) + 1
        grid = tuple(self.grids[0])
        found = [o for node in model.graph.node for o in node.output
                 if readers.get(o, 0) >= 2 and o in live and o in feeding and o != sink and _rank(b, o) == 4
                 and tuple(b.shape(o)[2:]) == grid]
        if not found:
            return None
        return found[-1], (f"the last {grid[0]}x{grid[1]} map (stride {self.strides[0]}, the finest level) read by "
                           "two or more convolutions: where the head's box and class branches part")


def prepare(model: onnx.ModelProto, detector: str, size: Sequence[int] | None,
            params: dict[str, Any] | None = None) -> tuple[onnx.ModelProto, Recipe]:
    """The model (with the recipe's ``Concat`` appended for PicoDet) and its ``Recipe``, or an
    ``AugmentError`` that lists the outputs found and says which recipe or option fits."""
    if detector not in DETECTORS:
        raise AugmentError(f"unknown detector {detector!r}; choose {' or '.join(DETECTORS)}")
    height, width = _input_size(model, size)
    outputs = _measured_outputs(model, (height, width))
    found = {"yolo": _yolo_layout(outputs, (height, width)),
             "picodet": _picodet_layout(model, outputs, (height, width))}
    if found[detector] is None:
        raise AugmentError(_mismatch(detector, outputs, (height, width), found))
    chosen = {**DEFAULTS[detector], **_overrides(detector, params or {})}
    if detector == "yolo":
        name, strides, grids, columns = found["yolo"]
        recipe = Recipe("yolo", name, strides, grids, columns - yolo.BOX_COLUMNS, yolo.BOX_COLUMNS, "columns_first",
                        {**chosen, "strides": list(strides), "grids": [list(g) for g in grids]},
                        PREPROCESSING["yolo"], SCORES["yolo"])
        others = [n for n, _ in outputs if n != name]
        if others:
            recipe.notes.append(f"explaining YOLO output {name!r}; other outputs ({', '.join(others)}) are not used")
        return model, recipe
    strides, grids, scores, boxes, classes, box_columns = found["picodet"]
    model = _append_concat(model, boxes, scores)
    recipe = Recipe("picodet", CONCAT, strides, grids, classes, box_columns, "anchors_first",
                    {**chosen, "reg_max": box_columns // 4 - 1, "strides": list(strides),
                     "grids": [list(g) for g in grids]}, PREPROCESSING["picodet"], SCORES["picodet"])
    recipe.notes.append(f"PicoDet outputs concatenated into one [N, {sum(recipe.levels)}, {box_columns} + {classes}]: "
                        f"boxes {', '.join(boxes)}; scores {', '.join(scores)}")
    return model, recipe


# -- the input size and the outputs -----------------------------------------------------------
def _image_input(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, bool] | None:
    """The one 4-D input and whether it is channels last; None where augment will refuse the inputs."""
    weights = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        return None
    dims = _dims(inputs[0])
    return inputs[0], dims[1] not in (1, 3, 4) and dims[3] in (1, 3, 4)


def _input_size(model: onnx.ModelProto, size: Sequence[int] | None) -> tuple[int, int]:
    """``(H, W)`` the file will be explained at: its own, or ``size`` (required for a dynamic H, W)."""
    found = _image_input(model)
    if found is None:  # augment refuses such inputs in its own words
        raise AugmentError("onnxcam explains detectors with one image input, float [N,C,H,W] or [N,H,W,C]; this "
                           f"model's inputs are: {', '.join(f'{i.name} {_dims(i)}' for i in model.graph.input)}")
    value, channels_last = found
    dims = _dims(value)
    spatial = dims[1:3] if channels_last else dims[2:]
    if size is not None and all(spatial) and list(spatial) != [int(s) for s in size]:
        raise AugmentError(f"input {value.name!r} takes {spatial[0]}x{spatial[1]} images, not {size[0]}x{size[1]}; "
                           f"drop --size or give {spatial[0]} {spatial[1]}")
    if size is not None:
        return int(size[0]), int(size[1])
    if not all(spatial):
        raise AugmentError(f"input {value.name!r} has dynamic height/width {dims}; give the size the model "
                           "expects with --size H W (or size=(H, W)), e.g. --size 640 640")
    return int(spatial[0]), int(spatial[1])


def _measured_outputs(model: onnx.ModelProto, size: tuple[int, int]) -> list[tuple[str, tuple[int, ...]]]:
    """Each output's name and shape, measured by running the file once on zeros at ``size`` (batch 1)."""
    import onnxruntime

    value, channels_last = _image_input(model)
    dims = _dims(value)
    shape = [dims[0] or 1, *size, dims[3]] if channels_last else [dims[0] or 1, dims[1], *size]
    feeds = {value.name: np.zeros(shape, helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.ir_version = min(copy.ir_version, 10)
    try:
        session = onnxruntime.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, feeds)
    except Exception as error:  # onnxruntime's own exception types
        raise AugmentError(f"the model does not run in onnxruntime at {size[0]}x{size[1]} ({first_line(error)}); "
                           "check --size") from None
    return [(name, tuple(int(d) for d in np.shape(value))) for name, value in zip(names, values)]


def _grids(size: tuple[int, int], strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Each level's grid ``(h, w)``: stride-2 convolutions round up."""
    return tuple((math.ceil(size[0] / s), math.ceil(size[1] / s)) for s in strides)


def _yolo_layout(outputs, size):
    """The first output ``[N, 4 + C, A]`` whose A is the cells of stride 8, 16, 32 (or up to 64) grids:
    (name, strides, grids, 4 + C), else None."""
    for name, shape in outputs:
        if len(shape) != 3 or shape[1] <= yolo.BOX_COLUMNS:
            continue
        for strides in STRIDES["yolo"]:
            grids = _grids(size, strides)
            if shape[2] == sum(h * w for h, w in grids):
                return name, strides, grids, shape[1]
    return None


def _picodet_layout(model, outputs, size):
    """Per level, one scores ``[N, A_l, C]`` and one box output ``[N, A_l, 4·(reg_max+1)]``: (strides, grids,
    score outputs, box outputs, C, 4·(reg_max+1)), else None. Of a level's two outputs the scores are the one
    made by a Sigmoid (through reshapes and transposes), else the one listed first (PaddleDetection's order)."""
    producers = _producers(model.graph)
    order = {name: index for index, (name, _) in enumerate(outputs)}
    for strides in STRIDES["picodet"]:
        grids = _grids(size, strides)
        pairs = [[n for n, s in outputs if len(s) == 3 and s[1] == h * w] for h, w in grids]
        if not all(len(pair) == 2 for pair in pairs):
            continue
        scores, boxes = [], []
        for pair in pairs:
            sigmoid = [_after_sigmoid(producers, n) for n in pair]
            first = pair[sigmoid.index(True)] if sigmoid.count(True) == 1 else min(pair, key=order.get)
            scores.append(first)
            boxes.append(next(n for n in pair if n != first))
        shapes = dict(outputs)
        classes = {shapes[n][2] for n in scores}
        columns = {shapes[n][2] for n in boxes}
        if len(classes) == 1 and len(columns) == 1 and min(columns) % 4 == 0 and min(columns) >= 8:
            return strides, grids, scores, boxes, classes.pop(), columns.pop()
    return None


def _after_sigmoid(producers: dict[str, onnx.NodeProto], name: str) -> bool:
    while name in producers and producers[name].op_type in _KEEPS_VALUES:
        name = producers[name].input[0]
    return name in producers and producers[name].op_type == "Sigmoid"


def _append_concat(model: onnx.ModelProto, boxes: Sequence[str], scores: Sequence[str]) -> onnx.ModelProto:
    """The model with ``CONCAT`` = [N, A, 4·(reg_max+1) + C] appended (levels in order; boxes, then scores)."""
    taken = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.initializer}
    if CONCAT in taken:
        raise AugmentError(f"the model already has a tensor named {CONCAT!r}; it looks augmented already")
    model.graph.node.extend([
        helper.make_node("Concat", list(boxes), [f"{CONCAT}_boxes"], name=f"{CONCAT}_boxes", axis=1),
        helper.make_node("Concat", list(scores), [f"{CONCAT}_scores"], name=f"{CONCAT}_scores", axis=1),
        helper.make_node("Concat", [f"{CONCAT}_boxes", f"{CONCAT}_scores"], [CONCAT], name=CONCAT, axis=2)])
    return model


# -- parameters and messages ------------------------------------------------------------------
def _overrides(detector: str, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` post-processing parameters under their canonical names, checked."""
    chosen = {}
    names = sorted(set(DEFAULTS[detector]) | set(ALIASES[detector]))
    for key, value in given.items():
        name = ALIASES[detector].get(key, key)
        if name not in DEFAULTS[detector]:
            raise AugmentError(f"unknown {detector} parameter {key!r}; give one of {', '.join(names)}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not math.isfinite(number):
            raise AugmentError(f"{detector} parameter {key}={value!r} is not a number")
        if name.endswith("_thresh") and not 0 <= number <= 1:
            raise AugmentError(f"{detector} parameter {key}={value!r} must lie between 0 and 1")
        if name in ("detections_per_img", "topk_candidates"):
            if number != int(number) or number < 1:
                raise AugmentError(f"{detector} parameter {key}={value!r} must be a whole number of at least 1")
            number = int(number)
        chosen[name] = number
    return chosen


def _shown(outputs) -> str:
    return ", ".join(f"{name} [N, {', '.join(map(str, shape[1:]))}]" if shape else f"{name} []"
                     for name, shape in outputs) or "none"


def _mismatch(detector: str, outputs, size, found) -> str:
    """One line: what the recipe expects at this size, what the file has, and what to use instead."""
    height, width = size
    at = f"{height}x{width}"
    if detector == "yolo":
        counts = " or ".join(str(sum(h * w for h, w in _grids(size, s))) for s in STRIDES["yolo"])
        expected = (f"--detector yolo expects an output [N, 4 + classes, anchors] with {counts} anchors at {at} "
                    "(strides 8, 16, 32; P6: to 64)")
    else:
        counts = ", ".join(str(h * w) for h, w in _grids(size, STRIDES["picodet"][0]))
        expected = (f"--detector picodet expects per level (strides 8, 16, 32, 64: {counts} anchors at {at}) "
                    "sigmoid scores [N, anchors, classes] and box logits [N, anchors, 4·(reg_max+1)]")
    other = next((name for name in DETECTORS if name != detector and found[name] is not None), None)
    if other is not None:
        hint = f"this is the {'Ultralytics YOLO' if other == 'yolo' else 'PP-PicoDet'} layout: use --detector {other}"
    elif len(outputs) == 1 and len(outputs[0][1]) == 2:
        hint = "that looks like a classifier: drop --detector"
    else:
        hint = ("export the detector without its NMS / post-processing (Ultralytics: format=onnx, nms=False; "
                "PaddleDetection: export.post_process=False), check --size, or explain one output with --logits "
                "NAME and no --detector")
    return f"{expected}; this model's outputs at {at} are: {_shown(outputs)}; {hint}"
