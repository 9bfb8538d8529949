"""Single-stage detectors end to end: export the raw heads, decode as torchvision does, and explain
every kept detection in one session call, each map equal to pytorch-grad-cam's for that detection's
raw class logit (pytorch-grad-cam on the same torch network, ``RawHeads``, with the target
``output[anchor, column]``); the ``detect`` command's files and its one-line refusals.

Random weights (no download): the classification heads start at the prior 0.01, so the models'
score threshold is lowered before export (it is recorded and used by the runtime) to keep a few
dozen boxes on real photos.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from pytorch_grad_cam import AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM

from conftest import skimage_photo
from onnxcam.models import detection
from onnxcam.runtime import Explainer, load_batch
from onnxcam.runtime.detection.explain import detect, explain_detections, renormalise_in_boxes
from test_cli import assert_one_line_error
from tolerances import assert_two_tier
from zoo import recalibrate_batchnorm
from test_cli import run as run_cli

SIZE = 256
PHOTOS = ("astronaut.png", "coffee.png")
ORACLES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "layercam": LayerCAM,
           "eigencam": EigenCAM, "ablationcam": AblationCAM}
# per-detection maps against pytorch-grad-cam: 1e-4, else (a detection whose map is float32 noise amplified by
# the min-max: random weights) within twice pytorch-grad-cam's own distance from the float64 truth (tolerances.py)
TOLERANCE = 1e-4


def exported(architecture: str, folder, score_thresh: float):
    torch.manual_seed(0)
    model = detection.build(architecture, size=SIZE)
    model.score_thresh = score_thresh
    path = folder / f"{architecture}.onnx"
    detection.export_detector(model, path, [detection.ARCHITECTURES[architecture][0]], SIZE,
                              labels=detection.labels(architecture), architecture=architecture)
    return model, path


@pytest.fixture(scope="module")
def retinanet(tmp_path_factory):
    return exported("retinanet_resnet50_fpn_v2", tmp_path_factory.mktemp("retinanet"), 0.011)


@pytest.fixture(scope="module")
def photos(retinanet):
    return load_batch([skimage_photo(name) for name in PHOTOS], Explainer(retinanet[1], providers="cpu").contract)[0]


_DOUBLES: dict[int, torch.nn.Module] = {}


def oracle_map(model, batch, image: int, anchor: int, column: int, method: str, layer: str,
               double: bool = False) -> np.ndarray:
    """pytorch-grad-cam's map of ``output[anchor, column]`` for one image, on the torch network (in float64:
    the truth the two-tier check measures float32 noise against, ``tolerances.py``). Ablation-CAM compares
    the box's score itself (RetinaNet's: the sigmoid of the logit), not the logit."""
    if double and id(model) not in _DOUBLES:
        _DOUBLES[id(model)] = copy.deepcopy(model).double()
    raw = detection.RawHeads(_DOUBLES[id(model)] if double else model).eval()
    tensor = torch.from_numpy(batch[image:image + 1])
    with ORACLES[method](raw, [raw.get_submodule(layer)]) as cam:
        target = (lambda out: torch.sigmoid(out[anchor, column])) if method == "ablationcam" else \
            (lambda out: out[anchor, column])
        return cam(tensor.double() if double else tensor, targets=[target])[0]


def test_detections_are_torchvision_s(retinanet, photos):
    """The runtime's decoding of the graph's raw heads gives the boxes the torch model itself returns."""
    model, path = retinanet
    found = detect(Explainer(path, providers="cpu"), photos)
    mean = torch.tensor(model.transform.image_mean)[:, None, None]
    std = torch.tensor(model.transform.image_std)[:, None, None]
    with torch.no_grad():  # the model normalises itself: give it the pixels in [0, 1]
        expected = model(list(torch.from_numpy(photos) * std + mean))
    for kept, truth in zip(found, expected):
        assert len(kept) >= 5 and len(kept) == len(truth["scores"])
        assert np.array_equal(kept.labels, truth["labels"].numpy())
        assert np.abs(kept.boxes - truth["boxes"].numpy()).max() < 1e-2
        assert np.abs(kept.scores - truth["scores"].numpy()).max() < 1e-5


@pytest.mark.parametrize("method", [name for name in ORACLES if name != "ablationcam"])  # ablation: SSDlite
def test_each_detection_map_matches_pytorch_grad_cam(retinanet, photos, method):
    model, path = retinanet
    explainer = Explainer(path, providers="cpu")
    explained = explain_detections(explainer, photos, method, max_detections=3)
    layer = detection.ARCHITECTURES["retinanet_resnet50_fpn_v2"][0]
    for image, found in enumerate(explained):
        assert found.maps.shape == (3, SIZE, SIZE)
        for k in range(3):
            where = (model, photos, image, int(found.detections.anchors[k]), int(found.detections.columns[k]), method,
                     layer)
            assert_two_tier(found.maps[k], oracle_map(*where), lambda: oracle_map(*where, double=True),
                            what=f"{method} image {image} detection {k}")
    if method == "gradcam":  # different detections, different maps
        assert np.abs(explained[0].maps[0] - explained[0].maps[1]).max() > 0.05


def test_ssdlite_from_the_command_line(tmp_path):
    """`onnxcam export` builds the detector (COCO labels from torchvision's weight metadata, the model's own
    score threshold); each detection's map is pytorch-grad-cam's on the same random network."""
    torch.manual_seed(0)
    model = detection.build("ssdlite320_mobilenet_v3_large", size=SIZE)
    # a random MobileNetV3 with default BatchNorm statistics shrinks its features to ~1e-14 (every logit 0):
    # statistics from random batches give it live features, saved as the weights the command loads
    recalibrate_batchnorm(model.backbone, SIZE)
    weights, path = tmp_path / "ssdlite.pth", tmp_path / "ssdlite.onnx"
    torch.save(model.state_dict(), weights)
    result = run_cli("export", "ssdlite320_mobilenet_v3_large", "--weights", weights, "--input-size", SIZE, "-o", path)
    assert result.exit_code == 0, result.output
    info = run_cli("info", path)
    assert "detection: ssd raw heads" in info.output and "(person, bicycle, car" in info.output
    explainer = Explainer(path, providers="cpu")
    batch, _ = load_batch([skimage_photo("chelsea.png")], explainer.contract)
    found = explain_detections(explainer, batch, "gradcam", max_detections=2)[0]
    assert len(found.detections) == 2
    layer = detection.ARCHITECTURES["ssdlite320_mobilenet_v3_large"][0]
    for k in range(2):
        where = (model, batch, 0, int(found.detections.anchors[k]), int(found.detections.columns[k]), "gradcam", layer)
        assert_two_tier(found.maps[k], oracle_map(*where), lambda: oracle_map(*where, double=True),
                        what=f"ssdlite detection {k}")


def test_renormalise_in_boxes_is_the_tutorial_s():
    """pytorch-grad-cam's detection tutorial, transcribed: min-max inside each box, zero outside, min-max again."""
    rng = np.random.default_rng(0)
    map_ = rng.random((40, 60)).astype(np.float32)
    boxes = np.array([[5.7, 3.2, 20.9, 30.1], [30, 10, 55, 25]])
    result = renormalise_in_boxes(map_, boxes)
    assert result[0, 0] == 0 and result[35, 58] == 0
    inside = result[3:30, 5:20]
    window = map_[3:30, 5:20]
    assert np.allclose(inside, (window - window.min()) / (1e-7 + window.max() - window.min()), atol=1e-6)
    assert result.max() == pytest.approx(1.0, abs=1e-6)


def test_detect_command_writes_one_overlay_per_detection(retinanet, tmp_path):
    _, path = retinanet
    out = tmp_path / "out"
    result = run_cli("detect", path, skimage_photo("astronaut.png"), "--max-detections", "3", "--save-maps",
                     "--renormalise", "-m", "gradcam", "-m", "gradcam++", "--out", out)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    for method in ("gradcam", "gradcampp"):
        assert f"astronaut.{method}.png" in names
        assert [n for n in names if n.startswith(f"astronaut.{method}.det") and n.endswith(".png")] == \
            [f"astronaut.{method}.det{k}.png" for k in (1, 2, 3)]
    rows = json.loads((out / "astronaut.detections.json").read_text())
    assert [row["detection"] for row in rows] == [1, 2, 3]
    assert all(set(row) == {"detection", "box", "class", "label", "score", "anchor", "column"} for row in rows)
    saved = np.load(out / "astronaut.gradcam.det1.npy")
    assert saved.shape == (SIZE, SIZE) and saved.max() == pytest.approx(1.0, abs=1e-5)
    assert "astronaut.png: 3 detection(s)" in result.output


def test_detect_refusals_are_one_line(retinanet, tmp_path):
    _, path = retinanet
    photo = skimage_photo("coffee.png")
    out = tmp_path / "none"
    assert_one_line_error(run_cli("detect", path, photo, "--score-threshold", "0.99", "--out", out),
                          r"no image had a detection to explain; lower --score-threshold")
    assert not out.exists()
    assert_one_line_error(run_cli("detect", path, photo, "--class", "unicorn", "--out", out),
                          r"--class 'unicorn' is not a class id or one of the detector's labels")
    classifier = tmp_path / "tiny.onnx"
    assert run_cli("export", "zoo:tiny", "--layer", "features", "--input-size", "48", "-o", classifier).exit_code == 0
    assert_one_line_error(run_cli("detect", classifier, photo, "--out", out), r"no detection record")
    assert not out.exists()


def test_top_detection_in_one_call_is_the_decoded_first(retinanet, photos):
    """``max_detections=1`` explains each image's top detection in a single session call (resolved in the
    graph): the same detection and map as decoding first and explaining the decoded element."""
    from onnxcam.runtime.contract import InputError
    from onnxcam.runtime.detection.explain import _explain_found
    from onnxcam.runtime.targets import DetectionTarget

    explainer = Explainer(retinanet[1], providers="cpu")
    top = explain_detections(explainer, photos, "gradcam", max_detections=1)
    found = detect(explainer, photos, max_detections=1)
    two_step = _explain_found(explainer, photos, found, "gradcam", None)
    for one, two in zip(top, two_step):
        assert len(one.detections) == 1
        assert np.array_equal(one.detections.anchors, two.detections.anchors)
        assert np.array_equal(one.detections.columns, two.detections.columns)
        np.testing.assert_allclose(one.maps, two.maps, rtol=0, atol=1e-6)
    # the box columns carry no gradient in these graphs (detached at export): refused, not a zero map
    with pytest.raises(InputError, match="box-regression column"):
        explainer.explain(photos, "gradcam", targets=DetectionTarget(2))


def test_ablation_cam_per_detection_at_a_backbone_stage(tmp_path):
    """Ablation-CAM per detection at ``layer4``, which the FPN does not read alone (it also reads layer2 and
    layer3): the model after the layer takes those as side inputs, computed once by the explain call. Each
    map equals pytorch-grad-cam's AblationCAM on the same network, with the box's own score (the sigmoid of
    its logit) as the target. A RetinaNet on ResNet-18 with a 64-channel FPN keeps the 512 ablations cheap."""
    import torchvision
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    size = 128
    torch.manual_seed(0)
    backbone = BackboneWithFPN(torchvision.models.resnet18(), {"layer2": "0", "layer3": "1", "layer4": "2"},
                               [128, 256, 512], 64, extra_blocks=LastLevelP6P7(64, 64))
    model = torchvision.models.detection.RetinaNet(backbone, num_classes=5, min_size=size, max_size=size).eval()
    model.score_thresh = 0.001
    path = tmp_path / "retinanet18.onnx"
    detection.export_detector(model, path, ["backbone.body.layer4"], size)
    explainer = Explainer(path, providers="cpu")
    assert explainer.contract.layers[0].tail["sides"]  # the FPN's lateral branches of layer2 and layer3
    batch, _ = load_batch([skimage_photo("astronaut.png")], explainer.contract)
    found = explain_detections(explainer, batch, "ablationcam", max_detections=2)[0]
    assert len(found.detections) == 2
    assert min(found.maps[k].max() for k in range(2)) > 0.5  # real maps, not the all-zero one of a saturated score
    assert np.abs(found.maps[0] - found.maps[1]).max() > 0.05  # each detection its own map
    where = (model, batch, 0, int(found.detections.anchors[0]), int(found.detections.columns[0]), "ablationcam",
             "backbone.body.layer4")
    assert_two_tier(found.maps[0], oracle_map(*where), lambda: oracle_map(*where, double=True),
                    what="ablation-cam, the top detection")


def test_local_gradient_is_exact_and_refuses_what_it_cannot_serve(tmp_path):
    """RetinaNet v1 exported with ``local_gradient``: each detection's backward runs through the class head on
    its receptive field only, and the maps still equal pytorch-grad-cam's on the full torch network. The
    output target (a sum over many elements) is refused in one line; a head with GroupNorm (v2) cannot be
    exported so."""
    from onnxcam.runtime.contract import InputError
    from onnxcam.runtime.targets import OutputTarget

    size = 160
    torch.manual_seed(0)
    model = detection.build("retinanet_resnet50_fpn", size=size)
    model.score_thresh = 0.0105
    path = tmp_path / "retinanet_local.onnx"
    record = detection.export_detector(model, path, ["backbone.body.layer4"], size, local_gradient=True)
    assert record["detection"]["local_gradient"]
    explainer = Explainer(path, providers="cpu")
    batch, _ = load_batch([skimage_photo("coffee.png")], explainer.contract)
    found = explain_detections(explainer, batch, "gradcam", max_detections=2)[0]
    assert len(found.detections) == 2
    for k in range(2):
        where = (model, batch, 0, int(found.detections.anchors[k]), int(found.detections.columns[k]), "gradcam",
                 "backbone.body.layer4")
        assert_two_tier(found.maps[k], oracle_map(*where), lambda: oracle_map(*where, double=True),
                        what=f"local gradient, detection {k}")
    with pytest.raises(InputError, match="local"):
        explainer.explain(batch, "gradcam", targets=OutputTarget(":"))
    refused = run_cli("export", "retinanet_resnet50_fpn_v2", "--input-size", 64, "--local-gradient",
                      "-o", tmp_path / "v2.onnx")
    assert_one_line_error(refused, "normalisation")
    assert not (tmp_path / "v2.onnx").exists()
