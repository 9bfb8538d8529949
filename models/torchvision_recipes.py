"""Recipes for torchvision classifiers and segmenters: default layer, reshape, preprocessing, labels.

A recipe is plain data (no torch import at module level); :func:`build` and
:func:`labels` import torchvision when called. The default layers follow
pytorch-grad-cam's advice (the last convolutional stage; for ViT, ``ln_1`` of the
last block, whose patch tokens still get a gradient).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxcam.runtime.contract import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Recipe:
    """How to explain one architecture family."""

    family: str
    layer: str
    reshape: str = "none"
    input_size: int = 224
    resize_size: int | None = 256  # None: resize straight to the input size (segmentation)


# family prefix → recipe; the longest matching prefix wins
RECIPES: dict[str, Recipe] = {
    "resnet": Recipe("resnet", "layer4"),
    "resnext": Recipe("resnext", "layer4"),
    "wide_resnet": Recipe("wide_resnet", "layer4"),
    "vgg": Recipe("vgg", "features"),
    "densenet": Recipe("densenet", "features.norm5"),
    "mobilenet_v2": Recipe("mobilenet_v2", "features"),
    "mobilenet_v3": Recipe("mobilenet_v3", "features"),
    "efficientnet": Recipe("efficientnet", "features"),
    "convnext": Recipe("convnext", "features"),
    "regnet": Recipe("regnet", "trunk_output"),
    "vit_b_16": Recipe("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", reshape="tokens"),
    "vit_b_32": Recipe("vit_b_32", "encoder.layers.encoder_layer_11.ln_1", reshape="tokens"),
    "vit_l_16": Recipe("vit_l_16", "encoder.layers.encoder_layer_23.ln_1", reshape="tokens"),
    "vit_l_32": Recipe("vit_l_32", "encoder.layers.encoder_layer_23.ln_1", reshape="tokens"),
    # Swin's stages are channels last, [N, h, w, C]; its last norm is what the head pools
    "swin": Recipe("swin", "norm", reshape="nhwc"),
    "maxvit": Recipe("maxvit", "blocks.3"),
    # segmentation: the backbone's last stage, as pytorch-grad-cam's segmentation tutorial; the
    # model returns {"out", "aux"}: "out" [N, 21, H, W] (Pascal VOC classes) is explained
    "fcn_resnet": Recipe("fcn_resnet", "backbone.layer4", input_size=520, resize_size=None),
    "deeplabv3_resnet": Recipe("deeplabv3_resnet", "backbone.layer4", input_size=520, resize_size=None),
    "deeplabv3_mobilenet": Recipe("deeplabv3_mobilenet", "backbone.16", input_size=520, resize_size=None),
    "lraspp_mobilenet": Recipe("lraspp_mobilenet", "backbone.16", input_size=520, resize_size=None),
}


def is_segmentation(architecture: str) -> bool:
    import torchvision.models as tvm

    return architecture in tvm.list_models(module=tvm.segmentation)


def recipe(architecture: str) -> Recipe | None:
    """The recipe for a torchvision architecture name (``resnet50``, ``vit_b_16``), or None."""
    matches = [key for key in RECIPES if architecture.startswith(key)]
    return RECIPES[max(matches, key=len)] if matches else None


def preprocessing(architecture: str, input_size: int | None = None) -> dict[str, Any]:
    """torchvision's ImageNet evaluation transform for ``architecture`` as a metadata record.

    Resize the shorter side to ``resize``, centre-crop ``size``, /255, ImageNet mean/std.
    Sizes come from the weights' own transform where torchvision has weights for it.
    """
    found = recipe(architecture) or Recipe(architecture, "")
    crop, resize = found.input_size, found.resize_size
    try:
        import torchvision.models as tvm

        transform = tvm.get_model_weights(architecture).DEFAULT.transforms()
        if resize is None:  # segmentation: torchvision resizes the shorter side; onnxcam needs a fixed size
            crop = int(transform.resize_size[0])
        else:
            crop, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
    except (ImportError, ValueError, AttributeError, KeyError, IndexError, TypeError):
        pass
    if input_size is not None and input_size != crop:
        resize, crop = (None if resize is None else round(resize * input_size / crop)), input_size
    return {
        "size": [crop, crop], "resize": resize, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "channel_order": "RGB", "scale": 255.0,
    }


def labels(architecture: str) -> list[str] | None:
    """ImageNet class names from torchvision's weight metadata (shipped in the wheel; no download)."""
    try:
        import torchvision.models as tvm

        return list(tvm.get_model_weights(architecture).DEFAULT.meta["categories"])
    except (ImportError, ValueError, AttributeError, KeyError):
        return None


def build(architecture: str, weights: str | Path | None = None, input_size: int | None = None):
    """A torchvision classifier or segmenter in eval mode: random weights, or a state-dict file's.

    Weights are never downloaded (segmenters: no backbone weights either). ViTs built for
    another input size get ``image_size=input_size``.
    """
    import torch
    import torchvision.models as tvm

    segmentation = is_segmentation(architecture)
    if architecture not in tvm.list_models(module=tvm) and not segmentation:
        raise ValueError(
            f"{architecture!r} is not a torchvision classification or segmentation model; "
            "pass one of torchvision.models.list_models(), or a 'module:factory' path"
        )
    options = {"weights_backbone": None} if segmentation else {}
    if architecture.startswith("vit_") and input_size is not None:
        options["image_size"] = input_size
    model = tvm.get_model(architecture, weights=None, **options)
    if weights is not None:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state)
    return model.eval()


def recalibrate_batchnorm(module, size: int, batches: int = 3) -> None:
    """Running BatchNorm statistics of ``module`` from ``batches`` seeded random ``[4, 3, S, S]`` batches
    (cumulative average): random weights with default statistics (mean 0, var 1) can shrink a
    network's features to nothing (MobileNetV3)."""
    import torch
    from torch import nn

    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None
    module.train()
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for _ in range(batches):
            module(torch.randn(4, 3, size, size, generator=generator))
    module.eval()
