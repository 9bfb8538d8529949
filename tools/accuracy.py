#!/usr/bin/env python
"""How close onnxcam's maps are to the float64 truth on a device, next to pytorch-grad-cam's.

For random-weight ResNet-50 (layer3, layer4) and DenseNet-121 (denseblock4), batch of 4 at
160 px: the max/mean abs error from pytorch-grad-cam run on ``model.double()`` (CPU) of
onnxcam on CPU and on the chosen device (fixed-shape and dynamic sessions, in-graph and
numpy post-processing) and of pytorch-grad-cam in float32 on the device. Then the
pretrained EfficientNet-Lite0 on four scikit-image photos: fp16 explainer vs fp32 maps.

    python tools/accuracy.py            # CUDA where onnxruntime-gpu and torch see a GPU
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from zoo import build  # noqa: E402

from onnxcam.export.explainer import export_explainer  # noqa: E402
from onnxcam.export.precision import convert_to_fp16  # noqa: E402
from onnxcam.models import efficientnet_lite0  # noqa: E402
from onnxcam.runtime import Explainer, load_batch  # noqa: E402

torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
ORACLES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}


def oracle(model, layer, method, batch, targets, double=False):
    tensor = torch.from_numpy(batch)
    if double:
        model, tensor = copy.deepcopy(model).double().cpu(), tensor.double()
    with ORACLES[method](model, [model.get_submodule(layer)]) as cam:
        return cam(tensor, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    folder = Path(tempfile.mkdtemp())
    for architecture, layers in [("resnet50", ["layer3", "layer4"]), ("densenet121", ["features.denseblock4"])]:
        model = build(architecture)
        path = folder / f"{architecture}.onnx"
        export_explainer(model, path, layers, (2, 3, 160, 160))
        batch = np.random.default_rng(0).standard_normal((4, 3, 160, 160)).astype(np.float32)
        runners = {"onnxcam cpu": Explainer(path, providers="cpu")}
        if device == "cuda":
            runners["onnxcam cuda graph"] = Explainer(path, providers="cuda")
            runners["onnxcam cuda dynamic"] = Explainer(path, providers="cuda", static_batches=False)
            runners["onnxcam cuda numpy"] = Explainer(path, providers="cuda", postprocess="numpy")
        on_device = copy.deepcopy(model).to(device)
        for layer in layers:
            for method in ORACLES:
                first = runners["onnxcam cpu"].explain(batch, method, layers=[layer])
                truth = oracle(model, layer, method, batch, first.targets, double=True)
                maps = {name: r.explain(batch, method, layers=[layer]).maps for name, r in runners.items()}
                maps[f"pgc {device}"] = oracle(on_device, layer, method, batch, first.targets)
                errors = "  ".join(f"{name} {np.abs(m - truth).max():.1e}/{np.abs(m - truth).mean():.1e}"
                                   for name, m in maps.items())
                print(f"{architecture} {layer} {method}: max/mean abs error from float64: {errors}", flush=True)

    import skimage

    photos = Path(os.path.dirname(skimage.__file__)) / "data"
    full, half = folder / "effnet.onnx", folder / "effnet16.onnx"
    efficientnet_lite0.export(full)
    convert_to_fp16(full, half)
    provider = "cuda" if device == "cuda" else "cpu"
    fp32, fp16 = Explainer(full, providers=provider), Explainer(half, providers=provider)
    batch, _ = load_batch([photos / n for n in ("coffee.png", "chelsea.png", "astronaut.png", "motorcycle_left.png")],
                          fp32.contract)
    for method in ("cam", "gradcam", "gradcam++"):
        a, b = fp32.explain(batch, method), fp16.explain(batch, method)
        print(f"efficientnet_lite0 {method} on {provider}: fp16 vs fp32 max abs {np.abs(a.maps - b.maps).max():.4f}, "
              f"same targets: {bool((a.targets == b.targets).all())}")


if __name__ == "__main__":
    main()
