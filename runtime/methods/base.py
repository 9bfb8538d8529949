"""What a CAM method is, and the post-processing every method shares.

A method turns one layer's ``activation`` and ``gradient`` (both ``[N, C, h, w]``, one row
per image and target) — or the classifier's weight rows, or extra forward passes — into
a raw ``[N, h, w]`` map: either channel weights ``[N, C]`` (the map is ``Σ_c w_c A_c``) or
per-channel contributions ``[N, C, h, w]`` (their channel sum, or a projection).
Post-processing (ReLU, per-image min-max, resize to the input, mean over layers) is
written once, in the order pytorch-grad-cam applies it, so that maps agree with it
number for number. Each method is one file in this folder that declares what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

EPSILON_NORMALISE = 1e-7  # pytorch-grad-cam's scale_cam_image

Scorer = Callable[[np.ndarray], np.ndarray]  # model outputs [B, *O] → the target's score [B]
Forward = Callable[[np.ndarray], np.ndarray]  # a batch [B, …] → model outputs [B, *O]


@dataclass(frozen=True)
class Passes:
    """What methods that weigh channels by extra forward passes get from the runtime.

    batch ``[N, C, H, W]``; rows ``R = N·K`` (image-major); outputs: the fetched graph
    outputs by name (``[R, …]``); model_output: the model's output per row ``[R, *O]``;
    scorers: the target's score for each row; forward: the plain model on a batch of
    images; tail: the model from a layer's output on.
    """

    batch: np.ndarray
    outputs: dict[str, np.ndarray]
    model_output: np.ndarray
    scorers: list[Scorer]
    forward: Forward
    tail: Callable[[object], Forward]

    @property
    def per_image(self) -> int:
        return len(self.scorers) // len(self.batch)


@dataclass(frozen=True)
class Method:
    """A CAM method and what it needs from the explainer graph.

    weights: ``(activation, gradient, cam_weight) → [N, C]``; contributions: the same →
    ``[N, C, h, w]``; projection: ``[N, C, h, w] → [N, h, w]`` instead of the channel sum;
    graph_weights: the weights as ONNX nodes (``(builder, activation, gradient, cam_weight,
    (h, w)) → name of [N, C, 1, 1]``), so the runtime can compute the map inside the graph;
    passes: ``(Passes, layer) → [R, C]`` weights from extra forward passes.
    """

    name: str
    weights: Callable[..., np.ndarray] | None = None
    contributions: Callable[..., np.ndarray] | None = None
    projection: Callable[[np.ndarray], np.ndarray] | None = None
    graph_weights: Callable[..., str] | None = None
    passes: Callable[[Passes, object], np.ndarray] | None = None
    needs_gradient: bool = True
    needs_cam_weight: bool = False
    needs_tail: bool = False  # the model after the layer (Ablation-CAM)
    input_gradient: str | None = None  # "plain" / "guided": an input-space method (the graph's ∂score/∂input)
    aliases: tuple[str, ...] = field(default=())

    @property
    def uses_layers(self) -> bool:
        """False for saliency and guided backprop, which only need the input gradient."""
        return self.weights is not None or self.contributions is not None or self.passes is not None

    def raw_map(self, activation: np.ndarray, gradient: np.ndarray | None, cam_weight: np.ndarray | None,
                eigen_smooth: bool = False, weights: np.ndarray | None = None) -> np.ndarray:
        """The method's map of one layer before ReLU and normalisation, ``[N, h, w]``.

        eigen_smooth: reduce the per-channel contributions by their first principal
        component instead of their sum (pytorch-grad-cam's ``eigen_smooth``).
        weights: channel weights ``[N, C]`` already computed (methods with extra passes).
        """
        if weights is not None or self.weights is not None:
            weights = self.weights(activation, gradient, cam_weight) if weights is None else weights
            if not eigen_smooth:
                return weighted_sum(weights, activation)
            contributions = weights[:, :, None, None] * activation
        else:
            contributions = self.contributions(activation, gradient, cam_weight)
        if self.projection is not None:
            return self.projection(contributions)
        if eigen_smooth:
            return first_component_projection(contributions)
        return contributions.sum(axis=1).astype(np.float32, copy=False)


# -- shared post-processing ------------------------------------------------------------------
def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (class logits, Score-CAM's channel scores): ``[..., K]`` → same shape."""
    exponentials = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


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


def _centred_positions(contributions: np.ndarray):
    """Per image of ``[N, C, h, w]``: its ``h·w`` positions as rows of ``C`` features, each
    feature centred over the positions, NaNs as 0. Yields ``[h·w, C]`` arrays."""
    channels = contributions.shape[1]
    for planes in np.nan_to_num(contributions, nan=0.0):
        rows = planes.reshape(channels, -1).T
        yield rows - rows.mean(axis=0)


def first_component_projection(contributions: np.ndarray) -> np.ndarray:
    """Per image, the ``h·w`` positions (as rows of ``C`` features, centred) projected on their first
    right-singular vector; NaNs count as 0 (pytorch-grad-cam's ``get_2d_projection``). ``[N,C,h,w]`` → ``[N,h,w]``."""
    height, width = contributions.shape[2:]
    projections = []
    for rows in _centred_positions(contributions):
        _, _, vt = np.linalg.svd(rows, full_matrices=True)
        projections.append((rows @ vt[0, :]).reshape(height, width))
    return np.float32(projections)


def kernel_component_projection(contributions: np.ndarray, gamma: float | None = None) -> np.ndarray:
    """KPCA-CAM's reduction (Karmani et al., 2024, arXiv:2410.00267): per image, the centred
    ``h·w`` rows of ``C`` features, a sigmoid kernel ``tanh(γ·x·yᵀ + 1)`` (``γ = 1/C`` by
    default), double-centred, and the rows' coordinates on its top eigenvector scaled by
    ``√λ``, signed so that the largest-magnitude coordinate is positive (scikit-learn's
    ``KernelPCA(n_components=1, kernel="sigmoid")``, which pytorch-grad-cam calls).
    ``[N, C, h, w]`` → ``[N, h, w]``."""
    channels, height, width = contributions.shape[1:]
    gamma = 1.0 / channels if gamma is None else gamma
    projections = []
    for rows in _centred_positions(contributions):
        kernel = np.tanh(gamma * (rows @ rows.T) + 1.0)
        kernel = kernel - kernel.mean(axis=0) - kernel.mean(axis=1, keepdims=True) + kernel.mean()
        eigenvalues, eigenvectors = np.linalg.eigh(kernel)
        vector = eigenvectors[:, -1] * np.sign(eigenvectors[np.abs(eigenvectors[:, -1]).argmax(), -1])
        projections.append((vector * np.sqrt(max(eigenvalues[-1], 0.0))).reshape(height, width))
    return np.float32(projections)


def saliency_map(input_gradient: np.ndarray) -> np.ndarray:
    """Vanilla saliency (Simonyan et al., 2014, arXiv:1312.6034): ``max_c |∂y/∂x_c|`` per pixel.
    ``[N, C, H, W]`` → ``[N, H, W]``."""
    return np.abs(input_gradient).max(axis=1).astype(np.float32, copy=False)


def guided_gradcam(cam_maps: np.ndarray, guided_gradient: np.ndarray) -> np.ndarray:
    """Guided Grad-CAM (Selvaraju et al., 2017): the guided-backprop gradient (Springenberg et
    al., 2015, arXiv:1412.6806) times the Grad-CAM map. ``[N, H, W]``, ``[N, C, H, W]`` → ``[N, C, H, W]``."""
    return (cam_maps[:, None] * guided_gradient).astype(np.float32, copy=False)
