"""``detection``: one element of a detector's raw output, the class logit behind one detection.

Outputs ``[A, D]`` (``models/detection.py``: per anchor, box regression, then class logits).
A single-stage detector keeps a box for one (anchor, class): its score is a function of that
one logit (RetinaNet: its sigmoid; SSD: a softmax over its row; FCOS: with the anchor's
centre-ness), so the detection's map explains that logit — the gradient is the score's up
to a positive factor. ``runtime/detection`` decodes and picks the elements.
``elements``: flat indices ``a·D + column``, one per image, or ``[N, K]``; ``-1`` is the
image's top detection, resolved in the graph (``ranking``): the element with the best score
among the class columns, by the family's score (RetinaNet, PicoDet, YOLO: the column itself;
FCOS: log σ(logit) + log σ(centre-ness); SSD: the softmax over its row, background left out).
NMS always keeps the best-scoring box, so that element is the first detection ``decode``
returns when it passes the score threshold (``runtime/detection/explain.py`` checks it).
Seed: ``e_element`` (one-hot over the output).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnxcam.runtime.contract import Contract, Detection, InputError
from onnxcam.runtime.graphkit import Builder
from onnxcam.runtime.targets.base import Seeded, Target, as_seed, per_image_array, require_rank, rows_of

ELEMENT = "detection"


@dataclass(frozen=True)
class DetectionTarget(Target):
    """elements: flat indices into the output ``[A, D]`` (``anchor · D + column``): one for all
    images, one per image, or ``[N, K]``; ``-1``: the image's top detection. record: the graph's
    decoding record, whose family's score (``decode.box_scores``, a probability) Ablation-CAM and
    Score-CAM compare across their forward passes; without one, the raw element."""

    elements: Any = None
    record: Detection | None = field(default=None, compare=False, hash=False)

    name = "detection"
    syntax = "detection:ANCHOR,COLUMN  (a raw detector output's element; `onnxcam detect` picks them)"
    summary = "the raw class logit behind one detection of a single-stage detector"
    output_ranks = (2,)

    @classmethod
    def parse(cls, text, contract, embed=None):
        try:
            anchor, column = (int(part) for part in text.split(","))
        except ValueError:
            raise InputError(f"detection target {text!r} is not ANCHOR,COLUMN; write e.g. detection:1200,5") from None
        record = contract.detection
        if record is None:
            return cls(elements=anchor * contract.output.shape[1] + column)
        return cls(elements=int(record.elements(anchor, column, contract.output.shape)), record=record)

    def fits(self, contract: Contract) -> None:
        require_rank(contract, self.name, (2,), "[N, anchors, columns]",
                     "export a detector's raw heads (models/detection.py) or use --target output:INDEX")

    def per_image(self) -> int | None:
        array = np.asarray(self.elements)
        return array.shape[1] if array.ndim == 2 else None

    def feeds(self, contract: Contract, images: int) -> dict[str, np.ndarray]:
        if self.elements is None:
            raise InputError("a detection target needs the elements to explain; run `onnxcam detect`, which "
                             "decodes the detections and picks them")
        array = per_image_array(self.elements, images, "detection element")
        size = int(np.prod(contract.output.shape))
        record = contract.detection
        wrong = (array < -1) | (array >= size) | ((array == -1) & (record is None))
        if wrong.any():
            raise InputError(f"detection element {int(array[wrong][0])} is outside the output's {size} elements; "
                             f"give anchor·{contract.output.shape[1]} + column, or -1 (the top detection) on a graph "
                             "with a detection record")
        if record is not None and not record.box_gradient:
            boxes = record.box_mask(contract.output.shape).reshape(-1)[np.maximum(array, 0)] & (array >= 0)
            if boxes.any():
                raise InputError(f"detection element {int(array[boxes][0])} is a box-regression column, which carries "
                                 f"no gradient in this graph; give a class column (≥ {record.box_columns})")
        return {ELEMENT: array}

    def build(self, b: Builder, output: str, contract: Contract) -> Seeded:
        size = int(np.prod(contract.output.shape))
        elements = b.op("Unsqueeze", [rows_of(b, ELEMENT), b.ints([1])])  # [R, 1]
        flat = b.op("Reshape", [output, b.ints([0, size])])  # [R, A·D]
        resolved = None
        if contract.detection is not None:
            best = b.op("ArgMax", [ranking(b, output, contract.detection, contract.output.shape)], axis=1, keepdims=1)
            elements = b.op("Where", [b.op("Less", [elements, b.const(0, np.int64)]), best, elements])  # [R, 1]
            resolved = b.op("Reshape", [elements, b.op("Shape", [ELEMENT])])
        hits = b.op("Equal", [elements, b.const(np.arange(size, dtype=np.int64)[None], np.int64)])
        seed = b.op("Cast", [hits], to=1)  # [R, A·D]
        score = b.op("Squeeze", [b.op("GatherElements", [flat, elements], axis=1), b.ints([1])])
        return Seeded(seed=as_seed(b, seed, ELEMENT, output), rows=ELEMENT, score=score, resolved=resolved)

    def scorer(self, row, feeds, resolved, output_row):
        element = int((feeds[ELEMENT] if resolved is None else resolved).reshape(-1)[row])
        if self.record is None:
            return lambda outputs: outputs.reshape(len(outputs), -1)[:, element]
        from onnxcam.runtime.detection.decode import box_scores

        first, second = divmod(element, output_row.shape[1])
        anchor, column = (second, first) if self.record.layout == "columns_first" else (first, second)
        return lambda outputs: box_scores(self.record.family, outputs, anchor, column, self.record.layout)

    def describe(self, contract, row, resolved):
        return "detection"


def ranking(b: Builder, output: str, record: Detection, shape: tuple[int, int]) -> str:
    """``[R, *O] → [R, A·D]``: each element's rank score, by the family's score up to a monotone
    map (module docstring), ``-inf`` at the box columns (and SSD's background)."""
    columns_first = record.layout == "columns_first"
    axis = 1 if columns_first else 2
    classes = b.op("Slice", [output, b.ints([record.box_columns]), b.ints([shape[0] if columns_first else shape[1]]),
                             b.ints([axis])])
    if record.family == "fcos":
        centre = b.op("Slice", [output, b.ints([4]), b.ints([5]), b.ints([axis])])
        log_sigmoid = lambda x: b.op("Neg", [b.op("Softplus", [b.op("Neg", [x])])])  # noqa: E731
        classes = b.op("Add", [log_sigmoid(classes), log_sigmoid(centre)])
    elif record.family == "ssd":
        classes = b.op("Softmax", [classes], axis=axis)
    box_shape = (record.box_columns, shape[1]) if columns_first else (shape[0], record.box_columns)
    floor = b.const(np.full((1, *box_shape), -np.inf, np.float32))
    floor = b.op("Expand", [floor, b.op("Concat", [b.op("Shape", [output], start=0, end=1), b.ints(list(box_shape))],
                                         axis=0)])
    ranks = b.op("Concat", [floor, classes], axis=axis)
    if record.family == "ssd":  # the background column (the first class column) never makes a detection
        background = np.zeros((1, *shape), np.float32)
        background[(0, record.box_columns) if columns_first else (0, slice(None), record.box_columns)] = -np.inf
        ranks = b.op("Add", [ranks, b.const(background)])
    return b.op("Reshape", [ranks, b.ints([0, int(np.prod(shape))])])
