"""Non-maximum suppression in numpy, as torchvision computes it on the CPU.

Reproduces ``torchvision.ops.nms`` (``torchvision/csrc/ops/cpu/nms_kernel.cpp``) and
``torchvision.ops.batched_nms`` (``torchvision/ops/boxes.py``), index for index:

- boxes are visited by decreasing score, ties in input order (the kernel's stable sort);
- IoU is computed in the boxes' dtype (float32) in the kernel's operation order, and
  compared with the threshold in float64 (``ovr > iou_threshold``, a C++ ``double``), so a
  threshold like 0.45 is not rounded to float32 first;
- ``batched_nms`` takes torchvision's two CPU paths with its switch: up to 1000 boxes the
  coordinate trick (boxes shifted by ``label * (max coordinate + 1)``, in float32, then one
  NMS), above that one NMS per label and the kept indices sorted by decreasing score. The
  two can differ where float32 rounding of the shifted boxes moves an IoU across the
  threshold, so the switch matters for bit-exact agreement.

One thing is not reproduced: above 1000 boxes torchvision orders the kept boxes with an
unstable sort, so kept boxes with *equal* scores may come out in another order there (here:
input order).
"""

from __future__ import annotations

import numpy as np

# torchvision.ops.boxes.batched_nms: `boxes.numel() > 4000` on CPU → one NMS per label.
_VANILLA_ABOVE_NUMEL = 4000


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, by decreasing score.

    boxes: float [M, 4] (x1, y1, x2, y2); scores: float [M]; a box is dropped when its IoU
    with a kept, higher-ranked box is > ``iou_threshold``. → int64 [K].
    """
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    remaining = np.argsort(-scores, kind="stable")
    keep = []
    while remaining.size:
        i, rest = remaining[0], remaining[1:]
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for empty boxes: NaN, kept
            iou = inter / (areas[i] + areas[rest] - inter)
        remaining = rest[~(iou.astype(np.float64) > float(iou_threshold))]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each label: indices of the kept boxes, by decreasing score.

    boxes: float [M, 4]; scores: float [M]; labels: int [M]. → int64 [K].
    """
    boxes = np.asarray(boxes)
    if boxes.size == 0:
        return np.empty(0, dtype=np.int64)
    if boxes.size > _VANILLA_ABOVE_NUMEL:
        return _nms_per_label(boxes, scores, labels, iou_threshold)
    return _nms_coordinate_trick(boxes, scores, labels, iou_threshold)


def _nms_coordinate_trick(boxes, scores, labels, iou_threshold):
    """torchvision's ``_batched_nms_coordinate_trick``: shift each label's boxes apart, one NMS."""
    one = np.asarray(1, dtype=boxes.dtype)
    offsets = np.asarray(labels).astype(boxes.dtype) * (boxes.max() + one)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _nms_per_label(boxes, scores, labels, iou_threshold):
    """torchvision's ``_batched_nms_vanilla``: one NMS per label, kept indices re-sorted by score."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    kept = np.zeros(len(scores), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        kept[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    keep = np.flatnonzero(kept)
    return keep[np.argsort(-scores[keep], kind="stable")].astype(np.int64)
