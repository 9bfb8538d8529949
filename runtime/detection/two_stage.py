"""Faster R-CNN (two-stage): detect, EigenCAM and Ablation-CAM as pytorch-grad-cam's tutorial does them.

The model comes as two graphs (``models/faster_rcnn.py``; docs/explainer-graph.md, "Faster R-CNN"):
*features* (normalised image → the FPN levels and the tutorial's reshape ``cam_activations``: ``abs`` of each
level resized to the ``pool`` level, concatenated) and *heads* (one image's levels → boxes, labels, scores:
RPN, RoI heads and post-processing).

- ``detect``: features, then heads, per image.
- ``eigencam``: the first principal component of ``cam_activations`` (pytorch-grad-cam's
  ``get_2d_projection``, the runtime's ``first_component_projection``), then ReLU, min-max, resize, min-max.
- ``ablation_cam``: channel ``c`` of ``cam_activations`` is channel ``c % 256`` of level ``c // 256``;
  ``AblationLayerFasterRCNN`` sets it to −1000 in the raw level, and only the heads run again. The score is
  ``FasterRCNNBoxScoreTarget``'s (``box_score``); the weights are the relative drops of the score
  (``ablationcam.relative_drops``); the map is ``ReLU(Σ_c w_c · cam_activations_c)``, min-max normalised,
  resized to the input, normalised again (pytorch-grad-cam's ``scale_cam_image`` and layer aggregation).

numpy and onnxruntime only (no torch).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from onnxcam.runtime.contract import ContractError
from onnxcam.runtime.methods.ablationcam import relative_drops
from onnxcam.runtime.methods.base import first_component_projection, fuse_layers, layer_map, weighted_sum
from onnxcam.runtime.providers import open_session, resolve_providers

RECORD_KEY = "onnxcam.faster_rcnn"  # models/faster_rcnn.py's RECORD_KEY
ABLATION_VALUE = np.float32(-1000.0)  # AblationLayerFasterRCNN: every ablated channel is set to −1000
IOU_THRESHOLD = 0.5  # FasterRCNNBoxScoreTarget's default


@dataclass
class TwoStageDetections:
    """One image's detections, by decreasing score: boxes float32 ``[D, 4]`` (x1, y1, x2, y2, input
    pixels), labels int64 ``[D]`` (class index), scores float32 ``[D]``."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, indices) -> "TwoStageDetections":
        return TwoStageDetections(self.boxes[indices], self.labels[indices], self.scores[indices])


@dataclass
class FasterRCNN:
    """The two sessions and their record (``models/faster_rcnn.py``'s ``faster_rcnn_record``)."""

    features: object  # onnxruntime.InferenceSession
    heads: object
    record: dict
    timings: dict = field(default_factory=dict)  # seconds of the last ablation_cam: heads runs, their count

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.record["size"])

    @property
    def levels(self) -> list[str]:
        return list(self.record["levels"])

    @property
    def preprocessing(self) -> dict:
        return self.record["preprocessing"]


def is_features_graph(path: str | Path) -> bool:
    """Whether ``path`` is a Faster R-CNN features graph (it carries the ``RECORD_KEY`` record)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not an ONNX file: the caller's own loading says so
        return False
    return any(prop.key == RECORD_KEY for prop in model.metadata_props)


def label(model: FasterRCNN, class_id: int) -> str:
    """A class id's name from the record's labels, or the id."""
    labels = model.record.get("labels") or []
    return labels[class_id] if 0 <= class_id < len(labels) else str(class_id)


def load(features: str | Path, heads: str | Path | None = None, providers=None) -> FasterRCNN:
    """Open ``<stem>.features.onnx`` and its ``<stem>.heads.onnx`` (default: the name beside it)."""
    features = Path(features)
    if heads is None:
        heads = features.with_name(features.name.replace(".features.onnx", ".heads.onnx"))
    chosen = resolve_providers(providers)
    sessions = [open_session(path, chosen, what=str(path)) for path in (features, heads)]
    records = []
    for path, session in zip((features, heads), sessions):
        found = session.get_modelmeta().custom_metadata_map.get(RECORD_KEY)
        if found is None:
            raise ContractError(f"{path}: no {RECORD_KEY!r} record; export it with "
                                "onnxcam.models.faster_rcnn.export_faster_rcnn")
        records.append(json.loads(found))
    if records[0] != records[1]:
        raise ContractError(f"{features} and {heads} come from different exports (their records differ)")
    return FasterRCNN(sessions[0], sessions[1], records[0])


def level_names(model: FasterRCNN) -> list[str]:
    return [f"level_{name}" for name in model.levels]


def run_features(model: FasterRCNN, batch: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """``[N, 3, S, S]`` normalised → (the levels ``[N, 256, h_l, w_l]`` each, ``cam_activations``
    ``[N, 256·L, h_pool, w_pool]``)."""
    outputs = model.features.run(None, {"image": np.ascontiguousarray(batch, np.float32)})
    return list(outputs[:-1]), outputs[-1]


def run_heads(model: FasterRCNN, levels: Sequence[np.ndarray]) -> TwoStageDetections:
    """One image's levels (``[1, 256, h_l, w_l]`` each) → its detections."""
    boxes, labels, scores = model.heads.run(None, dict(zip(level_names(model), levels)))
    return TwoStageDetections(boxes.astype(np.float32), labels.astype(np.int64), scores.astype(np.float32))


def detect(model: FasterRCNN, batch: np.ndarray) -> list[TwoStageDetections]:
    """Each image's detections (``[N, 3, S, S]`` normalised)."""
    levels, _ = run_features(model, batch)
    return [run_heads(model, [level[i:i + 1] for level in levels]) for i in range(len(batch))]


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """torchvision's ``box_iou`` in float32: ``[B, 4]`` × ``[D, 4]`` → ``[B, D]``."""
    boxes, others = np.asarray(boxes, np.float32), np.asarray(others, np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    other_area = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    top_left = np.maximum(boxes[:, None, :2], others[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], others[None, :, 2:])
    sides = np.clip(bottom_right - top_left, 0, None)
    inter = sides[..., 0] * sides[..., 1]
    return inter / (area[:, None] + other_area[None, :] - inter)


def box_score(found: TwoStageDetections, labels: np.ndarray, boxes: np.ndarray,
              iou_threshold: float = IOU_THRESHOLD) -> np.float32:
    """pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``: for each target box ``boxes [B, 4]`` with label
    ``labels [B]``, the detection of highest IoU with it (the first on a tie); if that IoU exceeds
    ``iou_threshold`` and that detection's label is the target's, add IoU + its score (float32). A box whose
    best overlap has another label adds nothing, even if a same-label detection overlaps it less."""
    total = np.float32(0.0)
    if len(found) == 0:
        return total
    ious = box_iou(boxes, found.boxes)
    for row, label in zip(ious, np.asarray(labels)):
        index = int(row.argmax())
        if row[index] > iou_threshold and found.labels[index] == label:
            total = np.float32(total + np.float32(row[index] + found.scores[index]))
    return total


def ablated(levels: Sequence[np.ndarray], channel: int, value: np.float32 = ABLATION_VALUE) -> list[np.ndarray]:
    """One image's levels (``[1, C_l, h_l, w_l]`` each) with channel ``channel`` of their concatenation
    (level ``channel // C``, its channel ``channel % C``) set to ``value``; the others are shared, not copied."""
    per_level = levels[0].shape[1]
    level, index = divmod(channel, per_level)
    changed = list(levels)
    changed[level] = levels[level].copy()
    changed[level][:, index] = value
    return changed


def ablation_scores(model: FasterRCNN, levels: Sequence[np.ndarray], labels: np.ndarray,
                    boxes: np.ndarray) -> np.ndarray:
    """float32 ``[256·L]``: the box score (``box_score``) with each channel of the concatenated levels
    ablated, running only the heads (one call per channel: the heads are traced for one image)."""
    channels = sum(level.shape[1] for level in levels)
    scores = np.empty(channels, np.float32)
    for channel in range(channels):
        scores[channel] = box_score(run_heads(model, ablated(levels, channel)), labels, boxes)
    return scores


def tutorial_map(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's last steps for one target layer: ReLU, min-max, bilinear resize to ``size`` ``(H, W)``
    (cv2), mean over the one layer, min-max. ``[N, h, w]`` → ``[N, H, W]``."""
    return fuse_layers([layer_map(raw, size)])


def eigencam(model: FasterRCNN, batch: np.ndarray) -> np.ndarray:
    """``[N, 3, S, S]`` → ``[N, S, S]`` in [0, 1]: EigenCAM on the tutorial's reshape of the FPN."""
    _, activations = run_features(model, batch)
    return tutorial_map(first_component_projection(activations), model.size)


@dataclass
class AblationResult:
    """One image's Ablation-CAM: map ``[S, S]`` in [0, 1], weights ``[256·L]``, the unablated score, the
    score with each channel ablated ``[256·L]``, and the targets (labels ``[B]``, boxes ``[B, 4]``)."""

    map: np.ndarray
    weights: np.ndarray
    score: np.float32
    ablated_scores: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray


def ablation_cam(model: FasterRCNN, image: np.ndarray, labels: np.ndarray | None = None,
                 boxes: np.ndarray | None = None) -> AblationResult:
    """Ablation-CAM of one normalised image ``[1, 3, S, S]`` with ``FasterRCNNBoxScoreTarget(labels, boxes)``
    (default: the image's own detections). The features run once, the heads once unablated and once per
    channel; ``model.timings`` gets the heads' seconds and run count."""
    if image.ndim != 4 or len(image) != 1:
        raise ValueError(f"ablation_cam explains one image [1, 3, S, S]; got {image.shape}")
    levels, activations = run_features(model, image)
    found = run_heads(model, levels)
    labels = found.labels if labels is None else np.asarray(labels, np.int64)
    boxes = found.boxes if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
    score = box_score(found, labels, boxes)
    start = time.perf_counter()
    scores = ablation_scores(model, levels, labels, boxes)
    model.timings = {"heads_seconds": time.perf_counter() - start, "heads_runs": len(scores)}
    weights = relative_drops(score, scores)
    raw = weighted_sum(weights[None], activations)
    return AblationResult(tutorial_map(raw, model.size)[0], weights, score, scores, labels, boxes)
