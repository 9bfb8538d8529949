"""torchvision's Faster R-CNN as two ONNX graphs: the features and the model after them (export side).

pytorch-grad-cam's Faster R-CNN tutorial explains ``model.backbone`` (ResNet/MobileNet + FPN): EigenCAM on
its levels reshaped by ``fasterrcnn_reshape_transform`` (``abs``, each level resized bilinearly to the
``pool`` level's size, concatenated on channels), and Ablation-CAM, which runs only the model after the
backbone (RPN, RoI heads, post-processing) on levels with one channel set to −1000
(``AblationLayerFasterRCNN``) and scores its detections with ``FasterRCNNBoxScoreTarget``.
onnxcam exports the two halves (docs/explainer-graph.md, "Faster R-CNN"):

- **features** ``<stem>.features.onnx``: normalised image ``image [N, 3, S, S]`` → each FPN level
  ``level_<name> [N, 256, h_l, w_l]`` (torchvision's order: ``0``, ``1``, …, ``pool``) and the tutorial's
  reshape ``cam_activations [N, 256·L, h_pool, w_pool]``;
- **heads** ``<stem>.heads.onnx``: one image's levels ``level_<name> [1, 256, h_l, w_l]`` → ``boxes [D, 4]``
  (x1, y1, x2, y2, input pixels), ``labels [D]`` int64, ``scores [D]``: RPN, RoI heads and the transform's
  post-processing, traced by torch's TorchScript ONNX exporter (the path torchvision tests its detectors'
  ONNX export on), for one image of the fixed size ``S × S``.

The input is already ``S × S`` (``min_size = max_size = S``, ``S`` a multiple of 32), so the transform's resize,
its padding and the final box rescale are identities; the graphs take the image normalised with the model's
mean and std. Both graphs carry the same record, JSON in the ONNX metadata under ``RECORD_KEY``
(``faster_rcnn_record``): the architecture, the size, the levels and their shapes, the channels per level, the
preprocessing, the detector's post-processing settings and the class labels.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from onnxcam.models.torchvision_recipes import recalibrate_batchnorm
from torchvision.models.detection.image_list import ImageList

RECORD_KEY = "onnxcam.faster_rcnn"
FORMAT, VERSION = "onnxcam.faster_rcnn", 1
CAM_ACTIVATIONS = "cam_activations"
IMAGE = "image"
OUTPUTS = ("boxes", "labels", "scores")
# the two torchvision Faster R-CNNs of pytorch-grad-cam's tutorial and the name of their COCO weights (whose
# metadata, shipped in torchvision's code, gives the labels)
ARCHITECTURES = {
    "fasterrcnn_resnet50_fpn": "FasterRCNN_ResNet50_FPN_Weights.COCO_V1",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1",
}
# the detector settings that change what the heads return (recorded; set them before export)
SETTINGS = ("box_score_thresh", "box_nms_thresh", "box_detections_per_img", "rpn_pre_nms_top_n_test",
            "rpn_post_nms_top_n_test", "rpn_score_thresh", "rpn_nms_thresh")


def level_input(name: str) -> str:
    """The graph name of FPN level ``name`` (``0`` → ``level_0``; ONNX names cannot be bare digits)."""
    return f"level_{name}"


def build(architecture: str, size: int, weights: str | Path | None = None, recalibrate: bool = False,
          **settings) -> nn.Module:
    """A torchvision Faster R-CNN in eval mode for ``size × size`` inputs (``size`` a multiple of 32): random
    weights, no backbone weights either (nothing is downloaded), or a state-dict file's. ``settings``:
    ``FasterRCNN`` keyword arguments (``box_score_thresh=…``, ``rpn_post_nms_top_n_test=…``).
    ``recalibrate``: random weights' BatchNorm statistics from three seeded random batches (a random
    network's default statistics shrink MobileNetV3's features towards 0)."""
    import torchvision

    if architecture not in ARCHITECTURES:
        raise ValueError(f"{architecture!r}: not one of {sorted(ARCHITECTURES)}")
    if size % 32:
        raise ValueError(f"size {size}: give a multiple of 32 (the transform pads to 32, which must be an identity)")
    model = torchvision.models.get_model(architecture, weights=None, weights_backbone=None, min_size=size,
                                         max_size=size, **settings)
    if weights is not None:
        model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    elif recalibrate:
        recalibrate_batchnorm(model.backbone, size)
    return model.eval()


def labels(architecture: str) -> list[str]:
    """The COCO category names of torchvision's weights (index = class id), from their metadata in torchvision."""
    import torchvision

    return list(torchvision.models.get_weight(ARCHITECTURES[architecture]).meta["categories"])


def cam_activations(levels: dict[str, torch.Tensor]) -> torch.Tensor:
    """pytorch-grad-cam's ``fasterrcnn_reshape_transform``: ``abs`` of every level, resized (bilinear,
    ``align_corners=False``) to the ``pool`` level's size, concatenated on channels → ``[N, 256·L, h, w]``."""
    target = levels["pool"].shape[-2:]
    return torch.cat([nn.functional.interpolate(torch.abs(value), target, mode="bilinear")
                      for value in levels.values()], dim=1)


class Features(nn.Module):
    """``[N, 3, S, S]`` normalised → (each FPN level ``[N, 256, h_l, w_l]``…, ``cam_activations``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        levels = self.backbone(image)
        return (*levels.values(), cam_activations(levels))


class Heads(nn.Module):
    """One image's FPN levels (``[1, 256, h_l, w_l]`` each, in the backbone's order) → boxes ``[D, 4]``,
    labels ``[D]``, scores ``[D]``: the model after the backbone, for an ``S × S`` input."""

    def __init__(self, model: nn.Module, names: list[str], size: int):
        super().__init__()
        self.rpn, self.roi_heads, self.transform = model.rpn, model.roi_heads, model.transform
        self.names, self.size = names, size

    def forward(self, *levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = dict(zip(self.names, levels))
        sizes = [(self.size, self.size)]
        images = ImageList(torch.zeros(1, 3, self.size, self.size), sizes)
        proposals, _ = self.rpn(images, features)
        detections, _ = self.roi_heads(features, proposals, sizes)
        found = self.transform.postprocess(detections, sizes, sizes)[0]
        return found["boxes"], found["labels"], found["scores"]


def preprocessing(model: nn.Module, size: int) -> dict:
    """Resize to ``S × S`` (no crop), then the detector's own mean and std (its transform's)."""
    transform = model.transform
    return {"size": [size, size], "resize": None, "mean": [float(m) for m in transform.image_mean],
            "std": [float(s) for s in transform.image_std], "channel_order": "RGB", "scale": 255.0}


def level_shapes(model: nn.Module, size: int) -> dict[str, list[int]]:
    """``{name: [256, h_l, w_l]}``: the FPN levels of an ``S × S`` input, in the backbone's order."""
    with torch.no_grad():
        levels = model.backbone(torch.zeros(1, 3, size, size))
    return {name: [int(d) for d in value.shape[1:]] for name, value in levels.items()}


def settings(model: nn.Module) -> dict:
    """The detector's post-processing settings (``SETTINGS``), as the exported heads use them."""
    rpn, heads = model.rpn, model.roi_heads
    return {"box_score_thresh": float(heads.score_thresh), "box_nms_thresh": float(heads.nms_thresh),
            "box_detections_per_img": int(heads.detections_per_img),
            "rpn_pre_nms_top_n_test": int(rpn._pre_nms_top_n["testing"]),
            "rpn_post_nms_top_n_test": int(rpn._post_nms_top_n["testing"]),
            "rpn_score_thresh": float(rpn.score_thresh), "rpn_nms_thresh": float(rpn.nms_thresh)}


def faster_rcnn_record(model: nn.Module, size: int, architecture: str | None = None,
                       labels: list[str] | None = None) -> dict:
    """The record both graphs carry (``RECORD_KEY``): what the runtime needs to run and explain them."""
    shapes = level_shapes(model, size)
    if "pool" not in shapes:
        raise ValueError(f"the backbone's levels {list(shapes)} have no 'pool' level (the tutorial's reshape target)")
    channels = {shape[0] for shape in shapes.values()}
    if len(channels) != 1:
        raise ValueError(f"the FPN levels have different channel counts {sorted(channels)}")
    return {"format": FORMAT, "version": VERSION, "architecture": architecture or type(model).__name__,
            "size": [size, size], "levels": list(shapes), "level_shapes": list(shapes.values()),
            "channels": channels.pop(), "cam_activations": CAM_ACTIVATIONS, "settings": settings(model),
            "preprocessing": preprocessing(model, size), "labels": list(labels) if labels is not None else None}


def _stamp(path: Path, record: dict) -> None:
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = RECORD_KEY, json.dumps(record)
    onnx.save(proto, str(path))


def export_faster_rcnn(model: nn.Module, stem: str | Path, size: int, architecture: str | None = None,
                       labels: list[str] | None = None, opset: int = 17) -> tuple[Path, Path, dict]:
    """Write ``<stem>.features.onnx`` and ``<stem>.heads.onnx`` (module docstring) for ``size × size`` inputs;
    returns their paths and the record. TorchScript ONNX exporter (``dynamo=False``): it traces the RPN's and
    the RoI heads' data-dependent selection (top-k, NMS, thresholds) into ONNX ops, as torchvision's own
    detection ONNX tests do."""
    model = model.eval()
    record = faster_rcnn_record(model, size, architecture, labels)
    names = record["levels"]
    stem = Path(stem)
    features_path, heads_path = stem.with_name(stem.name + ".features.onnx"), stem.with_name(stem.name + ".heads.onnx")
    image = torch.zeros(1, 3, size, size)
    features = Features(model).eval()
    with torch.no_grad():
        levels = features(image)[:-1]
    inputs = [level_input(name) for name in names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: the selection is traced for one S × S image, as meant
        torch.onnx.export(features, (image,), str(features_path), dynamo=False, opset_version=opset,
                          input_names=[IMAGE], output_names=inputs + [CAM_ACTIVATIONS],
                          dynamic_axes={name: {0: "batch"} for name in [IMAGE, *inputs, CAM_ACTIVATIONS]})
        torch.onnx.export(Heads(model, names, size).eval(), tuple(levels), str(heads_path), dynamo=False,
                          opset_version=opset, input_names=inputs, output_names=list(OUTPUTS))
    for path in (features_path, heads_path):
        _stamp(path, record)
    return features_path, heads_path, record
