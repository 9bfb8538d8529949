"""Post-processing of single-stage detectors (RetinaNet, FCOS, SSD) from their raw head outputs.

numpy reproductions of torchvision's ``postprocess_detections`` and ``batched_nms``; each
detection keeps the anchor row and logit column of the raw output it came from.
"""

from onnxcam.runtime.detection.decode import FAMILIES, PARAMS, Detections, decode
from onnxcam.runtime.detection.nms import batched_nms, nms

__all__ = ["FAMILIES", "PARAMS", "Detections", "batched_nms", "decode", "nms"]
