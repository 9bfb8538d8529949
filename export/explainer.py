"""PyTorch model → explainer graph (see DESIGN.md, "The seam").

The explainer is a module whose forward runs the model, resolves the target class,
differentiates the target's raw logit with ``torch.autograd.grad`` and returns
logits, resolved targets, and each chosen layer's activation and gradient. It is
traced with ``torch.export`` (non-strict, without pre-dispatch, so autograd is
traced into aten backward ops), the backward ops ONNX lacks are rewritten
(``decompositions.py``), and the program is written as ONNX with a metadata record.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.export._trace
from torch import nn

from onnxcam.export import decompositions, onnx_passes, onnx_rules
from onnxcam.export.layers import find_layer, resolve_reshape, to_feature_map
from onnxcam.export.onnx_io import onnxcam_version, write_explainer
from onnxcam.runtime import contract

OPSET = 18


INPUT_GRADIENTS = ("plain", "guided")


def _guided_gate(upper: float | None) -> type[torch.autograd.Function]:
    """ReLU (``upper=None``) or ReLU6 whose backward, while ``GuidedReLU.guided`` is set, passes only
    positive gradients through the open gate: ``∂x = ∂y · 1[gate open] · 1[∂y > 0]`` (Springenberg
    et al., 2015). The bound is baked into the class: the tracer turns ``apply`` arguments into tensors."""

    class GuidedGate(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.relu(x) if upper is None else nn.functional.relu6(x)

        @staticmethod
        def backward(ctx, grad_output):
            (x,) = ctx.saved_tensors
            mask = x > 0
            if upper is not None:
                mask = mask & (x < upper)
            if GuidedReLU.guided:
                mask = mask & (grad_output > 0)
            return grad_output * mask.to(grad_output.dtype)

    return GuidedGate


_GATES = {None: _guided_gate(None), 6.0: _guided_gate(6.0)}  # nn.ReLU, nn.ReLU6


class GuidedReLU(nn.Module):
    """Stands in for every ``nn.ReLU`` (as pytorch-grad-cam's ``GuidedBackpropReLUModel`` does) and
    ``nn.ReLU6`` module (which it leaves alone) when a guided input gradient is exported; the
    flag is read while autograd is traced."""

    guided = False

    def __init__(self, upper: float | None = None):
        super().__init__()
        self.gate = _GATES[upper]

    def forward(self, x):
        return self.gate.apply(x)


def _replace_relus(module: nn.Module) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, (nn.ReLU, nn.ReLU6)):
            setattr(module, name, GuidedReLU(6.0 if isinstance(child, nn.ReLU6) else None))
            count += 1
        else:
            count += _replace_relus(child)
    return count


def _repeat_rows(tensor: torch.Tensor, times) -> torch.Tensor:
    """``[N, ...]`` → ``[N·times, ...]``, each row ``times`` times in a row (image-major)."""
    return tensor.unsqueeze(1).expand(tensor.shape[0], times, *tensor.shape[1:]).reshape(-1, *tensor.shape[1:])


class ExplainerModule(nn.Module):
    """Wraps a classifier: ``(input [N,C,H,W], target [N,K]) → logits, target, activations…, gradients…``.

    K targets per image are explained in one pass: from the *share point* on (the first
    chosen layer, or the input when input gradients are asked for) each image's row is
    repeated K times, so the part of the model before it runs once per image and the
    rest once per (image, target); outputs have ``N·K`` rows, image-major.

    A forward hook on each chosen layer replaces the layer's output by a clone and
    keeps it, so that in-place ops later in the model (DenseNet's final ReLU, say)
    cannot change the stored activation, and so that the gradient is taken w.r.t.
    exactly the tensor the rest of the model consumes (the "tail input", also returned
    so that export can find the model's tail for Ablation-CAM).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], reshapes: Sequence[str],
                 cam_heads: Sequence[nn.Linear | None], input_gradients: Sequence[str] = (),
                 share_at_input: bool = False):
        super().__init__()
        self.model = model
        self.layer_names = list(layers)
        self.reshapes = list(reshapes)
        self.cam_heads = nn.ModuleList([head if head is not None else nn.Identity() for head in cam_heads])
        self.has_cam_head = [head is not None for head in cam_heads]
        self.input_gradients = list(input_gradients)
        self.share_at_input = share_at_input or bool(self.input_gradients)
        self._captured: list[torch.Tensor | None] = [None] * len(self.layer_names)
        self._handed_on: list[torch.Tensor | None] = [None] * len(self.layer_names)
        self._repeats = None
        self._hooks = [find_layer(model, name).register_forward_hook(self._hook(index))
                       for index, name in enumerate(self.layer_names)]

    def remove_hooks(self) -> None:
        """Take this wrapper's hooks off the model (hooks the model had stay)."""
        for handle in self._hooks:
            handle.remove()

    def _hook(self, index: int):
        def keep(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"layer {self.layer_names[index]!r} returns {type(output).__name__}, not a tensor; "
                    "choose a layer whose output is one tensor"
                )
            if self._repeats is not None:  # the share point: from here on, one row per (image, target)
                output = _repeat_rows(output, self._repeats)
                self._repeats = None
            activation = output.clone()
            if not activation.requires_grad:
                activation.requires_grad_(True)  # the first chosen layer: parameters are frozen
            self._captured[index] = activation
            # the model goes on with a copy, free to change it in place
            self._handed_on[index] = activation.clone()
            return self._handed_on[index]
        return keep

    def forward(self, input: torch.Tensor, target: torch.Tensor):
        per_image = target.shape[1]
        with torch.enable_grad():
            if self.share_at_input:
                input = _repeat_rows(input, per_image).clone().requires_grad_(True)
            else:
                self._repeats = per_image
            logits = self.model(input)
            if logits.dim() != 2:
                raise ValueError(
                    f"the model returns logits of shape {tuple(logits.shape)}; a classifier must return [N, classes]"
                )
            image_logits = logits.reshape(-1, per_image, logits.shape[1])[:, 0]
            ranked = torch.argsort(image_logits, dim=1, descending=True)
            # a negative target -j is the image's j-th best class
            rank = (-target - 1).clamp(min=0, max=logits.shape[1] - 1)
            resolved = torch.where(target < 0, ranked.gather(1, rank), target)
            score = logits.gather(1, resolved.reshape(-1, 1)).sum()
            captured = list(self._captured)
            plain_inputs = [input] if "plain" in self.input_gradients else []
            gradients = torch.autograd.grad(score, captured + plain_inputs, retain_graph=True)
            input_gradients = list(gradients[len(captured):])
            gradients = gradients[:len(captured)]
            if "guided" in self.input_gradients:
                GuidedReLU.guided = True
                try:
                    input_gradients += torch.autograd.grad(score, [input])
                finally:
                    GuidedReLU.guided = False
        rows = resolved.reshape(-1)
        activations = [to_feature_map(a, r) for a, r in zip(captured, self.reshapes)]
        gradients = [to_feature_map(g, r) for g, r in zip(gradients, self.reshapes)]
        cam_weights = [
            head.weight[rows] for head, used in zip(self.cam_heads, self.has_cam_head) if used
        ]
        return (logits.detach(), resolved, *[a.detach() for a in activations], *gradients,
                *[w.detach() for w in cam_weights], *input_gradients,
                *[h.detach() for h in self._handed_on])


def find_cam_head(model: nn.Module, activation: torch.Tensor, logits: torch.Tensor) -> nn.Linear | None:
    """The linear layer ``fc`` with ``logits == fc(GAP(activation))``, if the model ends that way.

    Checked numerically on the example input, so a head that does anything else
    between the layer and the logits (a hidden layer, a norm, a ReLU) is not taken.
    ``activation``: ``[N, C, h, w]``.
    """
    pooled = activation.mean(dim=(2, 3))
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.in_features == pooled.shape[1] \
                and module.out_features == logits.shape[1]:
            with torch.no_grad():
                predicted = module(pooled)
            scale = logits.abs().max().clamp_min(1e-6)
            if torch.allclose(predicted, logits, atol=1e-4 * float(scale), rtol=1e-4):
                return module
    return None


def _example_batch(input_shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*input_shape, generator=generator)


def export_explainer(
    model: nn.Module,
    path: str | Path,
    layers: str | Sequence[str],
    input_shape: Sequence[int] = (2, 3, 224, 224),
    *,
    reshape: str | Sequence[str] = "auto",
    preprocessing: dict | None = None,
    labels: Sequence[str] | None = None,
    architecture: str | None = None,
    example: torch.Tensor | None = None,
    input_gradients: Sequence[str] = (),
) -> dict:
    """Write the explainer graph of ``model`` to ``path`` and return its metadata record.

    model: a classifier ``[N,C,H,W] → [N, classes]``; it is copied and put in eval mode.
    layers: dotted module names (``"layer4"``, ``"features.denseblock4"``).
    input_shape: an example ``(N, C, H, W)``; N stays dynamic in the graph (N ≥ 2 traces best).
    reshape: per layer, ``auto`` | ``none`` | ``tokens`` (``[N,T,C]`` → grid, class token
    dropped) | ``nhwc``.
    preprocessing: ``{"size": [H, W], "resize": int|None, "mean": [...], "std": [...],
    "channel_order": "RGB", "scale": 255.0}``; defaults to ImageNet constants at the input size.
    labels: class names, index = class id.
    example: an input batch to trace with (default: a seeded random batch of ``input_shape``).
    input_gradients: also output ∂score/∂input: ``"plain"`` (``input_gradient``, for vanilla
    saliency) and/or ``"guided"`` (``guided_gradient``: every ``nn.ReLU``/``nn.ReLU6`` module's
    backward replaced by guided backprop's, for Guided Backprop and Guided Grad-CAM).
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError("name at least one layer to explain")
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (N, C, H, W), got {tuple(input_shape)}")
    reshapes = [reshape] * len(layers) if isinstance(reshape, str) else list(reshape)
    if len(reshapes) != len(layers):
        raise ValueError("give one reshape per layer, or one for all")
    input_gradients = list(dict.fromkeys(input_gradients))
    unknown = [kind for kind in input_gradients if kind not in INPUT_GRADIENTS]
    if unknown:
        raise ValueError(f"unknown input gradient {unknown[0]!r}; choose from {', '.join(INPUT_GRADIENTS)}")

    model = copy.deepcopy(model).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name in layers:
        find_layer(model, name)

    if example is None:
        example = _example_batch(input_shape)
    example = example.float()
    batch = int(example.shape[0])
    if batch < 2:
        example = example.repeat(2, 1, 1, 1)
        batch = 2

    # One eager pass: check the layers, pick reshapes, find a GAP + linear head for CAM.
    raw: list[torch.Tensor] = []
    handles = [find_layer(model, n).register_forward_hook(lambda m, i, o: raw.append(o.detach().clone()))
               for n in layers]
    with torch.no_grad():
        logits = model(example)
    for handle in handles:
        handle.remove()
    if len(raw) != len(layers):
        raise ValueError(
            "a chosen layer ran more or fewer than once in one forward pass; "
            "choose a layer that runs exactly once (not a shared module)"
        )
    reshapes = [resolve_reshape(r, a) for r, a in zip(reshapes, raw)]
    feature_maps = [to_feature_map(a, r) for a, r in zip(raw, reshapes)]
    cam_heads = [find_cam_head(model, f, logits) for f in feature_maps]

    if "guided" in input_gradients and _replace_relus(model) == 0:
        warnings.warn("the model has no nn.ReLU/ReLU6 modules: its guided gradient equals the plain input gradient")
    share_at_input = bool(input_gradients) or not _rows_can_repeat_at_layer(model, layers, reshapes, cam_heads,
                                                                             example)
    wrapper = ExplainerModule(model, layers, reshapes, cam_heads, input_gradients, share_at_input).eval()
    target = torch.tensor([[-1, -2]] * batch, dtype=torch.int64)  # two targets an image: K stays symbolic
    batch_dim = torch.export.Dim("batch", min=1)
    targets_dim = torch.export.Dim("targets", min=1, max=int(logits.shape[1]))

    with _tracing_context():
        program = torch.export._trace._export(
            wrapper, (example, target),
            dynamic_shapes={"input": {0: batch_dim}, "target": {0: batch_dim, 1: targets_dim}},
            strict=False, pre_dispatch=False,
        )
        program = program.run_decompositions(decompositions.table())

    described = [
        contract.Layer(
            name=name, shape=tuple(int(s) for s in fmap.shape[1:]), reshape=r,
            activation=contract.activation_name(i), gradient=contract.gradient_name(i),
            cam_weight=contract.cam_weight_name(i) if head is not None else None,
        )
        for i, (name, fmap, r, head) in enumerate(zip(layers, feature_maps, reshapes, cam_heads))
    ]
    gradient_outputs = {kind: contract.INPUT_GRADIENT_OUTPUTS[kind] for kind in input_gradients}
    tail_markers = [f"onnxcam_tail_input_{i}" for i in range(len(layers))]
    output_names = [contract.LOGITS, contract.RESOLVED_TARGET]
    output_names += [l.activation for l in described] + [l.gradient for l in described]
    output_names += [l.cam_weight for l in described if l.cam_weight]
    output_names += list(gradient_outputs.values()) + tail_markers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program, (example, target), input_names=[contract.INPUT, contract.TARGET],
            output_names=output_names,
            opset_version=OPSET, dynamo=True, optimize=True, verbose=False,
            custom_translation_table=onnx_rules.table(),
        )
    model_proto = onnx_program.model_proto
    tails = onnx_passes.find_tails(model_proto, tail_markers, [list(r.shape[1:]) for r in raw])
    described = [dataclasses.replace(layer, tail=_tail_record(tail, raw_output, reshape))
                 for layer, tail, raw_output, reshape in zip(described, tails, raw, reshapes)]
    record = contract.metadata_record(
        input_shape=tuple(example.shape[1:]), classes=int(logits.shape[1]), layers=described,
        preprocessing=preprocessing, labels=labels, architecture=architecture, exporter=_exporter_version(),
        input_gradients=gradient_outputs,
    )
    onnx_passes.drop_matmul_broadcast_expands(model_proto)
    _name_batch_dimension(model_proto)
    write_explainer(model_proto, record, Path(path))
    return record


def _rows_can_repeat_at_layer(model, layers, reshapes, cam_heads, example) -> bool:
    """Whether the model still runs when rows are repeated from the first chosen layer on
    (false when a tensor from before the layer is combined with one after it, which
    classifiers rarely do); if not, rows are repeated from the input."""
    wrapper = ExplainerModule(model, layers, reshapes, cam_heads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outputs = wrapper(example[:1], torch.tensor([[-1, -2]]))
        return outputs[0].shape[0] == 2
    except RuntimeError:
        return False
    finally:
        wrapper.remove_hooks()


def _tail_record(tail: str | None, raw_output: torch.Tensor, reshape: str) -> dict | None:
    """What the runtime needs to run the model from a layer's output on (Ablation-CAM): the
    tensor the rest of the model reads, its shape without the batch, and its channel axis."""
    if tail is None:
        return None
    return {"input": tail, "shape": [int(s) for s in raw_output.shape[1:]],
            "channel_axis": 1 if reshape == "none" else raw_output.dim() - 1}


def _name_batch_dimension(model_proto, name: str = "batch") -> None:
    """Call the symbolic batch dimension ``batch`` (the tracer names it ``s0``, ``s31``…)."""
    symbol = model_proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if not symbol:
        return
    values = [*model_proto.graph.input, *model_proto.graph.output, *model_proto.graph.value_info]
    for value in values:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = name


def _exporter_version() -> str:
    return f"onnxcam {onnxcam_version()}, torch {torch.__version__}"


@contextlib.contextmanager
def _tracing_context():
    """The math attention kernel (its backward decomposes into plain matmuls), quiet logs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
