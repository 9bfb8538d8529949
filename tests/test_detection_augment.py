"""Bare ONNX detectors through ``onnxcam augment --detector yolo|picodet`` and ``onnxcam detect``.

Two small torch detectors with random weights, written here from the layouts the deployed files have
(docs/explainer-graph.md, "Detection", "ONNX detectors through augment") — no Ultralytics or
PaddleDetection code:

- ``TinyYolo``: Conv-BN-SiLU blocks, C2f-like blocks (Split, Concat), SPPF (MaxPool), nearest upsampling in
  the neck, a Detect head with DFL (softmax over the bins, a 1×1 convolution with ``arange`` weights), anchors
  made from the feature maps' sizes at run time, and one output ``[N, 4 + C, A]`` (cx, cy, w, h in input
  pixels, then sigmoid class scores);
- ``TinyPicoDet``: four levels (stride 8, 16, 32, 64), per level sigmoid scores ``[N, A_l, C]`` and
  distribution-focal box logits ``[N, A_l, 4·(reg_max+1)]``, outputs in PaddleDetection's order (every
  level's scores, then every level's boxes).

Both are exported by ``torch.onnx.export`` with dynamic height and width, augmented at a fixed non-square
size, and checked: the graph's gradient at the default layer for a detection element against torch autograd
(``tolerances.py``); the numpy decoding + NMS against a torch/torchvision transcription of the documented rules
written here; ``onnxcam detect`` on a real photo; one-line refusals of files the recipes do not fit.
"""

from __future__ import annotations

import copy
import functools
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

from conftest import skimage_photo
from onnxcam.export.augment import augment
from onnxcam.runtime import Explainer, load_batch
from onnxcam.runtime.detection.decode import decode
from onnxcam.runtime.detection.explain import detect, explain_detections
from test_augment import assert_one_line_error, cli, small_classifier
from test_cli import run as run_cli
from tolerances import Throws, assert_two_tier

HEIGHT, WIDTH = 128, 160  # not square: height and width must not be swapped anywhere
CLASSES = 5
CPU = ["CPUExecutionProvider"]
# The augmented graph against torch autograd, relative to the largest |value| (tier 1 of tolerances.py): measured
# float32 distances 5.1e-6 (YOLO gradient) and 2.8e-7 (PicoDet), so 1e-4 leaves a margin of 20x; tier 2 (float64
# truth) decides where a machine's rounding lands farther.
GRADIENT_TIGHT = 1e-4
BOX_ATOL = 1e-4  # pixels, decoded boxes against the torch transcription (measured at most 3.1e-5)


# -- a YOLOv8-like detector ---------------------------------------------------------------------------
class ConvBlock(nn.Sequential):
    """Conv (no bias) → BatchNorm → SiLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1):
        super().__init__(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class C2fLike(nn.Module):
    """A 1×1 conv, split in two halves, one bottleneck on the second half, all three concatenated, a 1×1 conv."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True):
        super().__init__()
        self.half = c_out // 2
        self.first = ConvBlock(c_in, 2 * self.half)
        self.bottleneck = nn.Sequential(ConvBlock(self.half, self.half, 3), ConvBlock(self.half, self.half, 3))
        self.shortcut = shortcut
        self.last = ConvBlock(3 * self.half, c_out)

    def forward(self, x):
        a, b = self.first(x).split((self.half, self.half), 1)
        c = self.bottleneck(b) + b if self.shortcut else self.bottleneck(b)
        return self.last(torch.cat([a, b, c], 1))


class SPPFLike(nn.Module):
    """A 1×1 conv, three chained 5×5 stride-1 max-pools, the four concatenated, a 1×1 conv."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.first, self.last = ConvBlock(c_in, c_in // 2), ConvBlock(2 * c_in, c_out)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.first(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.last(torch.cat(y, 1))


class YoloDetect(nn.Module):
    """Per level a box branch (4·reg_max DFL logits) and a class branch; anchors from the maps' sizes;
    DFL expectation, distances → (cx, cy, w, h) × stride; ``[N, 4 + C, A]`` with sigmoid class scores."""

    def __init__(self, channels, classes: int, reg_max: int = 16, strides=(8, 16, 32)):
        super().__init__()
        self.reg_max, self.classes, self.strides = reg_max, classes, strides
        self.box = nn.ModuleList(nn.Sequential(ConvBlock(c, 16, 3), ConvBlock(16, 16, 3), nn.Conv2d(16, 4 * reg_max, 1))
                                 for c in channels)
        self.cls = nn.ModuleList(nn.Sequential(ConvBlock(c, 16, 3), ConvBlock(16, 16, 3), nn.Conv2d(16, classes, 1))
                                 for c in channels)
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(reg_max, dtype=torch.float).view(1, reg_max, 1, 1)

    def forward(self, features):
        n, outputs = features[0].shape[0], 4 * self.reg_max + self.classes
        levels = [torch.cat([box(x), cls(x)], 1) for x, box, cls in zip(features, self.box, self.cls)]
        points, strides = [], []
        for x, stride in zip(features, self.strides):
            h, w = x.shape[2:]
            sy, sx = torch.meshgrid(torch.arange(h, dtype=torch.float) + 0.5, torch.arange(w, dtype=torch.float) + 0.5,
                                    indexing="ij")
            points.append(torch.stack([sx, sy], -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), float(stride)))
        points, strides = torch.cat(points).transpose(0, 1), torch.cat(strides).transpose(0, 1)  # [2, A], [1, A]
        flat = torch.cat([x.view(n, outputs, -1) for x in levels], 2)
        box, cls = flat.split((4 * self.reg_max, self.classes), 1)
        anchors = box.shape[2]
        distances = self.dfl(box.view(n, 4, self.reg_max, anchors).transpose(2, 1).softmax(1)).view(n, 4, anchors)
        left_top, right_bottom = distances.chunk(2, 1)
        x1y1, x2y2 = points - left_top, points + right_bottom
        xywh = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], 1) * strides
        return torch.cat([xywh, cls.sigmoid()], 1)


class TinyYolo(nn.Module):
    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.stem = nn.Sequential(ConvBlock(3, 8, 3, 2), ConvBlock(8, 16, 3, 2), C2fLike(16, 16))
        self.p3 = nn.Sequential(ConvBlock(16, 24, 3, 2), C2fLike(24, 24))
        self.p4 = nn.Sequential(ConvBlock(24, 32, 3, 2), C2fLike(32, 32))
        self.p5 = nn.Sequential(ConvBlock(32, 48, 3, 2), C2fLike(48, 48), SPPFLike(48, 48))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.top_down4, self.top_down3 = C2fLike(80, 32, False), C2fLike(56, 24, False)
        self.down3, self.bottom_up4 = ConvBlock(24, 24, 3, 2), C2fLike(56, 32, False)
        self.down4, self.bottom_up5 = ConvBlock(32, 32, 3, 2), C2fLike(80, 48, False)
        self.detect = YoloDetect((24, 32, 48), classes)

    def forward(self, x):
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        t4 = self.top_down4(torch.cat([self.up(p5), p4], 1))
        n3 = self.top_down3(torch.cat([self.up(t4), p3], 1))  # the finest map the head reads: the default layer
        n4 = self.bottom_up4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bottom_up5(torch.cat([self.down4(n4), p5], 1))
        return self.detect([n3, n4, n5])


# -- a PP-PicoDet-like detector -----------------------------------------------------------------------
class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3×3 (stride s) → BN → HardSwish → pointwise 1×1 → BN → HardSwish."""

    def __init__(self, c_in: int, c_out: int, s: int = 1):
        super().__init__(nn.Conv2d(c_in, c_in, 3, s, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in), nn.Hardswish(),
                         nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.Hardswish())


class TinyPicoDet(nn.Module):
    """Backbone to stride 32, a top-down neck with nearest upsampling, an extra stride-64 level, and per level a
    shared depthwise-separable tower, then class logits (→ sigmoid) and 4·(reg_max+1) DFL logits."""

    def __init__(self, classes: int = CLASSES, reg_max: int = 7, width: int = 24):
        super().__init__()
        self.stem = nn.Sequential(DepthwiseSeparable(3, 8, 2), DepthwiseSeparable(8, 16, 2))
        self.c3 = DepthwiseSeparable(16, 24, 2)
        self.c4 = DepthwiseSeparable(24, 32, 2)
        self.c5 = DepthwiseSeparable(32, 48, 2)
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in (24, 32, 48))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.smooth = nn.ModuleList(DepthwiseSeparable(width, width) for _ in range(3))
        self.extra = DepthwiseSeparable(width, width, 2)
        self.tower = nn.ModuleList(DepthwiseSeparable(width, width) for _ in range(4))
        self.cls = nn.ModuleList(nn.Conv2d(width, classes, 1) for _ in range(4))
        self.reg = nn.ModuleList(nn.Conv2d(width, 4 * (reg_max + 1), 1) for _ in range(4))

    def forward(self, x):
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        l5 = self.lateral[2](c5)
        l4 = self.lateral[1](c4) + self.up(l5)[:, :, :c4.shape[2], :c4.shape[3]]
        l3 = self.lateral[0](c3) + self.up(l4)[:, :, :c3.shape[2], :c3.shape[3]]
        features = [self.smooth[0](l3), self.smooth[1](l4), self.smooth[2](l5)]
        features.append(self.extra(features[-1]))
        scores, boxes = [], []
        for x, tower, cls, reg in zip(features, self.tower, self.cls, self.reg):
            shared = tower(x)
            scores.append(cls(shared).sigmoid().flatten(2).transpose(1, 2))
            boxes.append(reg(shared).flatten(2).transpose(1, 2))
        return (*scores, *boxes)


# -- building, exporting, augmenting ------------------------------------------------------------------
def calibrated(build, seed: int) -> nn.Module:
    """``build()`` with seeded random weights, and BatchNorm statistics from random batches (default statistics
    of a random network shrink or blow up its features): the model in eval mode."""
    torch.manual_seed(seed)
    model = build()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative: the mean over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(4, 3, HEIGHT, WIDTH))
    return model.eval()


def export_onnx(model: nn.Module, path, outputs: dict[str, int]) -> None:
    """An inference file as deployed ones are: TorchScript exporter, opset 17, dynamic batch, height, width
    (``outputs``: each output's name → its anchor axis)."""
    axes = {"images": {0: "batch", 2: "height", 3: "width"},
            **{name: {0: "batch", axis: f"anchors_{name}"} for name, axis in outputs.items()}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(model, (torch.rand(1, 3, 96, 96),), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=list(outputs), dynamic_axes=axes)


def picodet_heads(outputs) -> torch.Tensor:
    """The recipe's Concat in torch: ``[N, A, 4·(reg_max+1) + C]`` from PicoDet's 4 score and 4 box outputs."""
    return torch.cat([torch.cat(outputs[4:], 1), torch.cat(outputs[:4], 1)], 2)


class Family:
    """One detector under test: how to build it, its outputs' names (→ anchor axis), the torch module whose
    output is the recipe's default layer, and the explained output from the torch model's outputs."""

    def __init__(self, build, outputs: dict[str, int], layer: str, explained):
        self.build, self.outputs, self.layer, self.explained = build, outputs, layer, explained


def scaled_scores(model: nn.Module, convs: list, factor: float) -> nn.Module:
    """Class logits of a useful size: a few units saturate the sigmoid (ties at 1.0), a few hundredths put every
    score at 0.5."""
    with torch.no_grad():
        for conv in convs:
            conv.weight *= factor
            conv.bias.zero_()
    return model


def tiny_yolo() -> nn.Module:
    model = calibrated(TinyYolo, 0)
    return scaled_scores(model, [branch[-1] for branch in model.detect.cls], 1.0)


def tiny_picodet() -> nn.Module:
    model = calibrated(TinyPicoDet, 1)
    return scaled_scores(model, list(model.cls), 0.3)


FAMILIES = {
    "yolo": Family(tiny_yolo, {"output0": 2}, "top_down3", lambda out: out),
    "picodet": Family(tiny_picodet, {**{f"scores_{i}": 1 for i in range(4)}, **{f"boxes_{i}": 1 for i in range(4)}},
                      "tower.0", picodet_heads),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """family → (torch model, inference file, augment's result, explainer graph), each made once."""
    folder, cache = tmp_path_factory.mktemp("detectors"), {}

    def make(family: str):
        if family not in cache:
            spec = FAMILIES[family]
            model, source, target = spec.build(), folder / f"{family}.onnx", folder / f"{family}.explainer.onnx"
            export_onnx(model, source, spec.outputs)
            cache[family] = (model, source, augment(source, target, size=(HEIGHT, WIDTH), detector=family), target)
        return cache[family]

    return make


@functools.cache
def photos() -> tuple[str, ...]:
    return tuple(str(skimage_photo(name)) for name in ("astronaut.png", "chelsea.png"))


def torch_truth(family: str, model: nn.Module, batch: np.ndarray, elements: np.ndarray):
    """The explained output, the layer's activation and ∂ output.flat[elements[n, k]] / ∂ activation (torch
    autograd; float64 when ``batch`` is): ``[N, *O]``, ``[N, C, h, w]``, ``[N·K, C, h, w]`` (rows image-major)."""
    spec, kept = FAMILIES[family], []
    handle = model.get_submodule(spec.layer).register_forward_hook(lambda m, i, o: kept.append(o))
    out = spec.explained(model(torch.from_numpy(batch)))
    handle.remove()
    flat = out.reshape(len(batch), -1)
    gradients = [torch.autograd.grad(flat.gather(1, torch.from_numpy(elements[:, k:k + 1])).sum(), kept[0],
                                     retain_graph=True)[0] for k in range(elements.shape[1])]
    gradient = torch.stack(gradients, 1).reshape(-1, *kept[0].shape[1:])
    return out.detach().numpy(), kept[0].detach().numpy(), gradient.numpy()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradient_of_a_detection_equals_torch_autograd(family, made):
    """Each kept box's target element (its class score in the output) differentiated by the augmented graph at the
    recipe's default layer equals torch autograd on the same network (tier 1: 1e-4 relative; else float64)."""
    model, _, result, path = made(family)
    assert FAMILIES[family].layer in result.layer  # the default layer: where the head's branches part
    explainer = Explainer(path, providers="cpu")
    record = explainer.contract.detection
    assert record.family == family and record.classes == CLASSES and record.anchors is None
    batch, _ = load_batch(photos(), explainer.contract)
    found = detect(explainer, batch)
    assert all(len(d) >= 2 for d in found)
    shape = explainer.contract.output.shape
    elements = np.stack([record.elements(d.anchors[:2], d.columns[:2], shape) for d in found])  # [N, 2]
    raw = explainer.forward(batch).reshape(len(batch), -1)
    np.testing.assert_array_equal(np.take_along_axis(raw, elements, 1), [d.scores[:2] for d in found])  # the score
    seed = np.zeros((len(batch), 2, int(np.prod(shape))), np.float32)
    np.put_along_axis(seed, elements[:, :, None], 1.0, axis=2)
    session = ort.InferenceSession(str(path), providers=CPU)
    output, activation, gradient = session.run(["output", "activation_0", "gradient_0"],
                                               {"input": batch, "seed": seed.reshape(len(batch), 2, *shape)})
    expected = torch_truth(family, model, batch, elements)
    truth = functools.cache(lambda: torch_truth(family, copy.deepcopy(model).double(), batch.astype(np.float64),
                                                elements))
    throws = Throws(lambda at: torch_truth(family, model, at, elements), batch)
    assert np.abs(expected[2]).max() > 0
    ours = (output[::2], activation[::2], gradient)
    for index, kind in enumerate(("output", "activation", "gradient")):
        measured = assert_two_tier(ours[index], expected[index], lambda index=index: truth()[index],
                                   tight=GRADIENT_TIGHT, relative=True, alternatives=lambda index=index: throws(lambda t: t[index]),
                                   what=f"{family} {kind}")
    print(f"{family}: max |gradient - autograd| / max |autograd| = {measured.tight_distance:.1e}")


# -- decoding and NMS against a torch / torchvision transcription of the documented rules ------------------
def yolo_reference(raw: np.ndarray, size, conf: float, iou: float, max_det: int):
    """Ultralytics' documented post-processing, written in torch: best class per anchor, ``> conf``, xywh → xyxy,
    NMS within each class (torchvision's ``batched_nms``), ``max_det``, boxes clipped to the image.
    → boxes, scores, labels, anchors."""
    x = torch.from_numpy(raw).T  # [A, 4 + C]
    scores, labels = x[:, 4:].max(1)
    anchors = torch.nonzero(scores > conf).flatten()
    xywh = x[anchors, :4]
    boxes = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    keep = torchvision.ops.batched_nms(boxes, scores[anchors], labels[anchors], iou)[:max_det]
    boxes = boxes[keep]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, size[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, size[0])
    return boxes.numpy(), scores[anchors][keep].numpy(), labels[anchors][keep].numpy(), anchors[keep].numpy()


def picodet_reference(raw: np.ndarray, params: dict):
    """PaddleDetection's documented PicoDet decoding, written in torch: grid-cell centres, softmax over each side's
    bins, expectation × stride, distances → x1 y1 x2 y2; per class ``> score_threshold``, the ``nms_top_k`` best,
    torchvision NMS; the ``keep_top_k`` best of all. → boxes, scores, labels, anchors (by decreasing score)."""
    reg_max, raw = params["reg_max"], torch.from_numpy(raw)
    points = []
    for (h, w), stride in zip(params["grids"], params["strides"]):
        y, x = torch.meshgrid(torch.arange(h, dtype=torch.float), torch.arange(w, dtype=torch.float), indexing="ij")
        xy = torch.stack([x.flatten(), y.flatten()], 1) + 0.5
        points.append(torch.cat([xy * stride, torch.full((h * w, 1), float(stride))], 1))
    points = torch.cat(points)
    bins = raw[:, :4 * (reg_max + 1)].reshape(-1, 4, reg_max + 1).softmax(2)
    distances = (bins * torch.arange(reg_max + 1, dtype=torch.float)).sum(2) * points[:, 2:]
    boxes = torch.cat([points[:, :2] - distances[:, :2], points[:, :2] + distances[:, 2:]], 1)
    scores = raw[:, 4 * (reg_max + 1):]
    kept = []
    for label in range(scores.shape[1]):
        candidates = torch.nonzero(scores[:, label] > params["score_thresh"]).flatten()
        order = torch.sort(scores[candidates, label], descending=True, stable=True).indices
        candidates = candidates[order][:params["topk_candidates"]]
        chosen = candidates[torchvision.ops.nms(boxes[candidates], scores[candidates, label], params["nms_thresh"])]
        kept += [(int(a), label) for a in chosen]
    anchors, labels = (torch.tensor([k[i] for k in kept], dtype=torch.long) for i in (0, 1))
    order = torch.sort(scores[anchors, labels], descending=True, stable=True).indices[:params["detections_per_img"]]
    anchors, labels = anchors[order], labels[order]
    return boxes[anchors].numpy(), scores[anchors, labels].numpy(), labels.numpy(), anchors.numpy()


def decoded_equal(ours, reference, what: str) -> None:
    boxes, scores, labels, anchors = reference
    assert len(ours) == len(scores), f"{what}: {len(ours)} detections, the reference {len(scores)}"
    np.testing.assert_array_equal(ours.labels, labels, err_msg=what)
    np.testing.assert_array_equal(ours.anchors, anchors, err_msg=what)
    np.testing.assert_array_equal(ours.scores, scores, err_msg=what)  # the raw elements themselves
    # float32 rounding of pixel coordinates: measured 0 (YOLO) and 3.1e-5 (PicoDet: a softmax and an expectation
    # summed in another order; 1 ulp at 128-256 px)
    np.testing.assert_allclose(ours.boxes, boxes, rtol=0, atol=BOX_ATOL, err_msg=what)


YOLO_CASES = {  # (conf, iou, max_det): Ultralytics' predict defaults; a conf at a quantile of the image's best
    # scores (the threshold then cuts: random weights put every score near 0.5); a max_det that cuts
    "defaults": (0.25, 0.7, 300), "median-conf": ("q0.5", 0.5, 300), "max-det": ("q0.3", 0.3, 7)}
PICODET_CASES = {  # PaddleDetection's PicoDet defaults; nms_top_k and keep_top_k hit
    "defaults": {}, "top-k": {"score_thresh": 0.3, "nms_thresh": 0.4, "topk_candidates": 20,
                              "detections_per_img": 30}}


def raw_outputs(made, family: str):
    """The explainer graph's output on the two photos and on two random images: float32 [4, *O], and the record."""
    _, _, _, path = made(family)
    explainer = Explainer(path, providers="cpu")
    batch, _ = load_batch(photos(), explainer.contract)
    noise = np.random.default_rng(0).random((2, *batch.shape[1:]), dtype=np.float32) * 4 - 2
    return explainer.forward(np.concatenate([batch, noise])), explainer.contract.detection


@pytest.mark.parametrize("case", list(YOLO_CASES))
def test_yolo_decoding_is_ultralytics_rules(case, made):
    raws, record = raw_outputs(made, "yolo")
    assert record.params["score_thresh"] == 0.25 and record.params["nms_thresh"] == 0.7  # the recorded defaults
    assert record.params["detections_per_img"] == 300 and record.layout == "columns_first"
    suppressed = 0
    for index, raw in enumerate(raws):
        conf, iou, max_det = YOLO_CASES[case]
        if isinstance(conf, str):
            conf = float(np.quantile(raw[4:].max(0), float(conf[1:])))
        params = {**record.params, "score_thresh": conf, "nms_thresh": iou, "detections_per_img": max_det}
        ours = decode("yolo", raw, None, list(record.levels), (HEIGHT, WIDTH), params)
        decoded_equal(ours, yolo_reference(raw, (HEIGHT, WIDTH), conf, iou, max_det), f"{case} image {index}")
        assert np.array_equal(ours.columns, ours.labels + 4)
        suppressed += int((raw[4:].max(0) > conf).sum()) - len(ours)
    assert suppressed > 0  # NMS (or max_det) removed boxes: the comparison covers it


@pytest.mark.parametrize("case", list(PICODET_CASES))
def test_picodet_decoding_is_paddledetection_rules(case, made):
    raws, record = raw_outputs(made, "picodet")
    params = {**record.params, **PICODET_CASES[case]}
    assert record.params["reg_max"] == 7 and record.params["strides"] == [8, 16, 32, 64]
    assert record.params["grids"] == [[16, 20], [8, 10], [4, 5], [2, 3]] and record.box_columns == 32
    for index, raw in enumerate(raws):
        ours = decode("picodet", raw, None, list(record.levels), (HEIGHT, WIDTH), params)
        reference = picodet_reference(raw, params)
        decoded_equal(ours, reference, f"{case} image {index}")
        assert np.array_equal(ours.columns, ours.labels + 32)
        assert len(ours) == params["detections_per_img"]  # keep_top_k is reached: the cut is compared too


# -- the command line: augment, then detect on a real photo -----------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_augment_and_detect_from_the_command_line(family, made, tmp_path):
    """``onnxcam augment --detector`` (labels, a post-processing parameter) and ``onnxcam detect`` on
    astronaut.png: one overlay per detection, every box in one picture, maps and the detections' JSON."""
    _, source, _, _ = made(family)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing{k}" for k in range(CLASSES)) + "\n")
    path, out = tmp_path / f"{family}.explainer.onnx", tmp_path / "out"
    threshold = {"yolo": "conf=0.3", "picodet": "score_threshold=0.3"}[family]
    result = cli(source, "--detector", family, "--size", HEIGHT, WIDTH, "--labels", labels,
                 "--detection-param", threshold, "-o", path)
    assert result.exit_code == 0, result.output
    assert f"{family} detector, {CLASSES} classes" in result.output and "onnxcam detect" in result.output
    record = Explainer(path, providers="cpu").contract.detection
    assert record.params["score_thresh"] == 0.3 and record.labels == tuple(f"thing{k}" for k in range(CLASSES))
    result = run_cli("detect", path, skimage_photo("astronaut.png"), "--max-detections", "3", "--save-maps",
                     "--renormalise", "--out", out)
    assert result.exit_code == 0, result.output
    assert "3 detection(s): thing" in result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["astronaut.detections.json", *[f"astronaut.gradcam.det{k}.{e}" for k in (1, 2, 3)
                                                     for e in ("npy", "png")], "astronaut.gradcam.png"]
    rows = json.loads((out / "astronaut.detections.json").read_text())
    box_columns = {"yolo": 4, "picodet": 32}[family]
    assert [r["column"] for r in rows] == [r["class"] + box_columns for r in rows]
    assert all(r["score"] >= 0.3 and r["label"] == f"thing{r['class']}" for r in rows)
    maps = [np.load(out / f"astronaut.gradcam.det{k}.npy") for k in (1, 2, 3)]
    assert all(m.shape == (HEIGHT, WIDTH) and 0 <= m.min() and m.max() <= 1 for m in maps)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_explain_detections_gives_one_map_per_box(family, made):
    """``explain_detections`` as for torchvision's detectors: the kept boxes of two images, a map each, in one
    call; the top box alone (resolved inside the graph) has the same map as the first of several."""
    _, _, _, path = made(family)
    explainer = Explainer(path, providers="cpu")
    batch, _ = load_batch(photos(), explainer.contract)
    explained = explain_detections(explainer, batch, "gradcam++", max_detections=2)
    assert [e.maps.shape for e in explained] == [(2, HEIGHT, WIDTH)] * 2
    assert np.abs(explained[0].maps[0] - explained[0].maps[1]).max() > 1e-2  # different boxes, different maps
    top = explain_detections(explainer, batch, "gradcam++", max_detections=1)
    for one, several in zip(top, explained):
        assert one.detections.anchors[0] == several.detections.anchors[0]
        np.testing.assert_allclose(one.maps[0], several.maps[0], atol=1e-5)


# -- refusals: one line, exit 1, no file -------------------------------------------------------------------
def strided_output(tmp_path) -> str:
    """A detector-like file whose output [N, 9, H/16 · W/16] fits neither layout."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((9, 3, 16, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["maps"], strides=[16, 16]),
         helper.make_node("Reshape", ["maps", "shape"], ["output0"])], "strided",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 9, "A"])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([0, 9, -1], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "strided.onnx")
    return tmp_path / "strided.onnx"


def test_files_the_recipes_do_not_fit_are_refused_in_one_line(made, tmp_path):
    yolo_file, picodet_file = made("yolo")[1], made("picodet")[1]
    onnx.save(small_classifier("Relu"), tmp_path / "classifier.onnx")
    size = ("--size", HEIGHT, WIDTH)
    cases = [
        ((yolo_file, "--detector", "picodet", *size), ["output0 [N, 9, 420]", "use --detector yolo"]),
        ((picodet_file, "--detector", "yolo", *size),
         ["scores_0 [N, 320, 5]", "boxes_3 [N, 6, 32]", "use --detector picodet"]),
        ((tmp_path / "classifier.onnx", "--detector", "yolo"),
         ["outputs at 8x8 are: scores [N, 4]", "drop --detector"]),
        ((tmp_path / "classifier.onnx", "--detector", "picodet"), ["scores [N, 4]", "drop --detector"]),
        ((strided_output(tmp_path), "--detector", "yolo", *size),
         ["420 or 426 anchors at 128x160", "output0 [N, 9, 80]", "--logits NAME and no --detector"]),
        ((yolo_file, "--detector", "yolo"), ["dynamic height/width", "--size H W"]),
        ((yolo_file, "--detector", "yolo", *size, "--detection-param", "iou=2"), ["iou=", "between 0 and 1"]),
        ((yolo_file, "--detector", "yolo", *size, "--detection-param", "nms=0.5"), ["unknown yolo parameter 'nms'"]),
        ((yolo_file, "--detector", "yolo", *size, "--logits", "output0"), ["exclude each other"]),
        ((picodet_file, "--detector", "picodet", *size, "--labels", tmp_path / "two.txt"), ["2 labels", "5 classes"]),
    ]
    (tmp_path / "two.txt").write_text("a\nb\n")
    for index, (args, fragments) in enumerate(cases):
        target = tmp_path / f"refused{index}.onnx"
        assert_one_line_error(cli(*args, "-o", target), *fragments)
        assert not target.exists() and not list(tmp_path.glob(f".refused{index}.onnx.*"))


# -- the Slice rule with run-time starts and ends (exporters write `chunk` on a dynamic shape so) ----------
def test_slice_with_run_time_bounds_and_steps_matches_finite_differences():
    from test_onnx_grad import Case, check, node, rand

    halves = Case([node("Shape", ["x"], ["s"], start=1, end=2), node("Div", ["s", "two"], ["h"]),
                   node("Slice", ["x", "h", "s", "axis"])], {"x": (["N", 6, 3], rand(2, 6, 3))},
                  {"two": np.array([2], np.int64), "axis": np.array([1], np.int64)})
    check(halves)  # the second half along axis 1, its bounds computed from the shape
    strided = Case([node("Slice", ["x", "st", "en", "ax", "sp"])], {"x": ([2, 7, 4], rand(2, 7, 4))},
                   {"st": np.array([-1, 0], np.int64), "en": np.array([-100, 4], np.int64),
                    "ax": np.array([1, 2], np.int64), "sp": np.array([-2, 3], np.int64)})
    check(strided)  # constant bounds with steps other than 1 (negative too), two axes
