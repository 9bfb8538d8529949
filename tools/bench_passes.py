#!/usr/bin/env python
"""Score-CAM and Ablation-CAM: onnxcam vs pytorch-grad-cam, side by side in one process.

Both methods cost one forward pass per channel of the layer. onnxcam batches them on
onnxruntime (Score-CAM: the plain forward pass sliced out of the explainer graph;
Ablation-CAM: only the part of the model after the layer); pytorch-grad-cam runs the
whole torch model per batch of channels. Prints seconds per image, the ratio, and the
largest difference between the two maps. Example (the README's figures):

    python tools/bench_passes.py --model resnet50 --size 224 --images 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam import AblationCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from onnxcam.export.explainer import export_explainer
from onnxcam.models import torchvision_recipes
from onnxcam.runtime import Explainer

ORACLES = {"scorecam": ScoreCAM, "ablationcam": AblationCAM}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="torchvision architecture (random weights)")
    parser.add_argument("--layer", default=None, help="layer to explain (default: the recipe's)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--method", action="append", choices=sorted(ORACLES), help="default: both")
    arguments = parser.parse_args()
    torch.manual_seed(0)
    recipe = torchvision_recipes.recipe(arguments.model)
    layer = arguments.layer or recipe.layer
    model = torchvision_recipes.build(arguments.model, None, arguments.size).eval()
    batch = np.random.default_rng(0).standard_normal((arguments.images, 3, arguments.size, arguments.size),
                                                     dtype=np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "explainer.onnx"
        export_explainer(model, path, [layer], (2, 3, arguments.size, arguments.size))
        explainer = Explainer(path, providers="cpu")
        targets = explainer.explain(batch, method="gradcam").targets
        print(f"{arguments.model} {layer} {arguments.size}px, {arguments.images} image(s), CPU "
              f"({torch.get_num_threads()} torch threads)")
        print(f"{'method':<12} {'onnxcam s/img':>14} {'pgc s/img':>10} {'speed-up':>9} {'max |Δmap|':>11}")
        for method in arguments.method or sorted(ORACLES):
            start = time.perf_counter()
            ours = explainer.explain(batch, method=method, targets=targets).maps
            ours_seconds = (time.perf_counter() - start) / arguments.images
            with ORACLES[method](model, [model.get_submodule(layer)]) as cam:
                start = time.perf_counter()
                reference = cam(torch.from_numpy(batch), targets=[ClassifierOutputTarget(int(t)) for t in targets])
                oracle_seconds = (time.perf_counter() - start) / arguments.images
            print(f"{method:<12} {ours_seconds:>14.2f} {oracle_seconds:>10.2f} {oracle_seconds / ours_seconds:>8.1f}x "
                  f"{np.abs(ours - reference).max():>11.1e}")


if __name__ == "__main__":
    main()
