"""Bilinear and nearest interpolation as two matrix products, for export.

torch traces ``F.interpolate`` (bilinear) into index arithmetic and its backward into
``index_put`` scatters over every output element: exported to ONNX, the backward of a
segmenter's final upsampling (21 classes at 224×224) cost 4× the model's plain forward on a
2-core CPU. Interpolation is linear and separable, so ``y = A_h · x · A_wᵀ`` with constant
``[out, in]`` matrices; its backward is ``A_hᵀ · g · A_w``, two more matrix products. While
an explainer is traced, :func:`as_matrix_products` makes ``F.interpolate`` do exactly that
(same formulas as ATen's, checked against ``F.interpolate`` by ``tests/test_export_rules.py``).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

MODES = ("bilinear", "nearest")


def matrix(source: int, target: int, mode: str, align_corners: bool | None = None,
           scale: float | None = None) -> np.ndarray:
    """``[target, source]`` weights of 1-D interpolation as ATen computes it (``scale``: the
    user's scale factor, which ATen uses instead of ``source / target`` when given)."""
    ratio = (1.0 / scale) if scale else source / target
    weights = np.zeros((target, source), np.float64)
    positions = np.arange(target, dtype=np.float64)
    if mode == "nearest":
        index = np.minimum(np.floor(positions * ratio).astype(int), source - 1)
        weights[np.arange(target), index] = 1.0
        return weights.astype(np.float32)
    if align_corners:
        source_positions = positions * ((source - 1) / (target - 1) if target > 1 else 0.0)
    else:
        source_positions = np.maximum((positions + 0.5) * ratio - 0.5, 0.0)
    low = np.minimum(np.floor(source_positions).astype(int), source - 1)
    high = np.minimum(low + 1, source - 1)
    fraction = source_positions - low
    weights[np.arange(target), low] += 1.0 - fraction
    weights[np.arange(target), high] += fraction
    return weights.astype(np.float32)


def _sizes(input: torch.Tensor, size, scale_factor) -> tuple[list[int], list[float | None]]:
    spatial = [int(s) for s in input.shape[2:]]
    if size is not None:
        size = [size] * len(spatial) if isinstance(size, int) else list(size)
        return [int(s) for s in size], [None] * len(spatial)
    factors = [scale_factor] * len(spatial) if isinstance(scale_factor, (int, float)) else list(scale_factor)
    return [int(math.floor(s * f)) for s, f in zip(spatial, factors)], [float(f) for f in factors]


@contextlib.contextmanager
def as_matrix_products():
    """Within the block, 4-D bilinear / nearest ``F.interpolate`` calls become two matrix products."""
    original = F.interpolate

    def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                    recompute_scale_factor=None, antialias=False):
        if mode not in MODES or input.dim() != 4 or antialias or (size is None) == (scale_factor is None):
            return original(input, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)
        (height, width), scales = _sizes(input, size, scale_factor)
        if recompute_scale_factor:
            scales = [None, None]
        rows = torch.from_numpy(matrix(int(input.shape[2]), height, mode, align_corners, scales[0])).to(input.dtype)
        columns = torch.from_numpy(matrix(int(input.shape[3]), width, mode, align_corners, scales[1])).to(input.dtype)
        return torch.matmul(torch.matmul(rows, input), columns.transpose(0, 1))

    F.interpolate = interpolate
    try:
        yield
    finally:
        F.interpolate = original
