"""Detection post-processing in numpy (runtime/detection) against torchvision's own.

Random-weight torchvision detectors on two real photos: torchvision's detections come from
``model(images)``; the raw head outputs and anchors from the model's internals (transform,
backbone, head, anchor generator), laid out as the exported graph outputs them, and decoded
by ``onnxcam.runtime.detection.decode``. Same boxes (to float32 rounding), labels, order,
scores; and each detection's (anchor, column) names the raw logit its score came from.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils

from onnxcam.runtime.detection import PARAMS, batched_nms, decode, nms
from onnxcam.runtime.detection.decode import box_coder_decode, class_scores, linear_decode, sigmoid, softmax

SIZE = 320
NUM_CLASSES = 7  # SSD: background included
BOX_ATOL = 1e-4  # pixels; measured max |Δ| 3.05e-5 (1 ulp at 256–512, from exp)
SCORE_ATOL = 1e-5  # measured max |Δ| 1.2e-7 (1 ulp)

# score_thresh high enough for a few dozen detections per image from random weights (the
# rest: torchvision's defaults); STRESS lowers it so that every cut is hit: top-k per level
# or class, batched_nms over > 1000 boxes (torchvision's other path), detections_per_img.
DETECTORS = {
    "retinanet": (torchvision.models.detection.retinanet_resnet50_fpn_v2,
                  dict(min_size=SIZE, max_size=SIZE, score_thresh=0.024)),
    "fcos": (torchvision.models.detection.fcos_resnet50_fpn, dict(min_size=SIZE, max_size=SIZE, score_thresh=0.13)),
    "ssd": (torchvision.models.detection.ssdlite320_mobilenet_v3_large, dict(score_thresh=0.23)),
}
STRESS = {"retinanet": 0.01, "fcos": 0.05, "ssd": 0.01}


def params_of(model) -> dict:
    """The post-processing parameters ``decode`` needs, read off a torchvision detector."""
    return {name: getattr(model, name) for name in PARAMS}


def photos() -> torch.Tensor:
    """Two real photos at SIZE x SIZE, RGB in [0, 1]: float32 [2, 3, SIZE, SIZE]."""
    images = [cv2.resize(skimage.data.astronaut(), (SIZE, SIZE), interpolation=cv2.INTER_AREA),
              cv2.resize(skimage.data.chelsea(), (SIZE, SIZE), interpolation=cv2.INTER_AREA)]
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255)


def calibrate_batch_norms(model, images: torch.Tensor) -> None:
    """Set BatchNorm statistics to those of ``images``.

    A random MobileNetV3 with default statistics (mean 0, var 1) shrinks activations to
    ~1e-14 by the SSD head: all logits 0, all scores tied, all boxes = anchors. One pass in
    train mode with cumulative statistics gives features of unit scale.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        image_list, _ = model.transform(list(images))
        model.head(list(model.backbone(image_list.tensors).values()))
    model.eval()


def raw_outputs(family: str, model, images: torch.Tensor):
    """The model's raw head outputs for a batch, as the exported graph lays them out.

    → (raw float32 [N, A, D], anchors float32 [A, 4], levels, image_size (h, w)).
    """
    image_list, _ = model.transform(list(images))
    # The transform must be the identity but for normalisation: no resize, no padding.
    assert image_list.image_sizes == [(SIZE, SIZE)] * len(images)
    mean = torch.tensor(model.transform.image_mean)[:, None, None]
    std = torch.tensor(model.transform.image_std)[:, None, None]
    torch.testing.assert_close(image_list.tensors, (images - mean) / std, rtol=0, atol=1e-6)

    features = list(model.backbone(image_list.tensors).values())
    head = model.head(features)
    anchors = model.anchor_generator(image_list, features)
    # torchvision's num_anchors_per_level: H·W·(anchors per location) per level.
    per_location = head["cls_logits"].shape[1] // sum(f.shape[2] * f.shape[3] for f in features)
    levels = [f.shape[2] * f.shape[3] * per_location for f in features]
    raw = torch.cat([head[name] for name in HEAD_OUTPUTS[family]], dim=-1)
    torch.testing.assert_close(anchors[1], anchors[0], rtol=0, atol=0)
    return raw.numpy(), anchors[0].numpy(), levels, (SIZE, SIZE)


HEAD_OUTPUTS = {"retinanet": ["bbox_regression", "cls_logits"],
                "fcos": ["bbox_regression", "bbox_ctrness", "cls_logits"],
                "ssd": ["bbox_regression", "cls_logits"]}


def torchvision_postprocess(family: str, model, raw: np.ndarray, anchors: np.ndarray, levels) -> list[dict]:
    """torchvision's ``postprocess_detections`` run on raw outputs (split back into the head's dict)."""
    widths = {"bbox_regression": 4, "bbox_ctrness": 1, "cls_logits": raw.shape[-1] - 4 - (family == "fcos")}
    columns = torch.from_numpy(raw).split([widths[name] for name in HEAD_OUTPUTS[family]], dim=-1)
    head = dict(zip(HEAD_OUTPUTS[family], columns))
    anchors = [torch.from_numpy(anchors)] * len(raw)
    if family != "ssd":  # RetinaNet and FCOS take per-level lists, as their forward splits them
        head = {name: list(value.split(levels, dim=1)) for name, value in head.items()}
        anchors = [list(a.split(levels)) for a in anchors]
    return model.postprocess_detections(head, anchors, [(SIZE, SIZE)] * len(raw))


def score_of_logit(family: str, raw_row: np.ndarray, column: int) -> np.float32:
    """A detection's score from its one raw logit (row = the anchor's row of raw)."""
    if family == "retinanet":
        return sigmoid(raw_row[column])
    if family == "fcos":
        return np.sqrt(sigmoid(raw_row[column]) * sigmoid(raw_row[4]))
    return softmax(raw_row[4:])[column - 4]


@pytest.fixture(scope="module")
def detector():
    """family → (model, torchvision's detections of the photos, raw, anchors, levels); built once."""
    cache = {}

    def get(family):
        if family not in cache:
            build, kwargs = DETECTORS[family]
            torch.manual_seed(0)
            model = build(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, **kwargs).eval()
            images = photos()
            if family == "ssd":
                calibrate_batch_norms(model, images)
            with torch.no_grad():
                expected = model(list(images))
                raw, anchors, levels, _ = raw_outputs(family, model, images)
            cache[family] = model, expected, raw, anchors, levels
        return cache[family]

    return get


def assert_same_detections(family, got, want, raw_row, report):
    print(f"{report}: {len(got)} detections, "
          f"max |Δbox| {np.abs(got.boxes - want['boxes'].numpy()).max(initial=0):.3g}, "
          f"max |Δscore| {np.abs(got.scores - want['scores'].numpy()).max(initial=0):.3g}")
    assert len(got) >= 5
    assert got.boxes.dtype == np.float32 and got.scores.dtype == np.float32
    assert got.labels.dtype == got.anchors.dtype == got.columns.dtype == np.int64
    np.testing.assert_array_equal(got.labels, want["labels"].numpy())
    np.testing.assert_allclose(got.boxes, want["boxes"].numpy(), rtol=0, atol=BOX_ATOL)
    np.testing.assert_allclose(got.scores, want["scores"].numpy(), rtol=0, atol=SCORE_ATOL)
    from_logits = [score_of_logit(family, raw_row[a], c) for a, c in zip(got.anchors, got.columns)]
    np.testing.assert_array_equal(np.array(from_logits, dtype=np.float32), got.scores)


@pytest.mark.parametrize("family", list(DETECTORS))
def test_decode_matches_torchvision(family, detector):
    model, expected, raw, anchors, levels = detector(family)
    for index, want in enumerate(expected):
        got = decode(family, raw[index], anchors, levels, (SIZE, SIZE), params_of(model))
        assert_same_detections(family, got, want, raw[index], f"{family} image {index}")


@pytest.mark.parametrize("family", list(DETECTORS))
def test_decode_matches_torchvision_at_every_cut(family, detector):
    """A low score threshold: top-k candidates, > 1000 boxes into NMS, detections_per_img all cut."""
    model, _, raw, anchors, levels = detector(family)
    default = model.score_thresh
    model.score_thresh = STRESS[family]
    try:
        with torch.no_grad():
            expected = torchvision_postprocess(family, model, raw, anchors, levels)
        params = params_of(model)
    finally:
        model.score_thresh = default
    for index, want in enumerate(expected):
        above = (class_scores(family, raw[index]) > params["score_thresh"])
        per_group = above[:, 1:].sum(axis=0) if family == "ssd" else [  # SSD: per class; others: per level
            part.sum() for part in np.split(above, np.cumsum(levels)[:-1])]
        assert max(per_group) > params["topk_candidates"]
        assert np.minimum(per_group, params["topk_candidates"]).sum() > 1000
        got = decode(family, raw[index], anchors, levels, (SIZE, SIZE), params)
        assert len(got) == params["detections_per_img"]
        assert_same_detections(family, got, want, raw[index], f"{family} image {index}, stress")


def test_box_coders_match_torchvision():
    """Both box coders, with codes large enough to hit BoxCoder's clamp at log(1000/16).

    numpy's and torch's float32 exp differ by an ulp at times, and the corners subtract
    centre and half-size: within a few ulps of the box's largest coordinate.
    """
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 300, (500, 2)).astype(np.float32)
    anchors = np.concatenate([corners, corners + rng.uniform(4, 200, (500, 2)).astype(np.float32)], axis=1)
    codes = rng.normal(0, 3, (500, 4)).astype(np.float32)
    codes[:50, 2:] = 40  # exp would overflow without the clamp
    tcodes, tanchors = torch.from_numpy(codes), torch.from_numpy(anchors)
    cases = [(box_coder_decode(codes, anchors, weights), det_utils.BoxCoder(weights).decode_single(tcodes, tanchors))
             for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]]
    linear = det_utils.BoxLinearCoder(normalize_by_size=True)
    cases.append((linear_decode(codes, anchors), linear.decode(tcodes, tanchors)))
    for got, want in cases:
        want = want.numpy()
        assert np.isfinite(got).all() and got.dtype == np.float32
        assert (np.abs(got - want) <= 4 * np.spacing(np.abs(want).max(axis=1, keepdims=True))).all()


@pytest.mark.parametrize("count", [300, 1500])  # batched_nms's two CPU paths (switch at 1000 boxes)
@pytest.mark.parametrize("iou_threshold", [0.5, 0.45])
def test_nms_matches_torchvision_with_ties(count, iou_threshold):
    rng = np.random.default_rng(count)
    corners = rng.uniform(0, 100, (count, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.uniform(1, 30, (count, 2)).astype(np.float32)], axis=1)
    boxes[1::7] = boxes[::7][: len(boxes[1::7])]  # duplicate boxes
    scores = rng.integers(0, 20, count).astype(np.float32) / 20  # many tied scores
    labels = rng.integers(0, 4, count)
    tb, ts, tl = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels)

    np.testing.assert_array_equal(nms(boxes, scores, iou_threshold), torchvision.ops.nms(tb, ts, iou_threshold).numpy())
    got = batched_nms(boxes, scores, labels, iou_threshold)
    want = torchvision.ops.batched_nms(tb, ts, tl, iou_threshold).numpy()
    if count <= 1000:
        np.testing.assert_array_equal(got, want)
    else:  # torchvision sorts the kept boxes unstably here: same set, same scores in order
        np.testing.assert_array_equal(np.sort(got), np.sort(want))
        np.testing.assert_array_equal(scores[got], scores[want])
    assert batched_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), 0.5).shape == (0,)


@pytest.mark.parametrize("family", list(DETECTORS))
def test_top_detection_ranked_in_the_graph_is_decode_s_first(family, detector):
    """The ``detection`` target's in-graph ranking (element -1: the top detection) picks, for every image,
    the element of the first detection ``decode`` keeps: the same argmax, computed by onnxruntime from the
    raw outputs as the explain call does."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from onnxcam.runtime.contract import Detection
    from onnxcam.runtime.graphkit import Builder
    from onnxcam.runtime.targets.detection import ranking

    model, _, raw, anchors, levels = detector(family)
    record = Detection(family=family, levels=tuple(levels), params=params_of(model), anchors=None,
                       box_columns=4 + (family == "fcos"), classes=raw.shape[-1] - 4 - (family == "fcos"))
    graph = helper.make_graph([], "ranking", [helper.make_tensor_value_info("raw", onnx.TensorProto.FLOAT,
                                                                           ["N", *raw.shape[1:]])], [])
    b = Builder(graph)
    best = b.op("ArgMax", [ranking(b, "raw", record, raw.shape[1:])], axis=1, keepdims=0)
    graph.output.append(helper.make_tensor_value_info(best, onnx.TensorProto.INT64, ["N"]))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    chosen = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"raw": raw})[0]
    for index in range(len(raw)):
        first = decode(family, raw[index], anchors, levels, (SIZE, SIZE), params_of(model)).take(np.arange(1))
        assert chosen[index] == record.elements(first.anchors, first.columns, raw.shape[1:])[0], f"{family} {index}"
