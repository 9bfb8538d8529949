"""Transformers (docs/explainer-graph.md, "Transformers"): the token layout read off the model at the exported
input size, attention probabilities and their gradients as graph outputs, attention rollout and gradient rollout.

Oracles: the token grid of the model's own patch embedding (a forward hook on its convolution); pytorch-grad-cam
with the reshape_transform that grid implies; an explicit torch transcription of each model's forward (attention
as ``softmax(QKᵀ/√d)`` with ``retain_grad``) for the probabilities and torch autograd for their gradients; and a
torch transcription of the two papers' rollout equations.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from onnxcam.export import export_explainer
from onnxcam.runtime import Explainer
from onnxcam.runtime.contract import ContractError, InputError
from onnxcam.runtime.targets import ClassTarget, SoftmaxTarget
from conftest import skimage_photo
from test_parity import assert_two_tier
from tolerances import assert_two_tier as assert_close


# -- the models ------------------------------------------------------------------------------------------------
def small_vit(size: int, seed: int = 0) -> nn.Module:
    """torchvision's ViT, small enough to export in seconds; ``size`` sets the grid (14×14 at 224, 24×24 at 384)."""
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(image_size=size, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zero-initialises it: every gradient would be 0
    return model.eval()


class TokenNet(nn.Module):
    """A ViT nobody named: a convolutional patch embedding onto a non-square grid, ``extra`` leading tokens (class +
    distillation as in DeiT, or class + registers), pre-norm blocks of ``nn.MultiheadAttention``, the class token
    read out. ``forward(x, kept)`` with a list runs attention as explicit maths and keeps the probabilities."""

    def __init__(self, extra: int, grid=(4, 6), dim: int = 32, heads: int = 4, blocks: int = 2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.patch = nn.Conv2d(3, dim, 8, stride=8)
        self.leading = nn.Parameter(torch.randn(1, extra, dim) * 0.5)
        self.position = nn.Parameter(torch.randn(1, extra + grid[0] * grid[1], dim) * 0.1)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2 * blocks))
        self.attention = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=True) for _ in range(blocks))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
                                  for _ in range(blocks))
        self.head = nn.Linear(dim, 10)
        self.eval()

    def tokens(self, x: torch.Tensor, kept: list | None = None) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.leading.expand(t.shape[0], -1, -1), t], dim=1) + self.position
        for index, (attention, mlp) in enumerate(zip(self.attention, self.mlps)):
            h = self.norms[2 * index](t)
            if kept is None:
                t = t + attention(h, h, h, need_weights=False)[0]
            else:
                t = t + explicit_attention(attention.in_proj_weight, attention.in_proj_bias, attention.out_proj,
                                           attention.num_heads, h, kept)
            t = t + mlp(self.norms[2 * index + 1](t))
        return t

    def forward(self, x: torch.Tensor, kept: list | None = None) -> torch.Tensor:
        return self.head(self.tokens(x, kept)[:, 0])


def explicit_attention(in_weight, in_bias, out_proj, heads: int, h: torch.Tensor, kept: list) -> torch.Tensor:
    """Multi-head self-attention written out: ``softmax(q kᵀ/√d) v``, the probabilities kept (``retain_grad``)."""
    n, count, dim = h.shape
    q, k, v = (part.reshape(n, count, heads, dim // heads).transpose(1, 2)
               for part in nn.functional.linear(h, in_weight, in_bias).chunk(3, dim=-1))
    probabilities = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // heads), dim=-1)
    probabilities.retain_grad()
    kept.append(probabilities)
    return out_proj((probabilities @ v).transpose(1, 2).reshape(n, count, dim))


def vit_explicit(model, x: torch.Tensor, kept: list) -> torch.Tensor:
    """torchvision ``VisionTransformer.forward`` transcribed, with explicit attention."""
    n = x.shape[0]
    t = model.conv_proj(x).flatten(2).transpose(1, 2)
    t = torch.cat([model.class_token.expand(n, -1, -1), t], dim=1) + model.encoder.pos_embedding
    for block in model.encoder.layers:
        h = block.ln_1(t)
        a = block.self_attention
        t = t + explicit_attention(a.in_proj_weight, a.in_proj_bias, a.out_proj, a.num_heads, h, kept)
        t = t + block.mlp(block.ln_2(t))
    return model.heads(model.encoder.ln(t)[:, 0])


def explicit_forward(model, x: torch.Tensor, kept: list) -> torch.Tensor:
    return model(x, kept) if isinstance(model, TokenNet) else vit_explicit(model, x, kept)


def patch_grid(model, batch: np.ndarray) -> tuple[int, int]:
    """The grid of the model's patch embedding at this input size, read off its convolution's output."""
    grids = []
    conv = model.patch if isinstance(model, TokenNet) else model.conv_proj
    handle = conv.register_forward_hook(lambda m, i, o: grids.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        model(torch.from_numpy(batch))
    handle.remove()
    return grids[0]


# (model, input size (H, W), token layer, expected leading tokens)
CASES = {
    "vit-224": (lambda: small_vit(224), (224, 224), "encoder.layers.encoder_layer_0", 1),
    "vit-384": (lambda: small_vit(384), (384, 384), "encoder.layers.encoder_layer_0", 1),
    "deit-style-2": (lambda: TokenNet(extra=2), (32, 48), "norms.2", 2),
    "registers-5": (lambda: TokenNet(extra=5, grid=(6, 4)), (48, 32), "norms.2", 5),
}


class Exported:
    def __init__(self, name: str, tmp: str):
        build, (height, width), self.layer, self.prefix = CASES[name]
        self.model = build()
        self.batch = np.random.default_rng(3).standard_normal((2, 3, height, width)).astype(np.float32)
        self.record = export_explainer(self.model, f"{tmp}/{name}.onnx", [self.layer], (2, 3, height, width),
                                       attention="all")
        self.explainer = Explainer(f"{tmp}/{name}.onnx", providers="cpu")
        self.grid = patch_grid(self.model, self.batch)


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory) -> Exported:
    return Exported(request.param, str(tmp_path_factory.mktemp(request.param)))


# -- item 1 and 5: the layout ----------------------------------------------------------------------------------
def test_the_token_layout_is_the_models_own(exported):
    """The record's token layout is the patch embedding's grid at the exported size (14×14 at 224, 24×24 at 384,
    4×6 and 6×4 non-square) after the model's own leading tokens (1; 2 as DeiT's class + distillation; 5 with
    registers); token layers and attention are laid out on it."""
    contract = exported.explainer.contract
    height, width = exported.grid
    assert contract.tokens.prefix == exported.prefix and contract.tokens.grid == (height, width)
    assert contract.layers[0].reshape == "tokens" and contract.layers[0].shape[1:] == (height, width)
    tokens = exported.prefix + height * width
    assert [block.shape[1:] for block in contract.attention] == [(tokens, tokens)] * 2
    assert contract.attention_complete


@pytest.mark.parametrize("method,oracle", [("gradcam", GradCAM), ("gradcam++", GradCAMPlusPlus)])
def test_grad_cam_on_a_token_layer_matches_pytorch_grad_cam(exported, method, oracle):
    """Grad-CAM and Grad-CAM++ at a token layer against pytorch-grad-cam with the reshape_transform the model's
    own grid implies (leading tokens dropped, the rest on (h, w) row-major): the two-tier rule."""
    prefix, (height, width) = exported.prefix, exported.grid

    def reshape(tensor):
        return tensor[:, prefix:].reshape(tensor.shape[0], height, width, -1).permute(0, 3, 1, 2)

    explained = exported.explainer.explain(exported.batch, method=method, targets=[-1, 3])

    def maps(double: bool) -> np.ndarray:
        model = exported.model.double() if double else exported.model.float()
        tensor = torch.from_numpy(exported.batch).to(torch.float64 if double else torch.float32)
        with oracle(model, [model.get_submodule(exported.layer)], reshape_transform=reshape) as cam:
            result = cam(tensor, targets=[ClassifierOutputTarget(int(t)) for t in explained.targets])
        exported.model.float()
        return result

    assert_two_tier(explained.maps, maps, f"{exported.record['architecture']} {method}")


# -- item 2: attention as an output ----------------------------------------------------------------------------
def test_attention_probabilities_and_their_gradients_equal_torch(exported):
    """Every block's ``attention_i`` equals ``softmax(QKᵀ/√d)`` of the transcribed forward (the exporter
    materialised it from ``nn.MultiheadAttention``'s fused kernel), and ``attention_gradient_i`` equals torch
    autograd's gradient of the target's logit w.r.t. it, for two targets an image (top class and class 3)."""
    blocks = exported.explainer.contract.attention
    names = [b.probabilities for b in blocks] + [b.gradient for b in blocks]
    ours = exported.explainer.run(exported.batch, targets=[[-1, 3]] * 2, output_names=names)

    def reference(double: bool, at=exported.batch):
        model = exported.model.double() if double else exported.model.float()
        kept: list = []
        logits = explicit_forward(model, torch.from_numpy(at).to(torch.float64 if double else torch.float32), kept)
        top = logits.argmax(dim=1)
        exported.model.float()
        probabilities = [k.detach().numpy() for k in kept]
        gradients = []
        for class_index in (top, torch.tensor([3, 3])):
            for k in kept:
                k.grad = None
            logits[torch.arange(2), class_index].sum().backward(retain_graph=True)
            gradients.append([k.grad.numpy().copy() for k in kept])
        # rows image-major: (image 0, top), (image 0, class 3), (image 1, top), …
        rows = [np.stack([gradients[t][i][n] for n in range(2) for t in range(2)]) for i in range(len(kept))]
        return probabilities, rows

    probabilities, gradients = reference(False)
    for index, block in enumerate(blocks):
        rows = np.repeat(probabilities[index], 2, axis=0)  # the K rows of an image are equal
        np.testing.assert_allclose(ours[block.probabilities], rows, atol=1e-5)
        np.testing.assert_allclose(ours[block.probabilities].sum(axis=-1), 1, atol=1e-5)
        assert_close(ours[block.gradient], gradients[index], lambda index=index: reference(True)[1][index],
                     relative=True, what=f"{block.name} attention gradient")


# -- item 4: rollouts against the papers -----------------------------------------------------------------------
def abnar_rollout(probabilities: list[torch.Tensor], prefix: int, fusion: str, discard: float) -> torch.Tensor:
    """Abnar & Zuidema (2020), eq. 1, transcribed: heads fused, the lowest ``discard`` share zeroed (except the
    class token's own entry, as in jacobgil/vit-explain), ``Ã = (A + I)/2`` with rows renormalised (the paper's
    row-stochastic matrix; vit-explain divides along the other axis, its issue #16), ``R = Ã_L ⋯ Ã_1``."""
    count = probabilities[0].shape[-1]
    result = torch.eye(count, dtype=torch.float64).expand(probabilities[0].shape[0], count, count)
    for block in probabilities:
        block = block.double()
        fused = {"mean": block.mean(dim=1), "max": block.amax(dim=1), "min": block.amin(dim=1)}[fusion]
        flat = fused.reshape(fused.shape[0], -1).clone()
        lowest = flat.topk(int(flat.shape[1] * discard), dim=-1, largest=False).indices
        for row in range(flat.shape[0]):
            drop = lowest[row][lowest[row] != 0]
            flat[row, drop] = 0
        a = (flat.reshape(fused.shape) + torch.eye(count, dtype=torch.float64)) / 2
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
    return result[:, 0, prefix:]


def chefer_rollout(probabilities: list[torch.Tensor], gradients: list[torch.Tensor], prefix: int) -> torch.Tensor:
    """Chefer, Gur & Wolf (ICCV 2021), eqs. 5–6 for self-attention, transcribed: ``Ā = E_h[(∇A ⊙ A)⁺]``,
    ``R ← R + Ā·R`` from ``R = I``; the class token's row over the patches."""
    count = probabilities[0].shape[-1]
    result = torch.eye(count, dtype=torch.float64).expand(probabilities[0].shape[0], count, count)
    for block, gradient in zip(probabilities, gradients):
        weighted = (gradient.double() * block.double()).clamp(min=0).mean(dim=1)
        result = result + weighted @ result
    return result[:, 0, prefix:]


def torch_attention(exported: Exported, score) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Probabilities and ∂score/∂probabilities of the transcribed model (float32, torch autograd)."""
    kept: list = []
    logits = explicit_forward(exported.model, torch.from_numpy(exported.batch), kept)
    score(logits).backward()
    return [k.detach() for k in kept], [k.grad for k in kept]


@pytest.mark.parametrize("fusion,discard", [("mean", 0.0), ("max", 0.9), ("min", 0.5)])
def test_attention_rollout_is_the_papers(exported, fusion, discard):
    """``attention-rollout`` (raw map: the class token's row on the grid) equals the torch transcription of Abnar
    & Zuidema's equations, with each head fusion and discard ratio; the map is that, min-max normalised and
    resized to the input (bilinear, OpenCV's), as every method's."""
    explained = exported.explainer.explain(exported.batch, method="attention-rollout",
                                           options={"head_fusion": fusion, "discard_ratio": discard})
    probabilities, _ = torch_attention(exported, lambda logits: logits.sum())
    truth = abnar_rollout(probabilities, exported.prefix, fusion, discard).numpy()
    raw = explained.layer_maps["attention"]
    assert raw.shape == (2, *exported.grid)
    np.testing.assert_allclose(raw.reshape(2, -1), truth, rtol=1e-4, atol=1e-6)
    height, width = exported.batch.shape[2:]
    for image, grid in enumerate(raw):  # the post-processing: checked on our raw map, compared above
        grid = (grid - grid.min()) / (grid.max() - grid.min() + 1e-7)
        expected = cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(explained.maps[image], expected, atol=1e-4)


@pytest.mark.parametrize("kind", ["class", "softmax"])
def test_gradient_rollout_is_the_papers_for_every_target_kind(exported, kind):
    """``gradient-rollout`` equals the torch transcription of Chefer et al.'s equations with the gradients of the
    target's own score: a class logit, and a softmax probability (the same graph, another seed)."""
    classes = np.array([3, 7])
    target = ClassTarget(classes) if kind == "class" else SoftmaxTarget(classes)
    explained = exported.explainer.explain(exported.batch, method="gradient-rollout", targets=target)
    if kind == "class":
        score = lambda logits: logits[torch.arange(2), torch.from_numpy(classes)].sum()  # noqa: E731
    else:
        score = lambda logits: logits.softmax(dim=1)[torch.arange(2), torch.from_numpy(classes)].sum()  # noqa: E731
    probabilities, gradients = torch_attention(exported, score)
    truth = chefer_rollout(probabilities, gradients, exported.prefix).numpy()
    raw = explained.layer_maps["attention"].reshape(2, -1)
    assert np.abs(truth).max() > 0
    np.testing.assert_allclose(raw, truth, rtol=1e-3, atol=1e-4 * np.abs(truth).max())


# -- item 5: a known answer --------------------------------------------------------------------------------------
class CornerViT(nn.Module):
    """The small ViT at 224 (a 14×14 grid) with its head replaced by a linear read-out of the mean of the 3×3
    patch tokens in one corner only: the score depends on that corner's tokens and nothing else reads out."""

    def __init__(self, corner: str):
        super().__init__()
        self.vit = small_vit(224)
        torch.manual_seed(1)
        self.head = nn.Linear(32, 10)
        span = range(0, 3) if corner == "top-left" else range(11, 14)
        self.register_buffer("index", torch.tensor([1 + r * 14 + c for r in span for c in span]))
        self.eval()

    def forward(self, x):
        vit = self.vit
        t = vit._process_input(x)
        t = torch.cat([vit.class_token.expand(t.shape[0], -1, -1), t], dim=1)
        return self.head(vit.encoder(t)[:, self.index].mean(dim=1))


@pytest.mark.parametrize("corner", ["top-left", "bottom-right"])
def test_maps_peak_in_the_corner_the_head_reads(tmp_path, corner):
    """Where the answer is known: the gradient is zero outside the 3×3 corner tokens the head reads, so the maps
    that follow the gradient's support, HiResCAM and LayerCAM (gradient ⊙ activation) of the last block's output
    and the gradient rollout (reading the rows of the tokens the score reads, ``query="output"``), must peak in
    that 48×48-pixel corner with most of the map in its quarter of the image: no stripes, no transposed or wrapped
    grid (top-left and bottom-right are told apart, the same model and photos otherwise).

    Grad-CAM is not held to it: its map is ``Σ_c mean(g_c)·A_c(token)``, the gradient's mean projected on every
    token's activation, which a per-token read-out does not localise (measured share of the map in the corner's
    quarter: 0.26–0.34 top-left, 0.05–0.32 bottom-right, chance 0.25); its grid is held to pytorch-grad-cam's
    above, non-square grids included."""
    from onnxcam.runtime import load_batch

    model = CornerViT(corner)
    layer = "vit.encoder.layers.encoder_layer_1"
    export_explainer(model, tmp_path / "corner.onnx", [layer], (2, 3, 224, 224), attention="all")
    explainer = Explainer(tmp_path / "corner.onnx", providers="cpu")
    batch, _ = load_batch([skimage_photo("chelsea.png"), skimage_photo("coffee.png")], explainer.contract)
    inside = (slice(0, 48), slice(0, 48)) if corner == "top-left" else (slice(176, 224), slice(176, 224))
    quarter = (slice(0, 112), slice(0, 112)) if corner == "top-left" else (slice(112, 224), slice(112, 224))
    maps = {method: explainer.explain(batch, method).maps for method in ("hirescam", "layercam")}
    maps["gradient-rollout"] = explainer.explain(batch, "gradient-rollout", options={"query": "output"}).maps
    for name, images in maps.items():
        for image in images:
            peak = np.unravel_index(np.argmax(image), image.shape)
            assert inside[0].start <= peak[0] < inside[0].stop and inside[1].start <= peak[1] < inside[1].stop, \
                (name, corner, peak)
            assert image[quarter].sum() > 0.9 * image.sum(), (name, corner, image[quarter].sum() / image.sum())


# -- item 7: bad input -------------------------------------------------------------------------------------------
def test_rollout_and_attention_refuse_what_the_graph_cannot_give(tmp_path):
    """One-line errors: rollout on a graph without attention or with some blocks only, a block out of range or
    unknown, an unknown method option or value."""
    model = small_vit(64)
    layer = ["encoder.layers.encoder_layer_1"]
    export_explainer(model, tmp_path / "plain.onnx", layer, (2, 3, 64, 64))
    export_explainer(model, tmp_path / "one.onnx", layer, (2, 3, 64, 64), attention=layer)
    export_explainer(model, tmp_path / "all.onnx", layer, (2, 3, 64, 64), attention="all")
    batch = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    plain, one, full = (Explainer(tmp_path / f"{name}.onnx", providers="cpu") for name in ("plain", "one", "all"))
    cases = [
        (ContractError, "--attention all", lambda: plain.explain(batch, "gradient-rollout")),
        (ContractError, "--attention all", lambda: plain.attention(batch)),
        (ContractError, "1 of the model's blocks", lambda: one.explain(batch, "attention-rollout")),
        (ContractError, "out of range", lambda: one.attention(batch, [3])),
        (ContractError, "not in this graph", lambda: one.attention(batch, ["encoder.layers.encoder_layer_0"])),
        (InputError, "no option 'heads'", lambda: full.explain(batch, "attention-rollout", options={"heads": "max"})),
        (InputError, "head fusion 'median'", lambda: full.explain(batch, "attention-rollout",
                                                                  options={"head_fusion": "median"})),
        (InputError, "discard ratio 1", lambda: full.explain(batch, "attention-rollout", options={"discard_ratio": 1})),
        (InputError, "query 'patches'", lambda: full.explain(batch, "gradient-rollout", options={"query": "patches"})),
    ]
    for error, text, call in cases:
        with pytest.raises(error, match=text) as raised:
            call()
        assert "\n" not in str(raised.value)
    assert one.contract.attention[0].name == "encoder.layers.encoder_layer_1.self_attention"
    assert one.attention(batch)["encoder.layers.encoder_layer_1.self_attention"].shape == (1, 2, 17, 17)


def test_export_refuses_attention_it_cannot_lay_on_the_image(tmp_path):
    """``--attention`` on a CNN (no attention) and on Swin (windowed attention, ``[N·windows, heads, 16, 16]``: not
    a token × token matrix of the image) is one error and no file."""
    from onnxcam.export import export_explainer

    torch.manual_seed(0)
    swin = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2], num_heads=[2],
                                              window_size=[4, 4], num_classes=10).eval()
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    for model, layer, text in ((swin, "features.0", "windowed"), (cnn, "0", "runs no attention")):
        with pytest.raises(ValueError, match=text):
            export_explainer(model, tmp_path / "x.onnx", [layer], (2, 3, 32, 32), attention="all")
        assert not list(tmp_path.iterdir())


def tiny_vit() -> nn.Module:
    """``module:factory`` for the command-line test: the small ViT at 64 px (a 4×4 grid)."""
    return small_vit(64)


def test_the_command_line_exports_attention_and_explains_with_rollouts(tmp_path):
    """``onnxcam export … --attention all`` writes the attention of every block; ``onnxcam explain -m
    gradient-rollout -m attention-rollout --head-fusion max`` writes one overlay per method, and the rollout map
    behind it is the Python API's with the same option (an option no chosen method takes is refused)."""
    from click.testing import CliRunner

    from onnxcam.runtime import load_batch
    from onnxcam.runtime.cli import main

    def cli(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    out = tmp_path / "vit.onnx"
    result = cli("export", "test_transformers:tiny_vit", "--layer", "encoder.layers.encoder_layer_1",
                 "--input-size", "64", "--attention", "all", "-o", out)
    assert result.exit_code == 0, result.output
    assert "attention of 2 block(s)" in result.output
    result = cli("info", out)
    assert "tokens: 1 leading + 4x4 patch grid" in result.output
    assert "attention: 2 block(s), 2 heads x 17x17 tokens" in result.output and "gradient-rollout" in result.output
    photo = skimage_photo("chelsea.png")
    result = cli("explain", out, photo, "-m", "gradient-rollout", "-m", "attention-rollout", "--head-fusion", "max",
                 "--save-maps", "--provider", "cpu", "-o", tmp_path / "maps")
    assert result.exit_code == 0, result.output
    explainer = Explainer(out, providers="cpu")
    batch, _ = load_batch([photo], explainer.contract)
    expected = explainer.explain(batch, "attention-rollout", options={"head_fusion": "max"}).maps[0]
    assert not np.allclose(expected, explainer.explain(batch, "attention-rollout").maps[0], atol=1e-3)
    np.testing.assert_allclose(np.load(tmp_path / "maps" / "chelsea.attention-rollout.npy"), expected, atol=1e-6)
    assert (tmp_path / "maps" / "chelsea.gradient-rollout.png").is_file()
    result = cli("explain", out, photo, "-m", "gradcam", "--head-fusion", "max", "-o", tmp_path / "none")
    assert result.exit_code == 2 and "--head-fusion applies to none of the chosen methods" in result.output
    assert not (tmp_path / "none").exists()
