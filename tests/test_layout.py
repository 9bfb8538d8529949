"""Where a layer's channels are comes from the graph, never from a guess; and ``export`` and
``augment`` load and run what they wrote, and check it against the source model, before they
say "wrote".

- a TensorFlow-style VGG head (tf2onnx: NHWC input, ``Transpose`` around the convolution, the
  channels-last map flattened into dense layers, no global pooling): ``augment`` reads its map
  channels last, and its Grad-CAM equals pytorch-grad-cam on a torch twin with the same weights
  (a channels-first reading gives another, striped map);
- the rules, one small graph each: producers and consumers that say the layout, and graphs
  where nothing says or two ops disagree (refused, naming ``--reshape``; an explicit
  ``--reshape`` wins);
- a graph that does not reproduce the model's output, or that onnxruntime cannot load, is never
  written (augment and export; one ``Error:`` line from the CLI);
- ``export`` of a torch module with a channels-last layer: read off the ops around it where they
  say, refused where they do not, and with ``--reshape nhwc`` equal to pytorch-grad-cam with a
  permuting ``reshape_transform``.
"""

from __future__ import annotations

import copy
import importlib

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from onnxcam.export.augment import AugmentError, augment
from onnxcam.runtime import Explainer
from onnxcam.runtime.cli import main
from test_parity import assert_two_tier

augment_module = importlib.import_module("onnxcam.export.augment")  # the package re-exports the function
explainer_module = importlib.import_module("onnxcam.export.explainer")

H, W, C, HIDDEN, CLASSES = 8, 10, 6, 16, 5


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *fragments: str, progress: bool = False) -> str:
    """Exit 1, one ``Error:`` line on stderr naming ``fragments``, no traceback. ``progress``: export's
    progress lines ("exporting …") may come before it."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert errors == lines[-1:] and (progress or len(lines) == 1), result.stderr
    assert "Traceback" not in result.output and not result.stdout
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def only(folder, *names) -> None:
    """Nothing but ``names`` in ``folder``: no output, no ``.partial``, no ``.unchecked``."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


# -- a tf2onnx-style VGG head ---------------------------------------------------------------------
def head_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"conv_w": rng.standard_normal((C, 3, 3, 3)).astype(np.float32) * 0.5,
            "conv_b": rng.standard_normal(C).astype(np.float32) * 0.1,
            "fc1_w": rng.standard_normal((H * W * C, HIDDEN)).astype(np.float32) * 0.1,
            "fc1_b": rng.standard_normal(HIDDEN).astype(np.float32) * 0.1,
            "fc2_w": rng.standard_normal((HIDDEN, CLASSES)).astype(np.float32) * 0.3,
            "fc2_b": rng.standard_normal(CLASSES).astype(np.float32) * 0.1}


def vgg_head_onnx(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``image [N,H,W,3]`` → Transpose(0,3,1,2) → Conv → Relu → Transpose(0,2,3,1) ``features``
    ``[N,H,W,C]`` → Reshape ``[N, H·W·C]`` → MatMul+Add → Relu → MatMul+Add ``logits``: what tf2onnx
    makes of a Keras ``Conv2D → Flatten → Dense → Dense`` model."""
    nodes = [
        helper.make_node("Transpose", ["image"], ["image_nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["image_nchw", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], name="conv2d"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("Transpose", ["relu"], ["features"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("Reshape", ["features", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "fc1_w"], ["fc1_mm"], name="dense_1/MatMul"),
        helper.make_node("Add", ["fc1_mm", "fc1_b"], ["fc1"], name="dense_1/BiasAdd"),
        helper.make_node("Relu", ["fc1"], ["hidden"], name="dense_1/Relu"),
        helper.make_node("MatMul", ["hidden", "fc2_w"], ["fc2_mm"], name="dense_2/MatMul"),
        helper.make_node("Add", ["fc2_mm", "fc2_b"], ["logits"], name="dense_2/BiasAdd"),
    ]
    initializers = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    initializers.append(numpy_helper.from_array(np.array([-1, H * W * C], np.int64), "flat_shape"))
    graph = helper.make_graph(
        nodes, "vgg_head", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["unk__0", H, W, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["unk__0", CLASSES])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


class Permute(nn.Module):
    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class TorchVggHead(nn.Module):
    """The same model in torch, taking ``[N,3,H,W]``; ``features`` is the channels-last map."""

    def __init__(self, weights: dict[str, np.ndarray]):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1)
        self.features = Permute(0, 2, 3, 1)
        self.fc1, self.fc2 = nn.Linear(H * W * C, HIDDEN), nn.Linear(HIDDEN, CLASSES)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(weights["conv_w"]))
            self.conv.bias.copy_(torch.from_numpy(weights["conv_b"]))
            for layer, name in ((self.fc1, "fc1"), (self.fc2, "fc2")):
                layer.weight.copy_(torch.from_numpy(weights[f"{name}_w"].T))
                layer.bias.copy_(torch.from_numpy(weights[f"{name}_b"]))
        self.eval()

    def forward(self, x):
        features = self.features(torch.relu(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(features.reshape(len(x), -1))))


def to_channels_first(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ``reshape_transform`` for a channels-last layer."""
    return tensor.permute(0, 3, 1, 2)


def grad_cam(model: nn.Module, layer: str, batch: np.ndarray, targets, double: bool = False) -> np.ndarray:
    """pytorch-grad-cam's Grad-CAM maps at a channels-last ``layer`` (float64 with ``double``)."""
    model = copy.deepcopy(model).double() if double else model
    tensor = torch.from_numpy(batch).double() if double else torch.from_numpy(batch)
    with GradCAM(model, [model.get_submodule(layer)], reshape_transform=to_channels_first) as cam:
        return cam(tensor, targets=[ClassifierOutputTarget(int(t)) for t in np.ravel(targets)])


def test_a_tf2onnx_vgg_head_is_read_channels_last_and_its_gradcam_matches(tmp_path):
    weights = head_weights()
    onnx.save(vgg_head_onnx(weights), tmp_path / "vgg_head.onnx")
    result = augment(tmp_path / "vgg_head.onnx", tmp_path / "explainer.onnx")
    assert result.layer == "features" and "no global pooling" in result.layer_reason
    described = result.record["layers"][0]
    assert described["reshape"] == "nhwc" and described["shape"] == [C, H, W]  # not [H, W, C]
    assert described["tail"]["channel_axis"] == 3
    # the convolution's own output, inside the same model, is channels first
    assert augment(tmp_path / "vgg_head.onnx", layer="relu").record["layers"][0]["reshape"] == "none"

    explainer = Explainer(tmp_path / "explainer.onnx", providers="cpu")
    model = TorchVggHead(weights)
    batch = np.random.default_rng(1).standard_normal((3, 3, H, W)).astype(np.float32)
    explained = explainer.explain(batch, method="gradcam", targets=[-1, 2, 4])
    with torch.no_grad():
        logits = model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(explained.logits, logits, rtol=1e-5, atol=1e-5)
    assert explained.targets[0] == logits[0].argmax() and list(explained.targets[1:]) == [2, 4]
    assert explained.maps.shape == (3, H, W)
    assert_two_tier(explained.maps, lambda double: grad_cam(model, "features", batch, explained.targets, double),
                    "tf2onnx VGG head")
    assert (explained.maps.max(axis=(1, 2)) > 0.99).all()  # real maps, not flat ones

    # what issue 1 saw: read as [C, h, w] = [H, W, C], the map is another one
    misread = augment(tmp_path / "vgg_head.onnx", tmp_path / "misread.onnx", reshape="none")
    assert misread.record["layers"][0]["shape"] == [H, W, C]
    striped = Explainer(tmp_path / "misread.onnx", providers="cpu").explain(
        batch, method="gradcam", targets=explained.targets).maps
    assert np.abs(striped - explained.maps).max() > 0.3


# -- the rules, one small graph each --------------------------------------------------------------
def probe_graph(layer_shape: tuple[int, int, int], *after: onnx.NodeProto, made_by=None, extra=()) -> onnx.ModelProto:
    """``image [N,3,H,W]`` → Flatten → MatMul → Reshape to ``layer_shape`` (a map nothing says the
    layout of) → ``made_by`` nodes (reading ``grid``, making ``layer``; default: Identity) → ``after``
    nodes (reading ``layer``, making ``scores [N, k]``). Random seeded weights; ``extra``:
    further initializers."""
    rng = np.random.default_rng(0)
    size = int(np.prod(layer_shape))
    nodes = [helper.make_node("Flatten", ["image"], ["flat_image"]),
             helper.make_node("MatMul", ["flat_image", "embed"], ["embedded"]),
             helper.make_node("Reshape", ["embedded", "grid_shape"], ["grid"]),
             *(made_by or [helper.make_node("Identity", ["grid"], ["layer"])]), *after]
    initializers = [numpy_helper.from_array(rng.standard_normal((3 * H * W, size)).astype(np.float32) * 0.1, "embed"),
                    numpy_helper.from_array(np.array([-1, *layer_shape], np.int64), "grid_shape"),
                    *[numpy_helper.from_array(np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f"
                                              else np.asarray(v), k) for k, v in extra]]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, H, W])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "probe", [image], [scores], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def dense_head(tensor: str, features: int) -> tuple[list, list]:
    """``tensor`` → Flatten → MatMul → ``scores``: a head that says nothing about layout."""
    weight = np.random.default_rng(1).standard_normal((features, 4)) * 0.1
    return ([helper.make_node("Flatten", [tensor], ["flat_layer"]),
             helper.make_node("MatMul", ["flat_layer", "head"], ["scores"])], [("head", weight)])


def conv_head(tensor: str, channels: int) -> tuple[list, list]:
    """``tensor`` (channels first) → Conv → GlobalAveragePool → Flatten → MatMul → ``scores``."""
    rng = np.random.default_rng(2)
    return ([helper.make_node("Conv", [tensor, "conv_w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat_pooled"]),
             helper.make_node("MatMul", ["flat_pooled", "head"], ["scores"])],
            [("conv_w", rng.standard_normal((4, channels, 3, 3)) * 0.3), ("head", rng.standard_normal((4, 4)))])


def case_read_by_transpose_then_conv():  # channels last: Transpose(0,3,1,2) feeds a Conv
    nodes, weights = conv_head("nchw", C)
    return probe_graph((H, W, C), helper.make_node("Transpose", ["layer"], ["nchw"], perm=[0, 3, 1, 2]), *nodes,
                       extra=weights), "nhwc"


def case_read_by_a_mean_over_axes_1_2():  # channels last: Keras' GlobalAveragePooling2D
    return probe_graph((H, W, C), helper.make_node("ReduceMean", ["layer", "axes"], ["pooled"], keepdims=0),
                       helper.make_node("MatMul", ["pooled", "head"], ["scores"]),
                       extra=[("axes", np.array([1, 2], np.int64)), ("head", np.ones((C, 4)))]), "nhwc"


def case_read_by_a_mean_over_axes_2_3():
    return probe_graph((C, H, W), helper.make_node("ReduceMean", ["layer", "axes"], ["pooled"], keepdims=0),
                       helper.make_node("MatMul", ["pooled", "head"], ["scores"]),
                       extra=[("axes", np.array([2, 3], np.int64)), ("head", np.ones((C, 4)))]), "none"


def case_read_by_a_conv():
    nodes, weights = conv_head("layer", C)
    return probe_graph((C, H, W), *nodes, extra=weights), "none"


def case_through_relu_and_a_residual_add():  # the layer reaches the Transpose only through layout-keeping ops
    nodes, weights = conv_head("nchw", C)
    return probe_graph((H, W, C), helper.make_node("Relu", ["layer"], ["relu"]),
                       helper.make_node("Add", ["relu", "layer"], ["sum"]),
                       helper.make_node("Transpose", ["sum"], ["nchw"], perm=[0, 3, 1, 2]), *nodes,
                       extra=weights), "nhwc"


def case_made_by_transpose_through_a_channels_last_batchnorm():  # open-nsfw: Conv → Transpose → Mul/Add by [C]
    made_by = [helper.make_node("Transpose", ["grid"], ["transposed"], perm=[0, 2, 3, 1]),
               helper.make_node("Mul", ["transposed", "scale"], ["scaled"]),
               helper.make_node("Add", ["scaled", "shift"], ["layer"])]
    nodes, weights = dense_head("layer", H * W * C)
    return probe_graph((C, H, W), *nodes, made_by=made_by,
                       extra=[*weights, ("scale", np.full(C, 2.0)), ("shift", np.full(C, 0.5))]), "nhwc"


def case_made_by_batchnorm():
    made_by = [helper.make_node("BatchNormalization", ["grid", "scale", "shift", "mean", "var"], ["layer"])]
    nodes, weights = dense_head("layer", H * W * C)
    return probe_graph((C, H, W), *nodes, made_by=made_by,
                       extra=[*weights, *[(n, np.full(C, v)) for n, v in
                                          (("scale", 2.0), ("shift", 0.5), ("mean", 0.1), ("var", 1.5))]]), "none"


LAYOUT_CASES = [case_read_by_transpose_then_conv, case_read_by_a_mean_over_axes_1_2, case_read_by_a_mean_over_axes_2_3,
                case_read_by_a_conv, case_through_relu_and_a_residual_add,
                case_made_by_transpose_through_a_channels_last_batchnorm, case_made_by_batchnorm]


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=lambda case: case.__name__[5:])
def test_layout_rules(case):
    model, layout = case()
    result = augment(model, layer="layer")
    described = result.record["layers"][0]
    assert described["reshape"] == layout
    assert described["shape"] == [C, H, W]  # every case's map has C channels, whichever side they are on


def silent_model() -> onnx.ModelProto:
    """A channels-last map made by a Reshape and read through a Relu by a Flatten: nothing says."""
    nodes, weights = dense_head("relu", H * W * C)
    return probe_graph((H, W, C), helper.make_node("Relu", ["layer"], ["relu"]), *nodes, extra=weights)


def contradictory_model() -> onnx.ModelProto:
    """A map made by Transpose(0,2,3,1) (channels last) and read by a Conv (channels first)."""
    nodes, weights = conv_head("layer", H)
    made_by = [helper.make_node("Transpose", ["grid"], ["layer"], perm=[0, 2, 3, 1])]
    return probe_graph((C, H, H), *nodes, made_by=made_by, extra=weights)


DISAGREE = "disagree (Transpose 'layer' says channels last; Conv 'conv' says channels first)"


@pytest.mark.parametrize("make,says", [(silent_model, "no convolution, pooling or transpose"),
                                       (contradictory_model, DISAGREE)], ids=["silent", "contradictory"])
def test_b_an_unknown_layout_is_refused_and_reshape_decides(make, says, tmp_path):
    onnx.save(make(), tmp_path / "model.onnx")
    with pytest.raises(AugmentError, match="could not be told from the graph") as refused:
        augment(tmp_path / "model.onnx", tmp_path / "explainer.onnx", layer="layer")
    message = str(refused.value)
    assert "\n" not in message and says in message
    assert "--reshape nhwc" in message and "--reshape none" in message
    only(tmp_path, "model.onnx")
    if make is silent_model:  # the default layer (the Relu after it) is refused the same way
        with pytest.raises(AugmentError, match="layer 'relu'.*--reshape nhwc"):
            augment(tmp_path / "model.onnx", tmp_path / "explainer.onnx")
    result = augment(tmp_path / "model.onnx", tmp_path / "explainer.onnx", layer="layer", reshape="nhwc")
    shape = [C, H, W] if make is silent_model else [C, H, H]
    assert result.record["layers"][0]["reshape"] == "nhwc" and result.record["layers"][0]["shape"] == shape
    assert Explainer(tmp_path / "explainer.onnx", providers="cpu").contract.layers[0].shape == tuple(shape)


# -- graphs that do not reproduce the model are never written ------------------------------------
def scale_weights(model: onnx.ModelProto, names=None) -> None:
    """Multiply float initializers with 2+ dimensions (or those in ``names``) by 1.5."""
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if (tensor.name in names) if names else (array.dtype.kind == "f" and array.ndim >= 2):
            tensor.CopyFrom(numpy_helper.from_array(array * np.asarray(1.5, array.dtype), tensor.name))


def break_a_transpose(model: onnx.ModelProto) -> None:
    """Give a 4-D Transpose the perm ``[1, 0]``: onnx.checker passes, onnxruntime cannot load it (what
    ``export swin_t`` wrote, issue 1)."""
    node = next(n for n in model.graph.node if n.op_type == "Transpose"
                and list(helper.get_attribute_value(n.attribute[0])) in ([0, 2, 3, 1], [0, 3, 1, 2]))
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("perm", [1, 0]))


TAMPERS = {"weights": (lambda m: scale_weights(m, {"fc2_w"}), "does not reproduce the model's output"),
           "unloadable": (break_a_transpose, "onnxruntime cannot load the augmented graph")}


@pytest.fixture
def tampered(monkeypatch, request):
    """Tamper with the augmented graph after it is built, before it is checked."""
    tamper, message = TAMPERS[request.param]
    build = augment_module._build

    def build_then_tamper(model, *args, **kwargs):
        described = build(model, *args, **kwargs)
        tamper(model)
        return described

    monkeypatch.setattr(augment_module, "_build", build_then_tamper)
    return message


@pytest.mark.parametrize("tampered", list(TAMPERS), indirect=True)
def test_c_a_graph_that_does_not_reproduce_the_model_is_not_written(tampered, tmp_path):
    onnx.save(vgg_head_onnx(head_weights()), tmp_path / "vgg_head.onnx")
    with pytest.raises(AugmentError, match=tampered) as refused:
        augment(tmp_path / "vgg_head.onnx", tmp_path / "explainer.onnx")
    assert "\n" not in str(refused.value)
    only(tmp_path, "vgg_head.onnx")
    with pytest.raises(AugmentError, match=tampered):  # without a file to write, the same check
        augment(tmp_path / "vgg_head.onnx")


@pytest.mark.parametrize("tampered", list(TAMPERS), indirect=True)
def test_d_cli_reports_a_bad_graph_in_one_line(tampered, tmp_path):
    onnx.save(vgg_head_onnx(head_weights()), tmp_path / "vgg_head.onnx")
    (tmp_path / "explainer.onnx").write_bytes(b"an older file")  # left as it was
    assert_one_line_error(cli("augment", tmp_path / "vgg_head.onnx", "-o", tmp_path / "explainer.onnx"), tampered)
    only(tmp_path, "vgg_head.onnx", "explainer.onnx")
    assert (tmp_path / "explainer.onnx").read_bytes() == b"an older file"


def test_d_cli_refuses_an_unknown_layout_in_one_line(tmp_path):
    onnx.save(silent_model(), tmp_path / "model.onnx")
    line = assert_one_line_error(cli("augment", tmp_path / "model.onnx", "-o", tmp_path / "explainer.onnx"),
                                 "could not be told from the graph", "--reshape nhwc", "--reshape none")
    assert f"[N, {H}, {W}, {C}]" in line
    only(tmp_path, "model.onnx")
    result = cli("augment", tmp_path / "model.onnx", "-o", tmp_path / "explainer.onnx", "--reshape", "nhwc")
    assert result.exit_code == 0 and f"[{C}, {H}, {W}]" in result.output, result.output
    onnx.save(vgg_head_onnx(head_weights()), tmp_path / "vgg.onnx")
    result = cli("augment", tmp_path / "vgg.onnx", "-o", tmp_path / "vgg_explainer.onnx")
    assert result.exit_code == 0 and f"layer 'features' [{C}, {H}, {W}]" in result.output, result.output


# -- export: torch modules with a channels-last layer ---------------------------------------------
class Regrid(nn.Module):
    """``[N,C,h,w]`` → ``[N,h,w,C]`` through a flat view: no permute of a 4-D tensor says so."""

    def forward(self, x):
        n, c, h, w = x.shape
        return x.flatten(2).transpose(1, 2).reshape(n, h, w, c)


class ChannelsLastNet(nn.Module):
    """conv → ReLU → ``grid`` (channels last) → flatten → linear. ``said``: ``grid`` is a permute
    (the layout can be read off it); otherwise a reshape of a flat view (it cannot)."""

    def __init__(self, said: bool, size: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, C, 3, padding=1)
        self.grid = Permute(0, 2, 3, 1) if said else Regrid()
        self.fc = nn.Linear(size * size * C, CLASSES)
        self.eval()

    def forward(self, x):
        return self.fc(self.grid(torch.relu(self.conv(x))).flatten(1))


def channels_last_net() -> nn.Module:
    """``onnxcam export test_layout:channels_last_net`` (the layout cannot be read off it)."""
    return ChannelsLastNet(said=False)


def test_e_export_refuses_a_layer_whose_layout_it_cannot_tell(tmp_path):
    from onnxcam.export import export_explainer

    with pytest.raises(ValueError, match="cannot tell where the channels of 'grid'") as refused:
        export_explainer(ChannelsLastNet(said=False), tmp_path / "x.onnx", ["grid"], (2, 3, 8, 8))
    assert "--reshape nhwc" in str(refused.value) and "\n" not in str(refused.value)
    only(tmp_path)


@pytest.mark.parametrize("said", [False, True], ids=["reshape-nhwc", "read-off-the-permute"])
def test_e_export_of_a_channels_last_layer_matches_pytorch_grad_cam(said, tmp_path):
    from onnxcam.export import export_explainer

    model = ChannelsLastNet(said)
    record = export_explainer(model, tmp_path / "x.onnx", ["grid"], (2, 3, 8, 8), reshape="auto" if said else "nhwc")
    assert record["layers"][0]["reshape"] == "nhwc" and record["layers"][0]["shape"] == [C, 8, 8]
    explainer = Explainer(tmp_path / "x.onnx", providers="cpu")
    batch = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)
    explained = explainer.explain(batch, method="gradcam", targets=[-1, 1, 3])
    assert_two_tier(explained.maps, lambda double: grad_cam(model, "grid", batch, explained.targets, double),
                    "channels-last export")
    assert (explained.maps.max(axis=(1, 2)) > 0.99).all()


def test_e_cli_export_asks_for_reshape_in_one_line(tmp_path):
    out = tmp_path / "x.onnx"
    arguments = ["export", "test_layout:channels_last_net", "--layer", "grid", "--input-size", 8, "-o", out]
    assert_one_line_error(cli(*arguments), "cannot tell where the channels of 'grid'", "--reshape nhwc",
                          "--reshape none", progress=True)
    only(tmp_path)
    result = cli(*arguments, "--reshape", "nhwc")
    assert result.exit_code == 0 and f"grid ({C}, 8, 8)" in result.output, result.output
    only(tmp_path, "x.onnx")


EXPORT_TAMPERS = {"weights": (scale_weights, ["the exported graph does not reproduce the model's output"]),
                  # its input sizes are symbolic: onnxruntime loads it and fails at the first run
                  "unloadable": (break_a_transpose, ["onnxruntime cannot load the exported graph",
                                                     "the exported graph does not run at batch 2"])}


@pytest.mark.parametrize("tamper", list(EXPORT_TAMPERS))
def test_c_export_does_not_write_a_graph_that_does_not_reproduce_the_model(tamper, monkeypatch, tmp_path):
    change, messages = EXPORT_TAMPERS[tamper]
    passes = explainer_module.onnx_passes
    drop = passes.drop_matmul_broadcast_expands

    def drop_then_tamper(model_proto):
        drop(model_proto)
        change(model_proto)

    monkeypatch.setattr(passes, "drop_matmul_broadcast_expands", drop_then_tamper)
    out = tmp_path / "x.onnx"
    result = cli("export", "test_layout:channels_last_net", "--layer", "grid", "--reshape", "nhwc",
                 "--input-size", 8, "-o", out)
    line = assert_one_line_error(result, "nothing was written", progress=True)
    assert any(message in line for message in messages), line
    only(tmp_path)


def test_fp16_export_is_checked_with_its_own_tolerance(tmp_path):
    from onnxcam.export import export_explainer

    record = export_explainer(ChannelsLastNet(said=True), tmp_path / "x.onnx", ["grid"], (2, 3, 8, 8), fp16=True)
    assert record["precision"] == "float16"
    only(tmp_path, "x.onnx")
    assert Explainer(tmp_path / "x.onnx", providers="cpu").contract.precision == "float16"


def test_swin_t_exports_its_channels_last_stage_and_matches_pytorch_grad_cam(tmp_path):
    """Issue 1's case: ``export swin_t --layer features.7`` (``[N, 7, 7, 768]``) recorded
    ``[7, 7, 768]`` and wrote a file onnxruntime could not load. Now the layout is read off the
    model (its MLP's ``linear``, the ``layer_norm`` after it), the graph loads, reproduces the
    logits, and its Grad-CAM is pytorch-grad-cam's with a permuting ``reshape_transform``."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None).eval()
    torch.save(model.state_dict(), tmp_path / "swin_t.pth")
    out = tmp_path / "swin_t.onnx"
    result = cli("export", "swin_t", "--layer", "features.7", "--weights", tmp_path / "swin_t.pth", "-o", out)
    assert result.exit_code == 0, result.output
    assert "layers: features.7 (768, 7, 7)" in result.output
    explainer = Explainer(out, providers="cpu")
    assert explainer.contract.layers[0].reshape == "nhwc"
    batch = np.random.default_rng(5).standard_normal((2, 3, 224, 224)).astype(np.float32)
    explained = explainer.explain(batch, method="gradcam", targets=[-1, 7])
    assert_two_tier(explained.maps, lambda double: grad_cam(model, "features.7", batch, explained.targets, double),
                    "swin_t features.7")


class LayerNormNet(nn.Module):
    """A ConvNeXt block in small: conv → (channels last) LayerNorm → linear → GELU → (channels first) → GAP →
    linear. Its explainer graph's backward reads LayerNormalization's mean and inverse-std outputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, C, 3, padding=1)
        self.norm, self.mix = nn.LayerNorm(C), nn.Linear(C, C)
        self.fc = nn.Linear(C, CLASSES)
        self.eval()

    def forward(self, x):
        y = self.mix(self.norm(self.conv(x).permute(0, 2, 3, 1)))
        return self.fc(nn.functional.gelu(y).permute(0, 3, 1, 2).mean(dim=(2, 3)))


def test_fp16_export_of_a_layer_norm_model_loads_and_keeps_its_gradients(tmp_path):
    """``export --fp16`` of a model with LayerNorm (ConvNeXt, Swin, ViT) wrote a graph onnxruntime refused: the
    converter retyped LayerNormalization's float32 mean and inverse-std outputs to float16. Now the norm stays in
    float32, and the float16 graph's gradient at the layer is torch's (float32 autograd) within float16 rounding
    (measured 5.5e-4 of the largest value; bound 2e-2)."""
    from onnxcam.export import export_explainer

    model = LayerNormNet()
    record = export_explainer(model, tmp_path / "x.onnx", ["conv"], (2, 3, 8, 8), fp16=True)
    assert record["precision"] == "float16"
    only(tmp_path, "x.onnx")
    explainer = Explainer(tmp_path / "x.onnx", providers="cpu")
    batch = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    layer = explainer.contract.layers[0]
    ours = explainer.run(batch, targets=[1, 2], output_names=[layer.gradient])[layer.gradient]
    kept = []
    handle = model.conv.register_forward_hook(lambda m, i, o: kept.append(o))
    logits = model(torch.from_numpy(batch))
    handle.remove()
    (reference,) = torch.autograd.grad(logits[[0, 1], [1, 2]].sum(), kept[0])
    scale = reference.abs().max().item()
    assert scale > 0
    assert np.abs(ours - reference.numpy()).max() <= 2e-2 * scale, np.abs(ours - reference.numpy()).max() / scale
