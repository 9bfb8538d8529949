"""CAM methods: one small numpy function per method, plus the shared post-processing.

A method turns one layer's ``activation`` and ``gradient`` (both ``[N, C, h, w]``)
— or, for CAM, the classifier's weight rows — into channel weights ``[N, C]``;
the map is the weighted sum of activation channels. Post-processing (ReLU,
per-image min-max, resize to the input, mean over layers) is written once, in the
order pytorch-grad-cam applies it, so that maps agree with it number for number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

EPSILON_NORMALISE = 1e-7  # pytorch-grad-cam's scale_cam_image
EPSILON_GRADCAM_PLUS_PLUS = 1e-6


def gradcam_weights(activation: np.ndarray, gradient: np.ndarray, cam_weight: np.ndarray | None = None) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., 2017, arXiv:1610.02391): ``w_c = mean_ij ∂y/∂A_cij``. → ``[N, C]``."""
    return gradient.mean(axis=(2, 3))


def gradcam_plus_plus_weights(activation: np.ndarray, gradient: np.ndarray,
                              cam_weight: np.ndarray | None = None) -> np.ndarray:
    """Grad-CAM++ (Chattopadhyay et al., 2018, arXiv:1710.11063), eq. 19 with exp(S) ≈ S:

    ``α_cij = g² / (2 g² + Σ_ab A_cab · g³)``, ``w_c = Σ_ij α_cij · relu(g_cij)``
    (α set to 0 where g = 0). → ``[N, C]``.
    """
    grad_2 = gradient * gradient
    grad_3 = grad_2 * gradient
    activation_sum = activation.sum(axis=(2, 3), keepdims=True)
    alpha = grad_2 / (2 * grad_2 + activation_sum * grad_3 + EPSILON_GRADCAM_PLUS_PLUS)
    alpha = np.where(gradient != 0, alpha, 0)
    return (np.maximum(gradient, 0) * alpha).sum(axis=(2, 3))


def cam_weights(activation: np.ndarray, gradient: np.ndarray | None, cam_weight: np.ndarray | None) -> np.ndarray:
    """CAM (Zhou et al., 2016, arXiv:1512.04150): ``w_c = W[target, c]`` of a GAP + linear head. → ``[N, C]``."""
    if cam_weight is None:
        raise ValueError("CAM needs the classifier's weight rows, which this graph does not carry")
    return cam_weight


@dataclass(frozen=True)
class Method:
    """A CAM method: its channel-weight function and which graph outputs it reads."""

    name: str
    weights: Callable[..., np.ndarray]
    needs_gradient: bool = True
    needs_cam_weight: bool = False


METHODS: dict[str, Method] = {
    "cam": Method("cam", cam_weights, needs_gradient=False, needs_cam_weight=True),
    "gradcam": Method("gradcam", gradcam_weights),
    "gradcam++": Method("gradcam++", gradcam_plus_plus_weights),
}


def get_method(name: str) -> Method:
    """The registered method called ``name`` (case-insensitive; ``gradcampp`` = ``gradcam++``)."""
    key = name.lower().replace("_", "").replace("-", "")
    key = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++"}.get(key, key)
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[key]


def weighted_sum(weights: np.ndarray, activation: np.ndarray) -> np.ndarray:
    """``Σ_c w_c · A_c``: ``[N, C]`` × ``[N, C, h, w]`` → ``[N, h, w]``."""
    return np.einsum("nc,nchw->nhw", weights, activation, optimize=True).astype(np.float32, copy=False)


def normalise(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1]: ``(m - min) / (max - min + 1e-7)``. ``[N, h, w]`` → same."""
    shifted = maps - maps.min(axis=(1, 2), keepdims=True)
    return (shifted / (EPSILON_NORMALISE + shifted.max(axis=(1, 2), keepdims=True))).astype(np.float32, copy=False)


def resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of every map to ``size`` = ``(H, W)``, in batches of ≤ 512 channels per
    OpenCV call (the same interpolation as one ``cv2.resize`` per map). ``[N, h, w]`` → ``[N, H, W]``."""
    height, width = size
    if maps.shape[1:] == (height, width):
        return maps.astype(np.float32, copy=False)
    chunks = []
    for start in range(0, maps.shape[0], 512):
        planes = np.ascontiguousarray(maps[start:start + 512].transpose(1, 2, 0), dtype=np.float32)
        resized = cv2.resize(planes, (width, height), interpolation=cv2.INTER_LINEAR)
        chunks.append(resized.reshape(height, width, -1).transpose(2, 0, 1))
    return np.ascontiguousarray(np.concatenate(chunks, axis=0))


def layer_map(raw_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One layer's contribution: ReLU, min-max, resize to the input. ``[N,h,w]`` → ``[N,H,W]``."""
    return resize(normalise(np.maximum(raw_map, 0)), size)


def fuse_layers(layer_maps: list[np.ndarray]) -> np.ndarray:
    """Mean over layers of ``[N, H, W]`` maps, then min-max again (pytorch-grad-cam's aggregation)."""
    stacked = np.maximum(np.stack(layer_maps, axis=1), 0)
    return normalise(stacked.mean(axis=1))
