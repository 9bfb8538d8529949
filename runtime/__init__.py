"""onnxcam's runtime: explainer graphs on onnxruntime, CAM maps in numpy, overlays in OpenCV.

Nothing here imports torch (docs/explainer-graph.md: the runtime stays torch-free).
"""

from onnxcam.runtime.contract import Contract, ContractError, InputError, Layer, parse_metadata
from onnxcam.runtime.image import ImageError, load_batch, load_image, overlay, save_image
from onnxcam.runtime.methods import METHODS
from onnxcam.runtime.explainer import Explainer
from onnxcam.runtime.explanation import Explanation
from onnxcam.runtime.providers import ProviderError, resolve_providers
from onnxcam.runtime.targets import (BinaryTarget, ClassTarget, OutputTarget, SegmentationTarget, SimilarityTarget,
                                     SoftmaxTarget, Target)

__all__ = [
    "Contract", "ContractError", "Explainer", "Explanation", "ImageError", "InputError", "Layer", "METHODS",
    "ProviderError", "Target", "ClassTarget", "SoftmaxTarget", "BinaryTarget", "OutputTarget",
    "SegmentationTarget", "SimilarityTarget", "load_batch", "load_image", "overlay", "parse_metadata", "resolve_providers", "save_image",
]
