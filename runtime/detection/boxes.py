"""Explain boxes with a classifier of their crops: a cascade's last stage (MTCNN's ONet), or any
model that scores a region. Each box is cut out of the image, resized to the classifier's input
(area interpolation, as MTCNN resamples its crops), explained, and its map laid back on the box.

All boxes of an image go through one session call (one row per box).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from onnxcam.runtime.image import to_tensor


@dataclass
class ExplainedBoxes:
    """boxes ``[B, 4]`` (x1, y1, x2, y2, pixels, as given); windows ``[B, 4]`` int: the pixels cut out
    (clipped to the image); crops ``[B, C, h, w]``: what the classifier saw; maps ``[B, h, w]``: each
    crop's map; on_image ``[B, H, W]``: each map resized onto its window, zero elsewhere; scores ``[B]``:
    the explained score; targets ``[B]``: the explained class."""

    boxes: np.ndarray
    windows: np.ndarray
    crops: np.ndarray
    maps: np.ndarray
    on_image: np.ndarray
    scores: np.ndarray
    targets: np.ndarray | None


def windows_of(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """int ``[B, 4]``: each box's pixel window, outward to whole pixels and clipped to the image."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    windows = np.stack([np.floor(boxes[:, 0]), np.floor(boxes[:, 1]), np.ceil(boxes[:, 2]), np.ceil(boxes[:, 3])], 1)
    windows = np.clip(windows, 0, [width, height, width, height]).astype(np.int64)
    if ((windows[:, 2] <= windows[:, 0]) | (windows[:, 3] <= windows[:, 1])).any():
        raise ValueError("a box lies outside the image or is empty; give boxes x1 < x2, y1 < y2 within the image")
    return windows


def crop_batch(image: np.ndarray, windows: np.ndarray, preprocessing: dict) -> np.ndarray:
    """float32 ``[B, C, h, w]``: each window of RGB ``uint8 [H, W, 3]`` ``image`` resized (area) to the
    classifier's input and normalised as its preprocessing says."""
    height, width = preprocessing["size"]
    crops = [cv2.resize(np.ascontiguousarray(image[y1:y2, x1:x2]), (width, height), interpolation=cv2.INTER_AREA)
             for x1, y1, x2, y2 in windows]
    return np.stack([to_tensor(crop, preprocessing) for crop in crops])


def explain_boxes(explainer, image: np.ndarray, boxes: np.ndarray, method: str = "gradcam",
                  targets=None) -> ExplainedBoxes:
    """Every box of RGB ``uint8 [H, W, 3]`` ``image`` explained by the crop classifier ``explainer``
    (targets: as ``Explainer.explain`` takes them, per box; default each crop's top class)."""
    height, width = image.shape[:2]
    windows = windows_of(boxes, height, width)
    crops = crop_batch(image, windows, explainer.contract.preprocessing)
    result = explainer.explain(crops, method=method, targets=targets)
    on_image = np.zeros((len(windows), height, width), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(windows):
        on_image[k, y1:y2, x1:x2] = cv2.resize(result.maps[k], (int(x2 - x1), int(y2 - y1)),
                                               interpolation=cv2.INTER_LINEAR)
    return ExplainedBoxes(boxes=np.asarray(boxes, np.float32).reshape(-1, 4), windows=windows, crops=crops,
                          maps=result.maps, on_image=on_image, scores=result.target_scores, targets=result.targets)
