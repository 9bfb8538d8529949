#!/usr/bin/env python
"""Faithfulness of every registered CAM method on the pretrained EfficientNet-Lite0, over the real photos
that ship offline, and the multi-instance check (two copies of one object on a canvas).

1. For every method in ``onnxcam.runtime.METHODS`` at the time it runs (at the graph's head layer,
   ``_head_act``), the means over the photos of Average Drop %, Increase in Confidence %, RISE
   deletion / insertion AUC and ROAD (``runtime/metrics.py``), as a markdown table. A method that
   fails is listed with its error, and the script exits 1.
2. Canvases with a real photo's object placed twice (chelsea's cat side by side, a large and a
   small cat, two espresso cups), explained with Grad-CAM and Grad-CAM++ at the head layer and at
   an inner layer (``_blocks.10``, 14 × 14; a second graph, exported next to the first if missing):
   the share of each map's mass inside each copy's box, the share outside, and copy 2's share over
   copy 1's.

    python tools/faithfulness.py                       # exports demo-out/efficientnet_lite0-gradients.onnx if missing
    python tools/faithfulness.py --steps 50 --json faithfulness.json --overlays docs/multi-instance
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from onnxcam.runtime import METHODS, Explainer, load_batch, load_image, overlay, save_image
from onnxcam.runtime import metrics
from onnxcam.runtime.image import to_tensor

ROOT = Path(__file__).resolve().parent.parent
# with input gradients, so that saliency and guided backprop are measured too (the graph `make gallery` writes)
DEFAULT_MODEL = ROOT / "demo-out" / "efficientnet_lite0-gradients.onnx"
INNER_LAYER = "_blocks.10"  # the last 14 × 14 block (112 channels), where Grad-CAM and Grad-CAM++ differ
# the RGB photographs inside scikit-image's data folder and scikit-learn's sample images
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg",
                  "hubble_deep_field.jpg", "retina.jpg", "ihc.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
MULTI_INSTANCE_METHODS = ("gradcam", "gradcam++")
GREY = 127  # the canvas: (127 − 127) / 128 = 0 after EfficientNet-Lite's normalisation


def photo_paths() -> list[Path]:
    """The photos, from the installed scikit-image and scikit-learn packages (no download)."""
    import skimage
    import sklearn.datasets

    folders = {"skimage": Path(os.path.dirname(skimage.__file__)) / "data",
               "sklearn": Path(os.path.dirname(sklearn.datasets.__file__)) / "images"}
    paths = [folders["skimage"] / n for n in SKIMAGE_PHOTOS] + [folders["sklearn"] / n for n in SKLEARN_PHOTOS]
    for path in paths:
        image = load_image(path)
        channels = image.reshape(-1, 3).astype(np.int16)
        assert (channels[:, 0] != channels[:, 1]).any(), f"{path} is grey, not an RGB photo"
    return paths


def ensure_model(path: Path, layer: str | None = None) -> Path:
    """The explainer graph of the pretrained EfficientNet-Lite0 at ``path`` (at the recipe's layer, or at ``layer``),
    exported first if missing."""
    if not path.is_file():
        from onnxcam.export import export_explainer
        from onnxcam.models import efficientnet_lite0 as recipe

        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"exporting EfficientNet-Lite0 ({layer or recipe.LAYER}) to {path} …", file=sys.stderr)
        export_explainer(recipe.build(), path, [layer or recipe.LAYER], (2, 3, recipe.INPUT_SIZE, recipe.INPUT_SIZE),
                         preprocessing=recipe.preprocessing(), labels=recipe.labels(), architecture=recipe.ARCHITECTURE,
                         input_gradients=("plain", "guided") if layer is None else ())
    return path


def faithfulness(explainer: Explainer, paths: list[Path], steps: int, seed: int):
    """Every method's metrics over ``paths``: → (``{method: {metric: mean}}``, ``{method: error}``, per-image record)."""
    batch, _ = load_batch(paths, explainer.contract)
    means, failures, record = {}, {}, {}
    for method in METHODS:
        started = time.perf_counter()
        try:
            per_image, targets = metrics.evaluate_method(explainer, batch, method, steps=steps, seed=seed)
        except Exception as error:  # report it in the table; never drop a method silently
            failures[method] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            print(f"{method}: FAILED {failures[method]}", file=sys.stderr)
            continue
        means[method] = metrics.summarise(per_image)
        record[method] = {"targets": targets.tolist(), "per_image": {k: v.tolist() for k, v in per_image.items()}}
        print(f"{method}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return means, failures, record


def compose(photo: Path, crop: tuple[int, int, int, int], widths: tuple[int, int], size: int = 224):
    """A grey ``size``² canvas with the ``crop`` (top, left, bottom, right) of ``photo`` placed twice, at the
    given widths, side by side and vertically centred. → (RGB ``uint8 [size, size, 3]``, the two boxes)."""
    top, left, bottom, right = crop
    piece = load_image(photo)[top:bottom, left:right]
    canvas = np.full((size, size, 3), GREY, np.uint8)
    gap = (size - sum(widths)) // 3
    boxes, x = [], gap
    for width in widths:
        height = round(width * piece.shape[0] / piece.shape[1])
        y = (size - height) // 2
        canvas[y:y + height, x:x + width] = cv2.resize(piece, (width, height), interpolation=cv2.INTER_AREA)
        boxes.append((y, x, y + height, x + width))
        x += width + gap
    return canvas, boxes


def multi_instance(explainer: Explainer, overlays: Path | None) -> list[dict]:
    """Grad-CAM and Grad-CAM++ on canvases with two copies of one object: the map mass on each copy."""
    paths = {p.name: p for p in photo_paths()}
    cases = {
        "two cats, same size": (paths["chelsea.png"], (0, 10, 300, 370), (104, 104)),
        "two cats, large + small": (paths["chelsea.png"], (0, 10, 300, 370), (136, 72)),
        "two espressos, same size": (paths["coffee.png"], (10, 160, 330, 440), (104, 104)),
    }
    rows = []
    for case, (photo, crop, widths) in cases.items():
        canvas, boxes = compose(photo, crop, widths, explainer.contract.input_shape[-1])
        batch = to_tensor(canvas, explainer.contract.preprocessing)[None]
        for method in MULTI_INSTANCE_METHODS:
            result = explainer.explain(batch, method=method)
            shares = metrics.box_mass_shares(result.maps, boxes)[0]
            target = int(result.targets[0])
            rows.append({"layer": explainer.contract.layer_names[0], "case": case, "method": method, "class": f"{target} {explainer.contract.label(target)}",
                         "p": float(result.scores[0]), "first": float(shares[0]), "second": float(shares[1]),
                         "outside": float(1 - shares.sum()), "ratio": float(shares[1] / max(shares[0], 1e-12)),
                         "boxes": boxes})
            if overlays is not None:
                overlays.mkdir(parents=True, exist_ok=True)
                name = (f"{case.replace(' ', '-').replace(',', '').replace('+', 'and')}."
                        f"{explainer.contract.layer_names[0]}.{method.replace('+', 'p')}.png")
                image = overlay(canvas, result.maps[0])
                for top, left, bottom, right in boxes:
                    cv2.rectangle(image, (left, top), (right - 1, bottom - 1), (255, 255, 255), 1)
                save_image(overlays / name, image)
    return rows


def multi_instance_table(rows: list[dict]) -> str:
    lines = ["| layer | canvas | method | class (p) | mass on copy 1 | mass on copy 2 | outside | copy-2 / copy-1 |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['layer']} | {r['case']} | {r['method']} | {r['class']} ({r['p']:.2f}) | {r['first']:.3f} | {r['second']:.3f} | "
              f"{r['outside']:.3f} | {r['ratio']:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="EfficientNet-Lite0 explainer graph "
                        "(exported there if missing)")
    parser.add_argument("--steps", type=int, default=metrics.DEFAULT_STEPS, help="deletion/insertion curve steps")
    parser.add_argument("--seed", type=int, default=0, help="ROAD noise seed")
    parser.add_argument("--provider", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON")
    parser.add_argument("--overlays", type=Path, default=None, help="folder for the multi-instance overlays")
    parser.add_argument("--skip-table", action="store_true", help="only the multi-instance check")
    args = parser.parse_args(argv)

    explainer = Explainer(ensure_model(args.model), providers=args.provider)
    paths = photo_paths()
    report: dict = {"model": str(args.model), "photos": [p.name for p in paths], "steps": args.steps,
                    "seed": args.seed, "providers": explainer.providers}
    failures = {}
    if not args.skip_table:
        means, failures, report["methods"] = faithfulness(explainer, paths, args.steps, args.seed)
        print(f"EfficientNet-Lite0, layer {explainer.contract.layer_names}, {len(paths)} photos "
              f"({', '.join(p.name for p in paths)}), {args.steps} deletion/insertion steps, ROAD seed {args.seed}\n")
        print(metrics.markdown_table(means, metrics.METRICS))
        for method, error in failures.items():
            print(f"| {method} | failed: {error} |")
        print(f"\n{metrics.direction_note(metrics.METRICS)}\n")
    inner = Explainer(ensure_model(args.model.with_name(f"{args.model.stem}.{INNER_LAYER}.onnx"), INNER_LAYER),
                      providers=args.provider)
    rows = multi_instance(explainer, args.overlays) + multi_instance(inner, args.overlays)
    report["multi_instance"] = rows
    print(multi_instance_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
