"""onnxcam's export side: PyTorch model → explainer graph (needs torch and onnx), and
``augment``: an existing ONNX classifier → explainer graph (onnx only, no torch).

Names are imported on first use, so ``from onnxcam.export import augment`` does not import torch.
"""

from __future__ import annotations

import importlib

# torch-free, imported now: the function, not the submodule, is then ``onnxcam.export.augment``
from onnxcam.export.augment import augment

_NAMES = {
    "ExplainerModule": "onnxcam.export.explainer",
    "export_explainer": "onnxcam.export.explainer",
    "find_layer": "onnxcam.export.layers",
}

__all__ = ["augment", *_NAMES]


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'onnxcam.export' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)
