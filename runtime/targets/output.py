"""``output``: the sum of any element or slice of the output (regression heads, raw scores,
a region of a probability map): ``Σ selection ⊙ output``, pytorch-grad-cam's
``RawScoresOutputTarget`` when the selection is everything.

The selection is an index over the output without the batch, numpy-style (``3``,
``0,10:20,30:60``, ``:`` for all), or a 0/1 array ``[*O]`` or ``[N, K, *O]``. Seed: the
selection itself, fed as the graph input ``selection``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from onnxcam.runtime.contract import Contract, InputError
from onnxcam.runtime.graphkit import Builder
from onnxcam.runtime.targets.base import Seeded, Target, rows_of

SELECTION = "selection"


def parse_index(text: str) -> tuple:
    """``"0,10:20,:"`` → ``(0, slice(10, 20), slice(None))``."""
    parts = []
    for part in text.split(","):
        part = part.strip()
        try:
            if ":" in part:
                bounds = [int(p) if p.strip() else None for p in part.split(":")]
                if len(bounds) > 3:
                    raise ValueError
                parts.append(slice(*bounds))
            else:
                parts.append(int(part))
        except ValueError:
            raise InputError(f"output index {text!r}: {part!r} is not an integer or a start:stop[:step] slice; "
                              "write e.g. output:3 or output:0,10:20,30:40") from None
    return tuple(parts)


@dataclass(frozen=True)
class OutputTarget(Target):
    """selection: an index tuple (ints and slices) over the output without the batch, the
    text form (``"0,10:20"``), None for everything, or a 0/1 array ``[*O]`` / ``[N, K, *O]``."""

    selection: Any = None

    name = "output"
    syntax = "output:INDEX  (numpy-style over the output without the batch: 3 | 0,10:20,30:60 | :)"
    summary = "the sum of an element or slice of the output (regression heads, raw scores, map regions)"

    @classmethod
    def parse(cls, text, contract, embed=None):
        return cls(selection=text)

    def fits(self, contract: Contract) -> None:
        self.mask(contract)

    def mask(self, contract: Contract) -> np.ndarray:
        """The selection as float32 ``[*O]`` or ``[N, K, *O]`` zeros and ones."""
        shape = contract.output.shape
        chosen = self.selection
        if isinstance(chosen, str):
            chosen = parse_index(chosen) if chosen.strip() not in ("", ":", "all") else None
        if chosen is None:
            return np.ones(shape, np.float32)
        if isinstance(chosen, (int, slice)):
            chosen = (chosen,)
        if isinstance(chosen, tuple):
            if len(chosen) > len(shape):
                raise InputError(f"output index has {len(chosen)} parts, but the output is "
                                  f"[N, {', '.join(map(str, shape))}]; give one index or slice per axis after the batch")
            mask = np.zeros(shape, np.float32)
            try:
                mask[chosen] = 1
            except IndexError:
                raise InputError(f"output index {self.selection!r} is out of range for an output [N, "
                                  f"{', '.join(map(str, shape))}]; give indices within each axis") from None
            if not mask.any():
                raise InputError("the output index selects nothing; check the slice bounds")
            return mask
        array = np.asarray(chosen, np.float32)
        if array.shape == tuple(shape) or (array.ndim == len(shape) + 2 and array.shape[2:] == tuple(shape)):
            return array
        raise InputError(f"an output selection of shape {tuple(array.shape)} does not fit the output "
                          f"[N, {', '.join(map(str, shape))}]; give [{', '.join(map(str, shape))}] or [N, K, …]")


    def feeds(self, contract: Contract, images: int) -> dict[str, np.ndarray]:
        mask = self.mask(contract)
        if mask.ndim == len(contract.output.shape):
            mask = np.broadcast_to(mask, (images, 1, *mask.shape))
        if mask.shape[0] != images:
            raise InputError(f"got selections for {mask.shape[0]} image(s) in a batch of {images}; "
                             "give one per image or one for all")
        record = contract.detection
        if record is not None and record.local_gradient:
            raise InputError("this detector graph's backward is local: exact for one detection element a row only; "
                             "use the detection target (`onnxcam detect`, or -t detection:ANCHOR,COLUMN)")
        if record is not None and not record.box_gradient and (mask[..., record.box_mask(contract.output.shape)] != 0).any():
            raise InputError(f"the selection reaches the detector's box-regression columns (the first "
                             f"{record.box_columns}), which carry no gradient in this graph; select class columns")
        return {SELECTION: np.ascontiguousarray(mask, np.float32)}

    def build(self, b: Builder, output: str, contract) -> Seeded:
        rows = rows_of(b, SELECTION)
        axes = b.ints(list(range(1, len(contract.output.shape) + 1)))
        score = b.op("ReduceSum", [b.op("Mul", [rows, output]), axes], keepdims=0)
        return Seeded(seed=b.op("Identity", [SELECTION]), rows=SELECTION, score=score)

    def scorer(self, row, feeds, resolved, output_row):
        selection = feeds[SELECTION].reshape(-1, *output_row.shape)[row]
        return lambda outputs: (outputs * selection).reshape(len(outputs), -1).sum(axis=1)

    def describe(self, contract, row, resolved):
        return f"output[{self.selection}]" if isinstance(self.selection, str) else "output"
