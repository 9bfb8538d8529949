"""Functional rewrites of the backward ops that the ONNX exporter cannot translate.

Tracing ``torch.autograd.grad`` leaves aten backward ops in the graph. Most have
decompositions in torch or translations in onnxscript's torchlib; these did
not (torch 2.14, onnxscript 0.7), so they are rewritten here in forward ops that
ONNX has. Each rewrite only uses static shapes known at trace time for the
spatial dimensions; the batch dimension stays symbolic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

aten = torch.ops.aten


def convolution_backward(
    grad_output, input, weight, bias_sizes, stride, padding, dilation,
    transposed, output_padding, groups, output_mask,
):
    """Gradient of a (non-transposed) convolution w.r.t. its input, as a transposed convolution.

    Gradients w.r.t. weight and bias are never needed by an explainer (parameters are
    frozen during export), so asking for them is an error rather than a wrong graph.
    """
    if transposed:
        raise NotImplementedError("onnxcam export: the backward of a transposed convolution is not supported")
    if output_mask[1] or output_mask[2]:
        raise NotImplementedError(
            "onnxcam export: a weight gradient was requested; parameters must not require grad during export"
        )
    grad_input = None
    if output_mask[0]:
        spatial = input.dim() - 2
        kernel = weight.shape[2:]
        # transposed convolution gives back floor-divided sizes; output_padding restores the rest
        extra = [
            int(input.shape[2 + i])
            - ((int(grad_output.shape[2 + i]) - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1)
            for i in range(spatial)
        ]
        if all(s == 1 for s in stride) and all(e == 0 for e in extra) \
                and all(p <= d * (k - 1) for p, d, k in zip(padding, dilation, kernel)):
            # stride 1: a plain convolution with the weight flipped and its channel axes swapped per
            # group; onnxruntime's CPU kernels run it several times faster than ConvTranspose
            # (measured: DeepLabV3's dilated ASPP convolutions, 13 ms → ~3 ms each)
            return _flipped_convolution(grad_output, weight, padding, dilation, groups, spatial), None, None
        transpose = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]
        grad_input = transpose(
            grad_output, weight, None, stride=list(stride), padding=list(padding),
            output_padding=extra, groups=groups, dilation=list(dilation),
        )
    return grad_input, None, None


def _flipped_convolution(grad_output, weight, padding, dilation, groups: int, spatial: int):
    """``∂input`` of a stride-1 convolution: ``conv(∂output, W')`` with ``W'`` the weight with input and
    output channels swapped within each group and every spatial axis flipped, padding ``d·(k−1) − p``."""
    out_channels, in_per_group = int(weight.shape[0]), int(weight.shape[1])
    kernel = [int(k) for k in weight.shape[2:]]
    grouped = weight.reshape(groups, out_channels // groups, in_per_group, *kernel).transpose(1, 2)
    flipped = grouped.reshape(groups * in_per_group, out_channels // groups, *kernel).flip(list(range(2, 2 + spatial)))
    convolution = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    pads = [d * (k - 1) - p for p, d, k in zip(padding, dilation, kernel)]
    return convolution(grad_output, flipped, None, stride=1, padding=pads, dilation=list(dilation), groups=groups)


def _bins(in_size: int, out_size: int) -> list[tuple[int, int]]:
    """Adaptive pooling's ``[start, end)`` input range for each output cell."""
    return [((a * in_size) // out_size, math.ceil((a + 1) * in_size / out_size)) for a in range(out_size)]


def _spread(grad: torch.Tensor, dim: int, in_size: int, out_size: int) -> torch.Tensor:
    """Transpose of adaptive averaging along one dimension: each input cell sums the
    gradients of the bins that contain it, divided by the bin lengths. Built from slices
    (no constant tensors, which the functional tracer rejects)."""
    bins = _bins(in_size, out_size)
    pieces = []
    for i in range(in_size):
        parts = [grad.narrow(dim, a, 1) / (end - start) for a, (start, end) in enumerate(bins) if start <= i < end]
        piece = parts[0]
        for part in parts[1:]:
            piece = piece + part
        pieces.append(piece)
    return torch.cat(pieces, dim=dim)


def adaptive_avg_pool2d_backward(grad_output, input):
    """Gradient of adaptive average pooling: each output cell spreads evenly over its bin."""
    height, width = int(input.shape[-2]), int(input.shape[-1])
    out_h, out_w = int(grad_output.shape[-2]), int(grad_output.shape[-1])
    if out_h == 1 and out_w == 1:
        return grad_output.expand(input.shape) / (height * width)
    if (out_h, out_w) == (height, width):
        return grad_output
    return _spread(_spread(grad_output, -2, height, out_h), -1, width, out_w)


def avg_pool2d_backward(grad_output, input, kernel_size, stride, padding, ceil_mode,
                        count_include_pad, divisor_override):
    """Gradient of average pooling: a depthwise transposed convolution with a constant kernel."""
    kernel = list(kernel_size) if len(kernel_size) == 2 else [kernel_size[0]] * 2
    stride = list(stride) if stride else kernel
    stride = stride if len(stride) == 2 else [stride[0]] * 2
    padding = list(padding) if len(padding) == 2 else [padding[0]] * 2
    if not count_include_pad and any(padding):
        raise NotImplementedError("onnxcam export: backward of AvgPool2d(count_include_pad=False) with padding")
    divisor = divisor_override or kernel[0] * kernel[1]
    channels = int(grad_output.shape[1])
    weight = grad_output.new_ones((channels, 1, kernel[0], kernel[1])) / divisor
    extra = [
        int(input.shape[2 + i]) - ((int(grad_output.shape[2 + i]) - 1) * stride[i] - 2 * padding[i] + kernel[i])
        for i in range(2)
    ]
    if any(e < 0 or e >= max(stride[i], 1) for i, e in enumerate(extra)):
        raise NotImplementedError("onnxcam export: backward of AvgPool2d with ceil_mode overhang")
    return F.conv_transpose2d(grad_output, weight, None, stride=stride, padding=padding,
                              output_padding=extra, groups=channels)


def as_strided_scatter(input, src, size, stride, storage_offset=0):
    """``as_strided_scatter`` for the one case autograd emits here: ``src`` covers a plain view.

    Rewritten as index arithmetic over the flattened input, so that no strided view
    reaches the exporter.
    """
    flat_index = torch.full((), storage_offset or 0, dtype=torch.int64, device=input.device)
    for dim, (length, step) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[dim] = length
        flat_index = flat_index + (torch.arange(length, device=input.device) * step).reshape(shape)
    flat = input.contiguous().reshape(-1).clone()
    flat = flat.index_put((flat_index.reshape(-1),), src.reshape(-1))
    return flat.reshape(input.shape)


def max_pool2d_with_indices_backward(
    grad_output, input, kernel_size, stride, padding, dilation, ceil_mode, indices,
):
    """Gradient of max pooling: each output cell's gradient goes to the input cell it picked.

    ``indices`` (from the forward pass) are flat positions within each ``h·w`` plane, so
    the rule is one scatter-add per plane (ONNX ``ScatterElements``, reduction ``add``).
    """
    batch, channels = grad_output.shape[0], grad_output.shape[1]
    plane = int(input.shape[-2]) * int(input.shape[-1])
    grad_input = torch.zeros(
        (batch, channels, plane), dtype=grad_output.dtype, device=grad_output.device,
    )
    grad_input = grad_input.scatter_add(2, indices.reshape(batch, channels, -1),
                                        grad_output.reshape(batch, channels, -1))
    return grad_input.reshape(input.shape)


def broadcasting_copy(self: torch.Tensor, src: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    """``aten.copy`` with its broadcast made explicit. onnxscript's translation (``CastLike(src, self)``)
    drops it, so Swin's attention mask (``mask[h0:h1, w0:w1] = count``: a 0-d ``src``) became a
    scalar, and onnxruntime could not load the graph (a Transpose of perm [1, 0] on it)."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    src = src.to(self.dtype)
    if src.dim() == self.dim() and all(statically_known_true(a == b) for a, b in zip(src.shape, self.shape)):
        return src.clone()
    return src.expand_as(self).clone()


def table() -> dict:
    """The decomposition table passed to ``ExportedProgram.run_decompositions``."""
    decompositions = torch.export.default_decompositions()
    decompositions[aten.convolution_backward.default] = convolution_backward
    decompositions[aten._adaptive_avg_pool2d_backward.default] = adaptive_avg_pool2d_backward
    decompositions[aten.as_strided_scatter.default] = as_strided_scatter
    decompositions[aten.avg_pool2d_backward.default] = avg_pool2d_backward
    decompositions[aten.max_pool2d_with_indices_backward.default] = max_pool2d_with_indices_backward
    decompositions[aten.copy.default] = broadcasting_copy
    return decompositions
