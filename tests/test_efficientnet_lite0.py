"""The pretrained EfficientNet-Lite0 recipe on real photos: torch, the explainer graph, pytorch-grad-cam.

Photos are scikit-image's own files (coffee.png, chelsea.png), read from its package folder.
The graph is exported once per module.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from conftest import skimage_photo
from onnxcam.models import efficientnet_lite0 as recipe
from onnxcam.runtime import Explainer, load_batch
from onnxcam.runtime.image import fit_to_input, load_image, to_tensor
from test_parity import assert_two_tier, double_model

COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug
CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


photo = skimage_photo


PHOTOS = [photo("coffee.png"), photo("chelsea.png")]


def preprocess(paths, preprocessing: dict) -> np.ndarray:
    """The runtime's own preprocessing, without a graph."""
    return np.stack([to_tensor(fit_to_input(load_image(p), preprocessing), preprocessing) for p in paths])


def logits_of(model, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()


def top(logits: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-logits, axis=1)[:, :k]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return recipe.build()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("efficientnet_lite0") / "efficientnet_lite0.onnx"
    record = recipe.export(path)
    return path, record


def test_recipe_is_plain_data():
    assert recipe.LAYER == "_head_act"
    assert recipe.preprocessing() == {
        "size": [224, 224], "resize": 256, "mean": [127 / 255] * 3, "std": [128 / 255] * 3,
        "channel_order": "RGB", "scale": 255.0,
    }
    names = recipe.labels()
    assert len(names) == 1000 and names[967] == "espresso" and names[285] == "Egyptian cat"


def test_torch_model_recognises_the_photos(model):
    assert not model.training
    assert dict(model.named_modules())[recipe.LAYER] is model._head_act
    logits = logits_of(model, preprocess(PHOTOS, recipe.preprocessing()))
    coffee, chelsea = top(logits, 5)
    assert COFFEE_CLASSES & set(coffee.tolist()), coffee
    assert chelsea[0] in CAT_CLASSES, chelsea


def test_tf_normalisation_beats_imagenet_mean_std(model):
    """The recipe's (x - 127) / 128 is more confident on the right classes than ImageNet mean/std."""
    tf_style = recipe.preprocessing()
    imagenet = dict(tf_style, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    right = [sorted(COFFEE_CLASSES), sorted(CAT_CLASSES)]
    scores = {}
    for name, pre in (("tf", tf_style), ("imagenet", imagenet)):
        probabilities = softmax(logits_of(model, preprocess(PHOTOS, pre)))
        scores[name] = [probabilities[i, classes].sum() for i, classes in enumerate(right)]
    assert all(t > i for t, i in zip(scores["tf"], scores["imagenet"])), scores


def test_explainer_graph_matches_torch(model, exported):
    path, record = exported
    assert record["architecture"] == "efficientnet_lite0"
    assert record["preprocessing"] == recipe.preprocessing()
    assert record["layers"][0]["name"] == recipe.LAYER and record["layers"][0]["shape"] == [1280, 7, 7]
    assert record["layers"][0]["cam_weight"] == "cam_weight_0"  # GAP + linear head found

    explainer = Explainer(path, providers="cpu")
    assert "cam_weight_0" in {o.name for o in explainer.model.graph.output}
    batch, _ = load_batch(PHOTOS, explainer.contract)
    np.testing.assert_array_equal(batch, preprocess(PHOTOS, recipe.preprocessing()))

    result = explainer.explain(batch, method="gradcam")
    expected = logits_of(model, batch)
    scale = np.abs(expected).max()
    assert np.abs(result.logits - expected).max() <= 1e-3 * scale, np.abs(result.logits - expected).max()
    np.testing.assert_array_equal(top(result.logits, 5), top(expected, 5))
    assert list(result.targets) == list(expected.argmax(axis=1))
    assert result.targets[1] in CAT_CLASSES and COFFEE_CLASSES & set(top(result.logits, 5)[0].tolist())

    # at the layer feeding GAP + linear, Grad-CAM's weights are CAM's divided by h·w: same maps
    cam = explainer.explain(batch, method="cam")
    assert np.abs(cam.maps - result.maps).max() <= 1e-4


def test_gradcam_matches_pytorch_grad_cam(model, exported):
    """Two tiers (``tolerances.py``): 1e-4 from pytorch-grad-cam in float32, else no farther from pytorch-grad-cam
    on the float64 model than twice its float32 self."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    path, _ = exported
    explainer = Explainer(path, providers="cpu")
    batch, _ = load_batch([photo("chelsea.png")], explainer.contract)
    ours = explainer.explain(batch, method="gradcam")
    assert ours.targets[0] in CAT_CLASSES

    def reference(double: bool) -> np.ndarray:
        used = double_model(model) if double else model
        tensor = torch.from_numpy(batch.copy())
        with GradCAM(used, [used.get_submodule(recipe.LAYER)]) as oracle:
            return oracle(tensor.double() if double else tensor,
                          targets=[ClassifierOutputTarget(int(t)) for t in ours.targets])

    assert ours.maps.shape == (1, 224, 224)
    assert_two_tier(ours.maps, reference, "efficientnet_lite0 gradcam")
    assert ours.maps.max() > 0.99  # a real map, not a flat one


def stored_in_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (float32) computed as its float16 copy is on CUDA, on any provider: every float32 weight
    rounded to float16, and every float32 tensor a node makes rounded to float16 before anything reads it
    (an explicit ``Cast`` pair after the node, which onnxruntime keeps: it is not lossless). Float16 between
    ops, float32 inside each, as CUDA's half kernels accumulate; overflow past 65504 becomes inf and gradients
    below 6e-8 become 0, as in the real thing. Written here from the ONNX spec, not from onnxcam's converter.

    Why: onnxruntime's CPU provider has no float16 kernels for most ops; it casts a float16 graph's ops to
    float32 and removes the casts between them, so on the CPU a float16 graph rounds little more than its
    weights."""
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {v.name for v in [*inferred.graph.value_info, *inferred.graph.output]
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    rounded = onnx.ModelProto()
    rounded.CopyFrom(model)
    graph = rounded.graph
    for initializer in graph.initializer:
        if initializer.data_type == onnx.TensorProto.FLOAT:
            array = onnx.numpy_helper.to_array(initializer)
            initializer.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float16).astype(np.float32),
                                                               initializer.name))
    nodes = []
    for node in graph.node:
        casts = []
        for index, name in enumerate(node.output):
            if name in floats:
                node.output[index] = f"{name}__float32"
                casts += [onnx.helper.make_node("Cast", [f"{name}__float32"], [f"{name}__float16"],
                                                to=onnx.TensorProto.FLOAT16),
                          onnx.helper.make_node("Cast", [f"{name}__float16"], [name], to=onnx.TensorProto.FLOAT)]
        nodes += [node, *casts]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    assert len(nodes) > 2 * len(model.graph.node), "too few tensors rounded: the emulation proves nothing"
    return rounded


@pytest.mark.filterwarnings("ignore:the float32 number .* will be truncated")  # the converter clamps tiny weights
def test_fp16_graph_keeps_maps_within_002_of_fp32(exported, tmp_path):
    """``export --fp16`` on real photos: the maps barely move. Two float16 runs against the float32 graph:
    the converted file itself (loads, runs, keeps the targets; on the CPU provider mostly its float16 weights),
    and the same explainer graph with every tensor stored in float16 (``stored_in_float16``): the float16
    arithmetic of the forward *and* the backward pass, overflow and underflow included, that CUDA runs.
    Measured (max |Δ map| from float32, cam/gradcam/gradcam++): converted 2.0e-3/2.0e-3/2.1e-3, stored in float16
    2.5e-3/2.6e-3/2.8e-3; the bound 0.02 is 7× that. Float16 storage moves the gradient by 4.2e-4 of its
    largest value (checked > 1e-4)."""
    from onnxcam.export.precision import convert_to_fp16

    path, _ = exported
    half = tmp_path / "efficientnet_lite0.fp16.onnx"
    record = convert_to_fp16(path, half)
    assert record["precision"] == "float16"
    emulated = tmp_path / "efficientnet_lite0.stored-fp16.onnx"
    onnx.save(stored_in_float16(onnx.load(str(path))), str(emulated))
    full = Explainer(path, providers="cpu")
    reduced, stored = Explainer(half, providers="cpu"), Explainer(emulated, providers="cpu")
    assert reduced.contract.precision == "float16"
    batch, _ = load_batch([photo("coffee.png"), photo("chelsea.png")], full.contract)
    batch16 = batch.astype(np.float16).astype(np.float32)  # the converted graph's first Cast
    for method in ("cam", "gradcam", "gradcam++"):
        expected = full.explain(batch, method=method)
        for name, result in (("converted", reduced.explain(batch, method=method)),
                             ("stored in float16", stored.explain(batch16, method=method))):
            np.testing.assert_array_equal(result.targets, expected.targets)
            assert np.isfinite(result.maps).all() and result.maps.max() > 0.99, (method, name)
            distance = np.abs(result.maps - expected.maps).max()
            assert distance <= 0.02, (method, name, distance)
    # the emulation is not float32 in disguise: float16 storage moves the gradients measurably
    name = full.contract.layers[0].gradient
    gradients = [e.run(batch16, targets=[0, 0], output_names=[name])[name] for e in (full, stored)]
    assert np.abs(gradients[1] - gradients[0]).max() > 1e-4 * np.abs(gradients[0]).max()
    assert half.stat().st_size < 0.6 * path.stat().st_size
