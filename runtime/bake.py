"""``bake``: an explainer graph, a method and a target kind in one ONNX file that any onnxruntime
runs with no onnxcam — a web page, a phone, Node, C# (docs/explainer-graph.md, "Baked files").

The file is the runtime's own method graph (``graphs.with_target`` + ``graph_methods.append_method``,
the graph ``Explainer.explain`` runs for in-graph methods) with its edges made friendly:

- inputs: ``input`` float32 ``[N, C, H, W]`` (preprocessed), or with ``raw_image`` ``image`` uint8
  ``[N, h0, w0, 3]`` RGB, resized, centre-cropped and normalised inside the graph as the metadata's
  preprocessing says (``image.fit_to_input``, ``image.to_tensor``); the target is baked in (its
  values broadcast over the batch: a client feeds the image alone), or with ``target_inputs`` the
  kind's inputs (``target`` int64 ``[N, K]`` for classes) stay inputs fed each call;
- outputs, one row per image: ``logits`` ``[N, *O]``, ``scores`` ``[N, K]``, ``targets`` int64
  ``[N, K]`` (kinds with classes), ``maps`` ``[N, K, H, W]`` in [0, 1]; with ``raw_image`` ``view``
  uint8 ``[N, H, W, 3]`` (what the model saw); with ``overlay`` ``overlay`` uint8 ``[N, K, H, W, 3]``
  (``image.overlay``'s colour map and blend).

The record under the metadata key ``onnxcam_baked`` says all of this (``BakedRecord``); the
explainer graph's own record is kept inside it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxcam.runtime import graph_methods, graphkit, graphs
from onnxcam.runtime.contract import (BAKED_KEY, INPUT, METADATA_KEY, Contract, ContractError, InputError, check_graph,
                                      parse_metadata, shown)
from onnxcam.runtime.image import COLORMAPS, needed_size, normalisation
from onnxcam.runtime.methods import get_method
from onnxcam.runtime.providers import declared_dims, read_model
from onnxcam.runtime.targets import Target, as_target

BAKED_FORMAT = "onnxcam.baked"
BAKED_VERSION = 1
IMAGE = "image"  # the raw-image input
LOGITS, SCORES, TARGETS, MAPS, VIEW, OVERLAY = "logits", "scores", "targets", "maps", "view", "overlay"
PUBLIC = (LOGITS, SCORES, TARGETS, MAPS, VIEW, OVERLAY)  # the output names a baked file may have
_TYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "uint8": TensorProto.UINT8}


@dataclass(frozen=True)
class BakedRecord:
    """What a baked file expects and returns (its ``onnxcam_baked`` metadata record).

    input: ``{"name", "dtype", "shape", "layout"}``; target: ``{"kind", "inputs": {name: {"dtype",
    "shape", "fed", "value"}}}`` (``fed``: a graph input; else baked in with ``value``); outputs: name → ``{"dtype", "shape"}`` (symbolic ``N``, ``K``);
    overlay: ``{"colormap", "alpha"}`` or None; explainer: the explainer graph's own record."""

    method: str
    layers: list[str]
    input: dict[str, Any]
    target: dict[str, Any]
    outputs: dict[str, dict[str, Any]]
    overlay: dict[str, Any] | None
    precision: str
    explainer: dict[str, Any]
    format: str = BAKED_FORMAT
    version: int = BAKED_VERSION
    labels_at: str = field(default="explainer.labels")

    @classmethod
    def read(cls, model: onnx.ModelProto) -> "BakedRecord | None":
        """The record of a baked file, or None for any other model."""
        raw = next((p.value for p in model.metadata_props if p.key == BAKED_KEY), None)
        if raw is None:
            return None
        values = json.loads(raw)
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    def describe(self) -> str:
        """One line: the method, the target kind and the input."""
        shape = ", ".join(map(str, self.input["shape"]))
        return f"{self.method} on {self.target['kind']} targets, input `{self.input['name']}` {self.input['dtype']} [{shape}]"


def bakeable_methods() -> list[str]:
    """The methods a baked file can carry: those with an in-graph form (``Method.in_graph``)."""
    return graph_methods.in_graph_methods()


def bake(explainer: str | Path | onnx.ModelProto, method: str = "gradcam", target: Target | Any = None,
         layers: Sequence[str | int] | None = None, raw_image: bool = False, raw_size: Sequence[int] | None = None,
         overlay: bool = False, fp16: bool = False, colormap: str = "jet", alpha: float = 0.5,
         target_inputs: bool = False) -> onnx.ModelProto:
    """One self-contained ONNX file: ``explainer`` (a format-2 explainer graph, path or model) with
    ``method`` and ``target`` (a Target, or what ``Explainer.explain``'s ``targets`` takes; None: the
    output's default kind, e.g. each image's top class) appended. raw_image: take uint8 RGB images of
    ``raw_size`` = ``(h0, w0)`` (default: ``default_raw_size``) and preprocess them inside the graph.
    overlay: also return the heatmap blended over the image (``colormap``, ``alpha``). fp16: weights
    and arithmetic in float16, inputs and outputs as without it. target_inputs: keep the target
    kind's inputs (e.g. ``target`` int64 ``[N, K]``) as graph inputs a client feeds each call, instead
    of baking ``target``'s values in."""
    what = "the explainer graph" if isinstance(explainer, onnx.ModelProto) else shown(explainer)
    model = explainer if isinstance(explainer, onnx.ModelProto) else read_model(explainer)
    contract = _contract(model, what)
    if fp16 and contract.precision != "float16":  # the model in float16; the appended maths stays float32
        model = graphkit.to_float16(model)
    spec = get_method(method)
    if not spec.in_graph:
        raise InputError(f"method {spec.name!r} cannot be written as graph nodes (it needs extra forward passes, "
                         f"a decomposition or numpy); bake one of: {', '.join(bakeable_methods())}")
    if colormap not in COLORMAPS:
        raise InputError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}; give e.g. 0.5")
    chosen = [contract.layer(name) for name in layers] if layers else list(contract.layers)
    if spec.needs_cam_weight and not all(layer.cam_weight for layer in chosen):
        raise ContractError("method 'cam' needs a global-average-pool + linear head after every baked layer; bake "
                            "gradcam (CAM's generalisation) or choose a layer that feeds such a head")
    kind = as_target(target, contract)
    kind.fits(contract)
    defaults = kind.feeds(contract, 1)
    target_graph = graphs.with_target(model, contract, kind, defaults)
    kept = [target_graph.output, target_graph.score] + ([target_graph.resolved] if target_graph.resolved else [])
    baked = graph_methods.append_method(target_graph.model, contract, spec.name, chosen, kept)
    graph = baked.graph
    _free_names(graph, [IMAGE, *PUBLIC])
    b = graphkit.Builder(graph, "onnxcam_bake")
    view = None
    if raw_image:
        input_record, view = _raw_image_input(b, contract, raw_size)
    else:
        input_record = _tensor_input(contract)
    batch = b.op("Shape", [IMAGE if raw_image else INPUT], start=0, end=1)
    target_record = _target_inputs(b, defaults, batch, target_inputs)
    outputs = _outputs(b, contract, target_graph, batch)
    if view is not None:
        outputs[VIEW] = view
    if overlay:
        outputs[OVERLAY] = _overlay(b, contract, outputs[MAPS], view, colormap, alpha)
    described = {name: _described(name, contract) for name in outputs}
    _set_outputs(graph, outputs, described)
    graphkit.prune(graph)
    graphkit.toposort(graph)
    record = BakedRecord(method=spec.name, layers=[layer.name for layer in chosen], input=input_record,
                         target={"kind": kind.name, "inputs": target_record},
                         outputs=described,
                         overlay={"colormap": colormap, "alpha": alpha} if overlay else None,
                         precision="float16" if fp16 else contract.precision,
                         explainer=json.loads(next(p.value for p in model.metadata_props if p.key == METADATA_KEY)))
    del baked.metadata_props[:]
    baked.metadata_props.add(key=BAKED_KEY, value=json.dumps(asdict(record)))
    onnx.checker.check_model(baked)
    return baked


def save_baked(model: onnx.ModelProto, path: str | Path) -> None:
    """Write a baked file (one file, weights inside)."""
    onnx.save_model(model, str(path))


# -- pieces ----------------------------------------------------------------------------------------
def _contract(model: onnx.ModelProto, what: str) -> Contract:
    metadata = {p.key: p.value for p in model.metadata_props}
    if BAKED_KEY in metadata:
        raise ContractError(f"{what}: is already a baked file; bake the explainer graph it was made from")
    contract = parse_metadata(metadata, what)
    check_graph(contract, declared_dims(model), what)
    if not contract.seeded:
        raise ContractError(f"{what}: was made by an older onnxcam (format 1); re-export it with `onnxcam export` "
                            "or `onnxcam augment` to bake it")
    return contract


def _tensor_input(contract: Contract) -> dict[str, Any]:
    return {"name": INPUT, "dtype": "float32", "shape": ["N", *contract.input_shape],
            "layout": "NCHW, preprocessed as the explainer record's preprocessing says"}


def _raw_image_input(b: graphkit.Builder, contract: Contract,
                     raw_size: Sequence[int] | None) -> tuple[dict[str, Any], str]:
    """Replace the ``input`` graph input by ``image`` uint8 ``[N, h0, w0, 3]`` RGB and the nodes that
    make ``input`` from it: ``fit_to_input`` (bilinear resize, rounded to whole grey levels as a uint8
    image is, then the centre crop) and ``to_tensor`` (channel order, /scale, mean, std). Returns the
    input's record and the float ``[N, H, W, 3]`` view (the crop the model sees, in grey levels)."""
    pre = contract.preprocessing
    height, width = pre["size"]
    raw_h, raw_w = (int(raw_size[0]), int(raw_size[1])) if raw_size else default_raw_size(contract)
    if raw_h <= 0 or raw_w <= 0:
        raise InputError(f"raw image size {raw_h}x{raw_w} is not positive; give HxW, e.g. {height}x{width}")
    graph = b.graph
    graph.input.remove(next(i for i in graph.input if i.name == INPUT))
    graph.input.insert(0, helper.make_tensor_value_info(IMAGE, TensorProto.UINT8, ["N", raw_h, raw_w, 3]))
    pixels = b.op("Transpose", [b.op("Cast", [IMAGE], to=TensorProto.FLOAT)], perm=[0, 3, 1, 2])  # [N, 3, h0, w0]
    new_h, new_w = needed_size(pre, raw_w, raw_h)
    if (new_h, new_w) != (raw_h, raw_w):
        sizes = b.op("Concat", [b.op("Shape", [pixels], start=0, end=2), b.ints([new_h, new_w])], axis=0)
        resized = b.op("Resize", [pixels, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel")
        pixels = b.op("Clip", [b.op("Round", [resized]), b.const(0.0), b.const(255.0)])
    top, left = (new_h - height) // 2, (new_w - width) // 2
    if (top, left, new_h, new_w) != (0, 0, height, width):
        pixels = b.op("Slice", [pixels, b.ints([top, left]), b.ints([top + height, left + width]), b.ints([2, 3])])
    view = b.op("Transpose", [pixels], perm=[0, 2, 3, 1])
    mean, std, scale, bgr = normalisation(pre)
    if bgr:
        pixels = b.op("Gather", [pixels, b.ints([2, 1, 0])], axis=1)
    scaled = b.op("Div", [pixels, b.const(scale)])
    b.op("Div", [b.op("Sub", [scaled, b.const(mean.reshape(1, 3, 1, 1))]), b.const(std.reshape(1, 3, 1, 1))],
         output=INPUT)
    record = {"name": IMAGE, "dtype": "uint8", "shape": ["N", raw_h, raw_w, 3],
              "layout": "NHWC RGB 0..255; resized, cropped and normalised inside the graph"}
    return record, view


def default_raw_size(contract: Contract) -> tuple[int, int]:
    """``(h0, w0)`` of raw images by default: the size at which the graph resamples nothing — the
    model's input size, or for shorter-side-then-crop preprocessing the square the crop is cut from
    (``resize × resize``; a client that scales its picture to cover it gets ``load_batch``'s view)."""
    shorter = contract.preprocessing.get("resize")
    return (int(shorter), int(shorter)) if shorter else tuple(int(s) for s in contract.preprocessing["size"])


def _target_inputs(b: graphkit.Builder, defaults: dict[str, np.ndarray], batch: str, as_inputs: bool) -> dict[str, Any]:
    """The target kind's inputs: graph inputs ``[N, K, …]`` a client feeds (``as_inputs``), or the
    values of ``defaults`` (``[1, K, …]``) baked in as constants and broadcast over the batch."""
    graph, described = b.graph, {}
    for name, value in defaults.items():
        if as_inputs:
            described[name] = {"dtype": str(value.dtype), "shape": ["N", "K", *value.shape[2:]], "fed": True}
            continue
        rows = b.name(f"{name}_rows")
        for node in graph.node:
            node.input[:] = [rows if i == name else i for i in node.input]
        graph.input.remove(next(i for i in graph.input if i.name == name))
        constant = b.const(value, value.dtype)
        shape = b.op("Concat", [batch, b.op("Shape", [constant], start=1)], axis=0)
        b.op("Expand", [constant, shape], output=rows)
        described[name] = {"dtype": str(value.dtype), "shape": list(value.shape), "fed": False,
                           "value": value.tolist()}
    return described


def _outputs(b: graphkit.Builder, contract: Contract, target_graph: graphs.TargetGraph, batch: str) -> dict[str, str]:
    """The per-image outputs from the method graph's rows (image-major, ``N·K``)."""
    rows = b.op("Shape", [target_graph.score])
    images_targets = b.op("Concat", [batch, b.op("Div", [rows, batch])], axis=0)  # [N, K]
    per_image = lambda name, rest: b.op("Reshape", [name, b.op("Concat", [images_targets, b.ints(rest)], axis=0)])  # noqa: E731
    model_rows = per_image(target_graph.output, list(contract.output.shape))
    outputs = {LOGITS: b.op("Gather", [model_rows, b.ints(0)], axis=1), SCORES: per_image(target_graph.score, [])}
    if target_graph.resolved:
        outputs[TARGETS] = target_graph.resolved
    outputs[MAPS] = per_image(graph_methods.MAP, list(contract.input_shape[1:]))
    return outputs


def colour_table(colormap: str) -> np.ndarray:
    """``float32 [256, 3]``: the RGB colour of each grey level in ``colormap`` (``image.colorize``)."""
    levels = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)[:, 0].astype(np.float32)


def _overlay(b: graphkit.Builder, contract: Contract, maps: str, view: str | None, colormap: str,
             alpha: float) -> str:
    """uint8 ``[N, K, H, W, 3]``: ``image.overlay(view, map)`` as nodes — the map's grey level
    ``uint8(clip(m, 0, 1)·255)`` looked up in the colour table, blended ``(1-α)·view + α·heat``, rounded."""
    levels = b.op("Floor", [b.op("Mul", [b.op("Clip", [maps, b.const(0.0), b.const(1.0)]), b.const(255.0)])])
    heat = b.op("Gather", [b.const(colour_table(colormap)), b.op("Cast", [levels], to=TensorProto.INT64)], axis=0)
    view = view or _view_from_input(b, contract)
    view = b.op("Unsqueeze", [view, b.ints([1])])  # [N, 1, H, W, 3]: one view for the K maps
    blended = b.op("Add", [b.op("Mul", [view, b.const(1.0 - alpha)]), b.op("Mul", [heat, b.const(alpha)])])
    return b.op("Cast", [b.op("Clip", [b.op("Round", [blended]), b.const(0.0), b.const(255.0)])], to=TensorProto.UINT8)


def _view_from_input(b: graphkit.Builder, contract: Contract) -> str:
    """float ``[N, H, W, 3]`` RGB grey levels: the preprocessed ``input`` undone (× std + mean, × scale), rounded."""
    mean, std, scale, bgr = normalisation(contract.preprocessing)
    pixels = b.op("Mul", [b.op("Add", [b.op("Mul", [INPUT, b.const(std.reshape(1, 3, 1, 1))]),
                                       b.const(mean.reshape(1, 3, 1, 1))]), b.const(scale)])
    if bgr:
        pixels = b.op("Gather", [pixels, b.ints([2, 1, 0])], axis=1)
    pixels = b.op("Clip", [b.op("Round", [pixels]), b.const(0.0), b.const(255.0)])
    return b.op("Transpose", [pixels], perm=[0, 2, 3, 1])


def view_from_batch(batch: np.ndarray, contract: Contract) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` RGB: a preprocessed ``[N, C, H, W]`` batch undone, as a baked file
    without ``raw_image`` does for its overlay (``_view_from_input``)."""
    mean, std, scale, bgr = normalisation(contract.preprocessing)
    pixels = (batch * std.reshape(1, 3, 1, 1) + mean.reshape(1, 3, 1, 1)) * np.float32(scale)
    if bgr:
        pixels = pixels[:, ::-1]
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def _set_outputs(graph: onnx.GraphProto, outputs: dict[str, str], described: dict[str, dict[str, Any]]) -> None:
    """The graph's outputs become ``outputs`` (public name → tensor), typed as ``described``; a view's
    grey levels become uint8."""
    del graph.output[:]
    for name, tensor in outputs.items():
        dtype = described[name]["dtype"]
        if name == VIEW:
            graph.node.append(helper.make_node("Cast", [tensor], [name], name=f"onnxcam_bake/{name}", to=_TYPES[dtype]))
        elif tensor != name:
            graph.node.append(helper.make_node("Identity", [tensor], [name], name=f"onnxcam_bake/{name}"))
        graph.output.append(helper.make_tensor_value_info(name, _TYPES[dtype], described[name]["shape"]))


def _free_names(graph: onnx.GraphProto, names: Sequence[str]) -> None:
    """Rename the graph's own tensors that carry one of ``names`` (an exporter's ``view``, say), so
    the baked file's inputs and outputs can take them."""
    taken = graphkit.names_in(graph) | {o.name for o in graph.output}
    fresh = graphkit.Names(taken, "onnxcam_renamed")
    for name in sorted(set(names) & taken):
        graphkit.rename(graph, name, fresh.fresh(name))


def _described(name: str, contract: Contract) -> dict[str, Any]:
    height, width = contract.input_shape[1:]
    shapes = {LOGITS: ("float32", ["N", *contract.output.shape]), SCORES: ("float32", ["N", "K"]),
              TARGETS: ("int64", ["N", "K"]), MAPS: ("float32", ["N", "K", height, width]),
              VIEW: ("uint8", ["N", height, width, 3]), OVERLAY: ("uint8", ["N", "K", height, width, 3])}
    dtype, shape = shapes[name]
    return {"dtype": dtype, "shape": shape}
