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
from onnxcam.runtime.providers import ort  # None without an onnxruntime wheel: see providers.py

from onnxcam.runtime.providers import CPU, CUDA, open_session


def fix_inputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs have the fixed ``shapes`` (by input name); outputs are
    left to onnxruntime."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name not in shapes:
            continue
        for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
            dim.Clear()
            dim.dim_value = int(size)
    for value in fixed.graph.output:
        value.type.tensor_type.ClearField("shape")
    del fixed.graph.value_info[:]  # recorded with symbolic dimensions; onnxruntime infers them again
    return fixed


class StaticRunner:
    """One set of input shapes of one graph: bound device buffers, optionally replayed as a CUDA graph."""

    def __init__(self, model: onnx.ModelProto, inputs: dict[str, np.ndarray], output_names: Sequence[str],
                 output_shapes: Sequence[Sequence[int]], cuda: bool):
        """inputs: example arrays of every graph input (their shapes and dtypes are fixed);
        output_shapes: the outputs' shapes for those inputs (bound buffers need fixed sizes, and
        a plain run first would break CUDA-graph capture)."""
        fixed = fix_inputs(model, {name: array.shape for name, array in inputs.items()})
        # enable_cuda_graph reaches the CUDA provider only (``providers.with_options``)
        self.session = open_session(fixed.SerializeToString(), [CUDA] if cuda else [CPU], "explainer graph",
                                    enable_cuda_graph="1")
        device = "cuda" if cuda else "cpu"
        self.output_names = list(output_names)
        self._inputs = {name: ort.OrtValue.ortvalue_from_shape_and_type(list(array.shape), array.dtype, device, 0)
                        for name, array in inputs.items()}
        types = {o.name: o.type for o in self.session.get_outputs()}
        self._outputs = {name: ort.OrtValue.ortvalue_from_shape_and_type(
                             list(shape), np.int64 if types[name] == "tensor(int64)" else np.float32, device, 0)
                         for name, shape in zip(self.output_names, output_shapes)}
        self._binding = self.session.io_binding()
        for name, value in self._inputs.items():
            self._binding.bind_ortvalue_input(name, value)
        for name, value in self._outputs.items():
            self._binding.bind_ortvalue_output(name, value)

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, value in self._inputs.items():
            value.update_inplace(np.ascontiguousarray(feeds[name]))
        self.session.run_with_iobinding(self._binding)
        return [self._outputs[name].numpy() for name in self.output_names]
