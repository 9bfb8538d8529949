"""Transformers whose stages are spatial grids (issue "Transformers", item 1 and the Swin half of item 5).

torchvision's ``swin_t`` and ``swin_v2_t`` keep every stage channels last (``[N, h, w, C]``); ``maxvit_t`` keeps
``[N, C, h, w]``. Each is built with seeded random weights (``torch.manual_seed(0)``, ``weights=None``, eval) and
exported once at 224 px at two layers: the last stage's spatial output (Swin: ``norm``, ``[N, 7, 7, 768]``;
MaxViT: ``blocks.3``, ``[N, 512, 7, 7]``, the last tensor before the classifier pools it) and an inner stage
(Swin: ``features.5``, ``[N, 14, 14, 384]``; MaxViT: ``blocks.2``, ``[N, 256, 14, 14]``).

- the record: each layer's layout (``nhwc`` for Swin, ``none`` for MaxViT) and ``[C, h, w]`` against the tensor
  an eager forward hook sees on the torch model; the graph's activation and gradient at each layer against
  torch's own (the hook's tensor, autograd of the target logit), in the layout the record names. Grad-CAM cannot
  catch a misplaced gradient (its weights are the gradient's spatial mean), so the gradient is compared directly;
- Grad-CAM and Grad-CAM++ maps at each layer against pytorch-grad-cam (the oracle) with the equivalent
  ``reshape_transform`` (Swin: ``[N, h, w, C]`` → ``[N, C, h, w]``; MaxViT: none), two tiers
  (``tolerances.assert_two_tier``: float64 truth = pytorch-grad-cam on ``model.double()``);
- Swin's grid positions against a model whose answer is known (``SwinCorners``): a read-out of one corner
  region's tokens is explained where only that region's tokens are left; its map lies in that corner, and in no
  other, for each of the four corners (a transposed grid swaps two of them, a wrapped one scatters them).

The inputs are two real photos (scikit-image's ``chelsea`` and ``coffee``) preprocessed as the graph's record says.
"""

from __future__ import annotations

import copy
import gc
import hashlib

import numpy as np
import pytest
import torch
import torchvision
from conftest import skimage_photo
from onnxcam.runtime import Explainer, load_batch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from tolerances import Throws, assert_two_tier, nudged
from torch import nn

SIZE = 224
ORACLES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
# architecture → (the layers exported into its one graph, inner stage first; the layout of both)
MODELS = {
    "swin_t": (["features.5", "norm"], "nhwc"),
    "swin_v2_t": (["features.5", "norm"], "nhwc"),
    "maxvit_t": (["blocks.2", "blocks.3"], "none"),
}
TARGETS = [-1, 7]  # image 0: its top class; image 1: class 7


def to_channels_first(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ``reshape_transform`` for Swin's channels-last stages."""
    return tensor.permute(0, 3, 1, 2)


def reshape_transform(layout: str):
    return to_channels_first if layout == "nhwc" else None


def build(architecture: str) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(architecture, weights=None).eval()


class Case:
    """One model exported once at its layers (all in one graph), with its float64 copy and pytorch-grad-cam's
    results, made on first use."""

    def __init__(self, name: str, folder):
        from onnxcam.export import export_explainer

        make, self.layers, self.layout = spec(name)
        self.name, self.model = name, make()
        path = folder / f"{name}.onnx"
        export_explainer(self.model, path, self.layers, input_shape=(2, 3, SIZE, SIZE), architecture=name)
        self.explainer = Explainer(path, providers="cpu")
        self._double: nn.Module | None = None
        self.oracle_results: dict[tuple, dict] = {}

    @property
    def double(self) -> nn.Module:
        if self._double is None:
            self._double = copy.deepcopy(self.model).double()
        return self._double


@pytest.fixture(scope="module")
def case(request, tmp_path_factory):
    """The ``Case`` named by the test's parameter. Module scope: pytest runs each case's tests together and
    drops a case (its sessions, about 0.7 GB each for MaxViT) before it makes the next."""
    made = Case(request.param, tmp_path_factory.mktemp(request.param))
    yield made
    made.__dict__.clear()
    gc.collect()


_PHOTOS: dict = {}


def photos(explainer: Explainer) -> np.ndarray:
    """``chelsea`` and ``coffee`` preprocessed as the graph's record says, ``[2, 3, SIZE, SIZE]``."""
    key = repr(explainer.contract.preprocessing)
    if key not in _PHOTOS:
        paths = [skimage_photo("chelsea.png"), skimage_photo("coffee.png")]
        _PHOTOS[key], _ = load_batch(paths, explainer.contract)
    assert _PHOTOS[key].shape == (2, 3, SIZE, SIZE)
    return _PHOTOS[key]


# -- eager torch: what the hook sees, and torch autograd -------------------------------------------------------
def torch_layers(model: nn.Module, layers, layout: str, batch: np.ndarray, targets) -> dict[str, tuple]:
    """Per layer, (activation, gradient of ``logit[target]``) as torch computes them (in ``model``'s precision),
    put channels first the way the record's ``layout`` says: ``[N, C, h, w]`` numpy arrays."""
    kept = []
    handles = [model.get_submodule(name).register_forward_hook(lambda module, args, out: kept.append(out))
               for name in layers]
    try:
        parameter = next(model.parameters())
        logits = model(torch.from_numpy(batch).to(parameter.dtype))
    finally:
        for handle in handles:
            handle.remove()
    assert len(kept) == len(layers)
    score = logits[torch.arange(len(batch)), torch.as_tensor(np.asarray(targets, np.int64))].sum()
    gradients = torch.autograd.grad(score, kept)
    channels_first = to_channels_first if layout == "nhwc" else (lambda t: t)
    return {name: (channels_first(a).detach().numpy(), channels_first(g).numpy())
            for name, a, g in zip(layers, kept, gradients)}


def hooked_shapes(model: nn.Module, layers) -> dict[str, tuple]:
    """The shape (without the batch) of each layer's output in an eager forward pass at ``SIZE``."""
    shapes = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda module, args, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))) for name in layers]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, SIZE, SIZE))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


# -- the oracle: pytorch-grad-cam -------------------------------------------------------------------------------
def pytorch_grad_cam(case: Case, method: str, batch: np.ndarray, targets, double: bool = False) -> dict:
    """pytorch-grad-cam's ``method`` on the case's model (``double``: its float64 copy) with
    ``target_layers=case.layers``, in one forward/backward pass (cached) → per layer (its map, its raw map). A
    layer's map is ``aggregate_multi_layers`` of that layer's map alone: what pytorch-grad-cam returns with
    ``target_layers=[layer]`` (the hooks of the other layer change no value). The raw map is ``get_cam_image``'s
    weighted sum before ReLU and normalisation."""
    key = (method, double, hashlib.sha1(np.ascontiguousarray(batch)).hexdigest(), tuple(int(t) for t in targets))
    if key not in case.oracle_results:
        model, layers = case.double if double else case.model, case.layers
        class Recording(ORACLES[method]):
            def get_cam_image(self, *args, **kwargs):
                cam = super().get_cam_image(*args, **kwargs)
                self.raw_maps.append(np.asarray(cam))
                return cam

            def compute_cam_per_layer(self, *args, **kwargs):
                self.layer_maps = super().compute_cam_per_layer(*args, **kwargs)
                return self.layer_maps

        with Recording(model, [model.get_submodule(name) for name in layers],
                       reshape_transform=reshape_transform(case.layout)) as cam:
            cam.raw_maps = []
            tensor = torch.from_numpy(batch).to(torch.float64 if double else torch.float32)
            cam(tensor, targets=[ClassifierOutputTarget(int(t)) for t in targets])
            maps = [cam.aggregate_multi_layers([one]) for one in cam.layer_maps]
            raw = list(cam.raw_maps)
        model.zero_grad(set_to_none=True)
        case.oracle_results[key] = dict(zip(layers, zip(maps, raw)))
    return case.oracle_results[key]


# -- 1. the record, the activations and the gradients ------------------------------------------------------------
@pytest.mark.parametrize("case", list(MODELS), indirect=True)
def test_layout_and_grid_are_the_models_and_the_tensors_are_torchs(case):
    """The record says ``nhwc`` at Swin's stages and ``none`` at MaxViT's, and each layer's ``[C, h, w]`` is the
    grid an eager forward hook sees on the torch model (channels moved first where the layout is ``nhwc``), not a
    number written into the test. Oracle for the tensors: torch itself. The graph's ``activation_i`` is the hook's
    tensor and its ``gradient_i`` is torch autograd's ∂logit[target]/∂layer, both put channels first as the record
    says (two tiers, relative to the largest value; float64 truth: the same on ``model.double()``): a transposed,
    flipped or wrapped grid of either would be another tensor."""
    model, explainer, layers, layout, architecture = case.model, case.explainer, case.layers, case.layout, case.name
    hooked = hooked_shapes(model, layers)
    assert [layer.name for layer in explainer.contract.layers] == layers
    for layer in explainer.contract.layers:
        seen = hooked[layer.name]
        assert len(seen) == 3, f"{layer.name}: {seen} is not a grid"
        expected = (seen[2], seen[0], seen[1]) if layout == "nhwc" else seen
        assert layer.reshape == layout, (layer.name, layer.reshape)
        assert layer.shape == expected, (layer.name, layer.shape, expected)
    # the inner stage's grid is twice the last one's (patch merging / MaxViT's strided block), and both are grids
    (_, h_inner, w_inner), (_, h_last, w_last) = (layer.shape for layer in explainer.contract.layers)
    assert (h_inner, w_inner) == (2 * h_last, 2 * w_last) and h_last == w_last > 1

    batch = photos(explainer)
    with torch.no_grad():
        logits = model(torch.from_numpy(batch)).numpy()
    targets = [int(logits[0].argmax()), TARGETS[1]]
    names = [name for layer in explainer.contract.layers for name in (layer.activation, layer.gradient)]
    ours = explainer.run(batch, targets=targets, output_names=names)
    reference = torch_layers(model, layers, layout, batch, targets)
    throws = Throws(lambda at: torch_layers(model, layers, layout, at, targets), batch)  # float32, nudged inputs
    truths: dict = {}

    def truth():
        if not truths:
            truths.update(torch_layers(case.double, layers, layout, batch, targets))
        return truths

    for layer in explainer.contract.layers:
        for index, (kind, name) in enumerate((("activation", layer.activation), ("gradient", layer.gradient))):
            assert ours[name].shape == (len(batch), *layer.shape)
            assert np.abs(reference[layer.name][index]).max() > 0

            def pick(result, layer_name=layer.name, index=index):
                return result[layer_name][index]
            assert_two_tier(ours[name], pick(reference), lambda pick=pick: pick(truth()), relative=True,
                            alternatives=lambda pick=pick: throws(pick), what=f"{architecture} {kind} of {layer.name}")


# -- 2. Grad-CAM and Grad-CAM++ against pytorch-grad-cam --------------------------------------------------------
@pytest.mark.parametrize("method", list(ORACLES))
@pytest.mark.parametrize("case", list(MODELS), indirect=True)
def test_maps_match_pytorch_grad_cam(case, method):
    """``explain(method, layers=[layer])`` at each layer against pytorch-grad-cam's ``GradCAM`` /
    ``GradCAMPlusPlus`` with ``target_layers=[layer]`` and the equivalent ``reshape_transform`` (Swin: permute
    ``[N, h, w, C]`` → ``[N, C, h, w]``; MaxViT: none): the maps (max abs 1e-4, else float64 truth:
    pytorch-grad-cam on ``model.double()``, with pytorch-grad-cam on ulp-nudged batches as further float32
    throws) and each layer's raw map before ReLU and normalisation (the same, relative to its largest value).
    Targets: image 0's top class, class 7 for image 1."""
    explainer, architecture = case.explainer, case.name
    batch = photos(explainer)
    for name in case.layers:
        explained = explainer.explain(batch, method=method, targets=TARGETS, layers=[name])
        targets = explained.targets
        assert targets[0] == explained.logits[0].argmax() and targets[1] == TARGETS[1]
        # a real map for at least one image; a raw map that is negative everywhere (measured: swin_v2_t
        # Grad-CAM++ at features.5, image 0) is all zero after ReLU, in pytorch-grad-cam too: its raw map decides
        assert explained.maps.shape == (2, SIZE, SIZE) and explained.maps.max() > 0.99

        def oracle(index, double=False, at=batch, name=name, targets=targets):
            return pytorch_grad_cam(case, method, at, targets, double)[name][index]
        what = f"{architecture} {method} {name}"
        assert explained.maps.dtype == np.float32 and explained.maps.min() >= 0 and explained.maps.max() <= 1
        assert_two_tier(explained.maps, oracle(0), lambda: oracle(0, double=True), what=what,
                        alternatives=lambda: (oracle(0, at=at) for at in nudged(batch)))
        assert_two_tier(explained.layer_maps[name], oracle(1), lambda: oracle(1, double=True), relative=True,
                        alternatives=lambda: (oracle(1, at=at) for at in nudged(batch)), what=f"{what} raw map")


# -- 3. Swin's grid positions: a read-out of one corner ---------------------------------------------------------
CORNERS = {"top_left": (0, 0), "top_right": (0, 1), "bottom_left": (1, 0), "bottom_right": (1, 1)}
SPAN = 2 / 7  # a corner region is 2 × 2 tokens of Swin's last 7 × 7 grid (4 × 4 of the 14 × 14 one before it)
CLASSES = 10


def region(corner: str, grid: int) -> tuple[slice, slice]:
    """The rows and columns of ``corner``'s region in a ``grid × grid`` token grid."""
    span = round(SPAN * grid)
    down, right = CORNERS[corner]
    return (slice(grid - span, grid) if down else slice(0, span),
            slice(grid - span, grid) if right else slice(0, span))


class Region(nn.Module):
    """Keeps the tokens of one corner region of a channels-last grid ``[N, grid, grid, C]``, zeroes the others."""

    def __init__(self, corner: str, grid: int):
        super().__init__()
        mask = torch.zeros(grid, grid, 1)
        mask[region(corner, grid)] = 1
        self.register_buffer("mask", mask)

    def forward(self, x):
        return x * self.mask


class SwinCorners(nn.Module):
    """``swin_t`` (seeded random weights) with its head replaced: for each corner, a linear read-out
    (``CLASSES`` scores, one weight matrix for all corners, no bias) of the mean of that corner region's final
    tokens, and nothing else. Output ``[N, 4·CLASSES]``: classes ``k·CLASSES …`` read corner ``k`` of ``CORNERS``.

    Each corner has its own path from ``features.5`` on: ``inner.<corner>`` keeps the region of the 14 × 14 stage
    (4 × 4 tokens), Swin's last stage and ``norm`` run on it, ``outer.<corner>`` keeps the region of the 7 × 7
    tokens (2 × 2). The corners go through the last stage side by side, stacked on the batch axis: one pass,
    and no mixing between them, since Swin mixes tokens only within an image. A corner's read-out thus depends
    on its own two layers only."""

    def __init__(self):
        super().__init__()
        swin = build("swin_t")
        self.features, self.stage, self.norm = swin.features[:6], swin.features[6:], swin.norm
        self.inner = nn.ModuleDict({corner: Region(corner, 14) for corner in CORNERS})
        self.outer = nn.ModuleDict({corner: Region(corner, 7) for corner in CORNERS})
        torch.manual_seed(1)
        self.readout = nn.Linear(swin.head.in_features, CLASSES, bias=False)
        self.eval()

    def forward(self, x):
        grid = self.features(x)  # [N, 14, 14, 384]
        kept = torch.stack([self.inner[corner](grid) for corner in CORNERS], dim=1)  # [N, 4, 14, 14, 384]
        tokens = self.norm(self.stage(kept.flatten(0, 1))).unflatten(0, (-1, len(CORNERS)))  # [N, 4, 7, 7, 768]
        return torch.cat([self.readout(self.outer[corner](tokens[:, k]).mean(dim=(1, 2)))
                          for k, corner in enumerate(CORNERS)], dim=1)


CORNERS_CASE = "swin_t_corners"
CORNER_LAYERS = [f"{level}.{corner}" for level in ("inner", "outer") for corner in CORNERS]


def spec(name: str) -> tuple:
    """A case's (maker of its torch model, its layers, their layout)."""
    if name == CORNERS_CASE:
        return SwinCorners, CORNER_LAYERS, "nhwc"
    layers, layout = MODELS[name]
    return (lambda: build(name)), layers, layout


def pixel_extent(corner: str, grid: int) -> tuple[slice, slice]:
    """``corner``'s region in input pixels."""
    token = SIZE // grid
    rows, cols = region(corner, grid)
    return slice(rows.start * token, rows.stop * token), slice(cols.start * token, cols.stop * token)


def quadrant(corner: str) -> tuple[slice, slice]:
    down, right = CORNERS[corner]
    half = SIZE // 2
    return slice(half, SIZE) if down else slice(0, half), slice(half, SIZE) if right else slice(0, half)


@pytest.mark.parametrize("method", list(ORACLES))
@pytest.mark.parametrize("case", [CORNERS_CASE], indirect=True)
def test_swin_corner_readout_is_explained_in_its_corner(case, method):
    """Oracle: the model's construction. A Grad-CAM map is ReLU(Σ_c α_c A_c(h, w)) with α_c the gradient's
    spatial mean, so where a layer's tokens are zero the map is zero, whatever the gradient (an unmasked layer
    gives no such answer: measured on a plain corner read-out of ``norm``, about 25% of the map in each quadrant).
    ``SwinCorners`` reads each corner region through two such layers: ``inner.<corner>`` (the 14 × 14 stage,
    ``features.5``'s output with only the region's 4 × 4 tokens left) and ``outer.<corner>`` (the 7 × 7 tokens
    after ``norm``, only the region's 2 × 2 left). Explained at the four inner layers together, then
    at the four outer ones, with one target per corner (each image's best class of that corner's read-out), each
    target's map at input resolution must:

    - be a real map (max 1), with its largest value inside its region's pixels and all its mass in its corner's
      quadrant: no mass in the other three, each of which is another target's corner;
    - come from its own corner's layer only: at the other corners' layers its raw map is exactly zero (the
      read-out moved to another corner leaves nothing there).

    The four corners differ under every misreading of a grid: a transposed one swaps top-right and bottom-left,
    flips swap neighbours, a wrapped ``[h, w, C]`` read as ``[C, h, w]`` scatters a region over the map, and an
    all-zero map would put its argmax at the top-left pixel, which only one corner accepts."""
    model, explainer, layers = case.model, case.explainer, case.layers
    assert [(layer.name, layer.reshape) for layer in explainer.contract.layers] == [(n, "nhwc") for n in layers]
    batch = photos(explainer)
    with torch.no_grad():
        logits = model(torch.from_numpy(batch)).numpy()
    best = [[k * CLASSES + int(logits[n, k * CLASSES:(k + 1) * CLASSES].argmax()) for k in range(len(CORNERS))]
            for n in range(len(batch))]  # [N, 4]: image n's best class of each corner's read-out
    for level, grid in (("inner", 14), ("outer", 7)):
        chosen = [f"{level}.{corner}" for corner in CORNERS]
        assert [explainer.contract.layers[layers.index(name)].shape[1:] for name in chosen] == [(grid, grid)] * 4
        explained = explainer.explain(batch, method=method, targets=best, layers=chosen)
        assert explained.maps.shape == (len(batch), len(CORNERS), SIZE, SIZE)
        assert (explained.targets == np.asarray(best)).all()
        for n in range(len(batch)):
            for k, corner in enumerate(CORNERS):
                where = f"{method} {level} image {n} read-out of {corner}"
                picture = explained.maps[n, k]
                assert picture.max() > 0.99, f"{where}: a flat map"
                peak = np.unravel_index(picture.argmax(), picture.shape)
                rows, cols = pixel_extent(corner, grid)
                assert rows.start <= peak[0] < rows.stop and cols.start <= peak[1] < cols.stop, (where, peak)
                total = picture.sum()
                assert picture[quadrant(corner)].sum() >= 0.999 * total, where
                for other in CORNERS:
                    if other != corner:
                        assert picture[quadrant(other)].sum() <= 1e-3 * total, (where, other)
                for other in CORNERS:
                    raw = explained.layer_maps[f"{level}.{other}"][n, k]
                    assert raw.shape == (grid, grid)
                    if other == corner:
                        inside = np.zeros((grid, grid), bool)
                        inside[region(corner, grid)] = True
                        assert np.abs(raw[~inside]).max() == 0 and raw[inside].max() > 0, where
                    else:
                        assert np.abs(raw).max() == 0, (where, other)
