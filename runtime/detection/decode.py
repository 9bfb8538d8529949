"""Detections from the raw head outputs of torchvision's single-stage detectors, in numpy.

Reproduces ``postprocess_detections`` of torchvision's ``RetinaNet``
(``torchvision/models/detection/retinanet.py``), ``FCOS`` (``fcos.py``) and ``SSD``
(``ssd.py``), with the box coders of ``torchvision/models/detection/_utils.py``
(``BoxCoder.decode_single``, ``BoxLinearCoder.decode``), ``clip_boxes_to_image`` and
``batched_nms`` (``torchvision/ops/boxes.py``). All arithmetic is float32, in torchvision's
operation order, so boxes agree to float32 rounding and the kept set and order agree.

Input, for one image (the layout the exported graph outputs, levels concatenated in
torchvision's order):

- ``raw`` float32 [A, D], one row per anchor:
  ``retinanet``: ``[bbox_regression (4) | cls_logits (C)]``;
  ``fcos``: ``[bbox_regression (4) | bbox_ctrness (1) | cls_logits (C)]``;
  ``ssd``: ``[bbox_regression (4) | cls_logits (C, background 0 included)]``;
- ``anchors`` float32 [A, 4] (x1, y1, x2, y2, input pixels) and ``levels`` (anchors per
  level, torchvision's ``num_anchors_per_level``: H·W·anchors-per-location);
- ``image_size`` (h, w) of the model's input; boxes are clipped to it. The model's transform
  must not have resized (input already at its fixed size), so no box rescaling follows;
- ``params``: the model's ``score_thresh``, ``nms_thresh``, ``detections_per_img``,
  ``topk_candidates``.

Each detection also says where its score came from: ``anchors`` (the row of ``raw``) and
``columns`` (the column of ``raw`` holding its class logit), so that one raw logit can be
explained per detection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from onnxcam.runtime.detection.nms import batched_nms

FAMILIES = ("retinanet", "fcos", "ssd")
AUGMENTED_FAMILIES = ("yolo", "picodet")  # bare ONNX files through `onnxcam augment --detector`
PARAMS = ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates")

# Column of raw where the class logits start.
_FIRST_CLASS_COLUMN = {"retinanet": 4, "fcos": 5, "ssd": 4}
# BoxCoder weights (wx, wy, ww, wh): RetinaNet's and SSD's; FCOS uses BoxLinearCoder.
_BOX_CODER_WEIGHTS = {"retinanet": (1.0, 1.0, 1.0, 1.0), "ssd": (10.0, 10.0, 5.0, 5.0)}
# BoxCoder's bbox_xform_clip: dw, dh clamped before exp.
_BBOX_XFORM_CLIP = np.float32(math.log(1000.0 / 16))
_F32 = np.float32


@dataclass
class Detections:
    """Detections of one image, by decreasing score.

    boxes: float32 [D, 4] (x1, y1, x2, y2, input pixels); scores: float32 [D];
    labels: int64 [D] (the model's class index; SSD: 0 is background, never returned);
    anchors: int64 [D], the row of ``raw`` that produced each detection;
    columns: int64 [D], the column of ``raw`` holding the class logit its score came from.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    anchors: np.ndarray
    columns: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, indices: np.ndarray) -> "Detections":
        """The detections at ``indices`` (int ``[K]``), in that order."""
        return Detections(self.boxes[indices], self.scores[indices], self.labels[indices], self.anchors[indices],
                          self.columns[indices])


def decode(family: str, raw: np.ndarray, anchors: np.ndarray, levels: Sequence[int],
           image_size: tuple[int, int], params: dict) -> Detections:
    """torchvision's ``postprocess_detections`` for one image: raw head outputs → Detections.

    raw: float32 [A, D]; anchors: float32 [A, 4]; levels: anchors per level (sum A);
    image_size: (h, w); params: the four ``PARAMS``.

    Files augmented with ``--detector`` decode as their own post-processing does: ``yolo`` (raw
    ``[4 + C, A]``, ``runtime/detection/yolo.py``) and ``picodet`` (``runtime/detection/picodet.py``);
    they need no anchor boxes.
    """
    if family in AUGMENTED_FAMILIES:
        from onnxcam.runtime.detection import picodet, yolo

        return {"yolo": yolo, "picodet": picodet}[family].decode(raw, image_size, params)
    if family not in FAMILIES:
        raise ValueError(f"unknown detector family {family!r}: expected one of {FAMILIES + AUGMENTED_FAMILIES}")
    missing = [name for name in PARAMS if name not in params]
    if missing:
        raise ValueError(f"params lacks {missing}")
    raw = np.asarray(raw, dtype=np.float32)
    anchors = np.asarray(anchors, dtype=np.float32)
    if raw.ndim != 2 or anchors.shape != (raw.shape[0], 4) or sum(levels) != raw.shape[0]:
        raise ValueError(f"raw {raw.shape}, anchors {anchors.shape} and levels (sum {sum(levels)}) disagree")

    scores = class_scores(family, raw)
    if family == "ssd":
        rows, classes, top = _candidates_per_class(scores, params["score_thresh"], params["topk_candidates"])
    else:
        rows, classes, top = _candidates_per_level(scores, levels, params["score_thresh"], params["topk_candidates"])
    boxes = clip_boxes(decode_boxes(family, raw[rows, :4], anchors[rows]), image_size)
    keep = batched_nms(boxes, top, classes, params["nms_thresh"])[: params["detections_per_img"]]
    return Detections(boxes=boxes[keep], scores=top[keep], labels=classes[keep], anchors=rows[keep],
                      columns=classes[keep] + _FIRST_CLASS_COLUMN[family])


def class_scores(family: str, raw: np.ndarray) -> np.ndarray:
    """Per anchor and class, the score torchvision thresholds: float32 [A, C].

    RetinaNet: sigmoid(logit); FCOS: sqrt(sigmoid(logit) · sigmoid(ctrness)); SSD: softmax
    over all classes, background included (column 0 stays, never a candidate).
    """
    logits = raw[:, _FIRST_CLASS_COLUMN[family]:]
    if family == "retinanet":
        return sigmoid(logits)
    if family == "fcos":
        return np.sqrt(sigmoid(logits) * sigmoid(raw[:, 4:5]))
    return softmax(logits)


def box_scores(family: str, outputs: np.ndarray, anchor: int, column: int, layout: str = "anchors_first") -> np.ndarray:
    """float32 ``[B]``: the score the detection of (``anchor``, ``column``) gets from each raw output
    of a batch ``[B, *O]``, by the family's formula (``class_scores``'; ``yolo`` and ``picodet``
    output their scores): the box-score target of methods that compare scores across forward
    passes (Ablation-CAM, Score-CAM; docs/explainer-graph.md, "Detection")."""
    rows = outputs[:, :, anchor] if layout == "columns_first" else outputs[:, anchor, :]  # [B, D]
    if family in AUGMENTED_FAMILIES:
        return rows[:, column].astype(_F32)
    if family == "retinanet":
        return sigmoid(rows[:, column])
    if family == "fcos":
        return np.sqrt(sigmoid(rows[:, column]) * sigmoid(rows[:, 4]))
    first = _FIRST_CLASS_COLUMN[family]
    return softmax(rows[:, first:])[:, column - first]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 logistic function, any shape."""
    return _F32(1) / (_F32(1) + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    """float32 softmax over the last axis, as torch's CPU kernel (max-shifted, times 1/sum)."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e * (_F32(1) / e.sum(axis=-1, keepdims=True))


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, decreasing (ties: lower index first). float [N] → int64 [≤k]."""
    return np.argsort(-scores, kind="stable")[:k]


def _candidates_per_level(scores, levels, score_thresh, topk_candidates):
    """RetinaNet/FCOS: per level, the (anchor, class) pairs scoring > score_thresh, top-k of them.

    scores: float32 [A, C]. → rows int64 [N] (anchor index into raw), classes int64 [N],
    scores float32 [N]; levels in order, each by decreasing score.
    """
    num_classes = scores.shape[1]
    rows, classes, kept = [], [], []
    start = 0
    for count in levels:
        flat = scores[start:start + count].reshape(-1)
        index = np.flatnonzero(flat > _F32(score_thresh))
        index = index[_top_k(flat[index], topk_candidates)]
        rows.append(start + index // num_classes)
        classes.append(index % num_classes)
        kept.append(flat[index])
        start += count
    return (np.concatenate(rows).astype(np.int64), np.concatenate(classes).astype(np.int64),
            np.concatenate(kept).astype(np.float32))


def _candidates_per_class(scores, score_thresh, topk_candidates):
    """SSD: per foreground class 1..C-1, the anchors scoring > score_thresh, top-k of them.

    scores: float32 [A, C]. → rows int64 [N], classes int64 [N], scores float32 [N];
    classes in order, each by decreasing score.
    """
    rows, classes, kept = [], [], []
    for label in range(1, scores.shape[1]):
        column = scores[:, label]
        index = np.flatnonzero(column > _F32(score_thresh))
        index = index[_top_k(column[index], topk_candidates)]
        rows.append(index)
        classes.append(np.full(len(index), label))
        kept.append(column[index])
    return (np.concatenate(rows).astype(np.int64), np.concatenate(classes).astype(np.int64),
            np.concatenate(kept).astype(np.float32))


def decode_boxes(family: str, codes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Boxes from regression codes and their anchors: float32 [N, 4] each → float32 [N, 4]."""
    if family == "fcos":
        return linear_decode(codes, anchors)
    return box_coder_decode(codes, anchors, _BOX_CODER_WEIGHTS[family])


def box_coder_decode(codes: np.ndarray, anchors: np.ndarray, weights: tuple[float, float, float, float]) -> np.ndarray:
    """torchvision's ``BoxCoder.decode_single`` (dx, dy, dw, dh codes; dw, dh clamped at log(1000/16)).

    codes, anchors: float32 [N, 4] → boxes float32 [N, 4].
    """
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + _F32(0.5) * widths
    ctr_y = anchors[:, 1] + _F32(0.5) * heights
    wx, wy, ww, wh = (_F32(w) for w in weights)
    dx, dy = codes[:, 0] / wx, codes[:, 1] / wy
    dw = np.minimum(codes[:, 2] / ww, _BBOX_XFORM_CLIP)
    dh = np.minimum(codes[:, 3] / wh, _BBOX_XFORM_CLIP)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = _F32(0.5) * (np.exp(dw) * widths)
    half_h = _F32(0.5) * (np.exp(dh) * heights)
    return np.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], axis=1)


def linear_decode(codes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """torchvision's ``BoxLinearCoder.decode`` with ``normalize_by_size=True`` (FCOS).

    codes: float32 [N, 4] (left, top, right, bottom distances from the anchor's centre, in
    anchor sizes); anchors: float32 [N, 4] → boxes float32 [N, 4].
    """
    ctr_x = _F32(0.5) * (anchors[:, 0] + anchors[:, 2])
    ctr_y = _F32(0.5) * (anchors[:, 1] + anchors[:, 3])
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    distances = codes * np.stack([w, h, w, h], axis=1)
    return np.stack([ctr_x - distances[:, 0], ctr_y - distances[:, 1],
                     ctr_x + distances[:, 2], ctr_y + distances[:, 3]], axis=1)


def clip_boxes(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """torchvision's ``clip_boxes_to_image``: x into [0, w], y into [0, h]. float32 [N, 4] → [N, 4]."""
    height, width = image_size
    clipped = boxes.copy()
    clipped[:, 0::2] = np.clip(boxes[:, 0::2], _F32(0), _F32(width))
    clipped[:, 1::2] = np.clip(boxes[:, 1::2], _F32(0), _F32(height))
    return clipped
