"""The rest of the gradient family against pytorch-grad-cam's classes of the same name."""

from __future__ import annotations

import numpy as np
import pytest
from pytorch_grad_cam import (KPCA_CAM, EigenCAM, EigenGradCAM, GradCAM, GradCAMElementWise, HiResCAM,
                              LayerCAM, XGradCAM)

from conftest import random_batch
from onnxcam.runtime import Explainer
from test_parity import assert_parity

ORACLES = {
    "xgradcam": XGradCAM, "hirescam": HiResCAM, "gradcam-elementwise": GradCAMElementWise,
    "layercam": LayerCAM, "eigencam": EigenCAM, "eigengradcam": EigenGradCAM, "kpca-cam": KPCA_CAM,
}
ARCHITECTURES = ["resnet18", "vgg16", "densenet121", "vit_b_16"]
# Known and open (issue 4): XGradCAM divides by each channel's activation sum, which is near zero
# for some channels of DenseNet's pre-norm denseblock4; there onnxcam's error from the float64
# truth was 9.9e-4 max (1.2e-4 mean) against pytorch-grad-cam's own 3.4e-4 (3.5e-5): over the 2x
# bound. Measured: onnxcam's activations are as close to float64 as torch's float32 (7.4e-6 vs
# 1.0e-5 relative, max) and its gradients closer; one channel whose activation sum is 0.009
# (median 10) amplifies the rounding of either by ~1000x, and onnxruntime's rounding lands worse
# there. Turning off onnxruntime's graph optimisations (BatchNorm folding) does not change it
# (9.3e-4). Strict, so that the day it passes the marker must go.
KNOWN_OPEN = {("xgradcam", "densenet121")}


def _cases():
    for method in ORACLES:
        for architecture in ARCHITECTURES:
            marks = [pytest.mark.xfail(strict=True, reason="XGradCAM ill-conditioned at denseblock4, issue 4")] \
                if (method, architecture) in KNOWN_OPEN else []
            yield pytest.param(method, architecture, marks=marks, id=f"{method}-{architecture}")


@pytest.mark.parametrize("method,architecture", _cases())
def test_method_matches_pytorch_grad_cam(zoo, architecture, method):
    model, path, layers = zoo(architecture)
    explainer = Explainer(path, providers="cpu")
    batch = random_batch(architecture, count=2, seed=9)
    for layer in layers:
        result = explainer.explain(batch, method=method, targets=[-1, 7], layers=[layer])
        assert_parity(result.maps, model, architecture, [layer], method, batch, result.targets,
                      oracle=ORACLES[method])


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_eigen_smooth_matches_pytorch_grad_cam(zoo, method):
    model, path, layers = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    batch = random_batch("resnet18", count=2, seed=4)
    result = explainer.explain(batch, method=method, layers=["layer4"], eigen_smooth=True)
    plain = explainer.explain(batch, method=method, layers=["layer4"])
    assert np.abs(result.maps - plain.maps).max() > 1e-2  # the option does something
    oracle = GradCAM if method == "gradcam" else LayerCAM
    assert_parity(result.maps, model, "resnet18", ["layer4"], method, batch, result.targets,
                  oracle=oracle, eigen_smooth=True)


@pytest.mark.parametrize("method,targets", [("gradcam", None), ("gradcam++", [3, 11])])
def test_aug_smooth_matches_pytorch_grad_cam(zoo, method, targets):
    """Six test-time augmentations, maps flipped back and averaged; None = each pass's own top class."""
    import torch
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, path, layers = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    batch = random_batch("resnet18", count=2, seed=6)
    result = explainer.explain(batch, method=method, targets=targets, layers=["layer3"], aug_smooth=True)
    plain = explainer.explain(batch, method=method, targets=targets, layers=["layer3"])
    assert np.abs(result.maps - plain.maps).max() > 1e-2  # the option does something
    oracle = GradCAM if method == "gradcam" else GradCAMPlusPlus
    with oracle(model, [model.layer3]) as cam:
        reference = cam(torch.from_numpy(batch), aug_smooth=True,
                        targets=None if targets is None else [ClassifierOutputTarget(t) for t in targets])
    assert np.abs(result.maps - reference).max() <= 1e-4
