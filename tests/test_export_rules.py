"""Every activation's backward survives export: tiny models, gradients against torch autograd."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from conftest import one_hot_seed
from onnxcam.export import export_explainer

ACTIVATIONS = {
    "relu": nn.ReLU(), "relu6": nn.ReLU6(), "silu": nn.SiLU(), "mish": nn.Mish(), "gelu": nn.GELU(),
    "gelu_tanh": nn.GELU(approximate="tanh"), "hardswish": nn.Hardswish(), "hardsigmoid": nn.Hardsigmoid(),
    "elu": nn.ELU(), "leaky_relu": nn.LeakyReLU(0.1), "softplus": nn.Softplus(), "sigmoid": nn.Sigmoid(),
    "tanh": nn.Tanh(),
}
POOLS = {
    "maxpool": nn.MaxPool2d(2), "avgpool": nn.AvgPool2d(2), "avgpool_padded": nn.AvgPool2d(3, 2, padding=1),
    "adaptive_5x5": nn.AdaptiveAvgPool2d(5), "adaptive_3x3": nn.AdaptiveAvgPool2d(3), "identity": nn.Identity(),
}


class Probe(nn.Module):
    """conv → norm → op → conv → pool → GAP → linear; the explained layer is ``conv1``."""

    def __init__(self, op: nn.Module, norm: str = "batch"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6) if norm == "batch" else nn.GroupNorm(2, 6)
        self.op = op
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2)
        self.pool = nn.Identity()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.conv2(self.op(self.norm(self.conv1(x))))
        return self.head(self.pool(y).mean(dim=(2, 3)))


def gradient_check(model: nn.Module, tmp_path, size: int = 12):
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    model.eval()
    path = tmp_path / "probe.onnx"
    export_explainer(model, path, ["conv1"], (2, 3, size, size))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)
    captured_logits = model(torch.from_numpy(batch)).detach().numpy()
    resolved = np.array([captured_logits[0].argmax(), 1, 2])  # the top class, then two fixed ones
    logits, activation, gradient = session.run(None, {"input": batch, "seed": one_hot_seed(resolved, 4)})

    captured = []
    model.conv1.register_forward_hook(lambda m, i, o: captured.append(o))
    reference_logits = model(torch.from_numpy(batch))
    score = reference_logits.gather(1, torch.from_numpy(resolved)[:, None]).sum()
    reference, = torch.autograd.grad(score, captured[0])
    np.testing.assert_allclose(logits, reference_logits.detach().numpy(), rtol=1e-4, atol=1e-5)
    scale = np.abs(reference.numpy()).max()
    assert scale > 0
    assert np.abs(gradient - reference.numpy()).max() <= 1e-4 * scale


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_backward(name, tmp_path):
    gradient_check(Probe(ACTIVATIONS[name]), tmp_path)


@pytest.mark.parametrize("name", POOLS)
def test_pooling_backward(name, tmp_path):
    model = Probe(nn.ReLU(), norm="group")
    model.pool = POOLS[name]
    gradient_check(model, tmp_path, size=20)
