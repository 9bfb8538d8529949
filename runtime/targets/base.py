"""What a target kind is: how it turns the model's output into the seed of the backward pass.

A *target* says what score to explain: a class's logit, a softmax probability, a masked
sum over a segmentation map, the cosine similarity of an embedding to a concept… The
explainer graph (format 2) pulls a seed, ∂score/∂output, back through the model, so every
kind runs on the same graph. A kind is one file in this folder and provides:

- ``fits(contract)``: refuse, in one line, an output the kind cannot read;
- ``feeds(contract, images)``: its graph inputs, ``[N, K, …]`` (K targets an image);
- ``build(b, output, contract)``: ONNX nodes that compute, from the output rows
  ``[N·K, *O]`` and those inputs, the seed ``[N, K, *O]``, the score per row and,
  for kinds with classes, the resolved class per target;
- ``scorer(…)``: the same score in numpy, for Score-CAM, Ablation-CAM and the metrics.

docs/explainer-graph.md ("Target kinds") states each kind's score and seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
from onnxcam.runtime.contract import TARGET, Contract, ContractError, InputError
from onnxcam.runtime.graphkit import Builder

Scorer = Callable[[np.ndarray], np.ndarray]  # outputs [B, *O] → scores [B]


@dataclass(frozen=True)
class Seeded:
    """The names of what a kind's nodes compute: the seed ``[N, K, *O]``, a tensor whose
    shape is ``[N, K]`` (it defines the rows), the score per row ``[N·K]`` and, for kinds
    with classes, the resolved class ``int64 [N, K]``."""

    seed: str
    rows: str
    score: str
    resolved: str | None = None


class Target:
    """Base of the target kinds (one subclass a file, registered by ``name``)."""

    name: ClassVar[str]
    syntax: ClassVar[str]  # how the CLI's --target spells it
    summary: ClassVar[str]  # one line for --help and the README
    has_classes: ClassVar[bool] = False
    output_ranks: ClassVar[tuple[int, ...] | None] = None  # of the output without the batch; None: any

    @classmethod
    def accepts(cls, shape: tuple[int, ...]) -> bool:
        """Whether the kind can read an output of ``shape`` (without the batch)."""
        return cls.output_ranks is None or len(shape) in cls.output_ranks

    @classmethod
    def parse(cls, text: str, contract: Contract, embed=None) -> "Target":
        """The target the CLI's ``--target KIND:TEXT`` names (``embed``: the model's embedding of an
        image file, for kinds that take a reference image)."""
        raise NotImplementedError

    def fits(self, contract: Contract) -> None:
        """A ``ContractError`` or ``InputError`` (one line: what, and what to do) where the target
        cannot explain this graph's output."""
        raise NotImplementedError

    def per_image(self) -> int | None:
        """K, the targets an image, where the target fixes it (else None: one)."""
        return None

    @property
    def graph_key(self) -> str:
        """What the appended nodes depend on (not the values fed): one cached graph per key."""
        return self.name

    def feeds(self, contract: Contract, images: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def build(self, b: Builder, output: str, contract: Contract) -> Seeded:
        raise NotImplementedError

    def scorer(self, row: int, feeds: dict[str, np.ndarray], resolved: np.ndarray | None,
               output_row: np.ndarray) -> Scorer:
        """The score of row ``row`` (image-major over ``N·K``) as a numpy function of outputs
        ``[B, *O]``; ``output_row`` is the model's output for that row's image, ``[*O]``."""
        raise NotImplementedError

    def describe(self, contract: Contract, row: int, resolved: np.ndarray | None) -> str:
        """A short caption of row ``row``'s target (for overlays and the CLI)."""
        return self.name

    def decorate(self, picture: np.ndarray, row: int, feeds: dict[str, np.ndarray], resolved: np.ndarray | None,
                 output_row: np.ndarray) -> np.ndarray:
        """The overlay of row ``row`` (RGB ``uint8 [H, W, 3]``) with what shows this kind's target
        drawn on it (a mask's outline, a concept's thumbnail); as it is by default."""
        return picture


# -- shared pieces -------------------------------------------------------------------------
def per_image_array(values, images: int, what: str, dtype=np.int64) -> np.ndarray:
    """``values`` as ``[N, K]``: one value for all, one per image, or K per image."""
    array = np.asarray(values)
    if array.ndim == 0:
        array = np.full((images, 1), array)
    elif array.ndim == 2 and array.shape[0] == 1 and images > 1:  # one list for every image
        array = np.repeat(array, images, axis=0)
    elif array.ndim == 1:
        if len(array) != images:
            raise InputError(f"got {len(array)} {what}s for a batch of {images} image(s); give one per image, "
                              "one for all, or one list per image")
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] != images or array.shape[1] == 0:
        raise InputError(f"got {what}s of shape {tuple(array.shape)} for a batch of {images} image(s); "
                          f"give one per image, one for all, or an [images, K] array")
    if dtype is np.int64 and not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{what}s must be integers, got {array.dtype}; give whole numbers")
    return array.astype(dtype)


def check_classes(array: np.ndarray, classes: int, ranks: bool = True) -> None:
    """Class ids in ``[0, classes)``, or ranks ``-1 … -classes``."""
    low = -classes if ranks else 0
    bad = array[(array >= classes) | (array < low)]
    if bad.size:
        raise InputError(f"target class {int(bad[0])} is out of range: the model has {classes} classes "
                          f"(0..{classes - 1}); use -1 for the top class, -2 for the second…")


def require_rank(contract: Contract, kind: str, ranks: tuple[int, ...], shape_text: str, instead: str) -> None:
    """A ``ContractError`` unless the output has one of the ranks (without the batch)."""
    if len(contract.output.shape) not in ranks:
        raise ContractError(f"target kind {kind!r} needs a {shape_text} output, and this graph's output is "
                            f"[N, {', '.join(map(str, contract.output.shape))}]; {instead}")


def resolve_ranks(b: Builder, targets: str, ranking: str, classes: int) -> str:
    """``int64 [R]``: each target, a negative ``-j`` replaced by the ``j``-th largest entry's index
    in its row of ``ranking`` ``[R, classes]`` (ties: the lower index first)."""
    _, order = b.op("TopK", [ranking, b.ints([classes])], outputs=2, axis=1, largest=1, sorted=1)
    rank = b.op("Clip", [b.op("Sub", [b.op("Neg", [targets]), b.ints([1])]), b.ints(0), b.ints(classes - 1)])
    picked = b.op("Squeeze", [b.op("GatherElements", [order, b.op("Unsqueeze", [rank, b.ints([1])])], axis=1),
                              b.ints([1])])
    return b.op("Where", [b.op("Less", [targets, b.ints(0)]), picked, targets])


def one_hot(b: Builder, classes_of_rows: str, classes: int) -> str:
    """``float32 [R, classes]`` rows with a 1 at each row's class."""
    hits = b.op("Equal", [b.op("Unsqueeze", [classes_of_rows, b.ints([1])]), b.ints([list(range(classes))])])
    return b.op("Cast", [hits], to=1)


def rows_of(b: Builder, name: str) -> str:
    """``[N, K, *T] → [N·K, *T]``."""
    return b.op("Reshape", [name, b.op("Concat", [b.ints([-1]), b.op("Shape", [name], start=2)], axis=0)])


def as_seed(b: Builder, seed_rows: str, rows: str, output: str) -> str:
    """``[N·K, *O] → [N, K, *O]``, with ``[N, K]`` from ``rows``."""
    shape = b.op("Concat", [b.op("Shape", [rows], start=0, end=2), b.op("Shape", [output], start=1)], axis=0)
    return b.op("Reshape", [seed_rows, shape])


def to_images(b: Builder, rows: str) -> str:
    """``[N·K] → [N, K]``, with ``[N, K]`` from the ``target`` input (the resolved classes' output)."""
    return b.op("Reshape", [rows, b.op("Shape", [TARGET])])


def class_caption(contract: Contract, class_id: int) -> str:
    return contract.label(int(class_id))
