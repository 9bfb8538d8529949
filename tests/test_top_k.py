"""Top-k: the graph takes a target list per image and explains all of them in one session call."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

from conftest import random_batch, skimage_photo
from onnxcam.runtime import Explainer, InputError
from onnxcam.runtime.image import load_image
from test_cli import run


@pytest.mark.parametrize("postprocess", ["graph", "numpy"])
@pytest.mark.parametrize("method", ["gradcam++", "layercam"])
def test_top_k_equals_one_target_at_a_time(zoo, postprocess, method):
    _, path, _ = zoo("resnet18")
    explainer = Explainer(path, providers="cpu", postprocess=postprocess)
    batch = random_batch("resnet18", count=2, seed=3)
    result = explainer.explain(batch, method=method, top_k=3)
    assert result.maps.shape == (2, 3, *batch.shape[2:]) and result.targets.shape == (2, 3)
    np.testing.assert_array_equal(result.targets, np.argsort(-result.logits, axis=1)[:, :3])
    assert (np.diff(result.scores, axis=1) <= 0).all()
    for rank in range(3):
        single = explainer.explain(batch, method=method, targets=result.targets[:, rank])
        np.testing.assert_allclose(result.maps[:, rank], single.maps, atol=2e-5)
        for name, raw in single.layer_maps.items():
            np.testing.assert_allclose(result.layer_maps[name][:, rank], raw, rtol=1e-4, atol=1e-5 * np.abs(raw).max())


def test_one_session_call_for_all_targets(zoo, monkeypatch):
    """The graph's rows: one per (image, target); the part before the layer runs once per image."""
    _, path, _ = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    batch = random_batch("resnet18", count=2, seed=3)
    explainer.explain(batch, method="gradcam", top_k=4)  # sessions built
    calls = []
    original = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    explainer.explain(batch, method="gradcam", top_k=4)
    assert len(calls) == 1
    outputs = explainer.run(batch, np.array([[-1, -2, 5], [0, -1, -3]]), ["resolved_target", "gradient_1"])
    assert outputs["gradient_1"].shape[0] == 6
    assert outputs["resolved_target"][0, 2] == 5 and outputs["resolved_target"][1, 0] == 0


def test_explicit_target_lists_and_bad_ones(zoo):
    _, path, _ = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    batch = random_batch("resnet18", count=2, seed=3)
    result = explainer.explain(batch, targets=[[3, -1], [8, 2]])
    assert result.targets[:, 0].tolist() == [3, 8] and result.targets[1, 1] == 2
    with pytest.raises(InputError, match="out of range"):
        explainer.explain(batch, targets=[[3, -1001], [8, 2]])
    with pytest.raises(InputError, match="targets or top_k"):
        explainer.explain(batch, targets=[1, 2], top_k=2)


def test_cli_top_k_writes_one_captioned_overlay_per_class(tmp_path):
    model = tmp_path / "tiny.onnx"
    assert run("export", "zoo:tiny", "--layer", "features", "--input-size", "48", "-o", model).exit_code == 0
    out = tmp_path / "out"
    result = run("explain", model, skimage_photo("coffee.png"), "--top-k", "3", "-m", "gradcam", "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == [f"coffee.gradcam.top{k}.png" for k in (1, 2, 3)]
    assert result.output.count(" p=") == 4  # the top class, and the three explained
    first, second = load_image(out / "coffee.gradcam.top1.png"), load_image(out / "coffee.gradcam.top2.png")
    assert not np.array_equal(first, second)
    refused = run("explain", model, skimage_photo("coffee.png"), "--top-k", "9", "--out", tmp_path / "bad")
    assert refused.exit_code == 1 and "top_k must be between 1 and 5" in refused.stderr
    assert not (tmp_path / "bad").exists()


def test_fixed_shape_runners_take_target_lists(zoo):
    """The CUDA-graph runner's mechanism (bound buffers sized from the contract), on the CPU."""
    _, path, _ = zoo("resnet18")
    batch = random_batch("resnet18", count=2, seed=8)
    dynamic = Explainer(path, providers="cpu").explain(batch, method="gradcam++", top_k=2)
    static = Explainer(path, providers="cpu", static_batches=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to the dynamic session would warn
        fixed = static.explain(batch, method="gradcam++", top_k=2)
    np.testing.assert_allclose(fixed.maps, dynamic.maps, atol=1e-6)
    np.testing.assert_array_equal(fixed.targets, dynamic.targets)
