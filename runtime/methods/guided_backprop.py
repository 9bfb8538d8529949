"""Guided backpropagation (Springenberg et al., 2015, arXiv:1412.6806): the input gradient through
guided ReLUs (``onnxcam export --input-gradient guided``)."""

from __future__ import annotations

from onnxcam.runtime.methods.base import Method

METHOD = Method("guided-backprop", needs_gradient=False, input_gradient="guided")
