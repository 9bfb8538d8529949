"""Single-stage torchvision detectors as explainer graphs of their raw head outputs (export side).

RetinaNet, FCOS and SSD(lite) decode their head outputs and run NMS after the network
(``postprocess_detections``); onnxcam differentiates the network only, so a detection's
score is one raw class logit of one anchor, and the runtime decodes and runs NMS in numpy
(``runtime/detection``; docs/explainer-graph.md, "Detection").

``RawHeads(model)`` is the network from the normalised image to ``[N, A, D]``: per anchor,
the head's box regression (4), FCOS's centre-ness (1), then the class logits (C), levels
concatenated in torchvision's order; the box columns carry no gradient. ``detection_record(model, size)`` says how to decode it:
the family, the anchors per level, the post-processing thresholds; ``anchors(model, size)``
gives the anchor boxes, stored in the graph as the initializer ``ANCHORS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.image_list import ImageList

ANCHORS = "detection_anchors"  # the initializer holding the anchor boxes [A, 4] (x1, y1, x2, y2)
# torchvision's single-stage detectors: the layer explained by default (inside ``RawHeads``), the input size,
# and the name of their COCO weights (whose metadata, shipped in torchvision's code, gives the labels)
ARCHITECTURES = {
    "retinanet_resnet50_fpn": ("backbone.body.layer4", 320, "RetinaNet_ResNet50_FPN_Weights.COCO_V1"),
    "retinanet_resnet50_fpn_v2": ("backbone.body.layer4", 320, "RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1"),
    "fcos_resnet50_fpn": ("backbone.body.layer4", 320, "FCOS_ResNet50_FPN_Weights.COCO_V1"),
    "ssdlite320_mobilenet_v3_large": ("backbone.features.1", 320, "SSDLite320_MobileNet_V3_Large_Weights.COCO_V1"),
}


def family(model: nn.Module) -> str:
    """``retinanet``, ``fcos`` or ``ssd``; a ``ValueError`` for other detectors."""
    for kind, name in ((RetinaNet, "retinanet"), (FCOS, "fcos"), (SSD, "ssd")):
        if isinstance(model, kind):
            return name
    raise ValueError(f"{type(model).__name__} is not a single-stage torchvision detector (RetinaNet, FCOS, SSD); "
                     "export its raw outputs with your own wrapper")


class RawHeads(nn.Module):
    """``[N, 3, S, S]`` normalised → ``[N, A, D]``: the detector's backbone and head, no transform,
    no decoding, no NMS."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.family = family(model)
        self.backbone, self.head = model.backbone, model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = list(self.backbone(x).values())
        out = self.head(features)
        boxes = [out["bbox_regression"]] + ([out["bbox_ctrness"]] if self.family == "fcos" else [])
        # A detection's target is a class logit, so the box columns need no gradient: detached, the
        # backward skips the regression (and centre-ness) branch, which costs as much as the class
        # branch (docs/explainer-graph.md, "Detection"; the record's ``box_gradient`` is false).
        return torch.cat([part.detach() for part in boxes] + [out["cls_logits"]], dim=-1)


def build(architecture: str, weights: str | Path | None = None, size: int | None = None) -> nn.Module:
    """A torchvision single-stage detector in eval mode for ``size × size`` inputs: random weights (no
    backbone weights either: nothing is downloaded), or a state-dict file's (COCO: 91 classes)."""
    import torchvision

    _, default_size, _ = ARCHITECTURES[architecture]
    size = size or default_size
    options = {} if architecture.startswith("ssd") else {"min_size": size, "max_size": size}
    model = torchvision.models.get_model(architecture, weights=None, weights_backbone=None, **options)
    if weights is not None:
        model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    return model.eval()


def labels(architecture: str) -> list[str]:
    """The COCO category names torchvision's weights carry (index = class id; ``__background__`` and ``N/A``
    included), from the weights' metadata, which ships in torchvision's code."""
    import torchvision

    return list(torchvision.models.get_weight(ARCHITECTURES[architecture][2]).meta["categories"])


def _features(model: nn.Module, size: int) -> tuple[ImageList, list[torch.Tensor]]:
    images = ImageList(torch.zeros(1, 3, size, size), [(size, size)])
    with torch.no_grad():
        return images, list(model.backbone(images.tensors).values())


def anchors(model: nn.Module, size: int) -> np.ndarray:
    """float32 ``[A, 4]``: the anchor (default) boxes of an ``S × S`` input, in input pixels."""
    images, features = _features(model, size)
    return model.anchor_generator(images, features)[0].numpy().astype(np.float32)


def detection_record(model: nn.Module, size: int) -> dict:
    """The metadata record's ``detection`` entry: how the runtime decodes ``RawHeads``' output."""
    kind = family(model)
    _, features = _features(model, size)
    per_location = 1 if kind == "fcos" else int(model.anchor_generator.num_anchors_per_location()[0])
    params = {"score_thresh": float(model.score_thresh), "nms_thresh": float(model.nms_thresh),
              "detections_per_img": int(model.detections_per_img), "topk_candidates": int(model.topk_candidates)}
    return {"family": kind, "levels": [int(f.shape[2] * f.shape[3] * per_location) for f in features],
            "params": params, "anchors": ANCHORS, "box_columns": 4 + (kind == "fcos"), "box_gradient": False}


def preprocessing(model: nn.Module, size: int) -> dict:
    """Resize to ``S × S`` (no crop), then the detector's own mean and std (its transform's)."""
    transform = model.transform
    return {"size": [size, size], "resize": None, "mean": [float(m) for m in transform.image_mean],
            "std": [float(s) for s in transform.image_std], "channel_order": "RGB", "scale": 255.0}


def export_detector(model: nn.Module, path: str | Path, layers: Sequence[str], size: int,
                    labels: Sequence[str] | None = None, architecture: str | None = None) -> dict:
    """Write the explainer graph of a single-stage detector's raw heads (layers named inside
    ``RawHeads``, e.g. ``backbone.body.layer4``) with its anchors and detection record; returns the record."""
    from onnxcam.export import export_explainer
    from onnxcam.export.onnx_io import write_explainer

    model = model.eval()
    raw = RawHeads(model).eval()
    classes = raw(torch.zeros(1, 3, size, size)).shape[-1] - (4 + (family(model) == "fcos"))
    path = Path(path)
    record = export_explainer(raw, path, list(layers), (2, 3, size, size), preprocessing=preprocessing(model, size),
                              architecture=architecture or family(model))
    record["detection"] = {**detection_record(model, size), "classes": int(classes),
                           "labels": list(labels) if labels is not None else None}
    proto = onnx.load(str(path))
    proto.graph.initializer.append(numpy_helper.from_array(anchors(model, size), ANCHORS))
    write_explainer(proto, record, path)
    return record
