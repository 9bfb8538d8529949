"""Target kinds: what score a map explains. One file per kind; this registry reads them.

>>> from onnxcam.runtime.targets import ClassTarget, SegmentationTarget
>>> explainer.explain(batch, targets=SegmentationTarget(classes=15))   # person pixels, own mask
>>> explainer.explain(batch, targets=3)                                # class 3 (a ClassTarget)

``parse`` reads the CLI's ``--target`` text (docs/explainer-graph.md, "Target kinds").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
from onnxcam.runtime.contract import Contract, InputError
from onnxcam.runtime.targets.base import Scorer, Seeded, Target
from onnxcam.runtime.targets.binary import BinaryTarget
from onnxcam.runtime.targets.classes import ClassTarget
from onnxcam.runtime.targets.detection import DetectionTarget
from onnxcam.runtime.targets.output import OutputTarget
from onnxcam.runtime.targets.segmentation import SegmentationTarget
from onnxcam.runtime.targets.similarity import SimilarityTarget
from onnxcam.runtime.targets.softmax import SoftmaxTarget

KINDS: dict[str, type[Target]] = {kind.name: kind for kind in (ClassTarget, SoftmaxTarget, BinaryTarget,
                                                                 OutputTarget, SegmentationTarget, SimilarityTarget,
                                                                 DetectionTarget)}

__all__ = ["KINDS", "Target", "InputError", "Seeded", "Scorer", "ClassTarget", "SoftmaxTarget", "BinaryTarget",
           "OutputTarget", "SegmentationTarget", "SimilarityTarget", "DetectionTarget", "as_target", "parse", "default_target"]


def default_target(contract: Contract) -> Target:
    """What a map explains when nothing is said: the top class of class scores, the predicted side
    of one logit, the largest class of a segmentation map; other outputs need a --target."""
    shape = contract.output.shape
    if shape == (1,):
        return BinaryTarget()
    if len(shape) == 1:
        return ClassTarget()
    if len(shape) == 3:
        return SegmentationTarget()
    raise InputError(f"this graph's output is [N, {', '.join(map(str, shape))}]: say what to explain with "
                      f"--target ({'; '.join(kind.syntax for kind in KINDS.values() if kind.name != 'class')})")


def as_target(targets, contract: Contract, top_k: int | None = None) -> Target:
    """The Python API's ``targets`` argument as a Target: a Target as it is; None, an int, one
    per image or ``[N, K]`` class ids as the output's default kind; ``top_k``: ranks ``-1…-k``."""
    if top_k is not None:
        classes = contract.output.classes or 0
        if not 1 <= top_k <= classes:
            raise InputError(f"top_k must be between 1 and {classes} (the model's classes), not {top_k}; "
                             "give a smaller --top-k")
    if isinstance(targets, Target):
        if top_k is not None:
            if not hasattr(targets, "classes"):
                raise InputError(f"top_k ranks classes; target kind {targets.name!r} has none, "
                                 "so drop --top-k or explain a class kind")
            targets = dataclasses.replace(targets, classes=np.arange(-1, -top_k - 1, -1)[None])
        return targets
    kind = default_target(contract) if contract.seeded else ClassTarget()
    if top_k is not None:
        if targets is not None:
            raise InputError("targets and top_k were both given; give targets or top_k, not both")
        targets = np.arange(-1, -top_k - 1, -1)[None]
    if targets is None:
        return kind
    if isinstance(kind, BinaryTarget):
        return BinaryTarget(category=targets)
    if isinstance(kind, (ClassTarget, SegmentationTarget)):
        return type(kind)(classes=targets)
    raise InputError(f"targets {type(targets).__name__} do not fit this graph's [N, "
                     f"{', '.join(map(str, contract.output.shape))}] output; give a Target (onnxcam.runtime.targets)")


def parse(text: str | None, contract: Contract, embed: Callable[[Path], np.ndarray] | None = None) -> Target:
    """The CLI's ``--target`` text as a Target: ``KIND:TEXT`` (each kind's ``syntax``), or a bare class
    (``281``, ``tabby``, ``-2``) of the output's default kind; None → the default kind. ``embed``:
    the model's embedding of a reference image, for ``similarity:IMAGE``."""
    if text is None:
        return default_target(contract)
    kind_name, separator, rest = text.partition(":")
    if not separator or kind_name not in KINDS:
        if separator and not kind_name.lstrip("-").isdigit():
            raise InputError(f"unknown target kind {kind_name!r}; choose one of {', '.join(KINDS)} "
                             "(e.g. --target class:281, --target segmentation:15)")
        kind_name, rest = default_target(contract).name, text
    return KINDS[kind_name].parse(rest, contract, embed)
