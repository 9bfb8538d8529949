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


def _window(features: torch.Tensor, y: torch.Tensor, x: torch.Tensor, radius: int) -> torch.Tensor:
    """``[R, C, H, W]`` → ``[R, C, 2r+1, 2r+1]``: each row's window centred at (``y``, ``x``) ``[R]``, zeros
    outside the map."""
    side = 2 * radius + 1
    padded = nn.functional.pad(features, (radius, radius, radius, radius))
    rows, channels, height, width = padded.shape
    offsets = torch.arange(side, device=features.device)
    at_rows = (y[:, None] + offsets)[:, None, :, None].expand(rows, channels, side, width)
    strip = padded.gather(2, at_rows)  # [R, C, 2r+1, W + 2r]
    at_columns = (x[:, None] + offsets)[:, None, None, :].expand(rows, channels, side, side)
    return strip.gather(3, at_columns)


class LocalRawHeads(RawHeads):
    """``RawHeads`` whose backward is local: the output's values are ``RawHeads``', but the gradient
    reaches the network only through the one element the seed names (its largest ``|seed|``),
    recomputed on the ``(2r+1)²`` window of its FPN level that the class head reads (r = 5 for 5
    stacked 3×3 convolutions). The backward then skips the head at every position but one: exact
    for a one-hot seed (the ``detection`` target) and a head without normalisation (RetinaNet v1:
    GroupNorm, in v2 and FCOS, reads the whole map). docs/explainer-graph.md, "Detection"."""

    reads_seed = True

    def __init__(self, model: nn.Module):
        super().__init__(model)
        head = model.head.classification_head if self.family == "retinanet" else None
        norms = (nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)
        if head is None or any(isinstance(m, norms) for m in head.modules()):
            raise ValueError("a local backward needs a RetinaNet class head without normalisation "
                             "(retinanet_resnet50_fpn); this head's normalisation reads the whole map")
        self.radius = sum(isinstance(m, nn.Conv2d) for m in head.modules())
        if any(m.kernel_size != (3, 3) or m.stride != (1, 1) or m.padding != (1, 1) or m.dilation != (1, 1)
               or m.groups != 1 for m in head.modules() if isinstance(m, nn.Conv2d)) or \
                any(not isinstance(block[0], nn.Conv2d) for block in head.conv):
            raise ValueError("a local backward needs the class head's plain 3×3, stride-1 convolutions")

    def forward(self, x: torch.Tensor, seed: torch.Tensor | None = None):
        """``[R, 3, S, S]`` → ``[R, A, D]``; with the seed rows ``[R, A, D]``, the pair (values, the same
        values whose backward is local) that the exporter reads (``export.explainer.reads_seed``)."""
        features = list(self.backbone(x).values())
        out = self.head(features)
        full = torch.cat([out["bbox_regression"], out["cls_logits"]], dim=-1).detach()  # [R, A, D]
        if seed is None:
            return full
        rows, anchors, columns = full.shape
        head = self.head.classification_head
        classes, per_location = head.num_classes, head.num_anchors
        element = seed.reshape(rows, -1).abs().argmax(dim=1)  # [R]
        anchor, klass = element // columns, (element % columns - 4).clamp(min=0)
        local = torch.zeros(rows, dtype=full.dtype, device=full.device)
        offset = 0
        for level in features:
            height, width = level.shape[-2:]
            count = height * width * per_location
            inside = (anchor >= offset) & (anchor < offset + count)
            position = (anchor - offset).clamp(0, count - 1)
            cell, kind = position // per_location, position % per_location
            y, x_ = cell // width, cell % width
            inner = _window(torch.ones_like(level[:, :1]), y, x_, self.radius)  # 1 inside the map
            hidden = _window(level, y, x_, self.radius)
            for shrink, block in enumerate(head.conv, start=1):  # unpadded: each 3×3 shrinks the window by 1
                conv, *rest = list(block)
                hidden = nn.functional.conv2d(hidden, conv.weight, conv.bias)
                for module in rest:  # the activation
                    hidden = module(hidden)
                hidden = hidden * inner[:, :, shrink:-shrink, shrink:-shrink]  # the map's zero padding at its border
            logits = head.cls_logits
            centre = nn.functional.conv2d(hidden, logits.weight, logits.bias)[:, :, 0, 0]  # [R, A·K]
            value = centre.gather(1, (kind * classes + klass)[:, None])[:, 0]
            local = local + torch.where(inside, value, torch.zeros_like(value))
            offset += count
        # the values stay the full map's; the gradient of the named element flows through ``local``
        flat = full.reshape(rows, -1)
        named = flat.gather(1, element[:, None]) + (local - local.detach())[:, None]  # the same value
        return full, flat.scatter(1, element[:, None], named).reshape(rows, anchors, columns)


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
                    labels: Sequence[str] | None = None, architecture: str | None = None,
                    local_gradient: bool = False) -> dict:
    """Write the explainer graph of a single-stage detector's raw heads (layers named inside
    ``RawHeads``, e.g. ``backbone.body.layer4``) with its anchors and detection record; returns the record.
    local_gradient: the class head's backward in the detection's receptive field only (``LocalRawHeads``:
    RetinaNet v1; one detection element a row, the ``detection`` target only)."""
    from onnxcam.export import export_explainer
    from onnxcam.export.onnx_io import write_explainer

    model = model.eval()
    raw = (LocalRawHeads if local_gradient else RawHeads)(model).eval()
    classes = raw(torch.zeros(1, 3, size, size)).shape[-1] - (4 + (family(model) == "fcos"))
    path = Path(path)
    record = export_explainer(raw, path, list(layers), (2, 3, size, size), preprocessing=preprocessing(model, size),
                              architecture=architecture or family(model))
    record["detection"] = {**detection_record(model, size), "classes": int(classes),
                           "labels": list(labels) if labels is not None else None, "local_gradient": local_gradient}
    proto = onnx.load(str(path))
    proto.graph.initializer.append(numpy_helper.from_array(anchors(model, size), ANCHORS))
    write_explainer(proto, record, path)
    return record
