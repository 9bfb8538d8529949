"""Guided Grad-CAM (Selvaraju et al., 2017): the guided-backprop gradient times the Grad-CAM map
(``base.guided_gradcam``)."""

from __future__ import annotations

from onnxcam.runtime.methods import gradcam
from onnxcam.runtime.methods.base import Method

METHOD = Method("guided-gradcam", weights=gradcam.weights, input_gradient="guided")
