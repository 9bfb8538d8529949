"""``class``: the raw score of a class, ``output[t]`` (pytorch-grad-cam's ``ClassifierOutputTarget``).

Outputs ``[classes]``. A negative ``-j`` is the image's ``j``-th best class, resolved in the
graph, so ``top_k`` explains an image's K best classes in one session call.
Seed: ``e_t`` (one-hot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from onnxcam.runtime.contract import TARGET, Contract
from onnxcam.runtime.graphkit import Builder
from onnxcam.runtime.targets.base import (Seeded, Target, as_seed, check_classes, class_caption, one_hot, to_images,
                                          per_image_array, require_rank, resolve_ranks, rows_of)


@dataclass(frozen=True)
class ClassTarget(Target):
    """classes: one id for all images, one per image, an ``[N, K]`` array, or None (the top class);
    ``-j`` = the image's j-th best class."""

    classes: Any = None

    name = "class"
    syntax = "class:ID|LABEL|-J  (or a bare ID/LABEL)"
    summary = "the raw logit of a class (negative -j: the image's j-th best)"
    has_classes = True
    output_ranks = (1,)

    @classmethod
    def parse(cls, text, contract, embed=None):
        return cls(classes=contract.class_id(text))

    def fits(self, contract: Contract) -> None:
        require_rank(contract, self.name, (1,), "[N, classes]",
                     "use --target segmentation:CLASS for maps or --target output:INDEX for any element")

    def per_image(self) -> int | None:
        array = np.asarray(-1 if self.classes is None else self.classes)
        return array.shape[1] if array.ndim == 2 else None

    def feeds(self, contract: Contract, images: int) -> dict[str, np.ndarray]:
        array = per_image_array(-1 if self.classes is None else self.classes, images, "target")
        check_classes(array, contract.output.shape[0])
        return {TARGET: array}

    def build(self, b: Builder, output: str, contract: Contract) -> Seeded:
        classes = contract.output.shape[0]
        resolved = resolve_ranks(b, rows_of(b, TARGET), output, classes)
        seed = one_hot(b, resolved, classes)
        score = b.op("ReduceSum", [b.op("Mul", [seed, output]), b.ints([1])], keepdims=0)
        return Seeded(seed=as_seed(b, seed, TARGET, output), rows=TARGET, score=score,
                      resolved=to_images(b, resolved))

    def scorer(self, row, feeds, resolved, output_row):
        class_id = int(resolved.reshape(-1)[row])
        return lambda outputs: outputs[:, class_id]

    def describe(self, contract, row, resolved):
        return class_caption(contract, resolved.reshape(-1)[row])
