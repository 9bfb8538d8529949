"""Maps match pytorch-grad-cam (the oracle) on every architecture, per layer and fused.

Two tiers (README, "Tests: how close is a match"; ``tolerances.py``): max abs ≤ 1e-4 against pytorch-grad-cam;
where float32 noise makes that impossible, onnxcam's error from the float64 truth (pytorch-grad-cam on
``model.double()``) must be at most twice pytorch-grad-cam's own, taken as the largest over a few float32
throws (pytorch-grad-cam on copies of the batch nudged by a few ulps) where one throw is not enough.

pytorch-grad-cam's maps are computed once per (model, layers, method, batch, targets, options) and shared:
the graph and numpy post-processing variants compare against the same reference.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from conftest import random_batch
from onnxcam.runtime import Explainer
from tolerances import assert_two_tier as assert_close
from tolerances import nudged
from zoo import LAYERS, reshape_transform

ORACLES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
CASES = [(arch, method) for arch in LAYERS for method in ORACLES]
POSTPROCESS = ["graph", "numpy"]  # maps made inside onnxruntime, or from fetched activations in numpy

_DOUBLES: OrderedDict[int, tuple] = OrderedDict()  # id(model) → (model, its float64 copy), the last two used
_ORACLE_CACHE: dict[tuple, tuple] = {}  # key → (model, maps, raw per-layer maps)


def double_model(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``model``, kept while it is one of the last two used (a ViT's is 0.7 GB).
    The entry holds ``model`` itself, so its id cannot be reused by another model meanwhile."""
    if id(model) not in _DOUBLES:
        _DOUBLES[id(model)] = (model, copy.deepcopy(model).double())
        while len(_DOUBLES) > 2:
            _DOUBLES.popitem(last=False)
    _DOUBLES.move_to_end(id(model))
    return _DOUBLES[id(model)][1]


def _recording(oracle: type) -> type:
    """``oracle`` that also keeps each layer's raw map (``get_cam_image``: the weighted sum before ReLU)."""
    class Recording(oracle):
        def get_cam_image(self, *args, **kwargs):
            cam = super().get_cam_image(*args, **kwargs)
            self.raw_maps.append(np.asarray(cam))
            return cam
    Recording.__name__ = f"Recording{oracle.__name__}"
    return Recording


_PROJECTING = ("base_cam", "eigen_cam", "eigen_grad_cam", "grad_cam_elementwise", "hirescam", "layer_cam")


@contextmanager
def projections(recorded: list, signs_from: list | None = None):
    """While active, each ``get_2d_projection`` pytorch-grad-cam makes (EigenCAM, ``eigen_smooth``…) is appended to
    ``recorded``; with ``signs_from`` (the float32 run's list) each image's projection takes the sign of the float32
    run's same call. An SVD's sign is arbitrary: the float64 solver may pick the other one, and a projection of the
    other sign is another map, not a rounding error (measured: resnet18 ``layer4`` Grad-CAM with ``eigen_smooth``,
    float64 1.0 from float32 until aligned)."""
    from pytorch_grad_cam.utils import svd_on_activations

    original = svd_on_activations.get_2d_projection

    def projection(batch):
        result = original(batch)
        if signs_from is not None and len(recorded) < len(signs_from):
            agree = (result * signs_from[len(recorded)]).sum(axis=(1, 2)) >= 0  # [N]
            result = np.where(agree[:, None, None], result, -result)
        recorded.append(result)
        return result

    modules = [importlib.import_module(f"pytorch_grad_cam.{name}") for name in _PROJECTING]
    for module in modules:
        module.get_2d_projection = projection
    try:
        yield
    finally:
        for module in modules:
            module.get_2d_projection = original


def oracle_run(model, architecture, layers, method, batch, targets, double=False, oracle=None, **options):
    """pytorch-grad-cam's (maps, raw per-layer maps) (``oracle``: its class; default the one for ``method``;
    ``targets`` None: each image's top class, as pytorch-grad-cam resolves it), cached. The float64 run's
    principal components take the float32 run's signs (``projections``)."""
    oracle = oracle or ORACLES[method]
    key = (id(model), architecture, tuple(layers), oracle, hashlib.sha1(np.ascontiguousarray(batch)).hexdigest(),
           None if targets is None else tuple(int(t) for t in targets), double, tuple(sorted(options.items())))
    if key not in _ORACLE_CACHE:
        signs_from = None
        if double:
            oracle_run(model, architecture, layers, method, batch, targets, False, oracle, **options)
            signs_from = _ORACLE_CACHE[(*key[:-2], False, key[-1])][3]
        used = double_model(model) if double else model
        tensor = torch.from_numpy(batch).double() if double else torch.from_numpy(batch)
        target_layers = [used.get_submodule(name) for name in layers]
        made = []
        with _recording(oracle)(used, target_layers, reshape_transform=reshape_transform(architecture)) as cam, \
                projections(made, signs_from):
            cam.raw_maps = []
            maps = cam(tensor, targets=None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets],
                       **options)
            raw = cam.raw_maps
        used.zero_grad(set_to_none=True)  # the parameters' gradients: memory, not results
        _ORACLE_CACHE[key] = (model, maps, raw, made)
    return _ORACLE_CACHE[key][1:3]


def oracle_maps(model, architecture, layers, method, batch, targets, double=False, oracle=None, **options):
    """pytorch-grad-cam's maps (``oracle``: its class; default the one for ``method``)."""
    return oracle_run(model, architecture, layers, method, batch, targets, double, oracle, **options)[0]


def assert_two_tier(ours, oracle, what: str = "", **bounds) -> None:
    """The two-tier rule for maps: max abs ≤ 1e-4 from ``oracle(double=False)`` (pytorch-grad-cam in float32),
    else onnxcam's error from ``oracle(double=True)`` (the float64 truth) at most twice the oracle's own
    (``bounds``: ``tolerances.assert_two_tier``'s)."""
    reference = oracle(double=False)
    assert ours.shape == reference.shape and ours.dtype == np.float32, (ours.shape, reference.shape, ours.dtype)
    assert ours.min() >= 0 and ours.max() <= 1
    assert_close(ours, reference, lambda: oracle(double=True), what=what, **bounds)


def assert_parity(ours, model, architecture, layers, method, batch, targets, oracle=None, **options):
    """``ours`` against pytorch-grad-cam's maps, two tiers; the float32 throws beyond the first are
    pytorch-grad-cam on nudged copies of ``batch`` (``tolerances.py``)."""
    def maps(double, at=batch):
        return oracle_maps(model, architecture, layers, method, at, targets, double=double, oracle=oracle, **options)
    assert_two_tier(ours, maps, f"{architecture} {method} {layers}",
                    alternatives=lambda: (maps(False, at) for at in nudged(batch)))


def assert_layer_maps(ours: dict, model, architecture, layers, method, batch, targets, oracle=None, **options):
    """Each layer's raw map (``Explanation.layer_maps``: the weighted sum before ReLU and normalisation) against
    pytorch-grad-cam's ``get_cam_image``: 1e-4 relative to the largest value, else the float64 tier."""
    assert list(ours) == list(layers)
    for index, name in enumerate(layers):
        def raw(double, at=batch, index=index):
            return oracle_run(model, architecture, layers, method, at, targets, double, oracle, **options)[1][index]
        assert_close(ours[name], raw(False), lambda: raw(True), relative=True,
                     alternatives=lambda: (raw(False, at) for at in nudged(batch)),
                     what=f"{architecture} {method} raw map of {name}")


@pytest.mark.parametrize("postprocess", POSTPROCESS)
@pytest.mark.parametrize("architecture,method", CASES)
def test_maps_match_pytorch_grad_cam(zoo, architecture, method, postprocess):
    model, path, layers = zoo(architecture)
    explainer = Explainer(path, providers="cpu", postprocess=postprocess)
    batch = random_batch(architecture, count=3, seed=5)
    requested = np.array([-1, 3, 11])
    for layer in layers:
        result = explainer.explain(batch, method=method, targets=requested, layers=[layer])
        assert result.targets[0] == result.logits[0].argmax() and list(result.targets[1:]) == [3, 11]
        assert_parity(result.maps, model, architecture, [layer], method, batch, result.targets)
    fused = explainer.explain(batch, method=method, targets=requested)
    assert_parity(fused.maps, model, architecture, layers, method, batch, fused.targets)
