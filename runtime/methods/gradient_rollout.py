"""Gradient-weighted attention rollout (Chefer, Gur & Wolf, ICCV 2021, arXiv:2103.15679, eqs. 5–6
for self-attention).

Per block: ``Ā = E_h[(∇A ⊙ A)⁺]``, the attention probabilities weighted by the gradient of the
target's score w.r.t. them, negative parts clipped per head, averaged over heads; then
``R ← R + Ā · R`` from ``R = I``, block after block. The map is the class token's row over the
patch tokens. The gradient comes from the target's seed, so every target kind has its map.

``query="output"`` reads, instead of the class token's row, the rows of the tokens the score
reads, each weighted by its share of the last block's ``Σ_hj (∇A ⊙ A)⁺``: the same map for a
model that classifies from the class token (only its row of the last block has a gradient),
and the right one for a head that reads other tokens (a region, the mean of all patches).
"""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.contract import InputError
from onnxcam.runtime.methods.base import Method, class_token_row

QUERIES = ("cls", "output")


def rollout(probabilities: list[np.ndarray], gradients: list[np.ndarray], prefix: int, query: str = "cls") -> np.ndarray:
    """``[R, heads, T, T]`` per block (probabilities and their gradients) → ``[R, T - prefix]`` (float64)."""
    if query not in QUERIES:
        raise InputError(f"gradient-rollout query {query!r} is unknown; choose {' or '.join(QUERIES)}")
    count = probabilities[0].shape[-1]
    relevance = np.broadcast_to(np.eye(count), (len(probabilities[0]), count, count))
    weighted = None
    for block, gradient in zip(probabilities, gradients):
        weighted = np.maximum(gradient.astype(np.float64) * block, 0).mean(axis=1)
        relevance = relevance + weighted @ relevance
    if query == "cls":
        return class_token_row(relevance, prefix)
    reads = weighted.sum(axis=2)  # [R, T]: how much each query token of the last block matters
    reads = reads / np.maximum(reads.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    return np.einsum("rt,rtk->rk", reads, relevance)[:, prefix:]


METHOD = Method("gradient-rollout", attention=rollout, options={"query": "cls"},
                aliases=("gradrollout", "transformer-attribution"))
