"""What a CAM method is, and the post-processing every method shares.

A method turns one layer's ``activation`` and ``gradient`` (both ``[N, C, h, w]``, one row
per image and target) — or the classifier's weight rows, or extra forward passes — into
a raw ``[N, h, w]`` map: either channel weights ``[N, C]`` (the map is ``Σ_c w_c A_c``) or
per-channel contributions ``[N, C, h, w]`` (their channel sum, or a projection).
Post-processing (ReLU, per-image min-max, resize to the input, mean over layers) is
written once, in the order pytorch-grad-cam applies it, so that maps agree with it
number for number. Each method is one file in this folder that declares what it needs.

Non-finite numbers never come back as a map: a NaN or ±Inf in what a method reads (the
input batch, a layer's activation or gradient, the model's scores in extra passes) is an
``InputError`` naming the tensor and the count (``check_finite``); finite values whose
maths overflows float32 (beyond ±3.4e38 anywhere in the formula) are computed again in
float64 (``Method.raw_map``), where pytorch-grad-cam returns NaN or a silently wrong map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from onnxcam.runtime.contract import InputError

EPSILON_NORMALISE = 1e-7  # pytorch-grad-cam's scale_cam_image
FLOAT32_MAX = float(np.finfo(np.float32).max)
# what to do when a tensor the model computed is not finite
MODEL_HINT = ("the model computed them from this input (an overflow or NaN inside the network, not in onnxcam's "
              "maths): check the input's preprocessing and scale, or explain another layer")

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
    graph_contributions: the contributions as ONNX nodes (``(builder, activation, gradient) →
    name of [N, C, h, w]``), the same for methods that sum contributions;
    passes: ``(Passes, layer) → [R, C]`` weights from extra forward passes.
    """

    name: str
    weights: Callable[..., np.ndarray] | None = None
    contributions: Callable[..., np.ndarray] | None = None
    projection: Callable[[np.ndarray], np.ndarray] | None = None
    graph_weights: Callable[..., str] | None = None
    graph_contributions: Callable[..., str] | None = None
    passes: Callable[[Passes, object], np.ndarray] | None = None
    needs_gradient: bool = True
    needs_cam_weight: bool = False
    needs_tail: bool = False  # the model after the layer (Ablation-CAM)
    input_gradient: str | None = None  # "plain" / "guided": an input-space method (the graph's ∂score/∂input)
    aliases: tuple[str, ...] = field(default=())
    # a transformer method over every block's attention (rollout): ``(probabilities, gradients or None,
    # prefix, **options) → [R, T - prefix]``, the class token's relevance to each patch token; the
    # probabilities and gradients are ``[R, heads, T, T]`` per block, in the order the model runs them
    attention: Callable[..., np.ndarray] | None = None
    options: dict[str, object] = field(default_factory=dict)  # the method's options and their defaults

    def check_options(self, options: dict | None) -> dict:
        """The method's options with ``options`` over its defaults; an ``InputError`` names an unknown one."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise InputError(f"method {self.name!r} has no option {unknown[0]!r}; its options: {known}")
        return {**self.options, **options}

    @property
    def in_graph(self) -> bool:
        """Whether the method can be written as ONNX nodes (``graph_methods.append_method``): its
        weights or its contributions have a graph form, and the channel sum is its reduction."""
        return self.graph_weights is not None or (self.graph_contributions is not None and self.projection is None)

    @property
    def uses_layers(self) -> bool:
        """False for saliency and guided backprop, which only need the input gradient."""
        return self.weights is not None or self.contributions is not None or self.passes is not None

    def raw_map(self, activation: np.ndarray, gradient: np.ndarray | None, cam_weight: np.ndarray | None,
                eigen_smooth: bool = False, weights: np.ndarray | None = None, layer: str | None = None) -> np.ndarray:
        """The method's map of one layer before ReLU and normalisation, ``[N, h, w]``, float32
        (float64 where its values exceed float32's range).

        eigen_smooth: reduce the per-channel contributions by their first principal
        component instead of their sum (pytorch-grad-cam's ``eigen_smooth``).
        weights: channel weights ``[N, C]`` already computed (methods with extra passes).
        layer: the layer's name, for error messages.

        A NaN or ±Inf in the arrays the method reads is an ``InputError`` (``check_finite``).
        The formula runs in float32, as pytorch-grad-cam runs it; where float32 overflows
        anywhere in it (e.g. Grad-CAM++'s ``g³`` for ``|g| > 7e12``, or ``Σ w·A`` beyond
        3.4e38), it runs again in float64 instead of returning NaN or a map of zeros.
        """
        where = f"layer {layer!r}" if layer else "the layer"
        inputs = {"activation": activation,
                  "gradient": gradient if self.needs_gradient else None,
                  "classifier weight row (cam_weight)": cam_weight if self.needs_cam_weight else None,
                  "channel weights": weights}
        for role, array in inputs.items():
            if array is not None:
                check_finite(f"{where}: its {role}", array, MODEL_HINT)
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            try:
                raw = self._raw_map(activation, gradient, cam_weight, eigen_smooth, weights)
            except (FloatingPointError, np.linalg.LinAlgError):
                raw = None
        if raw is not None and all_finite(raw):
            return raw.astype(np.float32, copy=False)
        wide = [None if a is None else np.asarray(a, np.float64) for a in (activation, gradient, cam_weight, weights)]
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            try:
                raw = self._raw_map(wide[0], wide[1], wide[2], eigen_smooth, wide[3])
            except (FloatingPointError, np.linalg.LinAlgError) as error:
                raise InputError(f"{where}: {self.name}'s maths is not finite on its finite activation"
                                 f"{' and gradient' if self.needs_gradient else ''} even in float64 ({error}); "
                                 "use another method for this layer") from None
        if not all_finite(raw):  # not expected: float64 holds any product of float32 values
            raise InputError(f"{where}: {self.name}'s map is not finite even in float64; use another method")
        return raw.astype(np.float32) if np.abs(raw).max() <= FLOAT32_MAX else raw

    def _raw_map(self, activation, gradient, cam_weight, eigen_smooth, weights) -> np.ndarray:
        """``raw_map``'s formula in the inputs' precision (float32, or float64 when given float64)."""
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
        return contributions.sum(axis=1).astype(_precision(contributions), copy=False)


# -- finiteness ------------------------------------------------------------------------------
def all_finite(array: np.ndarray) -> bool:
    """Whether every value of ``array`` is finite (no NaN, no ±Inf)."""
    return bool(np.isfinite(array).all())


def check_finite(what: str, array: np.ndarray, hint: str, rows: str = "row") -> np.ndarray:
    """``array`` unchanged if every value is finite; else an ``InputError`` of one line:
    ``what``, how many values are NaN and ±Inf out of how many, the first rows (axis 0,
    called ``rows``) that hold them, and ``hint`` (what to do)."""
    array = np.asarray(array)
    finite = np.isfinite(array)
    if finite.all():
        return array
    nan = int(np.isnan(array).sum())
    infinite = int(array.size - finite.sum()) - nan
    bad_rows = np.flatnonzero(~finite.reshape(len(array), -1).all(axis=1)) if array.ndim else np.zeros(0, int)
    shown = ", ".join(map(str, bad_rows[:5])) + (", …" if len(bad_rows) > 5 else "")
    at = f" in {rows}(s) {shown}" if array.ndim else ""
    raise InputError(f"{what} has {nan} NaN and {infinite} infinite value(s) out of {array.size}{at}; {hint}")


def check_input(batch: np.ndarray) -> np.ndarray:
    """``batch`` unchanged if finite; else an ``InputError`` saying how many values of which images
    are NaN/±Inf (``Explainer.check_batch``)."""
    return check_finite("input batch", batch, "replace or drop them before explaining (e.g. np.nan_to_num), "
                        "or fix the preprocessing that made them", rows="image")


def check_output(output: np.ndarray) -> np.ndarray:
    """The model's output per image ``[N, *O]`` unchanged if finite; else an ``InputError``: a map
    explaining a NaN score (its "top class" the argmax of NaNs) is finite but means nothing."""
    return check_finite("the model's output", output, "the model overflows or makes NaN on this input: check the "
                        "input's preprocessing and scale", rows="image")


def _precision(*arrays: np.ndarray):
    """float64 if any of ``arrays`` is float64 (``raw_map``'s second try), else float32."""
    return np.result_type(*(a.dtype for a in arrays), np.float32)


# -- shared post-processing ------------------------------------------------------------------
def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (class logits, Score-CAM's channel scores): ``[..., K]`` → same shape."""
    exponentials = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def weighted_sum(weights: np.ndarray, activation: np.ndarray) -> np.ndarray:
    """``Σ_c w_c · A_c``: ``[N, C]`` × ``[N, C, h, w]`` → ``[N, h, w]``."""
    return np.einsum("nc,nchw->nhw", weights, activation, optimize=True).astype(_precision(weights, activation),
                                                                              copy=False)


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
    feature centred over the positions, NaNs as 0. Yields ``[h·w, C]`` arrays. A ±Inf (or an
    overflow in the centring) is a ``FloatingPointError``, never handed to LAPACK, whose SVD
    and eigensolvers may not return on non-finite input (``Method.raw_map`` then retries in
    float64, or names the tensor)."""
    channels = contributions.shape[1]
    for planes in np.nan_to_num(contributions, nan=0.0, posinf=np.inf, neginf=-np.inf):
        rows = planes.reshape(channels, -1).T
        centred = rows - rows.mean(axis=0)
        if not np.isfinite(centred).all():
            raise FloatingPointError("non-finite values to project on a principal component")
        yield centred


def first_component_projection(contributions: np.ndarray) -> np.ndarray:
    """Per image, the ``h·w`` positions (as rows of ``C`` features, centred) projected on their first
    right-singular vector; NaNs count as 0 (pytorch-grad-cam's ``get_2d_projection``). ``[N,C,h,w]`` → ``[N,h,w]``."""
    height, width = contributions.shape[2:]
    projections = []
    for rows in _centred_positions(contributions):
        _, _, vt = np.linalg.svd(rows, full_matrices=True)
        projections.append((rows @ vt[0, :]).reshape(height, width))
    return np.asarray(projections, _precision(contributions))


def kernel_component_projection(contributions: np.ndarray, gamma: float | None = None) -> np.ndarray:
    """KPCA-CAM's reduction (Karmani et al., 2024, arXiv:2410.00267): per image, the centred
    ``h·w`` rows of ``C`` features, a sigmoid kernel ``tanh(γ·x·yᵀ + 1)`` (``γ = 1/C`` by
    default), double-centred, and the rows' coordinates on its top eigenvector scaled by
    ``√λ``, signed so that the largest-magnitude coordinate is positive (scikit-learn's
    ``KernelPCA(n_components=1, kernel="sigmoid")``, which pytorch-grad-cam calls).
    ``[N, C, h, w]`` → ``[N, h, w]``. The kernel and its eigenvector are computed in float64: in float32 the
    eigenvector strays (measured, VGG-16 ``features.22``: 4.7e-5 from the float64 truth, where scikit-learn's
    float32 ARPACK solve lands 1.1e-5 away; in float64, onnxcam's error is the activations' rounding alone)."""
    channels, height, width = contributions.shape[1:]
    gamma = 1.0 / channels if gamma is None else gamma
    projections = []
    for rows in _centred_positions(contributions):
        rows = rows.astype(np.float64)
        kernel = np.tanh(gamma * (rows @ rows.T) + 1.0)
        kernel = kernel - kernel.mean(axis=0) - kernel.mean(axis=1, keepdims=True) + kernel.mean()
        eigenvalues, eigenvectors = np.linalg.eigh(kernel)
        vector = eigenvectors[:, -1] * np.sign(eigenvectors[np.abs(eigenvectors[:, -1]).argmax(), -1])
        projections.append((vector * np.sqrt(max(eigenvalues[-1], 0.0))).reshape(height, width))
    return np.asarray(projections, _precision(contributions))


def class_token_row(relevance: np.ndarray, prefix: int) -> np.ndarray:
    """Row 0 (the class token as query) over the patch tokens: ``[R, T, T]`` → ``[R, T - prefix]``."""
    return relevance[:, 0, prefix:]


def token_map(row: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Patch-token values on the image's grid, row-major: ``[R, h·w]`` → ``[R, h, w]``."""
    return row.reshape(row.shape[0], grid[0], grid[1])


def saliency_map(input_gradient: np.ndarray) -> np.ndarray:
    """Vanilla saliency (Simonyan et al., 2014, arXiv:1312.6034): ``max_c |∂y/∂x_c|`` per pixel.
    ``[N, C, H, W]`` → ``[N, H, W]``. A NaN or ±Inf in it is an ``InputError``."""
    check_finite("the gradient w.r.t. the input", input_gradient, MODEL_HINT)
    return np.abs(input_gradient).max(axis=1).astype(np.float32, copy=False)


def guided_gradcam(cam_maps: np.ndarray, guided_gradient: np.ndarray) -> np.ndarray:
    """Guided Grad-CAM (Selvaraju et al., 2017): the guided-backprop gradient (Springenberg et
    al., 2015, arXiv:1412.6806) times the Grad-CAM map. ``[N, H, W]``, ``[N, C, H, W]`` → ``[N, C, H, W]``.
    A NaN or ±Inf in the guided gradient is an ``InputError``."""
    check_finite("the guided-backprop gradient w.r.t. the input", guided_gradient, MODEL_HINT)
    return (cam_maps[:, None] * guided_gradient).astype(np.float32, copy=False)
