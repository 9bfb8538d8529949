"""Random-weight torchvision models made fit for parity tests, and the layers tested on each.

Random weights have traps (measured, see issue 2): default BatchNorm statistics
shrink MobileNet/EfficientNet activations to ~1e-8, and torchvision's ViT head
starts at zero (zero logits, zero gradients). ``build`` re-estimates BatchNorm
statistics on a few random batches and gives zero-initialised heads random weights.
"""

from __future__ import annotations

import torch

from onnxcam.models.torchvision_recipes import recalibrate_batchnorm  # noqa: F401 (tests import it from here)
import torchvision
from torch import nn

# architecture → layers exported into one graph (inner layers too: at ResNet's layer4
# the gradient is the fc row spread evenly, which hardly tests the backward)
LAYERS: dict[str, list[str]] = {
    "resnet18": ["layer3", "layer4"],
    "resnet50": ["layer3", "layer4"],
    "vgg16": ["features.22", "features"],
    "densenet121": ["features.denseblock3", "features.denseblock4"],
    "mobilenet_v3_large": ["features.12", "features"],
    "efficientnet_b0": ["features.5", "features"],
    "convnext_tiny": ["features.5", "features"],
    # the last block's patch tokens get exactly zero gradient: use ln_1 of it, and an earlier block
    "vit_b_16": ["encoder.layers.encoder_layer_8", "encoder.layers.encoder_layer_11.ln_1"],
}

INPUT_SIZE = {"vit_b_16": 224}
DEFAULT_SIZE = 160


def input_size(architecture: str) -> int:
    return INPUT_SIZE.get(architecture, DEFAULT_SIZE)


def build(architecture: str, seed: int = 0) -> nn.Module:
    """The torchvision model with seeded random weights, usable statistics and a live head."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(architecture, weights=None)
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.02)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        recalibrate_batchnorm(model, input_size(architecture))
    return model.eval()


def vit_reshape(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT reshape: drop the class token, tokens → ``[N, C, 14, 14]``."""
    side = int((tensor.shape[1] - 1) ** 0.5)
    grid = tensor[:, 1:, :].reshape(tensor.size(0), side, side, tensor.size(2))
    return grid.transpose(2, 3).transpose(1, 2)


def reshape_transform(architecture: str):
    return vit_reshape if architecture.startswith("vit") else None


class TinyNet(nn.Module):
    """A small CNN with a GAP + linear head, for fast CLI tests (``tests.zoo:tiny``)."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet().eval()
