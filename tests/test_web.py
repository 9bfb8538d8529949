"""The browser demo (web/) end to end: a baked EfficientNet-Lite0 file run by onnxruntime-web in
headless chromium gives Python's Grad-CAM map, top class and overlay for a real photo.

Needs chromium (apt) and web/node_modules (npm); without them the tests fail, saying how to install.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from cdp import Browser, find_chromium, serve
from conftest import skimage_photo
from onnxcam.runtime import Explainer, load_batch
from onnxcam.runtime.cli import main
from onnxcam.runtime.image import load_image, needed_size, overlay, save_image

WEB = Path(__file__).resolve().parent.parent / "web"
INSTALL = "run `make install` (or: apt-get install -y chromium; npm ci --prefix web)"
STATUS = "document.getElementById('status')"


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module", autouse=True)
def installed():
    """Fail (never skip) at once without chromium or web/node_modules, saying how to install them."""
    missing = [what for what, present in (("chromium", find_chromium()),
                                          ("web/node_modules", (WEB / "node_modules" / "onnxruntime-web").is_dir()))
               if not present]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: {INSTALL}", pytrace=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder served at /models/: the baked file (labels in baked.json), a plain model, and the photo
    to upload. The photo is chelsea at the size Python resizes it to before the centre crop, and the
    file is baked for exactly that raw size, so the page's pixels are Python's and the graph only
    crops (its float resize rounds differently from OpenCV's fixed-point one)."""
    folder = tmp_path_factory.mktemp("web")
    explainer = folder / "efficientnet_lite0.onnx"
    result = run("export", "efficientnet_lite0", "-o", explainer)
    assert result.exit_code == 0, result.output
    photo = load_image(skimage_photo("chelsea.png"))
    height, width = needed_size(Explainer(explainer, providers="cpu").contract.preprocessing, photo.shape[1],
                                photo.shape[0])
    save_image(folder / "chelsea.png", cv2.resize(photo, (width, height), interpolation=cv2.INTER_LINEAR))
    result = run("bake", explainer, "-m", "gradcam", "--raw-image", "--raw-size", f"{height}x{width}", "--overlay",
                 "-o", folder / "baked.onnx")
    assert result.exit_code == 0, result.output
    result = run("info", "--json", folder / "baked.onnx")
    assert result.exit_code == 0, result.output
    (folder / "baked.json").write_text(result.output)
    onnx.save_model(plain_model(), folder / "plain.onnx")
    return folder


def plain_model() -> onnx.ModelProto:
    """A stand-in plain model for the timing mode: float32 ``[N, 3, 224, 224]`` in, a mean out."""
    graph = helper.make_graph([helper.make_node("ReduceMean", ["input"], ["logits"], keepdims=0)], "plain",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.fixture(scope="module")
def page_url(site):
    """The demo page's URL, the models mounted at /models/ (nothing generated lands in web/)."""
    with serve(WEB, {"/models/": site}) as url:
        yield url + "index.html?model=/models/baked.onnx"


@pytest.fixture(scope="module")
def browser():
    with Browser(timeout=60) as opened:
        yield opened


def wait_until_done(page) -> None:
    """Wait for the page's status to say done; an error state fails with the page's message."""
    page.wait_for(f"['done', 'error'].includes({STATUS}.dataset.state)", timeout=60)
    if page.evaluate(f"{STATUS}.dataset.state") == "error":
        pytest.fail(f"the page says {page.evaluate(f'{STATUS}.textContent')!r}; console: {page.console_errors()}")


def canvas_pixels(page, canvas_id: str) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` of a canvas, read back as PNG (lossless)."""
    url = page.evaluate(f"document.getElementById({json.dumps(canvas_id)}).toDataURL('image/png')")
    data = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_page_explains_like_python(site, page_url, browser, tmp_path):
    page = browser.open(page_url)
    page.wait_for(f"['ready', 'error'].includes({STATUS}.dataset.state)", timeout=60)
    page.set_files("#file", [site / "chelsea.png"])
    wait_until_done(page)
    result = page.evaluate("window.onnxcamResult")

    explainer = Explainer(site / "efficientnet_lite0.onnx", providers="cpu")
    batch, views = load_batch([skimage_photo("chelsea.png")], explainer.contract)
    explanation = explainer.explain(batch, method="gradcam")
    expected = explanation.maps[0]
    assert result["shape"] == [1, 1, *expected.shape]
    map_ = np.float32(result["map"]).reshape(expected.shape)
    assert np.abs(map_ - expected).max() <= 1e-4, np.abs(map_ - expected).max()
    assert result["target"] == result["top"][0]["index"] == int(explanation.targets[0])
    assert "cat" in result["top"][0]["label"], result["top"]  # labels came from baked.json
    assert len(result["top"]) == 5 and sum(item["probability"] for item in result["top"]) <= 1.0

    np.testing.assert_array_equal(canvas_pixels(page, "input"), load_image(site / "chelsea.png"))
    np.testing.assert_array_equal(canvas_pixels(page, "view"), views[0])
    # the page's own map: a map level at a colour boundary may flip with a 1e-5 change, and jet's next colour
    # differs by up to 4 levels in a channel
    drawn = canvas_pixels(page, "overlay").astype(int)
    assert np.abs(drawn - overlay(views[0], map_).astype(int)).max() <= 1
    assert page.evaluate("[...document.querySelectorAll('canvas, img')].every(e => e.width > 0 && e.height > 0)")
    assert page.evaluate("document.querySelectorAll('#top li').length") == 5
    shot = page.screenshot(tmp_path / "demo.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_page_times_the_baked_file_against_a_plain_model(page_url, browser):
    page = browser.open(page_url + "&plain=/models/plain.onnx&runs=3")
    wait_until_done(page)
    latency = page.evaluate("window.onnxcamLatency")
    assert latency["runs"] == 3 and latency["bakedMs"] > 0 and latency["plainMs"] > 0
    assert latency["ort"] == json.loads((WEB / "package.json").read_text())["dependencies"]["onnxruntime-web"]
