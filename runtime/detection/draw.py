"""Boxes drawn for people: each detection's box, label and score over its overlay, or all of them."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

# one colour per class, cycling (RGB): distinct on a jet heatmap's blues and reds
PALETTE = ((255, 255, 255), (0, 255, 0), (255, 0, 255), (255, 255, 0), (0, 255, 255), (255, 128, 0), (128, 0, 255))


def colour(label: int) -> tuple[int, int, int]:
    return PALETTE[int(label) % len(PALETTE)]


def draw_boxes(image: np.ndarray, boxes: np.ndarray, captions: Sequence[str], labels: np.ndarray) -> np.ndarray:
    """A copy of RGB ``uint8 [H, W, 3]`` ``image`` with each box ``[B, 4]`` (x1, y1, x2, y2, pixels)
    outlined in its class's colour and captioned (``"label 0.87"``) above its top-left corner."""
    drawn = np.ascontiguousarray(image).copy()
    thickness = max(1, image.shape[0] // 200)
    scale = max(0.35, image.shape[0] / 900)
    for box, text, label in zip(np.asarray(boxes), captions, np.asarray(labels)):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(drawn, (x1, y1), (x2, y2), colour(label), thickness, cv2.LINE_AA)
        (width, height), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y1 - height - base, 0)
        cv2.rectangle(drawn, (x1, top), (x1 + width, top + height + base), colour(label), -1)
        cv2.putText(drawn, text, (x1, top + height), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return drawn
