"""Every activation's backward survives export: tiny branches, gradients against torch autograd.

One probe holds a branch per activation and per pooling (conv → norm → op → conv → pool → mean → linear,
the branches' logits summed); it is exported once with every branch's ``conv1`` explained. A branch's
gradient flows through its own op only, so each op keeps its own test and its own error message.
Weights are seeded: the probe is the same whatever ran before.
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from conftest import one_hot_seed
from onnxcam.export import export_explainer
from tolerances import Throws, assert_two_tier

ACTIVATIONS = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
    "elu": nn.ELU, "leaky_relu": lambda: nn.LeakyReLU(0.1), "softplus": nn.Softplus, "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}
POOLS = {
    "maxpool": lambda: nn.MaxPool2d(2), "avgpool": lambda: nn.AvgPool2d(2),
    "avgpool_padded": lambda: nn.AvgPool2d(3, 2, padding=1), "adaptive_5x5": lambda: nn.AdaptiveAvgPool2d(5),
    "adaptive_3x3": lambda: nn.AdaptiveAvgPool2d(3), "identity": nn.Identity,
}
SIZE = 20  # the pools' input is 10x10 (conv2 has stride 2)
CLASSES = 4


class Branch(nn.Module):
    """conv → norm → op → conv → pool → GAP → linear; the explained layer is ``conv1``."""

    def __init__(self, op: nn.Module, norm: str = "batch", pool: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6) if norm == "batch" else nn.GroupNorm(2, 6)
        self.op = op
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2)
        self.pool = pool if pool is not None else nn.Identity()
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x):
        y = self.conv2(self.op(self.norm(self.conv1(x))))
        return self.head(self.pool(y).mean(dim=(2, 3)))


class Probe(nn.Module):
    """Every branch on the same input; the logits are their sum."""

    def __init__(self):
        super().__init__()
        branches = {name: Branch(make()) for name, make in ACTIVATIONS.items()}
        branches.update({f"pool_{name}": Branch(nn.ReLU(), norm="group", pool=make()) for name, make in POOLS.items()})
        self.branches = nn.ModuleDict(branches)

    def forward(self, x):
        return torch.stack([branch(x) for branch in self.branches.values()]).sum(dim=0)


def build_probe() -> Probe:
    torch.manual_seed(0)
    model = Probe()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def autograd(model: nn.Module, batch: np.ndarray, targets: np.ndarray):
    """Logits and ∂ logit[target] / ∂ conv1 of every branch, by name."""
    captured = {}
    handles = [branch.conv1.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
               for name, branch in model.branches.items()]
    try:
        logits = model(torch.from_numpy(batch))
        score = logits.gather(1, torch.from_numpy(targets)[:, None]).sum()
        names = list(model.branches)
        gradients = torch.autograd.grad(score, [captured[name] for name in names])
    finally:
        for handle in handles:
            handle.remove()
    return logits.detach().numpy(), {name: g.numpy() for name, g in zip(names, gradients)}


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """The probe, its explainer graph's outputs on a batch, torch's float32 autograd, and the float64
    truth on demand."""
    model = build_probe()
    names = list(model.branches)
    path = tmp_path_factory.mktemp("probe") / "probe.onnx"
    export_explainer(model, path, [f"branches.{name}.conv1" for name in names], (2, 3, SIZE, SIZE))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        top = int(model(torch.from_numpy(batch))[0].argmax())
    targets = np.array([top, 1, 2])  # the top class, then two fixed ones
    outputs = session.run(["output"] + [f"gradient_{i}" for i in range(len(names))],
                          {"input": batch, "seed": one_hot_seed(targets, CLASSES)})
    logits, gradients = autograd(model, batch, targets)
    truth = {}

    def float64():
        if not truth:
            truth.update(zip(("logits", "gradients"), autograd(copy.deepcopy(model).double(), batch.astype(np.float64),
                                                              targets)))
        return truth

    return {"ours": (outputs[0], dict(zip(names, outputs[1:]))), "float32": (logits, gradients), "float64": float64,
            "throws": Throws(lambda at: autograd(model, at, targets), batch)}


def check_branch(probe, name: str) -> None:
    ours_logits, ours_gradients = probe["ours"]
    logits, gradients = probe["float32"]
    assert np.abs(gradients[name]).max() > 0, f"{name}: the reference gradient is zero; the test proves nothing"
    assert_two_tier(ours_gradients[name], gradients[name], lambda: probe["float64"]()["gradients"][name],
                    tight=1e-4, relative=True, alternatives=lambda: probe["throws"](lambda throw: throw[1][name]),
                    what=f"{name} gradient")
    assert_two_tier(ours_logits, logits, lambda: probe["float64"]()["logits"], tight=1e-4, relative=True,
                    alternatives=lambda: probe["throws"](lambda throw: throw[0]), what="logits")


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_backward(probe, name):
    check_branch(probe, name)


@pytest.mark.parametrize("name", POOLS)
def test_pooling_backward(probe, name):
    check_branch(probe, f"pool_{name}")
