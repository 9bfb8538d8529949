"""Laying a token sequence ``[N, T, C]`` out on the image's patch grid (torch-free, shared by export and augment)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from onnxcam.runtime.contract import Tokens

MAX_PREFIX = 16  # leading non-patch tokens a layout may have: class, distillation, register tokens


def token_layout(tokens: int, grids: Sequence[tuple[int, int]] = ()) -> Tokens:
    """How ``tokens`` tokens lie on the image: ``prefix`` leading tokens, then an ``h × w`` grid, row-major.

    grids: the ``(h, w)`` of the model's 2-D feature maps in the order it makes them (its patch
    embedding's output among them, at the exported input size). The last grid with
    ``0 ≤ tokens - h·w ≤ MAX_PREFIX`` is taken: ViT's 14×14 at 224 px and 24×24 at 384, a
    non-square grid, DeiT's two leading tokens, register tokens. Without such a grid (a model that
    embeds patches without a convolution), the tokens must be 1, 0 or 2 leading tokens and a square.
    """
    for height, width in reversed(list(grids)):
        if 0 <= tokens - height * width <= MAX_PREFIX and height * width > 0:
            return Tokens(tokens - height * width, (int(height), int(width)))
    for prefix in (1, 0, 2):
        side = math.isqrt(tokens - prefix) if tokens > prefix else 0
        if side * side == tokens - prefix and side > 0:
            return Tokens(prefix, (side, side))
    raise ValueError(
        f"cannot lay {tokens} tokens out on the image: no feature map of the model has a grid of "
        f"{tokens - MAX_PREFIX}..{tokens} patches, and they are not 0, 1 or 2 leading tokens and a square; "
        "pass reshape='none' and a layer with a spatial output"
    )


def token_grid(tokens: int, grids: Sequence[tuple[int, int]] = ()) -> tuple[int, int, int]:
    """``(prefix, h, w)`` of ``token_layout``."""
    layout = token_layout(tokens, grids)
    return layout.prefix, layout.grid[0], layout.grid[1]
