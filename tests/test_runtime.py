"""Runtime behaviour beyond the maps: the Explanation, input checks, contract checks, providers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import random_batch
from onnxcam.runtime import ContractError, Explainer, InputError, ProviderError, resolve_providers
from onnxcam.runtime.contract import METADATA_KEY
from onnxcam.runtime.providers import CPU, CUDA
from test_parity import assert_layer_maps, assert_parity


@pytest.fixture(scope="module")
def resnet18(zoo):
    return zoo("resnet18")


@pytest.mark.parametrize("postprocess", ["graph", "numpy"])
def test_explanation_fields(resnet18, postprocess):
    model, path, layers = resnet18
    explainer = Explainer(path, providers="cpu", postprocess=postprocess)
    batch = random_batch("resnet18", count=2)
    result = explainer.explain(batch, method="gradcam++", targets=[5, -1])
    assert result.maps.shape == (2, 160, 160) and result.maps.dtype == np.float32
    assert result.maps.min() >= 0 and np.isclose(result.maps.max(), 1, atol=1e-5)
    assert result.logits.shape == (2, 1000)
    assert result.targets.tolist() == [5, int(result.logits[1].argmax())]
    assert set(result.layer_maps) == set(layers)
    assert result.layer_maps["layer3"].shape == (2, 10, 10) and result.layer_maps["layer4"].shape == (2, 5, 5)
    # each layer's raw map (the weighted sum before ReLU and normalisation) is pytorch-grad-cam's get_cam_image
    assert_layer_maps(result.layer_maps, model, "resnet18", layers, "gradcam++", batch, result.targets)
    assert_parity(result.maps, model, "resnet18", layers, "gradcam++", batch, result.targets)
    probabilities = np.exp(result.logits - result.logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    np.testing.assert_allclose(result.scores, probabilities[[0, 1], result.targets], rtol=1e-5)


def test_one_int_target_applies_to_every_image(resnet18):
    explainer = Explainer(resnet18[1], providers="cpu")
    result = explainer.explain(random_batch("resnet18", count=3), targets=42)
    assert result.targets.tolist() == [42, 42, 42]


@pytest.mark.parametrize("targets,message", [
    ([1000, 0], "out of range.*1000 classes"),
    ([1], "1 targets for a batch of 2"),
    ([0.5, 1.0], "integer"),
])
def test_bad_targets_are_refused(resnet18, targets, message):
    explainer = Explainer(resnet18[1], providers="cpu")
    with pytest.raises(InputError, match=message):
        explainer.explain(random_batch("resnet18", count=2), targets=targets)


def test_bad_batches_are_refused(resnet18):
    explainer = Explainer(resnet18[1], providers="cpu")
    with pytest.raises(InputError, match=r"shape \(2, 3, 64, 64\).*\[N, 3, 160, 160\]"):
        explainer.explain(np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(InputError, match="dtype uint8"):
        explainer.explain(np.zeros((1, 3, 160, 160), np.uint8))


def test_unknown_method_and_layer(resnet18):
    explainer = Explainer(resnet18[1], providers="cpu")
    with pytest.raises(ValueError, match="unknown method 'nosuchcam'.*gradcam"):
        explainer.explain(random_batch("resnet18", count=1), method="nosuchcam")
    with pytest.raises(ContractError, match="'layer2' is not explained.*layer3"):
        explainer.explain(random_batch("resnet18", count=1), layers=["layer2"])


def test_a_plain_onnx_model_is_not_an_explainer_graph(tmp_path):
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], "plain", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10), path)
    with pytest.raises(ContractError, match="not an onnxcam explainer graph.*onnxcam export"):
        Explainer(path, providers="cpu")


def test_a_newer_format_version_is_refused(resnet18, tmp_path):
    model = onnx.load(str(resnet18[1]))
    entry = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    record = json.loads(entry.value)
    record["format_version"] = 99
    entry.value = json.dumps(record)
    path = tmp_path / "future.onnx"
    onnx.save(model, path)
    with pytest.raises(ContractError, match="version 99 is not supported"):
        Explainer(path, providers="cpu")


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(ContractError, match="garbage.onnx: not an (ONNX model|onnxcam explainer graph)"):
        Explainer(path, providers="cpu")
    with pytest.raises(FileNotFoundError, match="no such file"):
        Explainer(tmp_path / "missing.onnx")


def test_provider_selection(monkeypatch):
    """Both cases on every machine: onnxruntime made to list CUDA, then not."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    assert resolve_providers("cpu") == [CPU]
    assert resolve_providers(None) == resolve_providers("auto") == [CUDA, CPU]
    assert resolve_providers("cuda") == [CUDA, CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    assert resolve_providers("cpu") == [CPU]
    assert resolve_providers(None) == resolve_providers("auto") == [CPU]
    with pytest.raises(ProviderError, match="CUDAExecutionProvider is not available.*onnxcam\\[gpu\\]"):
        resolve_providers("cuda")
    with pytest.raises(ProviderError, match="TensorrtExecutionProvider|NoSuchProvider"):
        resolve_providers(["NoSuchProvider"])


@pytest.mark.parametrize("static_batches", [False, True], ids=["dynamic", "fixed-shape"])
def test_a_cuda_provider_that_does_not_start_is_refused(resnet18, cuda_listed_but_broken, static_batches):
    """onnxruntime lists CUDA, but the session it opens runs on the CPU only (CUDA or cuDNN libraries missing):
    ``open_session``'s guard refuses it instead of running on the CPU in silence, in the dynamic sessions and
    in the fixed-shape ones (``static_runner.py``) alike."""
    asked = cuda_listed_but_broken
    batch = random_batch("resnet18", count=1)
    explainer = Explainer(resnet18[1], providers="cuda", static_batches=static_batches)
    assert explainer.providers == [CUDA, CPU]
    with pytest.raises(ProviderError, match="CUDA was asked for but onnxruntime could not start it"):
        explainer.explain(batch)
    assert asked[-1][0] == CUDA
    result = Explainer(resnet18[1], providers="cpu").explain(batch)  # the CPU, asked for, still runs
    assert asked[-1] == [CPU] and result.maps.shape == (1, 160, 160)


def test_static_batch_runners_give_the_same_maps(resnet18):
    """Fixed-size sessions with bound buffers (CUDA-graph replay on CUDA) change nothing in the results."""
    dynamic = Explainer(resnet18[1], providers="cpu", static_batches=False)
    static = Explainer(resnet18[1], providers="cpu", static_batches=True)
    for count in (1, 3, 1):
        batch = random_batch("resnet18", count=count, seed=count)
        for method in ("gradcam", "gradcam++", "cam"):
            layers = ["layer4"] if method == "cam" else None
            expected = dynamic.explain(batch, method=method, layers=layers)
            result = static.explain(batch, method=method, layers=layers)
            np.testing.assert_array_equal(result.targets, expected.targets)
            np.testing.assert_allclose(result.maps, expected.maps, atol=1e-6)
            np.testing.assert_allclose(result.logits, expected.logits, rtol=1e-6, atol=1e-6)
            for name, raw in expected.layer_maps.items():
                np.testing.assert_allclose(result.layer_maps[name], raw, rtol=1e-5, atol=1e-6)
    assert len(static.sessions._static) == 2 * 3  # one runner per (method, layers, batch size), reused


def test_a_failing_static_runner_falls_back_to_the_dynamic_session(resnet18, monkeypatch):
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    from onnxcam.runtime import sessions as session_module

    def refuse(*args, **kwargs):
        raise state.Fail("CUDA graph capture is not supported for this graph")

    monkeypatch.setattr(session_module, "StaticRunner", refuse)
    explainer = Explainer(resnet18[1], providers="cpu", static_batches=True)
    batch = random_batch("resnet18", count=2)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture is not supported.*dynamic session"):
        result = explainer.explain(batch)
    assert explainer.static_batches is False
    expected = Explainer(resnet18[1], providers="cpu").explain(batch)
    np.testing.assert_array_equal(result.maps, expected.maps)
