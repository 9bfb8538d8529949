"""The rest of the gradient family against pytorch-grad-cam's classes of the same name."""

from __future__ import annotations

import numpy as np
import pytest
from pytorch_grad_cam import (KPCA_CAM, EigenCAM, EigenGradCAM, GradCAM, GradCAMElementWise, GradCAMPlusPlus,
                              HiResCAM, LayerCAM, XGradCAM)

from conftest import random_batch
from onnxcam.runtime import Explainer
from test_parity import assert_parity

ORACLES = {
    "xgradcam": XGradCAM, "hirescam": HiResCAM, "gradcam-elementwise": GradCAMElementWise,
    "layercam": LayerCAM, "eigencam": EigenCAM, "eigengradcam": EigenGradCAM, "kpca-cam": KPCA_CAM,
}
ARCHITECTURES = ["resnet18", "vgg16", "densenet121", "vit_b_16"]
# XGradCAM divides by each channel's activation sum, which is near zero for some channels of DenseNet's
# pre-norm denseblock4 (issue 4): one channel whose sum is 0.009 (median 10) amplifies the float32 rounding
# of either implementation by ~1000x. onnxcam's activations are as close to float64 as torch's float32 (7.4e-6
# vs 1.0e-5 relative, max) and its gradients closer. Which of the two lands nearer the truth is luck: onnxcam's
# error was 2.9x pytorch-grad-cam's on one machine and 1.32x on another (issue 10). Measured on this batch and
# on 8 copies nudged by 4 ulps (``tolerances.nudged``), max/mean from float64: pytorch-grad-cam float32
# 3.4e-4..1.6e-3 / 3.5e-5..1.8e-4, onnxcam 3.2e-4..2.9e-3 / 5.2e-5..3.2e-4: the same spread. So the case is
# checked like every other, its yardstick the largest float32 distance over a few throws (``tolerances.py``),
# not marked: the strict xfail passed or failed by the CPU's rounding.


def _cases():  # architecture outer: the float64 copies of the models are made once each (``double_model``)
    for architecture in ARCHITECTURES:
        for method in ORACLES:
            yield pytest.param(method, architecture, id=f"{method}-{architecture}")


@pytest.mark.parametrize("method,architecture", list(_cases()))
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
    """Six test-time augmentations, maps flipped back and averaged; None = each pass's own top class.
    pytorch-grad-cam's float32 maps were 2.4e-4 (gradcam) / 2.0e-4 (gradcam++) from its float64 maps on one
    machine, onnxcam's 1.1e-6 / 4.5e-7 (issue 10): two tiers, as everywhere."""
    model, path, layers = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    batch = random_batch("resnet18", count=2, seed=6)
    result = explainer.explain(batch, method=method, targets=targets, layers=["layer3"], aug_smooth=True)
    plain = explainer.explain(batch, method=method, targets=targets, layers=["layer3"])
    assert np.abs(result.maps - plain.maps).max() > 1e-2  # the option does something
    oracle = GradCAM if method == "gradcam" else GradCAMPlusPlus
    assert_parity(result.maps, model, "resnet18", ["layer3"], method, batch, targets, oracle=oracle, aug_smooth=True)
