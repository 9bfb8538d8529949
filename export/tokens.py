"""Laying a token sequence ``[N, T, C]`` out on a square grid (torch-free, shared by export and augment)."""

from __future__ import annotations

import math


def token_grid(tokens: int) -> tuple[int, int, int]:
    """``(prefix, h, w)``: how many leading tokens (class/distillation) to drop and the square grid."""
    for prefix in (1, 0, 2):
        side = math.isqrt(tokens - prefix) if tokens > prefix else 0
        if side * side == tokens - prefix and side > 0:
            return prefix, side, side
    raise ValueError(
        f"cannot lay {tokens} tokens out on a square grid (after dropping 0, 1 or 2 leading tokens); "
        "pass reshape='none' and a layer with a spatial output"
    )
