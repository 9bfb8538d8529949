"""The pretrained EfficientNet-Lite0 recipe on real photos: torch, the explainer graph, pytorch-grad-cam.

Photos are scikit-image's own files (coffee.png, chelsea.png), read from its package folder.
The graph is exported once per module.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import skimage_photo
from onnxcam.models import efficientnet_lite0 as recipe
from onnxcam.runtime import Explainer, load_batch
from onnxcam.runtime.image import fit_to_input, load_image, to_tensor

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
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    path, _ = exported
    explainer = Explainer(path, providers="cpu")
    batch, _ = load_batch([photo("chelsea.png")], explainer.contract)
    ours = explainer.explain(batch, method="gradcam")
    assert ours.targets[0] in CAT_CLASSES

    with GradCAM(model, [model.get_submodule(recipe.LAYER)]) as oracle:
        reference = oracle(torch.from_numpy(batch.copy()),
                           targets=[ClassifierOutputTarget(int(t)) for t in ours.targets])
    assert ours.maps.shape == reference.shape == (1, 224, 224)
    assert np.abs(ours.maps - reference).max() <= 1e-4, np.abs(ours.maps - reference).max()
    assert ours.maps.max() > 0.99  # a real map, not a flat one


def test_fp16_graph_keeps_maps_within_002_of_fp32(exported, tmp_path):
    """``export --fp16``: float16 arithmetic, float32 I/O; on real photos the maps barely move."""
    from onnxcam.export.precision import convert_to_fp16

    path, _ = exported
    half = tmp_path / "efficientnet_lite0.fp16.onnx"
    record = convert_to_fp16(path, half)
    assert record["precision"] == "float16"
    full, reduced = Explainer(path, providers="cpu"), Explainer(half, providers="cpu")
    assert reduced.contract.precision == "float16"
    batch, _ = load_batch([photo("coffee.png"), photo("chelsea.png")], full.contract)
    for method in ("cam", "gradcam", "gradcam++"):
        expected, result = full.explain(batch, method=method), reduced.explain(batch, method=method)
        np.testing.assert_array_equal(result.targets, expected.targets)
        assert np.abs(result.maps - expected.maps).max() <= 0.02, method
    assert half.stat().st_size < 0.6 * path.stat().st_size
