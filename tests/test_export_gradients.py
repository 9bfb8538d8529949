"""The explainer graph's gradients are real: they follow the input and equal torch autograd.

Equal means: within 1e-4 of torch's float32 autograd (relative to the largest value), or —
where ReLU masks flip on values near zero and float32 itself strays (ResNet-50 ``layer3``:
torch float32 is ~8e-2 off float64 at its worst element) — no further from torch's float64
autograd than twice torch float32's own error, in max and in mean (DESIGN.md's two tiers).
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import one_hot_seed, random_batch
from zoo import LAYERS, reshape_transform

ARCHITECTURES = list(LAYERS)
TOLERANCE = 1e-4  # relative to the largest reference value


def torch_reference(model, layers, batch: np.ndarray, targets: np.ndarray, reshape):
    """logits, resolved targets, activations and gradients from plain torch autograd."""
    captured = []
    handles = [model.get_submodule(name).register_forward_hook(lambda m, i, o: captured.append(o)) for name in layers]
    try:
        x = torch.from_numpy(batch).requires_grad_(True)
        logits = model(x)
        top = logits.argmax(dim=1)
        resolved = torch.where(torch.from_numpy(targets) < 0, top, torch.from_numpy(targets))
        score = logits.gather(1, resolved[:, None]).sum()
        gradients = torch.autograd.grad(score, captured)
    finally:
        for handle in handles:
            handle.remove()
    shape = reshape or (lambda t: t)
    return (logits.detach().numpy(), resolved.numpy(),
            [shape(a).detach().numpy() for a in captured], [shape(g).numpy() for g in gradients])


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / max(np.abs(reference).max(), 1e-30))


def assert_close_to_autograd(ours, reference32, truth, name):
    """Tier 1: ≤ 1e-4 relative to float32 autograd; tier 2: ≤ 2× float32's own error from float64."""
    if relative_error(ours, reference32) < TOLERANCE:
        return
    ours_error, torch_error = np.abs(ours - truth()), np.abs(reference32 - truth())
    assert ours_error.max() <= 2 * torch_error.max() and ours_error.mean() <= 2 * torch_error.mean(), (
        f"{name}: {relative_error(ours, reference32):.2e} from float32 autograd; from float64: ours "
        f"{ours_error.max():.2e}/{ours_error.mean():.2e} (max/mean), torch float32 {torch_error.max():.2e}/{torch_error.mean():.2e}"
    )


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_gradients_match_autograd_and_follow_the_input(zoo, architecture):
    model, path, layers = zoo(architecture)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ["output"] + [f"activation_{i}" for i in range(len(layers))] + \
        [f"gradient_{i}" for i in range(len(layers))]
    targets = np.array([-1, 3, 11], dtype=np.int64)
    gradients_per_input = []
    for seed in (1, 2):
        batch = random_batch(architecture, seed=seed)
        reshape = reshape_transform(architecture)
        logits, resolved, activations, gradients = torch_reference(model, layers, batch, targets, reshape)
        # the seed of each image's class target (the resolved class: -1 is the top one)
        outputs = session.run(names, {"input": batch, "seed": one_hot_seed(resolved, logits.shape[1])})
        double = {}

        def truth(kind, i):
            if not double:
                reference = torch_reference(copy.deepcopy(model).double(), layers,
                                            batch.astype(np.float64), targets, reshape)
                double.update(activation=reference[2], gradient=reference[3])
            return double[kind][i]
        assert relative_error(outputs[0], logits) < TOLERANCE
        for i, name in enumerate(layers):
            ours_activation, ours_gradient = outputs[1 + i], outputs[1 + len(layers) + i]
            assert ours_activation.shape == activations[i].shape, name
            assert_close_to_autograd(ours_activation, activations[i], lambda: truth("activation", i), name)
            assert np.abs(gradients[i]).max() > 0, f"{name}: reference gradient is zero; the test proves nothing"
            assert_close_to_autograd(ours_gradient, gradients[i], lambda: truth("gradient", i), name)
        gradients_per_input.append(outputs[1 + len(layers):])
    for i, name in enumerate(layers):
        first, second = gradients_per_input[0][i], gradients_per_input[1][i]
        assert relative_error(first, second) > 1e-2, f"{name}: gradient does not depend on the input (frozen?)"


@pytest.mark.parametrize("batch_size", [1, 5])
def test_batch_dimension_is_dynamic(zoo, batch_size):
    model, path, layers = zoo("resnet18")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = random_batch("resnet18", count=batch_size, seed=3)
    targets = np.full(batch_size, -1, dtype=np.int64)
    reference, reference_targets, _, reference_gradients = torch_reference(model, layers, batch, targets, None)
    logits, gradient = session.run(["output", f"gradient_{len(layers) - 1}"],
                                   {"input": batch, "seed": one_hot_seed(reference_targets, 1000)})
    assert logits.shape == (batch_size, 1000)
    assert relative_error(logits, reference) < TOLERANCE
    assert gradient.shape == reference_gradients[-1].shape
