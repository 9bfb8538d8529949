"""The explainer graph's gradients are real: they follow the input and equal torch autograd.

Equal means: within 1e-4 of torch's float32 autograd (relative to the largest value), or —
where ReLU masks flip on values near zero and float32 itself strays (ResNet-50 ``layer3``:
torch float32 is ~8e-2 off float64 at its worst element) — no further from torch's float64
autograd than twice torch float32's own error, in max and in mean (README's two tiers;
``tolerances.py``, whose float32 error is the largest over a few throws on nudged inputs).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import one_hot_seed, random_batch
from test_parity import double_model
from tolerances import Throws, assert_two_tier
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


class References:
    """torch's float32 autograd on the batch, its float64 truth and its float32 throws on nudged copies of the
    batch (``tolerances.Throws``), the last two computed once, when first needed."""

    def __init__(self, model, layers, batch, targets, reshape):
        self.model, self.layers, self.batch, self.reshape = model, layers, batch, reshape
        self.float32 = torch_reference(model, layers, batch, targets, reshape)
        self.targets = self.float32[1]  # the classes float32 resolved: the truth and the throws explain the same
        self._truth = None
        self.throws = Throws(lambda at: torch_reference(model, layers, at, self.targets, reshape), batch)

    def truth(self):
        if self._truth is None:
            self._truth = torch_reference(double_model(self.model), self.layers, self.batch.astype(np.float64),
                                          self.targets, self.reshape)
        return self._truth


def assert_close_to_autograd(ours, references: References, kind: int, i: int, name: str) -> None:
    """Tier 1: ≤ 1e-4 relative to float32 autograd; tier 2: ≤ 2× float32's own error from float64, the float32
    error taken over the throws (``tolerances.py``). ``kind``: 0 logits, 2 activations, 3 gradients; ``i``: the
    layer (None for the logits)."""
    def pick(reference):
        return reference[kind] if i is None else reference[kind][i]
    assert_two_tier(ours, pick(references.float32), lambda: pick(references.truth()), tight=TOLERANCE,
                    relative=True, alternatives=lambda: references.throws(pick),
                    what=f"{name} {('logits', None, 'activation', 'gradient')[kind]}")


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
        references = References(model, layers, batch, targets, reshape_transform(architecture))
        logits, resolved, activations, gradients = references.float32
        # the seed of each image's class target (the resolved class: -1 is the top one)
        outputs = session.run(names, {"input": batch, "seed": one_hot_seed(resolved, logits.shape[1])})
        assert_close_to_autograd(outputs[0], references, 0, None, architecture)
        for i, name in enumerate(layers):
            ours_activation, ours_gradient = outputs[1 + i], outputs[1 + len(layers) + i]
            assert ours_activation.shape == activations[i].shape, name
            assert_close_to_autograd(ours_activation, references, 2, i, name)
            assert np.abs(gradients[i]).max() > 0, f"{name}: reference gradient is zero; the test proves nothing"
            assert_close_to_autograd(ours_gradient, references, 3, i, name)
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
    references = References(model, layers, batch, targets, None)
    _, reference_targets, _, reference_gradients = references.float32
    logits, gradient = session.run(["output", f"gradient_{len(layers) - 1}"],
                                   {"input": batch, "seed": one_hot_seed(reference_targets, 1000)})
    assert logits.shape == (batch_size, 1000)
    assert_close_to_autograd(logits, references, 0, None, f"batch of {batch_size}")
    assert gradient.shape == reference_gradients[-1].shape
