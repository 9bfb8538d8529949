"""Maps match pytorch-grad-cam (the oracle) on every architecture, per layer and fused.

Two tiers (DESIGN.md, "How close is match"): max abs ≤ 1e-4 against pytorch-grad-cam;
where float32 noise makes that impossible, onnxcam's error from the float64 truth
(pytorch-grad-cam on ``model.double()``) must be at most twice pytorch-grad-cam's own.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from conftest import random_batch
from onnxcam.runtime import Explainer
from zoo import LAYERS, reshape_transform

ORACLES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
CASES = [(arch, method) for arch in LAYERS for method in ORACLES]
POSTPROCESS = ["graph", "numpy"]  # maps made inside onnxruntime, or from fetched activations in numpy


def oracle_maps(model, architecture, layers, method, batch, targets, double=False, oracle=None, **options):
    """pytorch-grad-cam's maps (``oracle``: its class; default the one for ``method``)."""
    if double:
        model = copy.deepcopy(model).double()
    tensor = torch.from_numpy(batch).double() if double else torch.from_numpy(batch)
    target_layers = [model.get_submodule(name) for name in layers]
    with (oracle or ORACLES[method])(model, target_layers, reshape_transform=reshape_transform(architecture)) as cam:
        return cam(tensor, targets=[ClassifierOutputTarget(int(t)) for t in targets], **options)


def assert_two_tier(ours, oracle, what: str = "") -> None:
    """The two-tier rule: max abs ≤ 1e-4 from ``oracle(double=False)`` (pytorch-grad-cam in float32), else
    onnxcam's error from ``oracle(double=True)`` (the float64 truth) at most twice the oracle's own."""
    reference = oracle(double=False)
    assert ours.shape == reference.shape and ours.dtype == np.float32
    assert ours.min() >= 0 and ours.max() <= 1
    difference = np.abs(ours - reference)
    if difference.max() <= 1e-4:
        return
    truth = oracle(double=True)
    ours_error, oracle_error = np.abs(ours - truth), np.abs(reference - truth)
    assert ours_error.max() <= 2 * oracle_error.max() and ours_error.mean() <= 2 * oracle_error.mean(), (
        f"{what}: max abs diff {difference.max():.2e} from pytorch-grad-cam; from float64 truth ours "
        f"{ours_error.max():.2e}/{ours_error.mean():.2e} vs oracle {oracle_error.max():.2e}/{oracle_error.mean():.2e}"
    )


def assert_parity(ours, model, architecture, layers, method, batch, targets, oracle=None, **options):
    assert_two_tier(ours, lambda double: oracle_maps(model, architecture, layers, method, batch, targets,
                                                     double=double, oracle=oracle, **options), str(layers))


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
