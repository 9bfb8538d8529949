"""onnxcam's export side: PyTorch model → explainer graph (needs torch and onnx)."""

from onnxcam.export.explainer import ExplainerModule, export_explainer
from onnxcam.export.layers import find_layer

__all__ = ["ExplainerModule", "export_explainer", "find_layer"]
