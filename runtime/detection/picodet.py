"""PaddleDetection PP-PicoDet detections from the heads' outputs, in numpy.

PicoDet files exported without post-processing have, per level (stride 8, 16, 32, 64), class
scores after their sigmoid ``[N, A_l, C]`` and distribution-focal box logits
``[N, A_l, 4·(reg_max+1)]``. ``onnxcam augment --detector picodet`` concatenates them into the
one differentiated output ``[N, A, 4·(reg_max+1) + C]`` (levels in order; per anchor the box
logits, then the scores). Decoding, for one image, as PaddleDetection's PicoHead does it:

1. anchor points: the centres of each level's grid cells, ``((j + cell_offset)·s, (i + cell_offset)·s)``
   for row i, column j of a level of stride s (``cell_offset`` 0.5), row-major, levels in order;
2. each side's distance (left, top, right, bottom): softmax over its reg_max+1 bins, expectation
   ``Σ p_k·k`` (``Integral``), times the stride; box = (cx − l, cy − t, cx + r, cy + b);
3. ``MultiClassNMS`` (Paddle's ``multiclass_nms3``, no background class, ``normalized=True``): per class,
   the anchors scoring ``> score_thresh``, the best ``topk_candidates`` (``nms_top_k``) of them, greedy NMS
   where IoU ``> nms_thresh`` suppresses; then over all classes the best ``detections_per_img``
   (``keep_top_k``). Paddle lists the kept boxes class by class; here they are by decreasing score
   (the same boxes).

Boxes are in input pixels (the input is at the model's size: no ``scale_factor``), not clipped.
Defaults: PaddleDetection's PicoDet configs (``score_threshold 0.025``, ``nms_threshold 0.6``,
``nms_top_k 1000``, ``keep_top_k 100``) (docs/explainer-graph.md, "Detection").
The detection target of a kept box is ``raw[anchor, 4·(reg_max+1) + label]``, its class score.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from onnxcam.runtime.detection.nms import nms

FAMILY = "picodet"
DEFAULTS = {"score_thresh": 0.025, "nms_thresh": 0.6, "topk_candidates": 1000, "detections_per_img": 100,
            "cell_offset": 0.5}
# PaddleDetection's own names for the same parameters
ALIASES = {"score_threshold": "score_thresh", "nms_threshold": "nms_thresh", "nms_top_k": "topk_candidates",
           "keep_top_k": "detections_per_img"}
_F32 = np.float32


def anchor_points(grids: Sequence[Sequence[int]], strides: Sequence[int], cell_offset: float) -> np.ndarray:
    """Grid-cell centres of every level, row-major, levels in order: float32 [A, 3] (x, y, stride)."""
    levels = []
    for (height, width), stride in zip(grids, strides):
        y, x = np.meshgrid(np.arange(height, dtype=_F32), np.arange(width, dtype=_F32), indexing="ij")
        s = _F32(stride)
        levels.append(np.stack([(x.ravel() + _F32(cell_offset)) * s, (y.ravel() + _F32(cell_offset)) * s,
                                np.full(height * width, s)], axis=1))
    return np.concatenate(levels).astype(_F32)


def expected_distances(logits: np.ndarray, reg_max: int) -> np.ndarray:
    """DFL: softmax over each side's reg_max+1 bins, then ``Σ p_k·k``. float32 [K, 4·(reg_max+1)] → [K, 4]
    (left, top, right, bottom, in strides)."""
    bins = logits.reshape(len(logits), 4, reg_max + 1)
    e = np.exp(bins - bins.max(axis=2, keepdims=True))
    p = e / e.sum(axis=2, keepdims=True)
    return p @ np.arange(reg_max + 1, dtype=_F32)


def distance_to_boxes(points: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """(cx, cy) [K, 2] and distances (l, t, r, b) [K, 4] in pixels → boxes float32 [K, 4] (x1, y1, x2, y2)."""
    return np.concatenate([points - distances[:, :2], points + distances[:, 2:]], axis=1)


def multiclass_nms(boxes: np.ndarray, scores: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Paddle's ``multiclass_nms3`` (no background class): boxes float32 [A, 4], scores float32 [A, C] →
    anchors int64 [K], labels int64 [K] of the kept boxes, by decreasing score (ties: class, then score order)."""
    anchors, labels = [], []
    for label in range(scores.shape[1]):
        column = scores[:, label]
        index = np.flatnonzero(column > _F32(params["score_thresh"]))
        index = index[np.argsort(-column[index], kind="stable")]
        if params["topk_candidates"] > -1:
            index = index[: int(params["topk_candidates"])]
        kept = index[nms(boxes[index], column[index], params["nms_thresh"])]
        anchors.append(kept)
        labels.append(np.full(len(kept), label, np.int64))
    anchors, labels = np.concatenate(anchors).astype(np.int64), np.concatenate(labels)
    order = np.argsort(-scores[anchors, labels], kind="stable")
    if params["detections_per_img"] > -1:
        order = order[: int(params["detections_per_img"])]
    return anchors[order], labels[order]


def decode(raw: np.ndarray, image_size: tuple[int, int], params: dict):
    """One image's detections: raw float32 [A, 4·(reg_max+1) + C] → ``Detections`` with ``anchors`` (the
    row of ``raw``) and ``columns`` (4·(reg_max+1) + label: the column holding the class score).
    params: the thresholds above, ``reg_max``, ``strides`` and ``grids`` ([h, w] per level)."""
    from onnxcam.runtime.detection.decode import Detections

    params = {**DEFAULTS, **params}
    raw = np.asarray(raw, dtype=np.float32)
    box_columns = 4 * (int(params["reg_max"]) + 1)
    points = anchor_points(params["grids"], params["strides"], params["cell_offset"])
    if raw.ndim != 2 or raw.shape[0] != len(points) or raw.shape[1] <= box_columns:
        raise ValueError(f"raw {raw.shape} is not [{len(points)} anchors, {box_columns} + classes]")
    scores = raw[:, box_columns:]
    distances = expected_distances(raw[:, :box_columns], int(params["reg_max"])) * points[:, 2:]
    boxes = distance_to_boxes(points[:, :2], distances)
    anchors, labels = multiclass_nms(boxes, scores, params)
    return Detections(boxes=boxes[anchors], scores=scores[anchors, labels], labels=labels, anchors=anchors,
                      columns=labels + box_columns)
