"""``binary``: a one-logit (sigmoid) output, for the positive class ``+output`` or the negative
class ``−output`` (pytorch-grad-cam's ``BinaryClassifierOutputTarget``: category 1 → +, else −).

Outputs ``[1]``. Category ``1`` (positive), ``0`` (negative) or ``-1``: the side the model
predicts (logit > 0 → positive). Seed: ``±1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from onnxcam.runtime.contract import TARGET, Contract, InputError
from onnxcam.runtime.graphkit import Builder
from onnxcam.runtime.targets.base import Seeded, Target, as_seed, to_images, per_image_array, require_rank, rows_of

CATEGORIES = {"positive": 1, "pos": 1, "1": 1, "negative": 0, "neg": 0, "0": 0, "predicted": -1, "-1": -1}


@dataclass(frozen=True)
class BinaryTarget(Target):
    """category: 1 (positive), 0 (negative) or -1 (the predicted side), for all images or per image."""

    category: Any = -1

    name = "binary"
    syntax = "binary:positive|negative|predicted"
    summary = "a one-logit (sigmoid) output: +logit for the positive class, -logit for the negative"
    has_classes = True
    output_ranks = (1,)

    @classmethod
    def parse(cls, text, contract, embed=None):
        key = text.strip().lower()
        if key not in CATEGORIES:
            raise InputError(f"binary category {text!r} is unknown; give positive, negative or predicted "
                             "(or 1, 0, -1)")
        return cls(category=CATEGORIES[key])

    @classmethod
    def accepts(cls, shape: tuple[int, ...]) -> bool:
        return tuple(shape) == (1,)

    def fits(self, contract: Contract) -> None:
        require_rank(contract, self.name, (1,), "[N, 1]", "use --target class:ID for [N, classes] scores")
        if contract.output.shape != (1,):
            raise InputError(f"target kind 'binary' needs a one-logit [N, 1] output, and this graph's output is "
                              f"[N, {contract.output.shape[0]}]; use --target class:ID or softmax:ID")

    def feeds(self, contract: Contract, images: int) -> dict[str, np.ndarray]:
        array = per_image_array(self.category, images, "binary category")
        if not np.isin(array, (-1, 0, 1)).all():
            raise InputError("a binary category is out of range; give 1 (positive), 0 (negative) or -1 (the "
                             "predicted side)")
        return {TARGET: array}

    def build(self, b: Builder, output: str, contract) -> Seeded:
        category = rows_of(b, TARGET)
        predicted = b.op("Cast", [b.op("Greater", [b.op("Squeeze", [output, b.ints([1])]), b.const(0.0)])], to=7)
        resolved = b.op("Where", [b.op("Less", [category, b.ints(0)]), predicted, category])
        sign = b.op("Sub", [b.op("Mul", [b.op("Cast", [resolved], to=1), b.const(2.0)]), b.const(1.0)])
        seed = b.op("Unsqueeze", [sign, b.ints([1])])  # [R, 1]
        score = b.op("Mul", [sign, b.op("Squeeze", [output, b.ints([1])])])
        return Seeded(seed=as_seed(b, seed, TARGET, output), rows=TARGET, score=score,
                      resolved=to_images(b, resolved))

    def scorer(self, row, feeds, resolved, output_row):
        sign = 1.0 if int(resolved.reshape(-1)[row]) == 1 else -1.0
        return lambda outputs: sign * outputs[:, 0]

    def describe(self, contract, row, resolved):
        category = int(resolved.reshape(-1)[row])
        label = contract.label(category) if contract.labels and len(contract.labels) > 1 else None
        return label or ("positive" if category == 1 else "negative")
