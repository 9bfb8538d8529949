"""Vanilla saliency, Guided Backprop and Guided Grad-CAM from an export with input gradients,
against torch autograd and pytorch-grad-cam's GuidedBackpropReLUModel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from conftest import random_batch
from onnxcam.runtime import ContractError, Explainer
from zoo import build


@pytest.fixture(scope="module")
def guided_resnet(tmp_path_factory):
    from onnxcam.export import export_explainer

    model = build("resnet18")
    path = tmp_path_factory.mktemp("guided") / "resnet18-guided.onnx"
    export_explainer(model, path, ["layer4"], (2, 3, 96, 96), input_gradients=["plain", "guided"])
    return model, path


def _close(ours: np.ndarray, reference: np.ndarray, tolerance: float = 1e-4) -> None:
    assert np.abs(ours - reference).max() <= tolerance * np.abs(reference).max()


def test_saliency_is_the_input_gradient(guided_resnet):
    model, path = guided_resnet
    batch = np.random.default_rng(2).standard_normal((2, 3, 96, 96)).astype(np.float32)
    result = Explainer(path, providers="cpu").explain(batch, method="saliency", targets=[-1, 7])
    tensor = torch.from_numpy(batch).requires_grad_(True)
    logits = model(tensor)
    targets = torch.tensor([int(logits[0].argmax()), 7])
    (gradient,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), tensor)
    _close(result.attributions, gradient.numpy())
    expected = np.abs(gradient.numpy()).max(axis=1)
    expected = (expected - expected.min(axis=(1, 2), keepdims=True))
    expected /= expected.max(axis=(1, 2), keepdims=True) + 1e-7
    assert np.abs(result.maps - expected).max() <= 1e-4


def test_guided_backprop_matches_pytorch_grad_cam(guided_resnet):
    model, path = guided_resnet
    explainer = Explainer(path, providers="cpu")
    batch = np.random.default_rng(3).standard_normal((2, 3, 96, 96)).astype(np.float32)
    guided = explainer.explain(batch, method="guided-backprop", targets=[-1, 4])
    plain = explainer.explain(batch, method="saliency", targets=[-1, 4])
    assert np.abs(guided.attributions - plain.attributions).max() > 1e-3 * np.abs(plain.attributions).max()
    for index, target in enumerate(guided.targets):
        reference = GuidedBackpropReLUModel(model, device="cpu")(torch.from_numpy(batch[index:index + 1]),
                                                                  target_category=int(target))
        _close(guided.attributions[index].transpose(1, 2, 0), reference)


def test_guided_gradcam_is_the_product(guided_resnet):
    model, path = guided_resnet
    explainer = Explainer(path, providers="cpu")
    batch = np.random.default_rng(4).standard_normal((1, 3, 96, 96)).astype(np.float32)
    result = explainer.explain(batch, method="guided-gradcam", targets=[9])
    with GradCAM(model, [model.layer4]) as cam:
        mask = cam(torch.from_numpy(batch), targets=[ClassifierOutputTarget(9)])[0]
    guided = GuidedBackpropReLUModel(model, device="cpu")(torch.from_numpy(batch), target_category=9)
    _close(result.attributions[0].transpose(1, 2, 0), mask[..., None] * guided, tolerance=1e-3)


def test_top_k_input_gradients_are_per_target(guided_resnet):
    _, path = guided_resnet
    explainer = Explainer(path, providers="cpu")
    batch = np.random.default_rng(5).standard_normal((2, 3, 96, 96)).astype(np.float32)
    both = explainer.explain(batch, method="guided-backprop", top_k=2)
    second = explainer.explain(batch, method="guided-backprop", targets=both.targets[:, 1])
    np.testing.assert_allclose(both.attributions[:, 1], second.attributions, rtol=1e-5, atol=1e-6)


def test_a_graph_without_input_gradients_is_refused(zoo):
    _, path, _ = zoo("resnet18")
    with pytest.raises(ContractError, match="--input-gradient guided"):
        Explainer(path, providers="cpu").explain(random_batch("resnet18", count=1), method="guided-gradcam")
