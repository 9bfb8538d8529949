"""Can RoIAlign's gradient go through onnxcam's export path? (docs/explainer-graph.md, "Faster R-CNN")

Faster R-CNN's class logits read the FPN through RoIAlign. torchvision's ``roi_align`` op has a C++ backward
(``torchvision::_roi_align_backward``) that ONNX lacks; torchvision also ships a pure-PyTorch ``_roi_align``
(``torchvision/ops/roi_align.py``, wrapped in a lazy ``torch.compile``: its ``__wrapped__`` is the plain
function) whose backward is aten index arithmetic (``index`` → ``index_put`` with ``accumulate=True``).

This tool builds a small detector-like module: conv features (the explained layer, ``features``) →
``roi_align`` of fixed boxes (7 × 7, sampling ratio 2, as ``MultiScaleRoIAlign`` calls it for one level) →
a two-layer box head → class logits ``[N, K·classes]``. It exports the module's explainer graph with
``export_explainer`` while ``pure_roi_align()`` swaps in the pure-PyTorch ``_roi_align``, runs the graph in
onnxruntime with the seed of one box's class logit, and prints:

- the max abs difference of the graph's ∂logit/∂features against torch autograd through torchvision's native
  (C++) ``roi_align``, relative to the gradient's largest magnitude;
- the graph's time against a forward-only run (the same graph with the seed ignored is not separable, so the
  forward reference is the torch module exported without gradients to ONNX).

Run: ``.venv/bin/python tools/roi_align_gradient.py [--size 64] [--boxes 6]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from torch import nn

roi_align_module = importlib.import_module("torchvision.ops.roi_align")  # the module (the package exports the function)
NATIVE = roi_align_module.roi_align


def int64_roi_align():
    """torchvision's pure-PyTorch ``_roi_align`` and ``_bilinear_interpolate``, their source compiled again with
    the index casts ``.int()`` read as ``.long()`` (the same values, int64), without the lazy ``torch.compile``."""
    namespace = dict(vars(roi_align_module))
    for function in (roi_align_module._bilinear_interpolate, roi_align_module._roi_align.__wrapped__):
        source = inspect.getsource(function).replace(".int()", ".long()")
        source = "\n".join(line for line in source.splitlines() if not line.startswith("@"))
        exec(compile(source, roi_align_module.__file__, "exec"), namespace)
    return namespace["_roi_align"]


# As torchvision writes it, the pure roi_align's indices are int32 (``y.int()``, ``rois[:, 0].int()``); the exported
# backward then has an ONNX ``Max`` of an int32 and an int64 tensor (onnxscript's translation of the index
# broadcasting), which onnxruntime refuses to load (``--int32`` shows it). With int64 indices, the graph loads.
INT64_INDICES = {"on": True}


def pure(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """torchvision's pure-PyTorch RoIAlign (its plain function), with int64 indices unless ``--int32``."""
    height, width = (output_size, output_size) if isinstance(output_size, int) else output_size
    function = int64_roi_align() if INT64_INDICES["on"] else roi_align_module._roi_align.__wrapped__
    return function(input, rois, spatial_scale, height, width, sampling_ratio, aligned)


ROI_ALIGN = {"impl": NATIVE}


@contextlib.contextmanager
def pure_roi_align():
    """Inside: this module's, ``torchvision.ops.roi_align``'s and ``torchvision.ops.poolers``' (``MultiScaleRoIAlign``)
    ``roi_align`` are the pure-PyTorch one."""
    saved = (ROI_ALIGN["impl"], torchvision.ops.poolers.roi_align)
    ROI_ALIGN["impl"] = torchvision.ops.poolers.roi_align = pure
    try:
        yield
    finally:
        ROI_ALIGN["impl"], torchvision.ops.poolers.roi_align = saved


class BoxClassifier(nn.Module):
    """``[N, 3, S, S]`` → ``[N, K·classes]``: features (stride 4) → RoIAlign of the K fixed boxes → box head
    (``TwoMLPHead``) → class logits."""

    def __init__(self, boxes: torch.Tensor, classes: int = 5, channels: int = 32, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, channels, 3, 2, 1), nn.ReLU())
        self.box_head = torchvision.models.detection.faster_rcnn.TwoMLPHead(channels * 7 * 7, hidden)
        self.predictor = nn.Linear(hidden, classes)
        self.register_buffer("boxes", boxes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        count = self.boxes.shape[0]
        index = torch.arange(x.shape[0], device=x.device).repeat_interleave(count)[:, None].to(x.dtype)
        rois = torch.cat([index, self.boxes.repeat(x.shape[0], 1)], dim=1)  # [N·K, 5]
        pooled = ROI_ALIGN["impl"](features, rois, (7, 7), spatial_scale=0.25, sampling_ratio=2)
        logits = self.predictor(self.box_head(pooled))  # [N·K, classes]
        return logits.reshape(x.shape[0], -1)


def random_boxes(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """``[K, 4]`` boxes (x1, y1, x2, y2) inside an ``S × S`` image, at least 8 px a side."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, generator=generator) * (size - 16)
    sides = 8 + torch.rand(count, 2, generator=generator) * (size - 8 - corners)
    return torch.cat([corners, corners + sides], dim=1)


def torch_gradient(model: nn.Module, batch: torch.Tensor, seed: torch.Tensor) -> np.ndarray:
    """∂(Σ seed · output)/∂features by torch autograd with the native (C++) roi_align: ``[N, C, h, w]``."""
    activations = {}
    handle = model.features.register_forward_hook(lambda module, args, out: activations.setdefault("a", out))
    output = model(batch)
    handle.remove()
    (gradient,) = torch.autograd.grad((output * seed).sum(), activations["a"])
    return gradient.numpy()


def timed(session: ort.InferenceSession, feeds: dict, repeats: int) -> float:
    session.run(None, feeds)
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(None, feeds)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    from onnxcam.export import export_explainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--boxes", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--int32", action="store_true", help="keep torchvision's int32 indices (the export fails)")
    args = parser.parse_args()
    INT64_INDICES["on"] = not args.int32
    torch.manual_seed(0)
    model = BoxClassifier(random_boxes(args.boxes, args.size)).eval()
    batch = torch.randn(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    classes = model.predictor.out_features
    with torch.no_grad():
        native_out = model(batch)
        with pure_roi_align():
            pure_out = model(batch)
    print(f"forward, pure vs native roi_align: max |Δ| = {float((pure_out - native_out).abs().max()):.2e}")

    folder = Path(tempfile.mkdtemp(prefix="roi_align_gradient."))
    path, forward_path = folder / "explainer.onnx", folder / "forward.onnx"
    start = time.perf_counter()
    try:
        with pure_roi_align():
            export_explainer(model, path, ["features"], (2, 3, args.size, args.size), reshape="none",
                             example=batch)
    except Exception as error:  # report where it fails, as the tool's finding
        print(f"EXPORT FAILED ({type(error).__name__}): {str(error).splitlines()[0][:400]}")
        raise
    print(f"explainer export (pure roi_align, torch.export + decompositions): {time.perf_counter() - start:.1f} s")
    with pure_roi_align():
        torch.onnx.export(model, (batch,), str(forward_path), dynamo=True, opset_version=18,
                          input_names=["input"], output_names=["output"])

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    forward = ort.InferenceSession(str(forward_path), options, providers=["CPUExecutionProvider"])
    ops = sorted({node.op_type for node in __import__("onnx").load(str(path)).graph.node})
    print(f"graph ops: {', '.join(ops)}")

    worst = 0.0
    for box in range(args.boxes):
        for column in (0, classes - 1):
            seed = np.zeros((2, 1, args.boxes * classes), np.float32)
            seed[:, 0, box * classes + column] = 1.0
            outputs = dict(zip([o.name for o in session.get_outputs()],
                               session.run(None, {"input": batch.numpy(), "seed": seed})))
            expected = torch_gradient(model, batch, torch.from_numpy(seed[:, 0]))
            gradient = outputs["gradient_0"]
            scale = float(np.abs(expected).max())
            worst = max(worst, float(np.abs(gradient - expected).max()) / scale)
    print(f"∂logit/∂features, ONNX (pure roi_align backward) vs torch autograd (native roi_align): "
          f"max |Δ| / max |∂| = {worst:.2e} over {args.boxes} boxes × 2 classes × 2 images")
    seed = np.zeros((2, 1, args.boxes * classes), np.float32)
    seed[:, 0, 0] = 1.0
    explain_s = timed(session, {"input": batch.numpy(), "seed": seed}, args.repeats)
    forward_s = timed(forward, {"input": batch.numpy()}, args.repeats)
    print(f"time per call (2 images, {args.size} px, {args.boxes} boxes): forward {forward_s * 1e3:.2f} ms, "
          f"forward + backward (explainer graph) {explain_s * 1e3:.2f} ms, ratio {explain_s / forward_s:.1f}x")


if __name__ == "__main__":
    main()
