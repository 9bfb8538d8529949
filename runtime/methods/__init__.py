"""CAM methods: one file per method, each declaring what it needs (``base.Method``); this
registry reads them. ``get_method`` takes any spelling (case, ``-`` and ``_`` ignored)."""

from __future__ import annotations

from onnxcam.runtime.methods import (ablationcam, attention_rollout, cam, eigencam, eigengradcam, gradcam,
                                     gradcam_elementwise, gradcampp, gradient_rollout, guided_backprop, guided_gradcam,
                                     hirescam, kpca_cam, layercam, saliency, scorecam, xgradcam)
from onnxcam.runtime.methods.base import (EPSILON_NORMALISE, Method, Passes, all_finite, check_finite, check_input,
                                          check_output, class_token_row, first_component_projection, fuse_layers,
                                          guided_gradcam as guided_gradcam_maps, kernel_component_projection,
                                          layer_map, normalise, resize, saliency_map, softmax, token_map,
                                          weighted_sum)

_MODULES = (cam, gradcam, gradcampp, xgradcam, hirescam, gradcam_elementwise, layercam, eigencam, eigengradcam,
            kpca_cam, scorecam, ablationcam, saliency, guided_backprop, guided_gradcam, attention_rollout,
            gradient_rollout)
METHODS: dict[str, Method] = {module.METHOD.name: module.METHOD for module in _MODULES}

__all__ = ["METHODS", "Method", "Passes", "get_method", "EPSILON_NORMALISE", "all_finite", "check_finite",
           "check_input", "check_output", "class_token_row", "first_component_projection", "fuse_layers", "guided_gradcam_maps",
           "kernel_component_projection", "layer_map", "normalise", "resize", "saliency_map", "softmax",
           "token_map", "weighted_sum"]


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


# spelling (case, "-" and "_" ignored) → canonical name
_LOOKUP = {_key(alias): method.name for method in METHODS.values() for alias in (method.name, *method.aliases)}


def get_method(name: str) -> Method:
    """The registered method called ``name`` (case, ``-`` and ``_`` ignored; ``gradcampp`` = ``gradcam++``)."""
    canonical = _LOOKUP.get(_key(name))
    if canonical is None:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[canonical]
