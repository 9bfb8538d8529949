"""The click CLI end to end: export, info, explain; errors as one line, exit 1, no partial files."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import skimage_photo
from onnxcam.runtime import Explainer, load_batch
from onnxcam.runtime.cli import main
from onnxcam.runtime.image import load_image
from onnxcam.runtime.providers import CPU, CUDA


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, pattern: str):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny.onnx"
    result = run("export", "zoo:tiny", "--layer", "features", "--input-size", "48", "-o", path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        (folder / name).write_bytes(skimage_photo(name).read_bytes())
    return folder


def test_info_prints_the_contract(tiny):
    result = run("info", tiny)
    assert result.exit_code == 0
    assert "features  [C,h,w]=[16, 24, 24]" in result.output
    assert "methods: all\n" in result.output and "targets: a list per image" in result.output
    assert "input " in result.output and "['batch', 3, 48, 48]" in result.output
    assert "labels: none" in result.output


def test_explain_writes_overlays_and_maps(tiny, photos, tmp_path):
    out = tmp_path / "out"
    result = run("explain", tiny, photos, "-m", "gradcam", "-m", "gradcam++", "--out", out, "--save-maps",
                 "--provider", "cpu", "--alpha", "0.4")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(["results.jsonl", "run.json"] + [
        f"{stem}.{m}.{ext}" for stem in ("chelsea", "coffee") for m in ("gradcam", "gradcampp") for ext in ("png", "npy")])
    assert "chelsea.png: top " in result.output and "coffee.png: top " in result.output
    explainer = Explainer(tiny, providers="cpu")  # the CLI ran on the CPU too: same provider, same numbers
    batch, views = load_batch([photos / "chelsea.png"], explainer.contract)
    saved = np.load(out / "chelsea.gradcampp.npy")
    np.testing.assert_allclose(saved, explainer.explain(batch, method="gradcam++").maps[0], atol=1e-6)
    # the overlay is the saved map on the view, blended as pytorch-grad-cam's show_cam_on_image blends
    for method in ("gradcam", "gradcampp"):
        overlay_image = load_image(out / f"chelsea.{method}.png")
        assert overlay_image.shape == (48, 48, 3)
        assert_overlay_matches_show_cam_on_image(overlay_image, views[0], np.load(out / f"chelsea.{method}.npy"), 0.4)


def assert_overlay_matches_show_cam_on_image(overlay_image, view, map_, alpha):
    """``onnxcam.runtime.image.overlay`` against pytorch-grad-cam's ``show_cam_on_image(view / 255, map_,
    use_rgb=True, image_weight=1 - alpha)``, with its documented difference undone: show_cam_on_image divides
    the blend by its maximum and truncates (``uint8(255 · blend / max)``), onnxcam rounds ``255 · blend``. So
    ``show · max`` must be within 0.5 + max ≤ 1.5 levels of onnxcam's pixels (max of the blend in [0, 1])."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    shown = show_cam_on_image(view.astype(np.float32) / 255, map_, use_rgb=True, image_weight=1 - alpha)
    # the blend's maximum, from the same formula: alpha · colormap(map) + (1 - alpha) · view, in [0, 1]
    heat = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * map_), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    maximum = np.max(alpha * np.float32(heat) / 255 + (1 - alpha) * view.astype(np.float32) / 255)
    difference = np.abs(overlay_image.astype(np.float64) - shown.astype(np.float64) * maximum)
    assert difference.max() <= 0.5 + maximum + 1e-3, difference.max()


def test_explain_with_a_fixed_target(tiny, photos, tmp_path):
    result = run("explain", tiny, photos / "coffee.png", "--target", "3", "--out", tmp_path / "o")
    assert result.exit_code == 0
    assert "explained 3 'class 3'" in result.output or "top 3 " in result.output


def test_torchvision_export_then_explain_a_real_photo(tmp_path):
    model = tmp_path / "resnet18.onnx"
    result = run("export", "resnet18", "-o", model)
    assert result.exit_code == 0, result.output
    assert "random weights" in result.stderr
    info = run("info", model)
    assert "resize shorter side to 256, centre-crop 224x224" in info.output
    assert "labels: 1000 (tench, goldfish" in info.output
    result = run("explain", model, skimage_photo("chelsea.png"), "-m", "cam", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "chelsea.cam.png").is_file()


def test_not_an_image_fails_before_writing(tiny, photos, tmp_path):
    (photos / "broken.jpg").write_text("this is not a jpeg")
    out = tmp_path / "out"
    result = run("explain", tiny, photos, "--out", out)
    assert_one_line_error(result, r"broken\.jpg: not a readable image")
    assert not out.exists()


def test_target_out_of_range_fails_before_writing(tiny, photos, tmp_path):
    out = tmp_path / "out"
    result = run("explain", tiny, photos, "--target", "5", "--out", out)
    assert_one_line_error(result, r"target class 5 is out of range: the model has 5 classes")
    assert not out.exists()


def test_not_an_explainer_graph(photos, tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"\x08\x07")
    result = run("explain", fake, photos, "--out", tmp_path / "out")
    assert_one_line_error(result, r"model\.onnx")
    assert not (tmp_path / "out").exists()


def test_unknown_method_and_cam_without_head(tiny, photos, tmp_path):
    result = run("explain", tiny, photos, "-m", "nosuchcam", "--out", tmp_path / "out")
    assert_one_line_error(result, r"unknown method 'nosuchcam'")
    assert not (tmp_path / "out").exists()


def test_export_with_a_missing_layer(tmp_path):
    result = run("export", "zoo:tiny", "--layer", "featurs", "-o", tmp_path / "x.onnx")
    assert_one_line_error(result, r"layer 'featurs' does not exist.*Did you mean 'features'")
    assert not list(tmp_path.iterdir())


def test_export_of_an_unknown_architecture(tmp_path):
    result = run("export", "resnet5000", "-o", tmp_path / "x.onnx")
    assert_one_line_error(result, r"'resnet5000' is not a torchvision classification or segmentation model")


def test_cuda_request_never_falls_back_silently(tiny, photos, tmp_path):
    import onnxruntime

    result = run("explain", tiny, photos, "--provider", "cuda", "--out", tmp_path / "out")
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert result.exit_code == 0
    else:
        assert_one_line_error(result, r"CUDAExecutionProvider is not available")
        assert not (tmp_path / "out").exists()


def test_numpy_methods_and_eigen_smooth_from_the_cli(tiny, photos, tmp_path):
    out = tmp_path / "out"
    result = run("explain", tiny, photos / "chelsea.png", "-m", "layercam", "-m", "EigenCAM", "--eigen-smooth",
                 "--save-maps", "--out", out, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"chelsea.layercam.png", "chelsea.layercam.npy", "chelsea.eigencam.png",
                                              "chelsea.eigencam.npy", "results.jsonl", "run.json"}
    explainer = Explainer(tiny, providers="cpu")
    batch, _ = load_batch([photos / "chelsea.png"], explainer.contract)
    expected = explainer.explain(batch, method="layercam", eigen_smooth=True).maps[0]
    np.testing.assert_allclose(np.load(out / "chelsea.layercam.npy"), expected, atol=1e-6)


def test_features_grid_shows_the_strongest_channels(tiny, photos, tmp_path):
    import torch

    from zoo import tiny as build_tiny

    output = tmp_path / "grid.png"
    result = run("features", tiny, photos / "coffee.png", "--count", "5", "-o", output)
    assert result.exit_code == 0, result.output
    grid = load_image(output)
    assert grid.shape == (2 * 96, 3 * 96, 3)  # 5 cells: 3 columns, 2 rows
    explainer = Explainer(tiny, providers="cpu")
    batch, _ = load_batch([photos / "coffee.png"], explainer.contract)
    with torch.no_grad():
        activation = build_tiny().features(torch.from_numpy(batch))[0].numpy()
    expected = np.argsort(-activation.reshape(16, -1).mean(axis=1), kind="stable")[:5]
    assert f"channels {', '.join(map(str, expected))} of features" in result.output
    assert grid[-96:, -96:].max() == 0  # the sixth cell stays empty


def test_features_of_a_missing_layer(tiny, photos, tmp_path):
    result = run("features", tiny, photos / "coffee.png", "--layer", "nope", "-o", tmp_path / "g.png")
    assert_one_line_error(result, r"layer 'nope' is not explained by this graph")
    assert not (tmp_path / "g.png").exists()


@pytest.fixture(scope="module")
def tiny_two_layers(tmp_path_factory):
    """TinyNet explained at ``features.3`` (a conv before the last ReLU: no GAP + linear head follows it) and at
    ``features`` (which feeds the head)."""
    path = tmp_path_factory.mktemp("cli2") / "tiny-two-layers.onnx"
    result = run("export", "zoo:tiny", "--layer", "features.3", "--layer", "features", "--input-size", "48", "-o", path)
    assert result.exit_code == 0, result.output
    return path


def test_cam_without_a_head_from_the_cli(tiny_two_layers, photos, tmp_path):
    out = tmp_path / "out"
    for layers in ([], ["--layer", "features.3"]):
        result = run("explain", tiny_two_layers, photos, "-m", "cam", *layers, "--out", out, "--provider", "cpu")
        assert_one_line_error(result, r"'cam' needs a global-average-pool \+ linear head.*'features\.3'.*gradcam")
        assert not out.exists()
    # the layer that feeds the head has CAM weights
    result = run("explain", tiny_two_layers, photos, "-m", "cam", "--layer", "features", "--out", out,
                 "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["chelsea.cam.png", "coffee.cam.png"]


def test_unknown_layer_from_the_cli(tiny, photos, tmp_path):
    out = tmp_path / "out"
    result = run("explain", tiny, photos, "--layer", "nosuchlayer", "--out", out, "--provider", "cpu")
    assert_one_line_error(result, r"'nosuchlayer' is not explained.*'features'")
    assert list(tmp_path.iterdir()) == [photos]  # no output folder, nothing beside it
    assert sorted(p.name for p in photos.iterdir()) == ["chelsea.png", "coffee.png"]


def test_a_listed_cuda_provider_that_does_not_start_is_refused(tiny, photos, tmp_path, cuda_listed_but_broken):
    """``--provider cuda`` fails in one line and writes nothing (methods run from fetched tensors: the dynamic
    session); ``--provider cpu`` still works."""
    out = tmp_path / "out"
    result = run("explain", tiny, photos, "-m", "eigencam", "--provider", "cuda", "--out", out)
    assert_one_line_error(result, r"CUDA was asked for but onnxruntime could not start it.*--provider cpu")
    assert not out.exists()
    assert cuda_listed_but_broken and cuda_listed_but_broken[0][0] == CUDA  # asked for CUDA, got the CPU
    result = run("explain", tiny, photos, "-m", "eigencam", "-m", "gradcam", "--provider", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == 4


def test_a_listed_cuda_provider_that_does_not_start_is_refused_by_fixed_shape_runners(tiny, photos, tmp_path,
                                                                                       cuda_listed_but_broken):
    """The in-graph methods on CUDA run in fixed-shape sessions (``static_runner.py``): the same guard holds."""
    out = tmp_path / "out"
    result = run("explain", tiny, photos, "-m", "gradcam", "--provider", "cuda", "--out", out)
    assert_one_line_error(result, r"CUDA was asked for but onnxruntime could not start it.*--provider cpu")
    assert not out.exists()


def test_an_unlisted_cuda_provider_is_refused_and_auto_runs_on_the_cpu(tiny, photos, tmp_path, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    result = run("explain", tiny, photos, "--provider", "cuda", "--out", tmp_path / "cuda")
    assert_one_line_error(result, r"CUDAExecutionProvider is not available.*onnxcam\[gpu\]")
    assert not (tmp_path / "cuda").exists()
    result = run("explain", tiny, photos, "--provider", "auto", "--out", tmp_path / "auto")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "auto").glob("*.png"))) == 2


def test_outputs_get_the_usual_file_mode(tiny, photos, tmp_path):
    """Every file the CLI writes has the mode a plain ``open`` gives (0666 less the umask), as the overlays always
    had, not the 0600 of the hidden temporaries they are written through (the explainer graph from ``export``
    and ``augment``, ``features -o``, ``evaluate --csv/--json``)."""
    import os
    import stat

    mask = os.umask(0o022)  # a known umask, the usual one
    try:
        result = run("features", tiny, photos / "chelsea.png", "-o", tmp_path / "f.png")
        assert result.exit_code == 0, result.output
        result = run("evaluate", tiny, photos, "--metric", "avg-drop", "--csv", tmp_path / "e.csv",
                     "--json", tmp_path / "e.json", "--provider", "cpu")
        assert result.exit_code == 0, result.output
        result = run("explain", tiny, photos / "chelsea.png", "--out", tmp_path / "out", "--provider", "cpu")
        assert result.exit_code == 0, result.output
        result = run("augment", "--recipe", "rapidocr-cls", "-o", tmp_path / "cls.onnx")
        assert result.exit_code == 0, result.output
    finally:
        os.umask(mask)
    names = ("f.png", "e.csv", "e.json", "out/chelsea.gradcam.png", "cls.onnx")
    modes = {name: oct(stat.S_IMODE((tmp_path / name).stat().st_mode)) for name in names}
    assert modes == dict.fromkeys(names, "0o644")
    assert oct(stat.S_IMODE(tiny.stat().st_mode)) == oct(0o666 & ~mask)  # `export`, under the session's umask
