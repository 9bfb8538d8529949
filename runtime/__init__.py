"""onnxcam's runtime: explainer graphs on onnxruntime, CAM maps in numpy, overlays in OpenCV.

Nothing here imports torch (DESIGN.md, "the one invariant").
"""

from onnxcam.runtime.contract import Contract, ContractError, Layer, parse_metadata
from onnxcam.runtime.image import ImageError, load_batch, load_image, overlay, save_image
from onnxcam.runtime.methods import METHODS
from onnxcam.runtime.session import Explainer, Explanation, InputError, ProviderError, resolve_providers

__all__ = [
    "Contract", "ContractError", "Explainer", "Explanation", "ImageError", "InputError", "Layer", "METHODS",
    "ProviderError", "load_batch", "load_image", "overlay", "parse_metadata", "resolve_providers", "save_image",
]
