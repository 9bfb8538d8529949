"""Ultralytics YOLOv8 / YOLO11 detections from the exported output, in numpy.

The ONNX files Ultralytics exports (``model.export(format="onnx")``) have one output
``[N, 4 + C, A]``: per anchor (a grid cell of the stride-8, 16 and 32 maps, levels in order),
the box already decoded (cx, cy, w, h, input pixels), then the C class scores after their
sigmoid. Post-processing is Ultralytics' ``non_max_suppression`` (``ultralytics/utils/ops.py``,
single label per box, not class-agnostic) as its predictor calls it, for one image:

1. candidates: anchors whose best class score is ``> score_thresh`` (``conf``); each keeps that
   best class (the first on ties) and its score;
2. above ``topk_candidates`` (``max_nms``) candidates, the best ones only;
3. boxes xywh → xyxy; NMS with every box shifted by ``label · max_wh`` (classes never suppress
   each other), IoU ``> nms_thresh`` (``iou``) suppresses;
4. the first ``detections_per_img`` (``max_det``) kept, by decreasing score; then boxes are
   clipped to the image, as ``scale_boxes`` does (no rescaling: the input is at the model's size).

Defaults: Ultralytics' predict defaults (``conf=0.25``, ``iou=0.7``, ``max_det=300``) and
``non_max_suppression``'s ``max_nms=30000``, ``max_wh=7680`` (docs/explainer-graph.md, "Detection").
The detection target of a kept box is ``raw[4 + label, anchor]``, its own class score.
"""

from __future__ import annotations

import numpy as np

from onnxcam.runtime.detection.nms import nms

FAMILY = "yolo"
BOX_COLUMNS = 4
DEFAULTS = {"score_thresh": 0.25, "nms_thresh": 0.7, "detections_per_img": 300, "topk_candidates": 30000,
            "max_wh": 7680.0}
# Ultralytics' own names for the same parameters
ALIASES = {"conf": "score_thresh", "iou": "nms_thresh", "max_det": "detections_per_img",
           "max_nms": "topk_candidates"}
_F32 = np.float32


def best_classes(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each anchor's best class and its score: raw float32 [4 + C, A] → labels int64 [A], scores float32 [A]."""
    scores = raw[BOX_COLUMNS:]
    labels = scores.argmax(axis=0)
    return labels.astype(np.int64), scores[labels, np.arange(scores.shape[1])]


def candidates(best: np.ndarray, score_thresh: float, topk: int) -> np.ndarray:
    """Anchors scoring ``> score_thresh``, at most ``topk`` of the best (decreasing score) where there are
    more: best float32 [A] → int64 [K] (anchor order where not cut)."""
    index = np.flatnonzero(best > _F32(score_thresh))
    if len(index) > topk:
        index = index[np.argsort(-best[index], kind="stable")[:topk]]
    return index


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Ultralytics' ``xywh2xyxy``: (cx, cy, w, h) → (x1, y1, x2, y2). float32 [K, 4] → [K, 4]."""
    half = boxes[:, 2:] / _F32(2)
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def clip(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """x into [0, w], y into [0, h] (Ultralytics' ``clip_boxes``). float32 [K, 4] → [K, 4]."""
    height, width = image_size
    return np.clip(boxes, _F32(0), np.array([width, height, width, height], _F32))


def decode(raw: np.ndarray, image_size: tuple[int, int], params: dict):
    """One image's detections: raw float32 [4 + C, A] (``columns_first``) → ``Detections`` with ``anchors``
    (the anchor index) and ``columns`` (4 + label: the row of ``raw`` holding the class score)."""
    from onnxcam.runtime.detection.decode import Detections

    params = {**DEFAULTS, **params}
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 2 or raw.shape[0] <= BOX_COLUMNS:
        raise ValueError(f"raw {raw.shape} is not [4 + classes, anchors]")
    labels, best = best_classes(raw)
    index = candidates(best, params["score_thresh"], int(params["topk_candidates"]))
    boxes = xywh_to_xyxy(raw[:BOX_COLUMNS, index].T)
    labels, scores = labels[index], best[index]
    offsets = labels.astype(_F32)[:, None] * _F32(params["max_wh"])
    keep = nms(boxes + offsets, scores, params["nms_thresh"])[: int(params["detections_per_img"])]
    return Detections(boxes=clip(boxes[keep], image_size), scores=scores[keep], labels=labels[keep],
                      anchors=index[keep].astype(np.int64), columns=labels[keep] + BOX_COLUMNS)
