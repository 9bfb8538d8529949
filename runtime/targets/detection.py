"""``detection``: one element of a detector's raw output, the class logit behind one detection.

Outputs ``[A, D]`` (``models/detection.py``: per anchor, box regression, then class logits).
A single-stage detector keeps a box for one (anchor, class): its score is a function of that
one logit (RetinaNet: its sigmoid; SSD: a softmax over its row; FCOS: with the anchor's
centre-ness), so the detection's map explains that logit — the gradient is the score's up
to a positive factor. ``runtime/detection`` decodes and picks the elements.
``elements``: flat indices ``a·D + column``, one per image, or ``[N, K]``.
Seed: ``e_element`` (one-hot over the output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from onnxcam.runtime.contract import Contract, InputError
from onnxcam.runtime.graphkit import Builder
from onnxcam.runtime.targets.base import Seeded, Target, as_seed, per_image_array, require_rank, rows_of

ELEMENT = "detection"


@dataclass(frozen=True)
class DetectionTarget(Target):
    """elements: flat indices into the output ``[A, D]`` (``anchor · D + column``): one for all
    images, one per image, or ``[N, K]``."""

    elements: Any = None

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
        return cls(elements=anchor * contract.output.shape[1] + column)

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
        if ((array < 0) | (array >= size)).any():
            raise InputError(f"detection element {int(array[(array < 0) | (array >= size)][0])} is outside the "
                             f"output's {size} elements; give anchor·{contract.output.shape[1]} + column")
        return {ELEMENT: array}

    def build(self, b: Builder, output: str, contract: Contract) -> Seeded:
        size = int(np.prod(contract.output.shape))
        elements = b.op("Unsqueeze", [rows_of(b, ELEMENT), b.ints([1])])  # [R, 1]
        flat = b.op("Reshape", [output, b.ints([0, size])])  # [R, A·D]
        hits = b.op("Equal", [elements, b.const(np.arange(size, dtype=np.int64)[None], np.int64)])
        seed = b.op("Cast", [hits], to=1)  # [R, A·D]
        score = b.op("Squeeze", [b.op("GatherElements", [flat, elements], axis=1), b.ints([1])])
        return Seeded(seed=as_seed(b, seed, ELEMENT, output), rows=ELEMENT, score=score)

    def scorer(self, row, feeds, resolved, output_row):
        element = int(feeds[ELEMENT].reshape(-1)[row])
        return lambda outputs: outputs.reshape(len(outputs), -1)[:, element]

    def describe(self, contract, row, resolved):
        return "detection"
