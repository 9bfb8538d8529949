"""CAM (GAP + linear head): weights from the graph, maps against torch, refused where it does not apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import random_batch
from onnxcam.runtime import ContractError, Explainer
from onnxcam.runtime.methods import fuse_layers, layer_map


def torch_cam(model, layer, batch, targets):
    """CAM from torch: fc.weight[target] · activation, then the post-processing that the parity
    tests hold to pytorch-grad-cam's (per-layer ReLU/min-max/resize, then the final min-max)."""
    captured = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        model(torch.from_numpy(batch))
    handle.remove()
    weights = model.fc.weight.detach()[torch.as_tensor(targets)]
    raw = torch.einsum("nc,nchw->nhw", weights, captured[0]).numpy()
    return fuse_layers([layer_map(raw, batch.shape[2:])])


def test_cam_matches_torch_and_equals_gradcam_for_gap_linear_heads(zoo):
    model, path, _ = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    assert explainer.contract.layer("layer4").cam_weight == "cam_weight_1"
    batch = random_batch("resnet18", count=3, seed=11)
    result = explainer.explain(batch, method="cam", targets=[-1, 4, 900], layers=["layer4"])
    expected = torch_cam(model, "layer4", batch, result.targets)
    np.testing.assert_allclose(result.maps, expected, atol=1e-4)
    # with GAP + linear, ∂y_c/∂A = W[c] / (h·w) everywhere: Grad-CAM's weights are CAM's, scaled
    gradcam = explainer.explain(batch, method="gradcam", targets=[-1, 4, 900], layers=["layer4"])
    np.testing.assert_allclose(result.maps, gradcam.maps, atol=1e-4)


def test_cam_is_refused_where_no_gap_linear_head_follows(zoo):
    _, path, _ = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    with pytest.raises(ContractError, match="layer3.*gradcam"):
        explainer.explain(random_batch("resnet18", count=1), method="cam", layers=["layer3"])
    _, vgg_path, _ = zoo("vgg16")
    with pytest.raises(ContractError, match="global-average-pool"):
        Explainer(vgg_path, providers="cpu").explain(random_batch("vgg16", count=1), method="cam")
