"""Target kinds (docs/explainer-graph.md, "Target kinds"), each against an independent oracle.

- segmentation: pytorch-grad-cam's ``SemanticSegmentationTarget`` with Grad-CAM and Grad-CAM++ on
  torchvision ``fcn_resnet50``, ``deeplabv3_mobilenet_v3_large`` and ``lraspp_mobilenet_v3_large``
  (random weights, BatchNorm statistics re-estimated), one and several images per batch, each
  image with its own class and mask (pytorch-grad-cam's #264 gives zero maps there; we do not);
- softmax and binary: ``ClassifierOutputSoftmaxTarget`` / ``BinaryClassifierOutputTarget``;
- similarity: the embeddings tutorial's cosine ``SimilarityToConceptTarget`` on a ResNet-50 without
  its ``fc``;
- output: a slice of the output, against a callable target summing it;
- every kind's in-graph score against its numpy scorer, and seeds against torch autograd;
- format 1 graphs (wave 1's exports and augments, in ``tests/data``) still explain class targets.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import (BinaryClassifierOutputTarget, ClassifierOutputSoftmaxTarget,
                                                  ClassifierOutputTarget, SemanticSegmentationTarget)

from conftest import random_batch
from onnxcam.export import export_explainer
from onnxcam.runtime import (BinaryTarget, ClassTarget, ContractError, Explainer, InputError, OutputTarget,
                             SegmentationTarget, SimilarityTarget, SoftmaxTarget)
from test_parity import assert_two_tier
from zoo import recalibrate_batchnorm, tiny

ORACLES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
SEGMENTERS = {  # architecture → (layer, input size)
    "fcn_resnet50": ("backbone.layer4", 128),
    "deeplabv3_mobilenet_v3_large": ("backbone.16", 128),
    "lraspp_mobilenet_v3_large": ("backbone.16", 128),
}


def run_oracle(model, layers, method, batch, targets, double=False, reshape=None, oracle=None):
    """pytorch-grad-cam's maps for ``targets`` (its target objects, one per image)."""
    model = copy.deepcopy(model).double() if double else model
    tensor = torch.from_numpy(batch).double() if double else torch.from_numpy(batch)
    with (oracle or ORACLES[method])(model, [model.get_submodule(l) for l in layers], reshape_transform=reshape) as cam:
        return cam(tensor, targets=targets)


class Out(torch.nn.Module):
    """pytorch-grad-cam's segmentation tutorial wrapper: the model's ``out`` tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


@functools.cache
def segmenter(architecture: str):
    """(torch model returning a dict, explainer graph path, layer, size), exported once."""
    import tempfile
    from pathlib import Path

    layer, size = SEGMENTERS[architecture]
    torch.manual_seed(0)
    options = {"aux_loss": True} if architecture == "fcn_resnet50" else {}  # a dict of two outputs
    model = torchvision.models.get_model(architecture, weights=None, weights_backbone=None, num_classes=6, **options)
    recalibrate_batchnorm(model, size)
    model.eval()
    path = Path(tempfile.mkdtemp()) / f"{architecture}.onnx"
    record = export_explainer(model, path, [layer], (2, 3, size, size), architecture=architecture)
    assert record["output"]["source"] == "out" and record["output"]["shape"] == [6, size, size]
    return model, path, layer, size


@pytest.mark.parametrize("method", list(ORACLES))
@pytest.mark.parametrize("architecture", list(SEGMENTERS))
def test_segmentation_matches_semantic_segmentation_target(architecture, method):
    model, path, layer, size = segmenter(architecture)
    explainer = Explainer(path, providers="cpu")
    batch = random_batch(architecture, count=3, seed=11)[:, :, :size, :size]
    batch = np.ascontiguousarray(batch)
    # own masks, a different class (and so a different mask) per image: the largest, the 2nd, the 3rd largest
    result = explainer.explain(batch, method=method, targets=SegmentationTarget(classes=[-1, -2, -3]))
    assert result.maps.shape == (3, size, size) and result.kind == "segmentation"
    with torch.no_grad():
        out = Out(model)(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(result.logits, out, rtol=1e-3, atol=1e-3 * np.abs(out).max())
    # the own masks and ranks, transcribed in numpy from the graph's output (a pixel whose two best
    # classes tie within float32 noise could go either way in torch's output; the oracle gets the same masks)
    labels = result.logits.argmax(axis=1)
    counts = np.stack([np.bincount(l.ravel(), minlength=6) for l in labels])
    expected_classes = [np.argsort(-counts[i], kind="stable")[i] for i in range(3)]
    assert result.targets.tolist() == expected_classes
    masks = [(labels[i] == c).astype(np.float32) for i, c in enumerate(result.targets)]
    expected_scores = [(result.logits[i, c].astype(np.float64) * masks[i]).sum() for i, c in enumerate(result.targets)]
    np.testing.assert_allclose(result.target_scores, expected_scores, rtol=1e-4)
    assert all(result.maps[i].max() > 0.99 for i in range(3))  # no zero maps (pytorch-grad-cam's #264)

    def oracle(double):
        targets = [SemanticSegmentationTarget(int(c), m) for c, m in zip(result.targets, masks)]
        return run_oracle(Out(model), [f"model.{layer}"], method, batch, targets, double=double)

    assert_two_tier(result.maps, oracle, f"{architecture} {method}")
    # one image at a time gives the same map as in the batch (up to float32 rounding, which depends on the
    # batch size: 8.7e-5 measured for fcn_resnet50 Grad-CAM++)
    single = explainer.explain(batch[1:2], method=method, targets=SegmentationTarget(classes=-2))
    np.testing.assert_allclose(single.maps[0], result.maps[1], atol=1e-3)


def test_segmentation_with_given_masks_and_top_k():
    model, path, layer, size = segmenter("fcn_resnet50")
    explainer = Explainer(path, providers="cpu")
    batch = np.ascontiguousarray(random_batch("fcn", count=2, seed=3)[:, :, :size, :size])
    left = np.zeros((size // 4, size // 4), np.uint8)
    left[:, : size // 8] = 255  # a small mask image: resized to the output, nearest
    masks = np.stack([left, left[:, ::-1]])  # each image its own
    result = explainer.explain(batch, method="gradcam", targets=SegmentationTarget(classes=[2, 4], masks=masks))
    fitted = [np.kron(m > 0, np.ones((4, 4))).astype(np.float32) for m in masks]

    def oracle(double):
        targets = [SemanticSegmentationTarget(c, m) for c, m in zip((2, 4), fitted)]
        return run_oracle(Out(model), [f"model.{layer}"], "gradcam", batch, targets, double=double)

    assert_two_tier(result.maps, oracle, "fcn given masks")
    top = explainer.explain(batch, method="gradcam", top_k=2)  # the two largest classes in one call
    assert top.maps.shape == (2, 2, size, size) and top.kind == "segmentation"
    for k in range(2):
        column = explainer.explain(batch, method="gradcam", targets=SegmentationTarget(classes=-(k + 1)))
        np.testing.assert_allclose(top.maps[:, k], column.maps, atol=1e-5)
        np.testing.assert_array_equal(top.targets[:, k], column.targets)


def test_the_aux_output_of_a_dict_model_can_be_chosen(tmp_path):
    model, _, layer, size = segmenter("fcn_resnet50")
    record = export_explainer(model, tmp_path / "aux.onnx", ["backbone.layer3"], (2, 3, size, size), output="aux")
    assert record["output"]["source"] == "aux"
    batch = np.ascontiguousarray(random_batch("fcn", count=1, seed=4)[:, :, :size, :size])
    result = Explainer(tmp_path / "aux.onnx", providers="cpu").explain(batch, targets=SegmentationTarget(classes=1))
    with torch.no_grad():
        aux = model(torch.from_numpy(batch))["aux"].numpy()
    np.testing.assert_allclose(result.logits, aux, rtol=1e-3, atol=1e-3 * np.abs(aux).max())
    with pytest.raises(ValueError, match=r"outputs are \['out', 'aux'\]; 'nope'"):
        export_explainer(model, tmp_path / "x.onnx", [layer], (2, 3, size, size), output="nope")


# -- classifiers: softmax, binary, output ----------------------------------------------------------
@pytest.mark.parametrize("postprocess", ["graph", "numpy"])
@pytest.mark.parametrize("method", list(ORACLES))
def test_softmax_target_matches_classifier_output_softmax_target(zoo, method, postprocess):
    model, path, layers = zoo("resnet18")
    explainer = Explainer(path, providers="cpu", postprocess=postprocess)
    batch = random_batch("resnet18", count=3, seed=9)
    result = explainer.explain(batch, method=method, targets=SoftmaxTarget(classes=[-1, 7, -2]), layers=["layer3"])
    np.testing.assert_allclose(result.target_scores, result.scores, rtol=1e-5)  # the probability itself

    def oracle(double):
        targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in result.targets]
        return run_oracle(model, ["layer3"], method, batch, targets, double=double)

    assert_two_tier(result.maps, oracle, f"softmax {method}")
    plain = explainer.explain(batch, method=method, targets=result.targets, layers=["layer3"])
    assert np.abs(plain.maps - result.maps).max() > 1e-2  # a different score, a different map


class OneLogit(torch.nn.Module):
    """A binary classifier: ResNet-18 features, one logit."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = torchvision.models.resnet18(weights=None, num_classes=1)
        recalibrate_batchnorm(self.net, 96)

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def binary_model(tmp_path_factory):
    model = OneLogit().eval()
    path = tmp_path_factory.mktemp("binary") / "binary.onnx"
    export_explainer(model, path, ["net.layer3"], (2, 3, 96, 96))
    return model, path


@pytest.mark.parametrize("category", [1, 0])
def test_binary_target_matches_binary_classifier_output_target(binary_model, category):
    model, path = binary_model
    explainer = Explainer(path, providers="cpu")
    assert explainer.contract.output.shape == (1,)
    batch = np.ascontiguousarray(random_batch("x", count=2, seed=5)[:, :, :96, :96])
    result = explainer.explain(batch, method="gradcam", targets=BinaryTarget(category=category))
    sign = 1 if category == 1 else -1
    np.testing.assert_allclose(result.target_scores, sign * result.logits[:, 0], rtol=1e-5)

    def oracle(double):
        return run_oracle(model, ["net.layer3"], "gradcam", batch, [BinaryClassifierOutputTarget(category)] * 2,
                          double=double)

    assert_two_tier(result.maps, oracle, f"binary {category}")
    default = explainer.explain(batch, method="gradcam")  # the predicted side, per image
    assert default.kind == "binary"
    assert default.targets.tolist() == [int(v > 0) for v in default.logits[:, 0]]


def test_output_target_sums_a_slice(zoo):
    model, path, _ = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    batch = random_batch("resnet18", count=2, seed=13)
    result = explainer.explain(batch, method="gradcam++", targets=OutputTarget("10:20"), layers=["layer4"])
    np.testing.assert_allclose(result.target_scores, result.logits[:, 10:20].sum(axis=1), rtol=1e-4)
    assert result.targets is None and result.kind == "output"

    def oracle(double):
        return run_oracle(model, ["layer4"], "gradcam++", batch, [lambda output: output[10:20].sum()] * 2,
                          double=double)

    assert_two_tier(result.maps, oracle, "output slice")


def test_score_cam_uses_the_targets_own_score(zoo):
    """Score-CAM's channel scores are the target's score: softmax probabilities for a softmax target."""
    model, path, _ = zoo("resnet18")
    batch = random_batch("resnet18", count=1, seed=21)
    result = Explainer(path, providers="cpu").explain(batch, method="scorecam", layers=["layer4"],
                                                     targets=SoftmaxTarget(classes=4))

    def oracle(double):
        return run_oracle(model, ["layer4"], "scorecam", batch, [ClassifierOutputSoftmaxTarget(4)], double=double,
                          oracle=ScoreCAM)

    assert_two_tier(result.maps, oracle, "scorecam softmax")


# -- similarity ------------------------------------------------------------------------------------
class SimilarityToConceptTarget:
    """pytorch-grad-cam's embeddings tutorial, transcribed: cosine similarity to a concept vector."""

    def __init__(self, features):
        self.features = features

    def __call__(self, model_output):
        cos = torch.nn.CosineSimilarity(dim=0)
        return cos(model_output, self.features.to(model_output.dtype))


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Identity()  # the tutorial's "ResNet-50 without its fc": a 2048-d embedding
    recalibrate_batchnorm(model, 128)
    model.eval()
    path = tmp_path_factory.mktemp("embed") / "resnet50-embedding.onnx"
    record = export_explainer(model, path, ["layer4"], (2, 3, 128, 128))
    assert record["output"]["shape"] == [2048] and record["layers"][0]["cam_weight"] is None
    return model, path


@pytest.mark.parametrize("method", list(ORACLES))
def test_similarity_matches_the_embeddings_tutorial(embedder, method):
    model, path = embedder
    explainer = Explainer(path, providers="cpu")
    images = np.ascontiguousarray(random_batch("x", count=3, seed=17)[:, :, :128, :128])
    concept = explainer.forward(images[2:3])[0]  # the embedding of a reference image
    batch = images[:2]
    result = explainer.explain(batch, method=method, targets=SimilarityTarget(concept=concept))
    embeddings = explainer.forward(batch)
    cosines = embeddings @ concept / (np.linalg.norm(embeddings, axis=1) * np.linalg.norm(concept))
    np.testing.assert_allclose(result.target_scores, cosines, rtol=1e-4)

    def oracle(double):
        targets = [SimilarityToConceptTarget(torch.from_numpy(concept))] * 2
        return run_oracle(model, ["layer4"], method, batch, targets, double=double)

    assert_two_tier(result.maps, oracle, f"similarity {method}")


def test_seeds_are_the_gradients_of_the_scores(embedder):
    """Each in-graph seed (∂score/∂output, built from the output) equals torch autograd of the score."""
    from onnxcam.runtime import graphs

    _, path = embedder
    explainer = Explainer(path, providers="cpu")
    batch = np.ascontiguousarray(random_batch("x", count=2, seed=2)[:, :, :128, :128])
    concept = np.random.default_rng(0).standard_normal(2048).astype(np.float32)
    target = SimilarityTarget(concept=concept)
    feeds = target.feeds(explainer.contract, 2)
    graph = graphs.with_target(explainer.model, explainer.contract, target, feeds)
    import onnxruntime as ort

    session = ort.InferenceSession(graphs.keep_outputs(graph.model, ["output", "seed"]).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    output, seed = session.run(["output", "seed"], {"input": batch, **feeds})
    embedding = torch.from_numpy(output.astype(np.float64)).requires_grad_(True)
    torch.nn.functional.cosine_similarity(embedding, torch.from_numpy(concept).double()[None], dim=1).sum().backward()
    expected = embedding.grad.numpy()
    error = np.abs(seed.reshape(2, -1) - expected).max() / np.abs(expected).max()
    assert error <= 1e-5, error  # float32 arithmetic on 2048 values (measured: 8.7e-8); a wrong seed is off by ~1


# -- every kind: in-graph score = numpy scorer -------------------------------------------------------
def test_in_graph_scores_match_the_numpy_scorers(zoo):
    _, path, _ = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    batch = random_batch("resnet18", count=2, seed=1)
    for target in (ClassTarget([[-1, 3]]), SoftmaxTarget([[-2, 3]]), OutputTarget("0:5")):
        result = explainer.explain(batch, method="gradcam", targets=target, layers=["layer4"])
        feeds = target.feeds(explainer.contract, 2)
        rows = result.target_scores.reshape(-1)
        per_image = len(rows) // 2
        for r in range(len(rows)):
            image = r // per_image
            scorer = target.scorer(r, feeds, result.targets, result.logits[image])
            np.testing.assert_allclose(scorer(result.logits[image:image + 1])[0], rows[r], rtol=1e-4)


# -- format 1 graphs keep working --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-format1.onnx", "tiny-format1-augmented.onnx"])
def test_format_1_graphs_explain_class_targets(name):
    """Wave 1's graphs (exported and augmented by onnxcam 0.1.0, format 1) against pytorch-grad-cam."""
    from pathlib import Path

    path = Path(__file__).parent / "data" / name
    explainer = Explainer(path, providers="cpu")
    assert explainer.contract.version == 1 and not explainer.contract.seeded
    model = tiny()
    batch = np.ascontiguousarray(random_batch("x", count=2, seed=6)[:, :, :48, :48])
    for method in ("gradcam", "gradcam++"):
        result = explainer.explain(batch, method=method, targets=[-1, 2])
        top = explainer.explain(batch, method=method, top_k=2)
        assert top.maps.shape == (2, 2, 48, 48)
        np.testing.assert_allclose(top.maps[:, 0], explainer.explain(batch, method=method).maps, atol=1e-5)

        def oracle(double):
            return run_oracle(model, ["features"], method, batch,
                              [ClassifierOutputTarget(int(c)) for c in result.targets], double=double)

        assert_two_tier(result.maps, oracle, f"{name} {method}")
    np.testing.assert_allclose(result.target_scores, result.logits[[0, 1], result.targets], rtol=1e-5)
    with pytest.raises(ContractError, match="older onnxcam .format 1.*re-export"):
        explainer.explain(batch, targets=SoftmaxTarget(classes=1))


# -- refusals ----------------------------------------------------------------------------------------
def test_kinds_that_do_not_fit_are_refused(zoo, embedder):
    _, path, _ = zoo("resnet18")
    explainer = Explainer(path, providers="cpu")
    batch = random_batch("resnet18", count=2)
    with pytest.raises(ContractError, match=r"'segmentation' needs a \[N, classes, H, W\] output.*\[N, 1000\]"):
        explainer.explain(batch, targets=SegmentationTarget(classes=1))
    with pytest.raises(InputError, match="one-logit"):
        explainer.explain(batch, targets=BinaryTarget())
    with pytest.raises(InputError, match="concept vector has 7 values.*2048"):
        Explainer(embedder[1], providers="cpu").explain(batch[:, :, :128, :128], targets=SimilarityTarget(np.ones(7)))
    with pytest.raises(InputError, match="output index .1000. is out of range for an output \\[N, 1000\\]; give"):
        explainer.explain(batch, targets=OutputTarget("1000"))
    model, seg_path, _, size = segmenter("fcn_resnet50")
    seg = Explainer(seg_path, providers="cpu")
    with pytest.raises(InputError, match=r"masks of shape \(2, 2, 2, 2, 2\) do not fit"):
        seg.explain(np.zeros((1, 3, size, size), np.float32), targets=SegmentationTarget(1, masks=np.ones((2, 2, 2, 2, 2))))
    with pytest.raises(ContractError, match="'class' needs a \\[N, classes\\] output"):
        seg.explain(np.zeros((1, 3, size, size), np.float32), targets=ClassTarget(1))


class TwoHeads(torch.nn.Module):
    """A model returning a tuple: class scores and an embedding."""

    def __init__(self):
        super().__init__()
        self.net = tiny()

    def forward(self, x):
        pooled = self.net.pool(self.net.features(x)).flatten(1)
        return self.net.fc(pooled), pooled


def test_a_tuple_output_is_chosen_by_index(tmp_path):
    model = TwoHeads().eval()
    record = export_explainer(model, tmp_path / "two.onnx", ["net.features"], (2, 3, 48, 48), output=1)
    assert record["output"] == {"name": "output", "shape": [16], "score": "logit", "source": "1"}
    explainer = Explainer(tmp_path / "two.onnx", providers="cpu")
    batch = np.ascontiguousarray(random_batch("x", count=2, seed=8)[:, :, :48, :48])
    with torch.no_grad():
        embedding = model(torch.from_numpy(batch))[1].numpy()
    np.testing.assert_allclose(explainer.forward(batch), embedding, rtol=1e-4, atol=1e-5)
    concept = embedding[1]
    result = explainer.explain(batch, targets=SimilarityTarget(concept))
    np.testing.assert_allclose(result.target_scores[1], 1.0, rtol=1e-5)  # an embedding is its own concept
    first = export_explainer(model, tmp_path / "first.onnx", ["net.features"], (2, 3, 48, 48))
    assert first["output"]["shape"] == [5] and first["output"]["source"] == "0"  # default: the first


def test_augment_explains_the_first_of_several_outputs(tmp_path):
    from onnxcam.export.augment import augment

    model = TwoHeads().eval()
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(2, 3, 48, 48),), str(tmp_path / "two.onnx"), dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["scores", "embedding"],
                          dynamic_axes={"image": {0: "N"}, "scores": {0: "N"}, "embedding": {0: "N"}})
    result = augment(tmp_path / "two.onnx", tmp_path / "first.onnx")
    assert result.record["output"]["source"] == "scores" and any("explaining the first" in n for n in result.notes)
    second = augment(tmp_path / "two.onnx", tmp_path / "second.onnx", logits="embedding")
    assert second.record["output"]["shape"] == [16] and second.record["output"]["source"] == "embedding"
