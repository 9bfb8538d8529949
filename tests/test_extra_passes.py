"""Score-CAM and Ablation-CAM: weights from batched forward passes on onnxruntime, against
pytorch-grad-cam's ScoreCAM and AblationCAM on the same model, input, layer and target."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from pytorch_grad_cam import AblationCAM, ScoreCAM

from conftest import random_batch
from onnxcam.runtime import ContractError, Explainer
from onnxcam.runtime.methods.ablationcam import ablation_values
from test_parity import assert_parity
from zoo import tiny

ORACLES = {"scorecam": ScoreCAM, "ablationcam": AblationCAM}


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
    """TinyNet explained at a pre-ReLU conv (negative minimum) and at its last ReLU."""
    from onnxcam.export import export_explainer

    model = tiny()
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export_explainer(model, path, ["features.3", "features"], (2, 3, 32, 32))
    return model, path


def test_ablation_value_follows_pytorch_grad_cam():
    """0 after a ReLU; else the minimum sinks by 1e7 per channel within a chunk (AblationLayer)."""
    assert not ablation_values(np.array([0.0, 2.0]), 3, 32).any()
    values = ablation_values(np.array([-1.0, 2.0], np.float32), 5, 2)
    np.testing.assert_array_equal(values, np.float32([-1 - 1e7, -1 - 2e7, -1 - 1e7, -1 - 2e7, -1 - 1e7]))


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_tiny_net_matches_pytorch_grad_cam(tiny_graph, method):
    model, path = tiny_graph
    explainer = Explainer(path, providers="cpu")
    batch = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for layer in ["features.3", "features"]:
        result = explainer.explain(batch, method=method, targets=[-1, 2], layers=[layer])
        assert result.maps.std() > 0.05
        assert_parity(result.maps, model, "tiny", [layer], method, batch, result.targets, oracle=ORACLES[method])


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_resnet18_matches_pytorch_grad_cam(zoo, method):
    model, path, _ = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    batch = random_batch("resnet18", count=1, seed=11)
    result = explainer.explain(batch, method=method, targets=[-1], layers=["layer4"])
    gradcam = explainer.explain(batch, method="gradcam", targets=[-1], layers=["layer4"])
    assert np.abs(result.maps - gradcam.maps).max() > 1e-2  # its own weights, not Grad-CAM's
    assert_parity(result.maps, model, "resnet18", ["layer4"], method, batch, result.targets, oracle=ORACLES[method])


def test_ablation_of_inner_layer_matches(zoo):
    """layer3: the tail is a whole residual stage, not just the head."""
    model, path, _ = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    batch = random_batch("resnet18", count=1, seed=12)
    result = explainer.explain(batch, method="ablationcam", targets=[5], layers=["layer3"])
    assert_parity(result.maps, model, "resnet18", ["layer3"], "ablationcam", batch, result.targets,
                  oracle=AblationCAM)


@pytest.mark.parametrize("architecture,layer", [("resnet18", "layer3"), ("vit_b_16", "encoder.layers.encoder_layer_8"),
                                                ("densenet121", "features.denseblock3")])
def test_the_tail_reproduces_the_logits(zoo, architecture, layer):
    """The model after the layer, run on the layer's output, gives back the logits (token layers too)."""
    model, path, _ = zoo(architecture)
    explainer = Explainer(path, providers="cpu")
    chosen = explainer.contract.layer(layer)
    assert chosen.tail is not None
    batch = random_batch(architecture, count=2, seed=1)
    outputs = explainer.run(batch, np.full(2, -1), ["output", chosen.tail["input"]])
    assert list(outputs[chosen.tail["input"]].shape[1:]) == chosen.tail["shape"]
    again = explainer.tail_forward(chosen)(outputs[chosen.tail["input"]])
    np.testing.assert_allclose(again, outputs["output"], rtol=1e-5, atol=1e-5 * np.abs(outputs["output"]).max())
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(explainer.logits(batch), expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_a_graph_without_the_tail_is_refused(zoo, tmp_path):
    _, path, _ = zoo("resnet18")
    graph = onnx.load(str(path))
    record = json.loads(graph.metadata_props[0].value)
    for layer in record["layers"]:
        layer.pop("tail")
    graph.metadata_props[0].value = json.dumps(record)
    old = tmp_path / "old.onnx"
    onnx.save(graph, str(old))
    explainer = Explainer(old, providers="cpu")
    with pytest.raises(ContractError, match="no model tail.*re-export"):
        explainer.explain(random_batch("resnet18", count=1), method="ablationcam")
