"""Fixed-batch-size sessions with pre-bound inputs and outputs, replayed as CUDA graphs.

At small batches a GPU explainer is bound by kernel launches, not arithmetic: the graph
adds a backward pass and the map's reductions to the forward, dozens of small kernels.
onnxruntime's CUDA provider can capture a session's kernels once as a CUDA graph and
replay them with one launch, provided shapes and buffer addresses never change. So the
runtime keeps, per batch size, a session over a copy of the graph whose batch dimension
is fixed, with inputs and outputs bound to buffers on the device; each call copies the
batch in, replays, and copies the outputs out. On the CPU provider the same runner works
without capture (used by the tests to check the mechanism).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnxcam.runtime.contract import INPUT, TARGET

_NUMPY_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64}


def fix_inputs(model: onnx.ModelProto, targets_shape: tuple[int, ...]) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs have fixed shapes: ``input`` ``[N, C, H, W]`` and
    ``target`` of ``targets_shape`` (``[N]`` or ``[N, K]``); outputs are left to onnxruntime."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        sizes = targets_shape if value.name == TARGET else targets_shape[:1]
        for dim, size in zip(dims, sizes):
            dim.Clear()
            dim.dim_value = size
    for value in fixed.graph.output:
        value.type.tensor_type.ClearField("shape")
    del fixed.graph.value_info[:]  # recorded with symbolic dimensions; onnxruntime infers them again
    return fixed


class StaticRunner:
    """One batch size of one graph: bound device buffers, optionally replayed as a CUDA graph."""

    def __init__(self, model: onnx.ModelProto, targets_shape: tuple[int, ...], output_names: Sequence[str],
                 output_shapes: Sequence[Sequence[int]], cuda: bool):
        fixed = fix_inputs(model, tuple(targets_shape))
        batch = targets_shape[0]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        from onnxcam.runtime.session import CPU, CUDA, with_options

        providers = with_options([CUDA], enable_cuda_graph="1") if cuda else [CPU]
        self.session = ort.InferenceSession(fixed.SerializeToString(), options, providers=providers)
        device = "cuda" if cuda else "cpu"
        self.output_names = list(output_names)
        image_shape = [batch, *self.session.get_inputs()[0].shape[1:]]
        self._input = ort.OrtValue.ortvalue_from_shape_and_type(image_shape, np.float32, device, 0)
        self._target = ort.OrtValue.ortvalue_from_shape_and_type(list(targets_shape), np.int64, device, 0)
        # bound buffers need fixed sizes; the caller knows them (a plain run first would break CUDA-graph capture)
        types = {o.name: o.type for o in self.session.get_outputs()}
        self._outputs = {name: ort.OrtValue.ortvalue_from_shape_and_type(
                             list(shape), np.int64 if types[name] == "tensor(int64)" else np.float32, device, 0)
                         for name, shape in zip(self.output_names, output_shapes)}
        self._binding = self.session.io_binding()
        self._binding.bind_ortvalue_input(INPUT, self._input)
        self._binding.bind_ortvalue_input(TARGET, self._target)
        for name, value in self._outputs.items():
            self._binding.bind_ortvalue_output(name, value)

    def __call__(self, batch: np.ndarray, targets: np.ndarray) -> list[np.ndarray]:
        self._input.update_inplace(batch)
        self._target.update_inplace(targets)
        self.session.run_with_iobinding(self._binding)
        return [self._outputs[name].numpy() for name in self.output_names]
