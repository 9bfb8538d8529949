"""``--target`` on the command line: every kind's syntax, its overlays, and one-line refusals with no files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import skimage_photo
from onnxcam.export import export_explainer
from onnxcam.runtime import Explainer, SoftmaxTarget, load_batch
from onnxcam.runtime.cli import main
from onnxcam.runtime.image import load_image

LABELS = ["apple", "tabby cat", "espresso", "rocket", "coin"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_refused(result, fragment: str, out=None):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.output
    if out is not None:
        assert not out.exists() or not any(out.iterdir())


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labelled")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    path = folder / "tiny.onnx"
    result = run("export", "zoo:tiny", "--layer", "features", "--input-size", "48", "--labels",
                 folder / "labels.txt", "-o", path)
    assert result.exit_code == 0, result.output
    return path


class TinySegmenter(torch.nn.Module):
    """A small fully convolutional segmenter returning ``{"out": [N, 3, H, W]}``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU())
        self.classifier = torch.nn.Conv2d(8, 3, 1)

    def forward(self, x):
        logits = self.classifier(self.features(x))
        return {"out": torch.nn.functional.interpolate(logits, size=x.shape[2:], mode="bilinear",
                                                       align_corners=False)}


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "seg.onnx"
    export_explainer(TinySegmenter().eval(), path, ["features"], (2, 3, 48, 48),
                     labels=["background", "coin", "edge"])
    return path


def test_softmax_target_by_label(labelled, tmp_path):
    out = tmp_path / "out"
    result = run("explain", labelled, skimage_photo("coffee.png"), "-t", "softmax:espresso", "--out", out,
                 "--save-maps")
    assert result.exit_code == 0, result.output
    assert "explained 2 'espresso' p=" in result.output or "top 2 'espresso'" in result.output
    explainer = Explainer(labelled, providers="cpu")
    batch, _ = load_batch([skimage_photo("coffee.png")], explainer.contract)
    expected = explainer.explain(batch, targets=SoftmaxTarget(classes=2)).maps[0]
    np.testing.assert_allclose(np.load(out / "coffee.gradcam.npy"), expected, atol=1e-6)


def test_segmentation_overlay_shows_the_masks_outline(segmenter, tmp_path):
    import cv2

    from onnxcam.runtime.image import overlay

    photo = skimage_photo("coins.png")
    result = run("explain", segmenter, photo, "-t", "segmentation:-1", "--out", tmp_path, "--save-maps")
    assert result.exit_code == 0, result.output
    assert "coins.png: explained '" in result.output and "score=" in result.output
    explainer = Explainer(segmenter, providers="cpu")
    batch, views = load_batch([photo], explainer.contract)
    output = explainer.forward(batch)[0]
    labels = output.argmax(axis=0)
    mask = (labels == np.bincount(labels.ravel()).argmax()).astype(np.uint8)  # the largest class (own mask)
    drawn = load_image(tmp_path / "coins.gradcam.png")
    plain = overlay(views[0], np.load(tmp_path / "coins.gradcam.npy"))
    changed = (drawn != plain).any(axis=2)
    padded = np.pad(mask, 1)
    border = mask.astype(bool) & (cv2.erode(padded, np.ones((3, 3), np.uint8))[1:-1, 1:-1] == 0)
    near_border = cv2.dilate(border.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    # only the outline is drawn, in white (this mask comes from a forward session, the CLI's from the
    # explain session: a pixel whose two best classes tie within float32 noise may go either way)
    assert changed.any() and (changed & ~near_border).sum() <= 0.01 * changed.sum()
    assert (drawn[border] == 255).all(axis=1).mean() > 0.5


def test_segmentation_with_a_mask_file(segmenter, tmp_path):
    mask = np.zeros((12, 12, 3), np.uint8)
    mask[:6] = 255
    import cv2

    cv2.imwrite(str(tmp_path / "top.png"), mask)
    result = run("explain", segmenter, skimage_photo("coins.png"), "-t", f"segmentation:1:{tmp_path / 'top.png'}",
                 "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("target,message", [
    ("nosuchkind:3", "unknown target kind 'nosuchkind'"),
    ("class:zebra", "class 'zebra' is not among this graph's 5 labels"),
    ("softmax:tabby", "did you mean 'tabby cat'"),
    ("class:7", "target class 7 is out of range: the model has 5 classes"),
    ("segmentation:1", "'segmentation' needs a [N, classes, H, W] output"),
    ("binary:positive", "one-logit [N, 1] output"),
    ("binary:maybe", "binary category 'maybe'"),
    ("output:0,5", "output index has 2 parts"),
    ("output:x", "'x' is not an integer"),
    ("similarity:missing.npy", "missing.npy: no such file"),
    ("99999999999999999999999", "out of range"),
])
def test_bad_targets_are_refused_before_any_file(labelled, tmp_path, target, message):
    out = tmp_path / "out"
    result = run("explain", labelled, skimage_photo("coffee.png"), "-t", target, "--out", out)
    assert_refused(result, message, out)


def test_bad_concepts_and_masks_are_refused(labelled, segmenter, tmp_path):
    np.save(tmp_path / "short.npy", np.ones(3, np.float32))
    np.save(tmp_path / "matrix.npy", np.ones((2, 5), np.float32))
    (tmp_path / "junk.npy").write_text("not numpy")
    for concept, message in (("short.npy", "concept vector has 3 values"), ("matrix.npy", "must be 1-D"),
                             ("junk.npy", "not a readable .npy array")):
        result = run("explain", labelled, skimage_photo("coffee.png"), "-t", f"similarity:{tmp_path / concept}",
                     "--out", tmp_path / "out")
        assert_refused(result, message, tmp_path / "out")
    (tmp_path / "mask.png").write_text("not an image")
    result = run("explain", segmenter, skimage_photo("coins.png"), "-t", f"segmentation:1:{tmp_path / 'mask.png'}",
                 "--out", tmp_path / "out")
    assert_refused(result, "not a readable image", tmp_path / "out")
    result = run("explain", labelled, skimage_photo("coffee.png"), "-k", "2", "-t", "output:1",
                 "--out", tmp_path / "out")
    assert_refused(result, "top_k ranks classes", tmp_path / "out")


def test_evaluate_takes_a_target(labelled, tmp_path):
    result = run("evaluate", labelled, skimage_photo("coffee.png"), "-t", "softmax:espresso", "--metric",
                 "avg-drop", "--metric", "deletion", "--steps", "8", "--json", tmp_path / "f.json")
    assert result.exit_code == 0, result.output
    import json

    record = json.loads((tmp_path / "f.json").read_text())
    assert record["methods"]["gradcam"]["targets"] == [2]
