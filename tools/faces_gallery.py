#!/usr/bin/env python
"""The README's detection picture: MTCNN (weights from the facenet-pytorch wheel) finds the faces in
a real photo, and onnxcam explains each with Grad-CAM on ONet's face logit for the box's crop.

    python tools/faces_gallery.py [--photo astronaut.png] [--out docs/detection/astronaut-faces.png]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import skimage

from onnxcam.models import mtcnn
from onnxcam.runtime import Explainer
from onnxcam.runtime.detection.boxes import explain_boxes
from onnxcam.runtime.detection.draw import draw_boxes
from onnxcam.runtime.image import load_image, overlay, save_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", default="astronaut.png", help="an image file, or a name in scikit-image's data")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--out", type=Path, default=Path("docs/detection/astronaut-faces.png"))
    args = parser.parse_args()
    photo = Path(args.photo) if Path(args.photo).is_file() else Path(os.path.dirname(skimage.__file__)) / "data" / args.photo
    image = load_image(photo)
    boxes, probabilities = mtcnn.detect_faces(image)
    with tempfile.TemporaryDirectory() as folder:
        mtcnn.export_onet(Path(folder) / "onet.onnx")
        explained = explain_boxes(Explainer(Path(folder) / "onet.onnx", providers="cpu"), image, boxes,
                                  method=args.method, targets=1)
    picture = overlay(image, explained.on_image.max(axis=0) if len(boxes) else np.zeros(image.shape[:2]))
    picture = draw_boxes(picture, boxes, [f"face {p:.3f}" for p in probabilities], np.ones(len(boxes), int))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image(args.out, picture)
    print(f"{photo.name}: {len(boxes)} face(s) {np.round(boxes).astype(int).tolist()}, p={probabilities.round(4).tolist()}; "
          f"face logit {explained.scores.round(3).tolist()}; wrote {args.out}")


if __name__ == "__main__":
    main()
