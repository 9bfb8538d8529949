"""Faster R-CNN as pytorch-grad-cam's tutorial explains it, on onnxruntime: the features and heads graphs
(``models/faster_rcnn.py``) give torchvision's boxes, and ``runtime/detection/two_stage.py``'s EigenCAM and
Ablation-CAM maps equal pytorch-grad-cam's ``EigenCAM`` / ``AblationCAM`` on ``model.backbone`` with
``fasterrcnn_reshape_transform`` and ``FasterRCNNBoxScoreTarget`` (docs/explainer-graph.md, "Faster R-CNN").

Random weights (nothing is downloaded), BatchNorm statistics from random batches (MobileNetV3's default ones
shrink its features to nothing), 160 px, 100/30 RPN proposals before/after NMS, at most 20 detections, the
default box score threshold 0.05 (random weights on real photos give 20 boxes, scores up to 0.99).

Ablation-CAM runs on the MobileNetV3 detector only (768 channels: ~7 s for onnxcam, ~7 s for pytorch-grad-cam on
2 cores). On ResNet-50 (1280 channels) the same check measured a map 1.5e-6 from pytorch-grad-cam's, but took
18 s (onnxcam) + 23 s (pytorch-grad-cam): past this file's time budget.

pytorch-grad-cam's ``AblationLayerFasterRCNN`` maps channel ``c`` to level ``{0:'0', 1:'1', 2:'2', 3:'3',
4:'pool'}[c // 256]``: right for the ResNet-50 FPN (levels 0, 1, 2, 3, pool), a ``KeyError: '2'`` on the
MobileNetV3 FPN (levels 0, 1, pool). The oracle here is that layer with the backbone's own level order
(``BackboneOrderAblationLayer``), which is what onnxcam does for both.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from pytorch_grad_cam import AblationCAM, EigenCAM
from pytorch_grad_cam.ablation_layer import AblationLayerFasterRCNN
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform

from conftest import skimage_photo
from onnxcam.models import faster_rcnn
from onnxcam.runtime.detection import two_stage
from onnxcam.runtime.image import fit_to_input, load_image, to_tensor
from tolerances import assert_two_tier

SIZE = 160
PHOTOS = ("astronaut.png", "coffee.png")
SETTINGS = {"box_score_thresh": 0.05, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 30,
            "box_detections_per_img": 20}
ARCHITECTURES = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn")
TARGETS = 3  # the image's top detections the box-score target follows
# Boxes: the box regression's exp amplifies the features' float32 noise (torch vs onnxruntime); measured up to
# 2.5e-2 px (MobileNetV3, coffee), scores up to 8.4e-5. A wrong box or score is off by pixels / by ~1e-1.
BOX_TOLERANCE, SCORE_TOLERANCE = 0.1, 1e-3
# Maps: tier 1 is 1e-4 (tolerances.py), as measured (ONNXCAM_TOLERANCE_LOG): EigenCAM ≤ 1.7e-6 from
# pytorch-grad-cam (both detectors, both photos); Ablation-CAM 1.5e-6 (ResNet-50) and 3.4e-4 (MobileNetV3). That
# 3.4e-4 is pytorch-grad-cam's own float32 noise: against pytorch-grad-cam on the float64 model, onnxcam's map is
# 1.4e-6 away (mean 5e-7) and the float32 oracle's 3.3e-4 (mean 1e-4). So Ablation-CAM's tier 1 is 1e-3 (3x the
# float32 oracle's measured distance from the truth; a wrong weight or level is off by ~1e-1), and tier 2 (the
# float64 oracle: 768 ablations on the float64 model, ~90 s here) runs only where that fails.
ABLATION_TIGHT = 1e-3


class BackboneOrderAblationLayer(AblationLayerFasterRCNN):
    """``AblationLayerFasterRCNN`` (−1000 in channel ``c % 256`` of level ``c // 256``) with the levels in the
    backbone's order, so that it also runs on FPNs with fewer than five levels (module docstring)."""

    def __call__(self, x):
        result = self.activations
        names = list(result)
        for i in range(result["pool"].size(0)):
            level, channel = divmod(int(self.indices[i]), 256)
            result[names[level]][i, channel, :, :] = -1000
        return result


class Exported:
    """One architecture's torch model, its two graphs opened by the runtime, the photos, torch's detections."""

    def __init__(self, architecture: str, folder):
        torch.manual_seed(0)
        self.model = faster_rcnn.build(architecture, SIZE, recalibrate=True, **SETTINGS)
        features, _, self.record = faster_rcnn.export_faster_rcnn(self.model, folder / architecture, SIZE,
                                                                  architecture, faster_rcnn.labels(architecture))
        self.runtime = two_stage.load(features, providers="cpu")
        views = [fit_to_input(load_image(skimage_photo(name)), self.runtime.preprocessing) for name in PHOTOS]
        self.batch = np.stack([to_tensor(view, self.runtime.preprocessing) for view in views])
        # the torch model normalises itself: it gets the pixels in [0, 1] (the same float32 division as to_tensor)
        self.pixels = torch.from_numpy(np.stack([view.astype(np.float32).transpose(2, 0, 1) / np.float32(255)
                                                 for view in views]))
        with torch.no_grad():
            self.truth = self.model(list(self.pixels))
        self._double = None

    def double(self) -> torch.nn.Module:
        if self._double is None:
            self._double = copy.deepcopy(self.model).double()
        return self._double

    def targets(self, image: int) -> tuple[np.ndarray, np.ndarray]:
        found = self.truth[image]
        return found["labels"][:TARGETS].numpy(), found["boxes"][:TARGETS].numpy()


_EXPORTED: dict[str, Exported] = {}


def exported_once(architecture: str, tmp_path_factory) -> Exported:
    if architecture not in _EXPORTED:
        _EXPORTED[architecture] = Exported(architecture, tmp_path_factory.mktemp(architecture))
    return _EXPORTED[architecture]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(request, tmp_path_factory):
    return exported_once(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    return exported_once(ARCHITECTURES[0], tmp_path_factory)


def box_target(labels: np.ndarray, boxes: np.ndarray) -> FasterRCNNBoxScoreTarget:
    return FasterRCNNBoxScoreTarget(torch.from_numpy(labels), torch.from_numpy(boxes))


def oracle(method: str, where: Exported, image: int, double: bool = False) -> np.ndarray:
    """pytorch-grad-cam's tutorial map of one photo (in float64: the truth of the two-tier check)."""
    model = where.double() if double else where.model
    tensor = where.pixels[image:image + 1]
    tensor = tensor.double() if double else tensor
    if method == "eigencam":
        cam = EigenCAM(model, [model.backbone], reshape_transform=fasterrcnn_reshape_transform)
    else:
        cam = AblationCAM(model, [model.backbone], reshape_transform=fasterrcnn_reshape_transform,
                          ablation_layer=BackboneOrderAblationLayer(), ratio_channels_to_ablate=1.0)
    with cam:
        return cam(tensor, targets=[box_target(*where.targets(image))])[0]


def test_graphs_and_record(exported):
    record = exported.record
    assert record["format"] == "onnxcam.faster_rcnn" and record["size"] == [SIZE, SIZE]
    assert record["levels"][-1] == "pool" and record["channels"] == 256
    assert record["settings"]["rpn_post_nms_top_n_test"] == 30 and record["labels"][1] == "person"
    assert exported.runtime.record == record


def test_detections_are_torchvision_s(exported):
    found = two_stage.detect(exported.runtime, exported.batch)
    for kept, truth in zip(found, exported.truth):
        assert len(kept) >= 5 and len(kept) == len(truth["scores"])
        assert np.array_equal(kept.labels, truth["labels"].numpy())
        assert np.abs(kept.boxes - truth["boxes"].numpy()).max() < BOX_TOLERANCE
        assert np.abs(kept.scores - truth["scores"].numpy()).max() < SCORE_TOLERANCE


def test_eigencam_matches_pytorch_grad_cam(exported):
    maps = two_stage.eigencam(exported.runtime, exported.batch)
    assert maps.shape == (len(PHOTOS), SIZE, SIZE)
    for image in range(len(PHOTOS)):
        assert_two_tier(maps[image], oracle("eigencam", exported, image),
                        lambda: oracle("eigencam", exported, image, double=True),
                        what=f"{exported.record['architecture']} EigenCAM image {image}")
    assert np.abs(maps[0] - maps[1]).max() > 0.1  # two photos, two maps


def test_ablation_cam_matches_pytorch_grad_cam(mobilenet):
    labels, boxes = mobilenet.targets(0)
    result = two_stage.ablation_cam(mobilenet.runtime, mobilenet.batch[:1], labels, boxes)
    assert result.map.shape == (SIZE, SIZE) and result.weights.shape == (768,)
    assert mobilenet.runtime.timings["heads_runs"] == 768
    assert result.score > 3 * 1.5  # each target box is found again: IoU ≈ 1 plus a score above 0.5
    assert (result.weights > 0.5).any()  # some channels matter
    assert_two_tier(result.map, oracle("ablationcam", mobilenet, 0), lambda: oracle("ablationcam", mobilenet, 0, True),
                    tight=ABLATION_TIGHT, what="MobileNetV3 Ablation-CAM")


def test_box_score_is_faster_rcnn_box_score_target_s():
    """The target, transcribed: the best-overlapping detection counts only if its label is the box's."""
    found = two_stage.TwoStageDetections(
        boxes=np.float32([[10, 10, 50, 50], [12, 10, 52, 50], [100, 100, 140, 150], [0, 0, 20, 20]]),
        labels=np.int64([3, 5, 7, 3]), scores=np.float32([0.9, 0.8, 0.7, 0.6]))
    cases = [([3], [[10, 10, 50, 50]]),  # exact match
             ([5], [[10, 10, 50, 50]]),  # the best overlap is label 3: nothing, though a label-5 box overlaps 0.9
             ([7, 3], [[101, 99, 139, 151], [60, 60, 80, 80]]),  # one match, one box with no overlap
             ([3], [[0, 0, 30, 30]])]  # best IoU 0.44 ≤ 0.5: nothing
    outputs = {"boxes": torch.from_numpy(found.boxes), "labels": torch.from_numpy(found.labels),
               "scores": torch.from_numpy(found.scores)}
    for labels, boxes in cases:
        expected = box_target(np.int64(labels), np.float32(boxes))(outputs).item()
        assert two_stage.box_score(found, np.int64(labels), np.float32(boxes)) == pytest.approx(expected, abs=1e-6)
    assert two_stage.box_score(found, np.int64([5]), np.float32([[10, 10, 50, 50]])) == 0
    empty = found.take(np.arange(0))
    assert two_stage.box_score(empty, np.int64([3]), np.float32([[10, 10, 50, 50]])) == 0


def test_ablated_levels_touch_one_channel():
    levels = [np.ones((1, 4, 3, 3), np.float32), np.ones((1, 4, 2, 2), np.float32)]
    changed = two_stage.ablated(levels, 6)  # level 1, channel 2
    assert changed[0] is levels[0] and levels[1].min() == 1
    assert (changed[1][0, 2] == -1000).all() and np.delete(changed[1][0], 2, axis=0).min() == 1


def test_export_and_detect_from_the_command_line(tmp_path):
    """`onnxcam export fasterrcnn_*` writes the two graphs; `onnxcam detect` on the features graph writes, per
    detection, the EigenCAM and Ablation-CAM pictures and maps (EigenCAM's equal to ``two_stage.eigencam``) and
    the detections' JSON; gradient methods are refused in one line, with no output folder."""
    from test_cli import assert_one_line_error, run as run_cli

    architecture = "fasterrcnn_mobilenet_v3_large_320_fpn"
    torch.manual_seed(0)  # the command builds random weights in this process: the fixture's, whatever ran before
    result = run_cli("export", architecture, "--input-size", SIZE, "-o", tmp_path / "frcnn.onnx")
    assert result.exit_code == 0, result.output
    features = tmp_path / "frcnn.features.onnx"
    assert features.exists() and (tmp_path / "frcnn.heads.onnx").exists()
    out = tmp_path / "out"
    result = run_cli("detect", features, skimage_photo("astronaut.png"), "-m", "eigencam", "-m", "ablationcam",
                     "--max-detections", 1, "--save-maps", "--out", out)

    assert result.exit_code == 0, result.output
    for name in ("astronaut.eigencam.png", "astronaut.eigencam.det1.png", "astronaut.ablationcam.det1.png",
                 "astronaut.ablationcam.det1.npy", "astronaut.detections.json"):
        assert (out / name).exists(), name
    runtime = two_stage.load(features, providers="cpu")
    view = fit_to_input(load_image(skimage_photo("astronaut.png")), runtime.preprocessing)
    batch = to_tensor(view, runtime.preprocessing)[None]
    first = two_stage.detect(runtime, batch)[0].take([0])
    described = json.loads((out / "astronaut.detections.json").read_text())
    assert len(described) == 1 and described[0]["class"] == int(first.labels[0])
    np.testing.assert_allclose(described[0]["box"], first.boxes[0], rtol=0, atol=1e-2)
    np.testing.assert_allclose(np.load(out / "astronaut.eigencam.det1.npy"), two_stage.eigencam(runtime, batch)[0],
                               rtol=0, atol=1e-6)
    ablation = np.load(out / "astronaut.ablationcam.det1.npy")  # its equality with pytorch-grad-cam: above
    assert ablation.shape == (SIZE, SIZE) and 0 <= ablation.min() and 0.5 < ablation.max() <= 1
    refused = run_cli("detect", features, skimage_photo("astronaut.png"), "-m", "gradcam", "--out", tmp_path / "no")
    assert_one_line_error(refused, "eigencam or -m ablationcam")
    assert not (tmp_path / "no").exists()
