"""``softmax``: the softmax probability of a class, ``p_t = softmax(output)[t]``
(pytorch-grad-cam's ``ClassifierOutputSoftmaxTarget``).

Outputs ``[classes]``; ranks ``-j`` as for ``class``. Seed: ``∂p_t/∂output = p_t (e_t − p)``,
built in the graph from the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnxcam.runtime.contract import TARGET
from onnxcam.runtime.graphkit import Builder
from onnxcam.runtime.methods.base import softmax
from onnxcam.runtime.targets.base import Seeded, as_seed, one_hot, resolve_ranks, to_images, rows_of
from onnxcam.runtime.targets.classes import ClassTarget


@dataclass(frozen=True)
class SoftmaxTarget(ClassTarget):
    name = "softmax"
    syntax = "softmax:ID|LABEL|-J"
    summary = "the softmax probability of a class"

    def build(self, b: Builder, output: str, contract) -> Seeded:
        classes = contract.output.shape[0]
        resolved = resolve_ranks(b, rows_of(b, TARGET), output, classes)
        probabilities = b.op("Softmax", [output], axis=1)
        hot = one_hot(b, resolved, classes)
        score = b.op("ReduceSum", [b.op("Mul", [hot, probabilities]), b.ints([1])], keepdims=1)  # [R, 1]
        seed = b.op("Mul", [score, b.op("Sub", [hot, probabilities])])
        return Seeded(seed=as_seed(b, seed, TARGET, output), rows=TARGET,
                      score=b.op("Squeeze", [score, b.ints([1])]),
                      resolved=to_images(b, resolved))

    def scorer(self, row, feeds, resolved, output_row):
        class_id = int(resolved.reshape(-1)[row])
        return lambda outputs: softmax(np.asarray(outputs, np.float32))[:, class_id]
