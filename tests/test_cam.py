"""CAM (GAP + linear head): weights from the graph, maps against pytorch-grad-cam's pipeline, refused where it
does not apply."""

from __future__ import annotations

import numpy as np
import pytest
from pytorch_grad_cam.base_cam import BaseCAM

from conftest import random_batch
from onnxcam.runtime import ContractError, Explainer
from test_parity import assert_layer_maps, assert_parity


class CAMOracle(BaseCAM):
    """CAM (Zhou et al., 2016) written as a pytorch-grad-cam method: the channel weights are the ``fc`` row of
    each image's target; pytorch-grad-cam's own code does the rest (the weighted sum, ReLU, min-max, resize,
    the fusion), in float32 or, on a float64 model, in float64."""

    def __init__(self, model, target_layers, reshape_transform=None):
        super().__init__(model, target_layers, reshape_transform, uses_gradients=False)

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        rows = [target.category for target in targets]
        return self.model.fc.weight.detach().cpu().numpy()[rows]


def test_cam_matches_pytorch_grad_cam_and_equals_gradcam_for_gap_linear_heads(zoo):
    model, path, _ = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    assert explainer.contract.layer("layer4").cam_weight == "cam_weight_1"
    batch = random_batch("resnet18", count=3, seed=11)
    result = explainer.explain(batch, method="cam", targets=[-1, 4, 900], layers=["layer4"])
    assert list(result.targets[1:]) == [4, 900] and result.targets[0] == result.logits[0].argmax()
    assert_parity(result.maps, model, "resnet18", ["layer4"], "cam", batch, result.targets, oracle=CAMOracle)
    assert_layer_maps(result.layer_maps, model, "resnet18", ["layer4"], "cam", batch, result.targets,
                      oracle=CAMOracle)
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
