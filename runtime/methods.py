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
EPSILON_XGRADCAM = 1e-7


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


def xgradcam_weights(activation: np.ndarray, gradient: np.ndarray, cam_weight: np.ndarray | None = None) -> np.ndarray:
    """XGradCAM (Fu et al., 2020, arXiv:2008.02312): ``w_c = Σ_ij g_cij · A_cij / (Σ_ij A_cij + ε)``. → ``[N, C]``."""
    activation_sum = activation.sum(axis=(2, 3), keepdims=True)
    return (gradient * activation / (activation_sum + EPSILON_XGRADCAM)).sum(axis=(2, 3))


def hirescam_contributions(activation: np.ndarray, gradient: np.ndarray, cam_weight=None) -> np.ndarray:
    """HiResCAM (Draelos & Carin, 2020, arXiv:2011.08891): ``g ⊙ A``, summed over channels. → ``[N, C, h, w]``."""
    return gradient * activation


def gradcam_elementwise_contributions(activation: np.ndarray, gradient: np.ndarray, cam_weight=None) -> np.ndarray:
    """Grad-CAM element-wise (pytorch-grad-cam's variant of HiResCAM): ``relu(g ⊙ A)``. → ``[N, C, h, w]``."""
    return np.maximum(gradient * activation, 0)


def layercam_contributions(activation: np.ndarray, gradient: np.ndarray, cam_weight=None) -> np.ndarray:
    """LayerCAM (Jiang et al., 2021, IEEE TIP 30): ``relu(g) ⊙ A``. → ``[N, C, h, w]``."""
    return np.maximum(gradient, 0) * activation


def eigencam_contributions(activation: np.ndarray, gradient=None, cam_weight=None) -> np.ndarray:
    """EigenCAM (Muhammad & Yeasin, 2020, arXiv:2008.00299): the activations themselves,
    projected on their first principal component (no gradient, no class). → ``[N, C, h, w]``."""
    return activation


def eigengradcam_contributions(activation: np.ndarray, gradient: np.ndarray, cam_weight=None) -> np.ndarray:
    """EigenGradCAM (pytorch-grad-cam): ``g ⊙ A`` projected on its first principal component. → ``[N, C, h, w]``."""
    return gradient * activation


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


@dataclass(frozen=True)
class Method:
    """A CAM method: how it turns one layer's outputs into a raw ``[N, h, w]`` map.

    Either ``weights`` (channel weights ``[N, C]``; the map is ``Σ_c w_c A_c``) or
    ``contributions`` (``[N, C, h, w]``; the map is their channel sum, or what
    ``projection`` reduces them to, e.g. their first principal component).
    """

    name: str
    weights: Callable[..., np.ndarray] | None = None
    contributions: Callable[..., np.ndarray] | None = None
    projection: Callable[[np.ndarray], np.ndarray] | None = None
    needs_gradient: bool = True
    needs_cam_weight: bool = False
    passes: str | None = None  # "score" / "ablation": weights from extra forward passes (perturbation.py)
    input_gradient: str | None = None  # "plain" / "guided": an input-space method (the graph's ∂score/∂input)

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


METHODS: dict[str, Method] = {
    "cam": Method("cam", weights=cam_weights, needs_gradient=False, needs_cam_weight=True),
    "gradcam": Method("gradcam", weights=gradcam_weights),
    "gradcam++": Method("gradcam++", weights=gradcam_plus_plus_weights),
    "xgradcam": Method("xgradcam", weights=xgradcam_weights),
    "hirescam": Method("hirescam", contributions=hirescam_contributions),
    "gradcam-elementwise": Method("gradcam-elementwise", contributions=gradcam_elementwise_contributions),
    "layercam": Method("layercam", contributions=layercam_contributions),
    "eigencam": Method("eigencam", contributions=eigencam_contributions, projection=first_component_projection,
                       needs_gradient=False),
    "eigengradcam": Method("eigengradcam", contributions=eigengradcam_contributions,
                           projection=first_component_projection),
    "scorecam": Method("scorecam", needs_gradient=False, passes="score"),
    "ablationcam": Method("ablationcam", needs_gradient=False, passes="ablation"),
    "saliency": Method("saliency", needs_gradient=False, input_gradient="plain"),
    "guided-backprop": Method("guided-backprop", needs_gradient=False, input_gradient="guided"),
    "guided-gradcam": Method("guided-gradcam", weights=gradcam_weights, input_gradient="guided"),
    "kpca-cam": Method("kpca-cam", contributions=eigencam_contributions, projection=kernel_component_projection,
                       needs_gradient=False),
}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


# spelling (case, "-" and "_" ignored) → canonical name
_LOOKUP = {_key(canonical): canonical for canonical in METHODS} | {"gradcampp": "gradcam++",
                                                                   "gradcamplusplus": "gradcam++"}


def get_method(name: str) -> Method:
    """The registered method called ``name`` (case, ``-`` and ``_`` ignored; ``gradcampp`` = ``gradcam++``)."""
    canonical = _LOOKUP.get(_key(name))
    if canonical is None:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[canonical]


def saliency_map(input_gradient: np.ndarray) -> np.ndarray:
    """Vanilla saliency (Simonyan et al., 2014, arXiv:1312.6034): ``max_c |∂y/∂x_c|`` per pixel.
    ``[N, C, H, W]`` → ``[N, H, W]``."""
    return np.abs(input_gradient).max(axis=1).astype(np.float32, copy=False)


def guided_gradcam(cam_maps: np.ndarray, guided_gradient: np.ndarray) -> np.ndarray:
    """Guided Grad-CAM (Selvaraju et al., 2017): the guided-backprop gradient (Springenberg et
    al., 2015, arXiv:1412.6806) times the Grad-CAM map. ``[N, H, W]``, ``[N, C, H, W]`` → ``[N, C, H, W]``."""
    return (cam_maps[:, None] * guided_gradient).astype(np.float32, copy=False)


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
