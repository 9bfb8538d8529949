"""The click CLI end to end: export, info, explain; errors as one line, exit 1, no partial files."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import skimage_photo
from onnxcam.runtime import Explainer, load_batch
from onnxcam.runtime.cli import main
from onnxcam.runtime.image import load_image


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
    result = run("explain", tiny, photos, "-m", "gradcam", "-m", "gradcam++", "--out", out, "--save-maps")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}.{m}.{ext}" for stem in ("chelsea", "coffee") for m in ("gradcam", "gradcampp") for ext in ("png", "npy"))
    assert "chelsea.png: top " in result.output and "coffee.png: top " in result.output
    overlay_image = load_image(out / "chelsea.gradcam.png")
    assert overlay_image.shape == (48, 48, 3)
    saved = np.load(out / "chelsea.gradcampp.npy")
    explainer = Explainer(tiny, providers="cpu")
    batch, _ = load_batch([photos / "chelsea.png"], explainer.contract)
    np.testing.assert_allclose(saved, explainer.explain(batch, method="gradcam++").maps[0], atol=1e-6)


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
                 "--save-maps", "--out", out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"chelsea.layercam.png", "chelsea.layercam.npy",
                                              "chelsea.eigencam.png", "chelsea.eigencam.npy"}
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
