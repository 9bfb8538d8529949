"""Property tests (hypothesis) of every method's maths, on activations and gradients ``[N, C, h, w]``
that are random, zero, tiny (1e-30), huge (1e30, near float32's max), mixed-sign, or any finite
float32 at all (subnormals and extremes mixed).

What must hold: every map is finite, float32, in [0, 1] and ``[N, H, W]``; a NaN or ±Inf in
what a method reads is an ``InputError`` naming it; Grad-CAM's map does not change when the
gradient is scaled; each method agrees with pytorch-grad-cam's formula transcribed here in
float64 and with pytorch-grad-cam's own functions; constructed cases put the map's maximum where
the formula says; Ablation-CAM's weights at a target score of 0 are defined and finite.

Tolerances are not fitted to one machine: each is a bound on float32 rounding computed for the
example at hand (``U`` per operation, the count of operations, the magnitudes summed — the
textbook forward-error bound, first order), taken through the min-max normalisation; an
example too ill-conditioned for the bound to say anything (float32 cannot hold its answer)
gets an infinite tolerance and is counted in hypothesis's statistics (``event``). ``FLOOR``,
relative to the map's size, covers the rounding of the normalised map itself and of the resize
(measured: at most 1.3e-7 over 3,000 random maps of sizes 1–16; 1e-6 leaves a margin of 7×).
"""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from pytorch_grad_cam import (EigenCAM, EigenGradCAM, GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM,
                              LayerCAM, XGradCAM)
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from onnxcam.runtime.contract import InputError
from onnxcam.runtime.methods import (METHODS, Passes, fuse_layers, guided_gradcam_maps, layer_map,
                                     normalise, saliency_map)
from onnxcam.runtime.methods import ablationcam, gradcam, gradcampp, xgradcam
from onnxcam.runtime.methods.base import check_input, check_output

PROPERTIES = settings(max_examples=50, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

U = 2.0 ** -24  # float32's unit roundoff
TINY = 2.0 ** -149  # float32's smallest subnormal: the absolute error of an underflow
F32_MAX = float(np.finfo(np.float32).max)
E = 1e-7  # pytorch-grad-cam's constants, written out: a change to onnxcam's must show
EPS_GRADCAMPP, EPS_XGRADCAM, EPS_SCORECAM = 1e-6, 1e-7, 1e-8
FLOOR = 1e-6  # relative to a map's size: its own rounding and the resize's (measured ≤ 1.3e-7)

LAYER_METHODS = [name for name, method in METHODS.items() if method.weights or method.contributions]
KINDS = ("random", "zero", "tiny", "huge", "near-max", "mixed-sign", "non-negative", "any-float32")


# -- strategies ------------------------------------------------------------------------------
@st.composite
def tensors(draw, shape, kinds=KINDS):
    """A float32 array of ``shape`` of one kind from ``kinds``."""
    kind = draw(st.sampled_from(kinds))
    event(f"kind: {kind}")
    if kind == "any-float32":
        return draw(hnp.arrays(np.float32, shape, elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    normal = rng.standard_normal(shape)
    values = {
        "random": lambda: normal,
        "zero": lambda: np.zeros(shape),
        "tiny": lambda: normal * 1e-30,
        "huge": lambda: normal * 1e30,
        "near-max": lambda: np.where(normal < 0, -1, 1) * rng.uniform(0.5, 1.0, shape) * F32_MAX,
        "mixed-sign": lambda: np.where(normal < 0, -1, 1) * 10.0 ** rng.uniform(-30, 30, shape),
        "non-negative": lambda: np.abs(normal),
    }[kind]()
    return np.float32(values)


@st.composite
def layers(draw, kinds=KINDS, channels=(1, 5)):
    """``(activation, gradient, cam_weight, (H, W))``: a layer's tensors, each of its own kind."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(*channels)), draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    activation = draw(tensors(shape, kinds))
    gradient = draw(tensors(shape, kinds))
    cam_weight = draw(tensors(shape[:2], kinds))
    return activation, gradient, cam_weight, (draw(st.integers(1, 16)), draw(st.integers(1, 16)))


def assert_unit_maps(maps: np.ndarray, shape: tuple[int, ...]) -> None:
    assert maps.shape == shape and maps.dtype == np.float32
    assert np.isfinite(maps).all(), "a map holds NaN or Inf"
    assert maps.min() >= 0 and maps.max() <= 1


# -- float64 transcriptions of pytorch-grad-cam's formulas, with float32 error bounds ---------
# Each returns (raw, bound): the raw map [N, h, w] in float64 from the float32 inputs, and a bound
# [N, h, w] on how far a computation of it in precision ``p`` (float32; float64 where raw_map's
# float32 overflowed) may be (first order, per the module docstring).
FLOAT32 = SimpleNamespace(u=U, tiny=TINY)
FLOAT64 = SimpleNamespace(u=2.0 ** -53, tiny=2.0 ** -1074)


def precision_used(name, activation, gradient, cam_weight) -> SimpleNamespace:
    """The precision ``raw_map`` computes in: float32, or float64 where float32 overflows (its second try)."""
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        try:
            raw = METHODS[name]._raw_map(activation, gradient, cam_weight, False, None)
        except (FloatingPointError, np.linalg.LinAlgError):
            return FLOAT64
    return FLOAT32 if np.isfinite(raw).all() else FLOAT64


def _weighted(weights, weight_error, activation, p):
    """``Σ_c w_c A_c`` and its bound given the weights' own bounds."""
    channels = activation.shape[1]
    magnitude = np.abs(activation)
    raw = np.einsum("nc,nchw->nhw", weights, activation)
    bound = (np.einsum("nc,nchw->nhw", weight_error, magnitude)
             + p.u * (channels + 1) * np.einsum("nc,nchw->nhw", np.abs(weights), magnitude) + p.tiny * (channels + 1))
    return raw, bound


def _summed(contributions, magnitude, p):
    """``Σ_c contributions`` and its bound, ``magnitude`` the terms' absolute values before rounding."""
    channels = contributions.shape[1]
    return contributions.sum(axis=1), p.u * (channels + 2) * magnitude.sum(axis=1) + p.tiny * (channels + 1)


def ill_conditioned(relative_error):
    """Where a first-order bound means nothing: a quantity float32 may get wrong by over 10%."""
    return np.asarray(relative_error) > 0.1


def truth_cam(a, g, cw, p=None):
    p = p or FLOAT32
    return _weighted(cw, np.zeros_like(cw), a, p)


def gradcam_weights_truth(a, g, p=None):
    p = p or FLOAT32
    """``w = mean g`` and its bound."""
    spatial = a.shape[2] * a.shape[3]
    return g.mean(axis=(2, 3)), p.u * (spatial + 2) * np.abs(g).mean(axis=(2, 3)) + p.tiny * (spatial + 1)


def truth_gradcam(a, g, cw, p=None):
    p = p or FLOAT32
    return _weighted(*gradcam_weights_truth(a, g, p), a, p)


def xgradcam_weights_truth(a, g, p=None):
    p = p or FLOAT32
    """``w = Σ g·A / (Σ A + 1e-7)`` and its bound (infinite where ``Σ A + 1e-7`` cancels)."""
    spatial = a.shape[2] * a.shape[3]
    denominator = a.sum(axis=(2, 3), keepdims=True) + EPS_XGRADCAM
    error = p.u * (spatial + 1) * (np.abs(a).sum(axis=(2, 3), keepdims=True) + EPS_XGRADCAM) + p.tiny * spatial
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = error / np.abs(denominator)
        terms = np.abs(g * a / denominator)
        weights = (g * a / denominator).sum(axis=(2, 3))
        bound = ((terms * (p.u * (spatial + 3) + 1.12 * relative)).sum(axis=(2, 3))
                 + spatial * p.tiny * (1 + 1 / np.abs(denominator[..., 0, 0])))
    bound = np.where(ill_conditioned(relative[..., 0, 0]), np.inf, bound)
    return weights, bound


def truth_xgradcam(a, g, cw, p=None):
    p = p or FLOAT32
    return _weighted(*xgradcam_weights_truth(a, g, p), a, p)


def gradcampp_weights_truth(a, g, p=None):
    p = p or FLOAT32
    """Grad-CAM++'s ``w = Σ relu(g)·g² / (2g² + ΣA·g³ + 1e-6)`` (α = 0 where g = 0) and its bound
    (infinite where the denominator cancels)."""
    spatial = a.shape[2] * a.shape[3]
    total = a.sum(axis=(2, 3), keepdims=True)
    magnitude = np.abs(a).sum(axis=(2, 3), keepdims=True)
    denominator = 2 * g ** 2 + total * g ** 3 + EPS_GRADCAMPP
    error = (p.u * (spatial + 5) * (2 * g ** 2 + magnitude * np.abs(g) ** 3 + EPS_GRADCAMPP)
             + p.tiny * (4 + 2 * magnitude))
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(g != 0, error / np.abs(denominator), 0)
        alpha = np.where(g != 0, g ** 2 / denominator, 0)
        alpha_error = np.where(g != 0, np.abs(alpha) * (2 * p.u + 1.12 * relative)
                               + (p.u * g ** 2 + p.tiny) / np.abs(denominator) + p.tiny, 0)
    positive = np.maximum(g, 0)
    weights = (positive * alpha).sum(axis=(2, 3))
    bound = ((positive * alpha_error + p.u * positive * np.abs(alpha) + p.tiny).sum(axis=(2, 3))
             + p.u * spatial * (positive * np.abs(alpha)).sum(axis=(2, 3)))
    bound = np.where(ill_conditioned(relative.max(axis=(2, 3))), np.inf, bound)
    return weights, bound


def truth_gradcampp(a, g, cw, p=None):
    p = p or FLOAT32
    return _weighted(*gradcampp_weights_truth(a, g, p), a, p)


def truth_hirescam(a, g, cw, p=None):
    p = p or FLOAT32
    return _summed(g * a, np.abs(g * a), p)


def truth_elementwise(a, g, cw, p=None):
    p = p or FLOAT32
    return _summed(np.maximum(g * a, 0), np.abs(g * a), p)


def truth_layercam(a, g, cw, p=None):
    p = p or FLOAT32
    return _summed(np.maximum(g, 0) * a, np.maximum(g, 0) * np.abs(a), p)


def projection_truth(x, x_error, p):
    """pytorch-grad-cam's ``get_2d_projection`` in float64 — per image, the positions (rows of C
    features) centred and projected on their first right-singular vector — and a bound on a
    float32 computation given the contributions' own error ``x_error``: the rows' perturbation
    (theirs, centring, LAPACK's backward error) moves the singular vector by at most
    ``2‖E‖ / (σ₁ − σ₂)`` (Wedin). The sign of a singular vector is arbitrary."""
    channels, height, width = x.shape[1:]
    positions = height * width
    raws, bounds = [], []
    for planes, errors in zip(x, x_error):
        rows = planes.reshape(channels, -1).T
        centred = rows - rows.mean(axis=0)
        _, sigma, vt = np.linalg.svd(centred, full_matrices=True)
        vector = vt[0]
        raws.append((centred @ vector).reshape(height, width))
        row_errors = errors.reshape(channels, -1).T
        element = (row_errors + row_errors.mean(axis=0)
                   + p.u * (positions + 2) * (np.abs(rows) + np.abs(rows).mean(axis=0)))
        perturbation = np.linalg.norm(element) + 4 * p.u * (positions + channels) * sigma[0]
        gap = sigma[0] - (sigma[1] if len(sigma) > 1 else 0.0)
        if gap <= 4 * perturbation:
            bounds.append(np.full((height, width), np.inf if perturbation > 0 else 0.0))
            continue
        moved = 2 * perturbation / gap
        bound = (perturbation + np.linalg.norm(centred, axis=1) * 2 * moved
                 + p.u * (channels + 1) * (np.abs(centred) @ np.abs(vector)))
        bounds.append(bound.reshape(height, width))
    return np.float64(raws), np.float64(bounds)


def truth_eigencam(a, g, cw, p=None):
    p = p or FLOAT32
    return projection_truth(a, np.zeros_like(a), p)


def truth_eigengradcam(a, g, cw, p=None):
    p = p or FLOAT32
    return projection_truth(g * a, p.u * np.abs(g * a) + p.tiny, p)


TRUTHS = {"cam": truth_cam, "gradcam": truth_gradcam, "gradcam++": truth_gradcampp, "xgradcam": truth_xgradcam,
          "hirescam": truth_hirescam, "gradcam-elementwise": truth_elementwise, "layercam": truth_layercam,
          "eigencam": truth_eigencam, "eigengradcam": truth_eigengradcam}
SIGNLESS = {"eigencam", "eigengradcam"}  # a singular vector's sign is arbitrary


def _through_min_max(values: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """Per image, how far ``(v − min v) / (max − min + 1e-7)`` may move when each pixel of ``values``
    moves by at most ``moved[n]``: numerator and denominator by ``2d`` each, so
    ``4d / (range + 1e-7 − 2d)``, plus ``FLOOR`` times the map's own size (its rounding, the
    resize's); infinite where the denominator may vanish."""
    spread = values.max(axis=(1, 2)) - values.min(axis=(1, 2))
    room = spread + E - 2 * moved
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        tolerance = np.where(room > 0, 4 * moved / np.where(room > 0, room, 1), np.inf) + FLOOR * spread / (spread + E)
    return np.where(np.isnan(tolerance), np.inf, tolerance)


def map_tolerance(raw: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Per image, how far the map of one layer (ReLU, min-max, resize) may be from the float64
    truth when each pixel of ``raw`` is within ``bound``: ReLU moves a pixel by at most
    ``min(d, relu(raw + d))`` (one surely negative stays 0), the bilinear resize (a convex
    combination) no further."""
    moved = np.minimum(bound, np.maximum(raw + bound, 0))
    return _through_min_max(np.maximum(raw, 0), moved.max(axis=(1, 2)))


def fused_tolerance(raw: np.ndarray, bound: np.ndarray, size, copies: int = 1) -> np.ndarray:
    """The same after ``fuse_layers``' second min-max of a one-layer map; ``copies``: 2 to bound
    two float32 computations' distance from each other (each within the bound of the truth)."""
    return _through_min_max(truth_layer_map(raw, size), copies * map_tolerance(raw, bound))


def truth_layer_map(raw: np.ndarray, size) -> np.ndarray:
    """ReLU, min-max and resize in float64 (pytorch-grad-cam's ``scale_cam_image``)."""
    rectified = np.maximum(raw, 0)
    shifted = rectified - rectified.min(axis=(1, 2), keepdims=True)
    maps = shifted / (E + shifted.max(axis=(1, 2), keepdims=True))
    return np.stack([cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for m in maps])


def truth_fused_map(raw: np.ndarray, size) -> np.ndarray:
    """``truth_layer_map`` of one layer, min-maxed again (``aggregate_multi_layers``)."""
    single = truth_layer_map(raw, size)
    shifted = single - single.min(axis=(1, 2), keepdims=True)
    return shifted / (E + shifted.max(axis=(1, 2), keepdims=True))


def assert_within(ours: np.ndarray, truth: np.ndarray, tolerance: np.ndarray, what: str) -> None:
    """Per image ``n``: ``max |ours − truth| ≤ tolerance[n]``. Counts the examples whose bound says nothing."""
    for n, (mine, theirs, allowed) in enumerate(zip(ours, truth, tolerance)):
        if not np.isfinite(allowed) or allowed >= 1:
            event(f"{what}: too ill-conditioned to compare")
            continue
        error = np.abs(np.float64(mine) - theirs).max()
        assert error <= allowed, f"{what}, image {n}: max error {error:.3g} > bound {allowed:.3g}"


# -- every method: finite maps in [0, 1] -------------------------------------------------------
@pytest.mark.parametrize("name", LAYER_METHODS)
@PROPERTIES
@given(layer=layers(), eigen_smooth=st.booleans())
def test_maps_are_finite_and_in_unit_range(name, layer, eigen_smooth):
    activation, gradient, cam_weight, size = layer
    raw = METHODS[name].raw_map(activation, gradient, cam_weight, eigen_smooth)
    assert raw.shape == (activation.shape[0], *activation.shape[2:])
    assert np.isfinite(raw).all()
    assert raw.dtype == (np.float32 if np.abs(raw).max(initial=0) <= F32_MAX else np.float64)
    one = layer_map(raw, size)
    assert_unit_maps(one, (activation.shape[0], *size))
    assert_unit_maps(fuse_layers([one, layer_map(-raw, size)]), (activation.shape[0], *size))


@PROPERTIES
@given(gradient=st.integers(1, 2).flatmap(lambda n: tensors((n, 3, 6, 5))), guided=st.booleans())
def test_input_space_maps_are_finite_and_in_unit_range(gradient, guided):
    """Saliency and guided backprop (``max_c |g|``), and guided Grad-CAM (times a map in [0, 1])."""
    if guided:
        gradient = guided_gradcam_maps(np.linspace(0, 1, gradient[:, 0].size, dtype=np.float32)
                                       .reshape(gradient[:, 0].shape), gradient)
    assert_unit_maps(normalise(saliency_map(gradient)), (len(gradient), 6, 5))


def test_zero_gradients_give_zero_maps_as_pytorch_grad_cam_does():
    """Nothing to explain is a map of zeros, not NaN (scale_cam_image: 0 / (0 + 1e-7))."""
    activation = np.random.default_rng(0).random((2, 4, 3, 3), np.float32)
    for name in LAYER_METHODS:
        if not METHODS[name].needs_gradient:
            continue
        maps = layer_map(METHODS[name].raw_map(activation, np.zeros_like(activation), None), (6, 6))
        np.testing.assert_array_equal(maps, scale_cam_image(np.zeros((2, 3, 3), np.float32), (6, 6)))
        assert not maps.any(), name


# -- NaN and Inf: a clear error, never a NaN map -----------------------------------------------
@st.composite
def spoiled(draw, shape):
    """A random float32 array with 1–3 of its values made NaN, +Inf or −Inf → (array, NaNs, Infs)."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    array = np.float32(rng.standard_normal(shape))
    positions = draw(st.lists(st.integers(0, array.size - 1), min_size=1, max_size=3, unique=True))
    values = draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), min_size=len(positions),
                           max_size=len(positions)))
    array.reshape(-1)[positions] = values
    nans = sum(np.isnan(v) for v in values)
    return array, nans, len(values) - nans


@pytest.mark.parametrize("name", LAYER_METHODS)
@PROPERTIES
@given(data=st.data(), role=st.sampled_from(["activation", "gradient", "cam_weight"]))
def test_non_finite_inputs_are_a_clear_error(name, data, role):
    """1–3 NaN/±Inf in a tensor the method reads: an InputError of one line naming the layer, the
    tensor, the counts and the rows; in one it does not read: no error, a finite map."""
    method = METHODS[name]
    shape = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)), 3, 4)
    arrays = {"activation": np.ones(shape, np.float32), "gradient": np.ones(shape, np.float32),
              "cam_weight": np.ones(shape[:2], np.float32)}
    arrays[role], nans, infs = data.draw(spoiled(arrays[role].shape))
    read = role == "activation" or (role == "gradient" and method.needs_gradient) or \
        (role == "cam_weight" and method.needs_cam_weight)
    if not read:  # a tensor the method does not read cannot spoil its map
        raw = method.raw_map(arrays["activation"], arrays["gradient"], arrays["cam_weight"], layer="layer4")
        assert np.isfinite(raw).all()
        return
    with pytest.raises(InputError) as error:
        method.raw_map(arrays["activation"], arrays["gradient"], arrays["cam_weight"], layer="layer4")
    message = str(error.value)
    assert "\n" not in message and message.startswith("layer 'layer4': its ")
    assert f"{nans} NaN and {infs} infinite value(s) out of {arrays[role].size}" in message
    assert role in message
    bad_rows = np.flatnonzero(~np.isfinite(arrays[role].reshape(shape[0], -1)).all(axis=1))
    assert f"row(s) {', '.join(map(str, bad_rows))};" in message


@PROPERTIES
@given(data=st.data())
def test_non_finite_input_batch_is_a_clear_error(data):
    batch, nans, infs = data.draw(spoiled((data.draw(st.integers(1, 4)), 3, 5, 5)))
    with pytest.raises(InputError, match=rf"^input batch has {nans} NaN and {infs} infinite value\(s\) out of "
                                         rf"{batch.size} in image\(s\) [0-9, ]+; replace"):
        check_input(batch)
    assert check_input(np.nan_to_num(batch)) is not None


def test_non_finite_model_output_is_a_clear_error():
    """A map explaining a NaN score is finite but meaningless: the output check names it."""
    output = np.zeros((3, 5), np.float32)
    output[2, 1] = np.inf
    with pytest.raises(InputError, match=r"^the model's output has 0 NaN and 1 infinite value\(s\) out of 15 in "
                                         r"image\(s\) 2; the model overflows"):
        check_output(output)
    assert check_output(np.zeros((3, 5), np.float32)) is not None


def test_non_finite_input_gradient_is_a_clear_error():
    gradient = np.ones((2, 3, 4, 4), np.float32)
    gradient[1, 2, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"^the gradient w\.r\.t\. the input has 1 NaN .* row\(s\) 1;"):
        saliency_map(gradient)
    with pytest.raises(InputError, match=r"^the guided-backprop gradient .* has 1 NaN"):
        guided_gradcam_maps(np.ones((2, 4, 4), np.float32), gradient)


# -- Grad-CAM: the normalised map does not depend on the gradient's scale ------------------------
@PROPERTIES
@given(layer=layers(kinds=("random", "non-negative")), exponent=st.floats(-2, 36),
       activation_scale=st.sampled_from([1.0, 1e30]))
def test_gradcam_map_is_invariant_under_positive_scaling_of_the_gradient(layer, exponent, activation_scale):
    """``map(A, s·g) = map(A, g)`` for s > 0 but for min-max's 1e-7, also where ``s·g·A`` passes
    float32's range (the float64 second try)."""
    activation, gradient, _, size = layer
    activation = np.float32(activation * activation_scale)
    scale = 10.0 ** exponent
    scaled = np.float32(gradient * scale)
    assert np.isfinite(scaled).all()
    method = METHODS["gradcam"]
    plain = layer_map(method.raw_map(activation, gradient, None), size)
    both = layer_map(method.raw_map(activation, scaled, None), size)
    a, g = np.float64(activation), np.float64(gradient)
    raw, bound = truth_gradcam(a, g, None, precision_used("gradcam", activation, gradient, None))
    raw_scaled, bound_scaled = truth_gradcam(a, np.float64(scaled), None,
                                             precision_used("gradcam", activation, scaled, None))
    bound, bound_scaled = bound + U * np.abs(raw) + TINY, bound_scaled + U * np.abs(raw_scaled) + TINY  # float32
    # the exact maps differ only by min-max's 1e-7: r/(R + e) against r/(R + e/s), r ≤ R
    rectified = np.maximum(raw, 0)
    spread = rectified.max(axis=(1, 2)) - rectified.min(axis=(1, 2))
    epsilon_effect = spread * np.abs(E - E / scale) / ((spread + E) * (spread + E / scale))
    tolerance = map_tolerance(raw, bound) + map_tolerance(raw_scaled, bound_scaled) + epsilon_effect
    assert_within(both, np.float64(plain), tolerance, "gradcam scaled")


# -- agreement with pytorch-grad-cam's formulas, transcribed in float64 --------------------------
@pytest.mark.parametrize("name", list(TRUTHS))
@PROPERTIES
@given(layer=layers())
def test_maps_agree_with_the_float64_formula(name, layer):
    activation, gradient, cam_weight, size = layer
    raw = METHODS[name].raw_map(activation, gradient, cam_weight)
    precision = precision_used(name, activation, gradient, cam_weight)
    event(f"{name}: float{32 if precision is FLOAT32 else 64}")
    truth, bound = TRUTHS[name](np.float64(activation), np.float64(gradient), np.float64(cam_weight), precision)
    bound = bound + U * np.abs(truth) + TINY  # the map comes back in float32 where float32 holds it
    if name in SIGNLESS:  # compare the projection up to its sign; the map then depends on that sign
        sign = np.where(np.abs(raw - truth).max(axis=(1, 2)) <= np.abs(raw + truth).max(axis=(1, 2)), 1.0, -1.0)
        if not np.isfinite(bound).all():
            event(f"{name}: too ill-conditioned to compare (spectral gap)")
        worst = np.where(np.isfinite(bound), bound, 0).max(axis=(1, 2))
        error = np.abs(raw - sign[:, None, None] * truth).max(axis=(1, 2))
        assert (~np.isfinite(bound.max(axis=(1, 2))) | (error <= worst * (1 + 1e-9) + 1e-300)).all(), (error, worst)
        return
    finite = np.isfinite(bound)
    if not finite.all():
        event(f"{name}: raw map too ill-conditioned to compare somewhere")
    error = np.abs(np.float64(raw) - truth)
    assert (error[finite] <= bound[finite] * (1 + 1e-9)).all(), f"{name}: raw map off by {error.max():.3g}"
    tolerance = map_tolerance(truth, bound)
    assert_within(layer_map(raw, size), truth_layer_map(truth, size), tolerance, name)


# -- agreement with pytorch-grad-cam's own functions (float32, as it runs them) -----------------
ORACLES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "hirescam": HiResCAM,
           "gradcam-elementwise": GradCAMElementWise, "layercam": LayerCAM, "eigencam": EigenCAM,
           "eigengradcam": EigenGradCAM}


def oracle_layer_maps(name: str, activation, gradient, size) -> np.ndarray:
    """pytorch-grad-cam's map of one layer from its pure functions: ``get_cam_weights`` /
    ``get_cam_image``, ReLU, ``scale_cam_image``, ``aggregate_multi_layers``."""
    oracle = ORACLES[name]
    if "get_cam_image" in vars(oracle):
        cam = oracle.get_cam_image(None, None, None, None, activation, gradient, False)
    else:  # BaseCAM's weighted sum around the class's weights
        shim = SimpleNamespace(get_cam_weights=lambda *args: oracle.get_cam_weights(None, *args))
        cam = BaseCAM.get_cam_image(shim, None, None, None, activation, gradient, False)
    scaled = scale_cam_image(np.maximum(cam, 0), (size[1], size[0]))
    return BaseCAM.aggregate_multi_layers(None, [scaled[:, None]])


@pytest.mark.parametrize("name", list(ORACLES))
@PROPERTIES
@given(layer=layers(kinds=("random", "zero", "tiny", "mixed-sign", "non-negative", "any-float32")))
def test_maps_agree_with_pytorch_grad_cam_functions(name, layer):
    """Both are float32 computations of one formula, each within the bound of the float64 truth;
    where pytorch-grad-cam's float32 overflows (NaN, or a wrong map) onnxcam's is finite."""
    activation, gradient, cam_weight, size = layer
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        try:
            theirs = oracle_layer_maps(name, activation, gradient, size)
        except FloatingPointError:
            theirs = None
    ours = fuse_layers([layer_map(METHODS[name].raw_map(activation, gradient, cam_weight), size)])
    assert_unit_maps(ours, theirs.shape if theirs is not None else ours.shape)
    if theirs is None:
        event(f"{name}: pytorch-grad-cam overflows float32")
        return
    if name in SIGNLESS:  # one float32 SVD on both sides, so one sign: against get_2d_projection itself,
        # within 16·U·(positions + channels)·max|projection| (its own rounding: the same operations)
        contributions = activation * gradient if name == "eigengradcam" else activation
        truth = np.float64(get_2d_projection(contributions))
        positions, channels = activation.shape[2] * activation.shape[3], activation.shape[1]
        bound = np.broadcast_to(16 * U * (positions + channels) * np.abs(truth).max(axis=(1, 2), keepdims=True),
                                truth.shape)
    else:
        truth, bound = TRUTHS[name](np.float64(activation), np.float64(gradient), None)
    tolerance = fused_tolerance(truth, bound, size, copies=2)
    assert_within(ours, np.float64(theirs), tolerance, name)


@pytest.mark.parametrize("name,ours,oracle,truth", [
    ("gradcam", gradcam.weights, GradCAM, gradcam_weights_truth),
    ("gradcam++", gradcampp.weights, GradCAMPlusPlus, gradcampp_weights_truth),
    ("xgradcam", xgradcam.weights, XGradCAM, xgradcam_weights_truth)])
@PROPERTIES
@given(layer=layers(kinds=("random", "zero", "tiny", "mixed-sign", "non-negative", "any-float32")))
def test_weights_agree_with_pytorch_grad_cam_get_cam_weights(name, ours, oracle, truth, layer):
    """The channel weights, against ``get_cam_weights`` itself wherever its float32 neither overflows nor
    divides by 0 (there the float32 weights are NaN or wrong, and ``raw_map`` recomputes in float64)."""
    activation, gradient, _, _ = layer
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        try:
            theirs = oracle.get_cam_weights(None, None, None, None, activation, gradient)
            mine = ours(activation, gradient)
        except FloatingPointError:
            event(f"{name}: float32 overflows")
            return
    exact, bound = truth(np.float64(activation), np.float64(gradient))
    compared = np.isfinite(bound)
    assert (np.abs(np.float64(mine) - theirs)[compared] <= 2 * bound[compared] * (1 + 1e-9)).all()
    assert (np.abs(np.float64(mine) - exact)[compared] <= bound[compared] * (1 + 1e-9)).all()


# -- the maximum lies where the formula puts it -------------------------------------------------
@st.composite
def peaked(draw):
    """Non-negative activations ``[N, C, h, w]`` in [0, 1) but for channel 0's peak of 4C + 4 at
    ``(i, j)``; gradients ``+1`` on channel 0 and in [−1, 1] (``negative``: [−1, −0.1]) elsewhere;
    classifier rows 1 for channel 0, in [−1, 1] elsewhere. → (activation, gradient, negative
    gradient, cam_weight, (i, j), odd upsampling factor)."""
    n, c, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(2, 6)), draw(st.integers(1, 6))
    i, j = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    activation = rng.random((n, c, h, w))
    activation[:, 0, i, j] = 4 * c + 4
    gradient = rng.uniform(-1, 1, (n, c, h, w))
    gradient[:, 0] = 1
    negative = -rng.uniform(0.1, 1, (n, c, h, w))
    negative[:, 0] = 1
    cam_weight = rng.uniform(-1, 1, (n, c))
    cam_weight[:, 0] = 1
    return (np.float32(activation), np.float32(gradient), np.float32(negative), np.float32(cam_weight), (i, j),
            draw(st.sampled_from([1, 3, 5])))


@pytest.mark.parametrize("name", ["cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise",
                                  "layercam", "guided-gradcam"])
@PROPERTIES
@given(case=peaked())
def test_the_maximum_lies_on_the_peak_of_the_positively_weighted_channel(name, case):
    """Channel 0 is weighted +1 (the others at most 1 in size, on values below 1; for Grad-CAM++
    their gradients are negative, so their weights are 0): the raw map's maximum is channel 0's
    peak, and the map at input resolution (odd factor k) peaks on the pixel at that cell's centre
    (and nowhere outside the cell)."""
    activation, gradient, negative, cam_weight, (i, j), factor = case
    gradient = negative if name == "gradcam++" else gradient
    raw = METHODS[name].raw_map(activation, gradient, cam_weight)
    height, width = activation.shape[2:]
    maps = layer_map(raw, (height * factor, width * factor))
    for n in range(len(raw)):
        assert np.unravel_index(raw[n].argmax(), raw[n].shape) == (i, j)
        centre = (factor * i + factor // 2, factor * j + factor // 2)
        assert maps[n][centre] == maps[n].max() > maps[n].min()
        rows, columns = np.nonzero(maps[n] == maps[n].max())  # ties only where the resize clamps at a border
        assert (rows // factor == i).all() and (columns // factor == j).all()


@pytest.mark.parametrize("name", ["eigencam", "eigengradcam"])
@PROPERTIES
@given(case=peaked())
def test_the_projection_is_largest_in_size_on_a_dominant_peak(name, case):
    """Channels that all share one peak (activations = peak · random positive loadings + noise in
    [0, 0.01)): the first principal component is that peak, so ``|projection|`` is largest there
    (its sign is the SVD's, as in pytorch-grad-cam) — given 3 positions or more: of 2, centring
    leaves ±the same value."""
    activation, _, _, _, (i, j), _ = case
    assume(activation.shape[2] * activation.shape[3] >= 3)
    rng = np.random.default_rng(int(activation.sum() * 1e3) % 2 ** 32)
    loadings = rng.uniform(0.5, 1, activation.shape[:2])[:, :, None, None]
    peak = np.zeros(activation.shape[2:])
    peak[i, j] = 10
    shared = np.float32(loadings * peak + 0.01 * (activation % 1))
    raw = METHODS[name].raw_map(shared, np.ones_like(shared), None)
    for n in range(len(raw)):
        assert np.unravel_index(np.abs(raw[n]).argmax(), raw[n].shape) == (i, j)


@PROPERTIES
@given(layer=layers(kinds=("random", "mixed-sign", "non-negative", "huge", "any-float32")))
def test_kpca_signs_its_largest_coordinate_positive(layer):
    """KPCA-CAM's sign convention (scikit-learn's): the largest magnitude is that of a positive coordinate."""
    raw = METHODS["kpca-cam"].raw_map(layer[0], None, None)
    for plane in raw.reshape(len(raw), -1):
        assert plane.max() == np.abs(plane).max()


# -- Score-CAM and Ablation-CAM, with a small numpy model ------------------------------------------
LAYER = SimpleNamespace(name="layer", activation="activation", tail={"input": "activation", "channel_axis": 1})


def bounded(z: np.ndarray) -> np.ndarray:
    """``z / (1 + |z|)`` in float32: a model output in (−1, 1), computed in float64."""
    return np.float32(z / (1 + np.abs(z)))


class Head:
    """The model after the layer (Ablation-CAM's tail): global average pool, ``[K, C]`` linear, bounded."""

    def __init__(self, weights: np.ndarray):
        self.weights = np.float64(weights)

    def __call__(self, layer_output: np.ndarray) -> np.ndarray:
        return bounded(np.float64(layer_output).mean(axis=(2, 3)) @ self.weights.T)


class Probe:
    """A whole model for Score-CAM: a ``[K, 3, H, W]`` linear read-out of the image, bounded."""

    def __init__(self, readout: np.ndarray):
        self.readout = np.float64(readout)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return bounded(np.einsum("bchw,kchw->bk", np.float64(images), self.readout))


def passes_context(batch, activation, classes, forward=None, tail=None) -> Passes:
    """What the explainer hands a method with extra passes: one target a row."""
    scorers = [lambda outputs, k=int(k): outputs[:, k] for k in classes]
    return Passes(batch=batch, outputs={"activation": activation},
                  model_output=forward(batch) if forward is not None else tail(activation), scorers=scorers,
                  forward=forward, tail=lambda layer: tail)


def run_passes(name, activation, size, rng, classes=3):
    """The method's ``[N, C]`` weights and ``[N, H, W]`` map with a random model of ``classes`` outputs."""
    n, channels = activation.shape[:2]
    batch = np.float32(rng.standard_normal((n, 3, *size)))
    targets = rng.integers(0, classes, n)
    if name == "scorecam":
        context = passes_context(batch, activation, targets, forward=Probe(rng.standard_normal((classes, 3, *size))))
    else:
        context = passes_context(batch, activation, targets, tail=Head(rng.standard_normal((classes, channels))))
    weights = METHODS[name].passes(context, LAYER)
    raw = METHODS[name].raw_map(activation, None, None, weights=weights, layer=LAYER.name)
    return context, weights, fuse_layers([layer_map(raw, size)])


def truths_per_row(context, truth) -> tuple[np.ndarray, np.ndarray]:
    """``truth(r, target)`` → (float64 weights ``[C]``, their bound ``[C]``) for each row ``r``, its target read
    off its scorer (the one class that scores 1 on the identity); stacked: ``[N, C]`` and ``[N, C]``."""
    targets = [int(np.flatnonzero(scorer(np.eye(3, dtype=np.float32)))[0]) for scorer in context.scorers]
    truths = [truth(r, target) for r, target in enumerate(targets)]
    return np.float64([t[0] for t in truths]), np.float64([t[1] for t in truths])


@pytest.mark.parametrize("name", ["scorecam", "ablationcam"])
@PROPERTIES
@given(layer=layers(), seed=st.integers(0, 2 ** 32 - 1))
def test_extra_pass_maps_are_finite_and_in_unit_range(name, layer, seed):
    activation, _, _, size = layer
    _, weights, maps = run_passes(name, activation, size, np.random.default_rng(seed))
    assert weights.shape == activation.shape[:2] and weights.dtype == np.float32 and np.isfinite(weights).all()
    assert_unit_maps(maps, (len(activation), *size))


def score_cam_truth(image, activation, probe, target):
    """pytorch-grad-cam's Score-CAM weights in float64 — its ``UpsamplingBilinear2d``, min-max with
    1e-8, the image times each mask scored, softmax — and a bound on onnxcam's float32 weights:
    a mask's error is ~``U·max|A_c| / (max − min)`` (its channel's span cancels), then through the
    linear read-out (``|f'| ≤ 1``) and the softmax (``δw_c ≤ w_c · 2 max δs``)."""
    size = image.shape[1:]
    with torch.no_grad():
        upsampled = torch.nn.UpsamplingBilinear2d(size=size)(torch.from_numpy(activation[None])).numpy()[0]
    low = upsampled.min(axis=(1, 2), keepdims=True)
    high = upsampled.max(axis=(1, 2), keepdims=True)
    masks = (upsampled - low) / (high - low + EPS_SCORECAM)
    z = np.einsum("chw,nhw,chw->n", image, masks, probe.readout[target])
    scores = z / (1 + np.abs(z))
    weights = np.exp(scores - scores.max())
    weights /= weights.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        mask_error = 20 * U * (np.abs(activation).max(axis=(1, 2)) / (high - low + EPS_SCORECAM)[:, 0, 0] + 1)
    score_error = (np.einsum("chw->", np.abs(image * probe.readout[target])) * (mask_error + U)
                   + U * np.abs(scores))
    weight_error = weights * 2 * score_error.max() + 4 * U * weights
    weight_error = np.where(ill_conditioned(mask_error.max()), np.inf, weight_error)
    return weights, weight_error


@PROPERTIES
@given(layer=layers(kinds=("random", "non-negative", "mixed-sign", "huge", "near-max", "tiny", "zero")),
       seed=st.integers(0, 2 ** 32 - 1))
def test_score_cam_agrees_with_the_float64_formula(layer, seed):
    activation, _, _, size = layer
    context, weights, maps = run_passes("scorecam", activation, size, np.random.default_rng(seed))
    a = np.float64(activation)
    exact, error = truths_per_row(context, lambda r, target: score_cam_truth(np.float64(context.batch[r]), a[r],
                                                                             context.forward, target))
    compared = np.isfinite(error)
    assert (np.abs(weights - exact)[compared] <= error[compared] * (1 + 1e-9)).all()
    raw, bound = _weighted(exact, error, a, FLOAT32)
    assert_within(maps, truth_fused_map(raw, size), fused_tolerance(raw, bound, size), "scorecam")


def ablation_truth(layer_output, head, target):
    """pytorch-grad-cam's Ablation-CAM weights ``(y − y_c) / y`` in float64 (ablation values as its
    AblationLayer sets them, ``ablation_values``), onnxcam's convention at ``y = 0``, and a bound on
    onnxcam's float32: ``y`` and each ``y_c`` are rounded once to float32 by the model."""
    channels = layer_output.shape[0]
    values = ablationcam.ablation_values(np.float32(layer_output), channels, ablationcam.CHUNK)
    copies = np.repeat(layer_output[None], channels, axis=0)
    copies[np.arange(channels), np.arange(channels)] = np.float64(values)[:, None, None]

    def score(layer_outputs):
        z = layer_outputs.mean(axis=(2, 3)) @ head.weights[target]
        return z / (1 + np.abs(z))

    full, ablated = score(layer_output[None])[0], score(copies)
    drops = full - ablated
    if full == 0:
        largest = np.abs(drops).max()
        return (drops / largest if largest else drops), np.zeros(channels)  # exact: ±1 or 0
    weights = drops / full
    return weights, U * (abs(full) + np.abs(ablated)) / abs(full) + 4 * U * np.abs(weights)


@PROPERTIES
@given(layer=layers(kinds=("random", "non-negative", "mixed-sign", "huge", "tiny", "zero")),
       seed=st.integers(0, 2 ** 32 - 1))
def test_ablation_cam_agrees_with_the_float64_formula(layer, seed):
    activation, _, _, size = layer
    context, weights, maps = run_passes("ablationcam", activation, size, np.random.default_rng(seed))
    head = context.tail(LAYER)
    exact, error = truths_per_row(context, lambda r, target: ablation_truth(np.float64(activation[r]), head, target))
    assert (np.abs(weights - exact) <= error * (1 + 1e-9) + 1e-300).all(), (weights, exact, error)
    raw, bound = _weighted(exact, error, np.float64(activation), FLOAT32)
    assert_within(maps, truth_fused_map(raw, size), fused_tolerance(raw, bound, size), "ablationcam")


@PROPERTIES
@given(channels=st.integers(2, 5), height=st.integers(1, 5), width=st.integers(2, 5), seed=st.integers(0, 2 ** 32 - 1),
       data=st.data())
def test_ablation_cam_with_a_target_score_of_zero_gives_a_finite_map(channels, height, width, seed, data):
    """Target row ``[1, −1, 0…]`` over two channels of equal mean (channel 1 = channel 0's integers
    rolled, channel 0's peak of 100 at ``p``): the score is exactly 0, where pytorch-grad-cam's
    ``(y − y_c) / y`` is NaN. onnxcam's weights are the drops over the largest: ``[1, −1, 0…]``, so
    the map is ``relu(A₀ − A₁)`` normalised — finite, in [0, 1], largest at ``p``."""
    rng = np.random.default_rng(seed)
    positions = height * width
    peak = data.draw(st.integers(0, positions - 1))
    activation = np.float32(rng.integers(0, 10, (1, channels, positions)))
    activation[0, 0, peak] = 100
    activation[0, 0, (peak + 1) % positions] = 0  # the layer's minimum is 0: ablated channels are set to 0
    activation[0, 1] = np.roll(activation[0, 0], data.draw(st.integers(1, positions - 1)))
    activation = activation.reshape(1, channels, height, width)
    head = np.zeros((2, channels))
    head[0, :2] = 1, -1
    head[1] = rng.standard_normal(channels)
    context = passes_context(np.zeros((1, 3, 8, 8), np.float32), activation, [0], tail=Head(head))
    full = context.scorers[0](context.model_output)[0]
    assert full == 0
    ablated = np.float32([context.scorers[0](context.tail(LAYER)(np.where(np.arange(channels)[None, :, None, None] == c,
                                                                          0, activation)))[0]
                          for c in range(channels)])
    with np.errstate(all="ignore"):
        assert not np.isfinite((full - ablated) / full).all()  # pytorch-grad-cam's weights
    weights = METHODS["ablationcam"].passes(context, LAYER)
    np.testing.assert_array_equal(weights, np.float32([[1, -1] + [0] * (channels - 2)]))
    raw = METHODS["ablationcam"].raw_map(activation, None, None, weights=weights)
    maps = fuse_layers([layer_map(raw, (height * 3, width * 3))])
    assert_unit_maps(maps, (1, height * 3, width * 3))
    assert raw[0].reshape(-1).argmax() == peak
    centre = (3 * (peak // width) + 1, 3 * (peak % width) + 1)
    assert maps[0][centre] == maps[0].max() > maps[0].min()


@PROPERTIES
@given(full=st.floats(width=32, allow_nan=False, allow_infinity=False),
       ablated=hnp.arrays(np.float32, st.integers(1, 6), elements=st.floats(width=32, allow_nan=False,
                                                                             allow_infinity=False)))
def test_ablation_weights_are_pytorch_grad_cams_wherever_those_are_finite(full, ablated):
    """``(y − y_c) / y`` in float32, bit for bit, where it is finite; else (``y = 0``, an overflow)
    the drops over the largest, signed as ``y`` (+ at 0): finite, in [−1, 1], the largest ±1."""
    weights = ablationcam.relative_drops(full, ablated)
    assert weights.shape == ablated.shape and weights.dtype == np.float32 and np.isfinite(weights).all()
    with np.errstate(all="ignore"):
        theirs = (np.float32(full) - ablated) / np.float32(full)
    if np.isfinite(theirs).all():
        np.testing.assert_array_equal(weights, theirs)
        return
    event("pytorch-grad-cam's weights are not finite")
    drops = np.float64(full) - np.float64(ablated)
    sign = -1.0 if full < 0 else 1.0
    assert (np.abs(weights) <= 1).all()
    assert np.abs(weights).max() == (1 if drops.any() else 0)
    largest = np.abs(drops).max()
    zero = weights == 0  # a drop under 2⁻¹⁴⁹ of the largest underflows float32
    assert (np.abs(drops[zero]) <= TINY * largest).all()
    np.testing.assert_array_equal(np.sign(weights[~zero]), sign * np.sign(drops[~zero]))


@PROPERTIES
@given(channels=st.integers(2, 5), height=st.integers(2, 5), width=st.integers(2, 5), stretch=st.integers(1, 3),
       strength=st.floats(1, 20), seed=st.integers(0, 2 ** 32 - 1), data=st.data())
def test_score_cam_weighs_most_the_channel_whose_mask_the_model_sees(channels, height, width, stretch, strength,
                                                                     seed, data):
    """Channel ``c`` is a spike at its own position ``p_c``; the model reads one input pixel, the
    one on ``p₀`` (aligned corners: ``H − 1 = k(h − 1)``), so only channel 0's mask passes it:
    the largest weight, and the raw map's maximum at ``p₀``."""
    channels = min(channels, height * width)
    positions = data.draw(st.permutations(range(height * width)))[:channels]
    activation = np.zeros((1, channels, height * width), np.float32)
    activation[0, np.arange(channels), positions] = 1
    activation = activation.reshape(1, channels, height, width)
    size = (stretch * (height - 1) + 1, stretch * (width - 1) + 1)
    readout = np.zeros((1, 3, *size))
    readout[0, :, stretch * (positions[0] // width), stretch * (positions[0] % width)] = strength / 3
    image = np.float32(np.random.default_rng(seed).uniform(0.5, 1, (1, 3, *size)))
    context = passes_context(image, activation, [0], forward=Probe(readout))
    weights = METHODS["scorecam"].passes(context, LAYER)
    assert weights[0].argmax() == 0 and (weights[0, 1:] < weights[0, 0]).all()
    raw = METHODS["scorecam"].raw_map(activation, None, None, weights=weights)
    assert raw[0].reshape(-1).argmax() == positions[0]
    assert_unit_maps(fuse_layers([layer_map(raw, size)]), (1, *size))


@PROPERTIES
@given(channels=st.integers(1, 5), height=st.integers(2, 5), width=st.integers(1, 5), seed=st.integers(0, 2 ** 32 - 1),
       data=st.data())
def test_ablation_cam_weighs_most_the_channel_the_score_loses(channels, height, width, seed, data):
    """Target row ``[1, ±ρ…]`` (``ρ`` too small to matter) and channel 0's peak of ``4C + 4`` at ``p``
    over values in [0, 1): ablating channel 0 loses the most score; the raw map peaks at ``p``."""
    rng = np.random.default_rng(seed)
    activation = rng.random((1, channels, height, width))
    i, j = data.draw(st.integers(0, height - 1)), data.draw(st.integers(0, width - 1))
    activation[0, 0, i, j] = 4 * channels + 4
    activation = np.float32(activation)
    head = rng.uniform(-1, 1, (1, channels)) / (4 * channels * height * width)
    head[0, 0] = 1
    context = passes_context(np.zeros((1, 3, 4, 4), np.float32), activation, [0], tail=Head(head))
    weights = METHODS["ablationcam"].passes(context, LAYER)
    assert weights[0].argmax() == 0
    raw = METHODS["ablationcam"].raw_map(activation, None, None, weights=weights)
    assert np.unravel_index(raw[0].argmax(), raw[0].shape) == (i, j)


def test_non_finite_scores_in_extra_passes_are_a_clear_error():
    """NaN/Inf from the model (not from onnxcam's maths) is an InputError naming the layer and row."""
    rng = np.random.default_rng(0)
    activation = np.float32(rng.random((2, 3, 4, 4)))
    activation[:, :, 0, 0] = 0  # minimum 0: ablated channels are set to 0

    def nan_model(images):
        return np.full((len(images), 2), np.nan, np.float32)

    with pytest.raises(InputError, match=r"^Score-CAM at layer 'layer', row 0: the target's score is NaN or infinite "
                                         r"on 3 of 3 masked copies"):
        METHODS["scorecam"].passes(passes_context(np.ones((2, 3, 8, 8), np.float32), activation, [0, 1],
                                                  forward=nan_model), LAYER)
    head = Head(rng.standard_normal((2, 3)))

    def overflowing(layer_output):  # inf once channel 1 is ablated (all 0)
        return np.where((layer_output[:, 1] == 0).all(axis=(1, 2))[:, None], np.float32(np.inf), head(layer_output))

    with pytest.raises(InputError, match=r"^Ablation-CAM at layer 'layer', row 0: the target's score is NaN or "
                                         r"infinite with 1 of 3 channel\(s\) ablated \(first: channel 1, set to 0\)"):
        METHODS["ablationcam"].passes(passes_context(None, activation, [0, 1], tail=overflowing), LAYER)
    context = passes_context(None, activation, [0, 1], tail=lambda x: np.full((len(x), 2), np.nan, np.float32))
    with pytest.raises(InputError, match=r"^Ablation-CAM at layer 'layer', row 0: the target's score is nan;"):
        METHODS["ablationcam"].passes(context, LAYER)
    spoiled = activation.copy()
    spoiled[1, 2, 3, 3] = np.inf  # row 0 is fine, row 1 is not
    scorers = [lambda outputs, k=k: outputs[:, k] for k in (0, 1)]
    probe = Probe(rng.standard_normal((2, 3, 8, 8)))
    for name, forward, tail in [("scorecam", probe, None), ("ablationcam", None, head)]:
        context = Passes(batch=np.ones((2, 3, 8, 8), np.float32), outputs={"activation": spoiled},
                         model_output=np.zeros((2, 2), np.float32), scorers=scorers, forward=forward,
                         tail=lambda layer, tail=tail: tail)
        with pytest.raises(InputError, match=r"^layer 'layer', row 1: its (activation|output) has 0 NaN and 1 inf"):
            METHODS[name].passes(context, LAYER)
