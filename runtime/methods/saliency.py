"""Vanilla saliency (Simonyan et al., 2014, arXiv:1312.6034): ``max_c |∂score/∂x_c|`` per pixel,
from the graph's ``input_gradient`` (``onnxcam export --input-gradient plain``)."""

from __future__ import annotations

from onnxcam.runtime.methods.base import Method

METHOD = Method("saliency", needs_gradient=False, input_gradient="plain")
