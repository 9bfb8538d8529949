"""``similarity``: the cosine similarity of an embedding output to a concept vector,
``cos(e, v) = e·v / max(‖e‖‖v‖, ε)`` (the ``SimilarityToConceptTarget`` of pytorch-grad-cam's
embeddings tutorial, ``torch.nn.CosineSimilarity``).

Outputs ``[D]``. The concept is a vector ``[D]`` (one for all, ``[N, D]`` or ``[N, K, D]``):
from a ``.npy`` file, or the model's own embedding of a reference image. Seed:
``∂cos/∂e = v / (‖e‖‖v‖) − cos · e / ‖e‖²``, built in the graph from the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxcam.runtime.contract import Contract, InputError
from onnxcam.runtime.graphkit import Builder
from onnxcam.runtime.targets.base import Seeded, Target, as_seed, require_rank, rows_of

CONCEPT = "concept"
EPSILON = 1e-8  # torch.nn.CosineSimilarity's default


@dataclass(frozen=True)
class SimilarityTarget(Target):
    """concept: ``[D]`` for all images, ``[N, D]`` or ``[N, K, D]``; name: what to call it in captions."""

    concept: Any = None
    concept_name: str = "concept"
    thumbnail: Any = None  # RGB uint8 [h, w, 3] of the reference image, drawn on overlays

    name = "similarity"
    syntax = "similarity:REFERENCE.png|CONCEPT.npy"
    output_ranks = (1,)
    summary = "cosine similarity of an embedding output to a concept (a reference image or a .npy vector)"

    @classmethod
    def parse(cls, text, contract, embed=None):
        """``REFERENCE_IMAGE`` (embedded by the model itself) or ``CONCEPT.npy`` (a ``[D]`` vector)."""
        path = Path(text)
        if not path.is_file():
            raise InputError(f"{path}: no such file; a similarity target needs a reference image or a .npy vector")
        if path.suffix.lower() == ".npy":
            try:
                vector = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as error:
                raise InputError(f"{path}: not a readable .npy array ({error}); save the vector with numpy.save") from None
            vector = np.asarray(vector, np.float32)
            if vector.ndim != 1:
                raise InputError(f"{path}: a concept vector must be 1-D [D], got shape {tuple(vector.shape)}; "
                                 "save one embedding vector")
            return cls(concept=vector, concept_name=path.stem)
        if embed is None:
            raise InputError("a reference image needs the model to embed it; pass a .npy vector instead")
        from onnxcam.runtime.image import load_image

        return cls(concept=embed(path), concept_name=path.stem, thumbnail=load_image(path))

    def fits(self, contract: Contract) -> None:
        require_rank(contract, self.name, (1,), "[N, D] embedding", "explain an embedding model's vector output")
        if self.concept is None:
            raise InputError("a similarity target needs a concept: a reference image or a .npy vector")
        size = np.asarray(self.concept).shape[-1]
        if size != contract.output.shape[0]:
            raise InputError(f"the concept vector has {size} values, but the model's embedding has "
                              f"{contract.output.shape[0]}; give a vector of the embedding's length "
                              "(or a reference image, embedded by the same model)")

    def per_image(self) -> int | None:
        array = np.asarray(self.concept)
        return array.shape[1] if array.ndim == 3 else None

    def feeds(self, contract: Contract, images: int) -> dict[str, np.ndarray]:
        concept = np.asarray(self.concept, np.float32)
        if concept.ndim == 1:
            concept = np.broadcast_to(concept, (images, 1, concept.shape[0]))
        elif concept.ndim == 2:
            if len(concept) != images:
                raise InputError(f"got {len(concept)} concept vectors for a batch of {images}; "
                                 "give one per image or one for all")
            concept = concept[:, None]
        if concept.ndim != 3 or concept.shape[0] != images:
            raise InputError(f"concept vectors of shape {tuple(concept.shape)} do not fit a batch of {images}; "
                             "give [D], [N, D] or [N, K, D]")
        if not np.isfinite(concept).all() or not np.abs(concept).sum(axis=-1).all():
            raise InputError("a concept vector is zero or not finite; give a real embedding")
        return {CONCEPT: np.ascontiguousarray(concept)}

    def build(self, b: Builder, output: str, contract) -> Seeded:
        concept = rows_of(b, CONCEPT)  # [R, D]
        axis = b.ints([1])
        dot = b.op("ReduceSum", [b.op("Mul", [output, concept]), axis], keepdims=1)
        norm_e2 = b.op("ReduceSum", [b.op("Mul", [output, output]), axis], keepdims=1)
        norm_v2 = b.op("ReduceSum", [b.op("Mul", [concept, concept]), axis], keepdims=1)
        denominator = b.op("Max", [b.op("Sqrt", [b.op("Mul", [norm_e2, norm_v2])]), b.const(EPSILON)])
        cosine = b.op("Div", [dot, denominator])  # [R, 1]
        seed = b.op("Sub", [b.op("Div", [concept, denominator]),
                            b.op("Div", [b.op("Mul", [cosine, output]), b.op("Max", [norm_e2, b.const(EPSILON ** 2)])])])
        return Seeded(seed=as_seed(b, seed, CONCEPT, output), rows=CONCEPT,
                      score=b.op("Squeeze", [cosine, axis]))

    def scorer(self, row, feeds, resolved, output_row):
        concept = feeds[CONCEPT].reshape(-1, output_row.shape[0])[row].astype(np.float64)

        def cosine(outputs):
            outputs = np.asarray(outputs, np.float64)
            norms = np.linalg.norm(outputs, axis=1) * np.linalg.norm(concept)
            return (outputs @ concept / np.maximum(norms, EPSILON)).astype(np.float32)
        return cosine

    def describe(self, contract, row, resolved):
        return f"similar to {self.concept_name}"

    def decorate(self, picture, row, feeds, resolved, output_row):
        """The reference image's thumbnail in a corner, where the concept came from an image."""
        if self.thumbnail is None:
            return picture
        from onnxcam.runtime.image import inset

        return inset(picture, self.thumbnail)
