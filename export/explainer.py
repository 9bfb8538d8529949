"""PyTorch model → explainer graph (docs/explainer-graph.md).

The explainer is a module whose forward runs the model, picks the output to explain,
and pulls the *seed* (∂score/∂output, one per image and target) back through it with
``torch.autograd.grad(output, layers, grad_outputs=seed)``; it returns the output and
each chosen layer's activation and gradient. Any target kind is a seed, so one graph
serves them all (the runtime builds seeds, ``runtime/targets``). It is traced with
``torch.export`` (non-strict, without pre-dispatch, so autograd is traced into aten
backward ops), the backward ops ONNX lacks are rewritten (``decompositions.py``), and
the program is written as ONNX with a metadata record.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.export._trace
from torch import nn

from onnxcam.export import decompositions, interpolation, onnx_passes, onnx_rules
from onnxcam.export.attention import AttentionTaps, choose_blocks
from onnxcam.export.onnx_io import check_explainer, write_checked
from onnxcam.export.layers import find_layer, resolve_reshape, to_feature_map, trace_layouts
from onnxcam.export.onnx_io import onnxcam_version
from onnxcam.export.tokens import token_layout
from onnxcam.runtime import contract

OPSET = 18
MAX_TARGETS = 4096  # targets an image in one call (the tracer wants a bound on the symbolic K)
# How far the exported graph's ``output`` (onnxruntime, CPU) may be from the torch model's (eval,
# no grad) on the same random batch, relative to the largest |output|. Measured on the random-weight
# zoo (tests/zoo.py): float32 at most 3.3e-5 (resnet50; resnet18, vgg16, vit_b_16, convnext_tiny
# 1.3-1.5e-6, densenet121, mobilenet_v3_large 3.9e-6); float16 (``--fp16``) 1.3e-3 (resnet18),
# 2.9e-3 (the pretrained efficientnet_lite0), 4.3e-3 (mobilenet_v3_large), 3.4e-2 (resnet50).
EXPORT_TOLERANCE = {"float32": 1e-3, "float16": 1e-1}


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


def select_output(raw, which: str | int | None = None) -> torch.Tensor:
    """The model output to explain: the tensor itself, or one entry of a dict (by key, default the
    first) or of a tuple/list (by index, default 0)."""
    if isinstance(raw, torch.Tensor):
        if which not in (None, "", 0, "0"):
            raise ValueError(f"the model returns one tensor; there is no output {which!r} to choose")
        return raw
    if isinstance(raw, dict):
        keys = list(raw)
        key = keys[0] if which in (None, "") else str(which)
        if key not in raw:
            raise ValueError(f"the model's outputs are {keys}; {which!r} is not one of them (choose with --output)")
        return select_output(raw[key])
    if isinstance(raw, (tuple, list)):
        index = 0 if which in (None, "") else which
        try:
            return select_output(raw[int(index)])
        except (ValueError, IndexError):
            raise ValueError(f"the model returns {len(raw)} outputs; choose one by index 0..{len(raw) - 1} "
                             "with --output") from None
    raise ValueError(f"the model returns {type(raw).__name__}; onnxcam explains tensor outputs "
                     "(or a dict / tuple of them)")


def output_choices(raw) -> str | None:
    """How the chosen output is named in the metadata: the dict key or tuple index, None for a tensor."""
    return None if isinstance(raw, torch.Tensor) else ("0" if isinstance(raw, (tuple, list)) else str(next(iter(raw))))


class ExplainerModule(nn.Module):
    """Wraps a model: ``(input [N,C,H,W], seed [N,K,*O]) → output, activations…, gradients…``.

    ``seed[n, k]`` is ∂score/∂output for image ``n``'s ``k``-th target; the gradients are
    those of ``Σ seed · output`` (pytorch-grad-cam's ``sum(target(output))`` for any target
    whose score is linear in the output at the point; nonlinear scores are linearised by
    the runtime, which builds their seed from the output).

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
                 share_at_input: bool = False, output: str | int | None = None,
                 tokens: Sequence[contract.Tokens | None] | None = None, attention: Sequence[str] = ()):
        super().__init__()
        self.model = model
        self.output = output
        self.layer_names = list(layers)
        self.reshapes = list(reshapes)
        self.cam_heads = nn.ModuleList([head if head is not None else nn.Identity() for head in cam_heads])
        self.has_cam_head = [head is not None for head in cam_heads]
        self.input_gradients = list(input_gradients)
        self.tokens = list(tokens) if tokens is not None else [None] * len(self.layer_names)
        self.attention_blocks = list(attention)
        # attention can come before the first layer: its rows must already be one per (image, target)
        self.share_at_input = share_at_input or bool(self.input_gradients) or bool(self.attention_blocks)
        self._attention: dict[str, torch.Tensor] = {}
        self._taps = AttentionTaps(self.attention_blocks, self._tap_attention)
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

    def _tap_attention(self, block: str, probabilities: torch.Tensor) -> torch.Tensor:
        """Keep a block's attention probabilities (the gradient is taken w.r.t. them) and hand the
        model a clone (``attention.py``)."""
        kept = probabilities.clone()
        if not kept.requires_grad:
            kept.requires_grad_(True)
        self._attention[block] = kept
        return kept.clone()

    def forward(self, input: torch.Tensor, seed: torch.Tensor):
        per_image = seed.shape[1]
        with torch.enable_grad():
            if self.share_at_input:
                input = _repeat_rows(input, per_image).clone().requires_grad_(True)
            else:
                self._repeats = per_image
            seed_rows = seed.reshape(-1, *seed.shape[2:])
            with self._taps.active(self.model):  # attention as explicit maths, tapped where asked
                # a model that reads the seed (models/detection.py: LocalRawHeads) gets its rows too, and
                # returns the output's values and the tensor of the same values the seed is pulled back on
                raw, pulled = self.model(input, seed_rows) if reads_seed(self.model) else (self.model(input),) * 2
            output, pulled = select_output(raw, self.output), select_output(pulled, self.output)
            if output.dim() < 2:
                raise ValueError(f"the model output has shape {tuple(output.shape)}; onnxcam needs a batch axis "
                                 "and at least one more ([N, classes], [N, D], [N, classes, H, W]…)")
            seed_rows = seed_rows.to(output.dtype)
            captured = list(self._captured)
            attention = [self._attention[block] for block in self.attention_blocks]
            plain_inputs = [input] if "plain" in self.input_gradients else []
            gradients = torch.autograd.grad(pulled, captured + attention + plain_inputs, grad_outputs=seed_rows,
                                            retain_graph=True)
            input_gradients = list(gradients[len(captured) + len(attention):])
            attention_gradients = list(gradients[len(captured):len(captured) + len(attention)])
            gradients = gradients[:len(captured)]
            if "guided" in self.input_gradients:
                GuidedReLU.guided = True
                try:
                    input_gradients += torch.autograd.grad(pulled, [input], grad_outputs=seed_rows)
                finally:
                    GuidedReLU.guided = False
        activations = [to_feature_map(a, r, t) for a, r, t in zip(captured, self.reshapes, self.tokens)]
        gradients = [to_feature_map(g, r, t) for g, r, t in zip(gradients, self.reshapes, self.tokens)]
        # a GAP + linear head: ∂(seed · (W·mean(A) + b))/∂mean(A) = seed · W, the CAM weights of the target
        cam_weights = [seed_rows @ head.weight for head, used in zip(self.cam_heads, self.has_cam_head) if used]
        return (output.detach(), *[a.detach() for a in activations], *gradients,
                *[w.detach() for w in cam_weights], *input_gradients,
                *[a.detach() for a in attention], *attention_gradients,
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
    output: str | int | None = None,
    fp16: bool = False,
    attention: str | Sequence[str] | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> dict:
    """Write the explainer graph of ``model`` to ``path`` and return its metadata record.

    model: ``[N,C,H,W] →`` a tensor ``[N, …]`` (class scores ``[N, classes]``, one logit
    ``[N, 1]``, embeddings ``[N, D]``, segmentation maps ``[N, classes, H, W]``…) or a dict /
    tuple of them; it is copied and put in eval mode.
    output: which entry of a dict (key) or tuple (index) to explain; default the first.
    layers: dotted module names (``"layer4"``, ``"features.denseblock4"``).
    input_shape: an example ``(N, C, H, W)``; N stays dynamic in the graph (N ≥ 2 traces best).
    reshape: per layer, ``auto`` | ``none`` | ``tokens`` (``[N,T,C]`` → grid, class token
    dropped) | ``nhwc``. ``auto`` reads a 4-D layer's layout off the ops that make and read it
    (``layers.LayoutTracer``) and refuses, asking for ``none`` or ``nhwc``, where they do not say.
    preprocessing: ``{"size": [H, W], "resize": int|None, "mean": [...], "std": [...],
    "channel_order": "RGB", "scale": 255.0}``; defaults to ImageNet constants at the input size.
    labels: class names, index = class id.
    example: an input batch to trace with (default: a seeded random batch of ``input_shape``).
    input_gradients: also output ∂score/∂input: ``"plain"`` (``input_gradient``, for vanilla
    saliency) and/or ``"guided"`` (``guided_gradient``: every ``nn.ReLU``/``nn.ReLU6`` module's
    backward replaced by guided backprop's, for Guided Backprop and Guided Grad-CAM).
    fp16: write a float16 graph (``precision.convert_to_fp16``: float32 inputs and outputs).
    attention: also output the attention probabilities ``[rows, heads, T, T]`` of these blocks and
    their gradients: ``"all"``, or module names (``attention.choose_blocks``); fused attention
    kernels run as explicit maths while tracing (``attention.py``). Rollout methods need ``"all"``.

    Before ``path`` is written, the graph is loaded with onnxruntime (CPU) and run on a seeded
    random batch; its ``output`` rows must equal the model's own output (eval mode, no grad)
    within ``EXPORT_TOLERANCE`` of the output's scale. Otherwise ``ValueError`` and no file.
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
    grids: list[tuple[int, int]] = []  # every convolution's output grid: a ViT's patch embedding among them
    handles += [module.register_forward_hook(lambda m, i, o: grids.append(tuple(o.shape[-2:])))
                for module in model.modules() if isinstance(module, nn.Conv2d)]
    with torch.no_grad(), trace_layouts(model, layers) as tracer:
        raw_output = model(example)
    explained = select_output(raw_output, output)
    if explained.dim() < 2:
        raise ValueError(f"the model output has shape {tuple(explained.shape)}; onnxcam needs [N, …] with a batch axis")
    source = output_choices(raw_output) if output in (None, "") else str(output)
    for handle in handles:
        handle.remove()
    if len(raw) != len(layers):
        raise ValueError(
            "a chosen layer ran more or fewer than once in one forward pass; "
            "choose a layer that runs exactly once (not a shared module)"
        )
    reshapes = [resolve_reshape(r, a, e, n) for r, a, e, n in zip(reshapes, raw, tracer.evidence, layers)]
    layer_tokens = [token_layout(int(a.shape[1]), grids) if r == "tokens" else None for a, r in zip(raw, reshapes)]
    feature_maps = [to_feature_map(a, r, t) for a, r, t in zip(raw, reshapes, layer_tokens)]
    blocks, complete, attention_shapes = [], False, []
    if attention:
        blocks, complete, attention_shapes = choose_blocks(model, example, attention)
    tokens = (token_layout(attention_shapes[0][-1], grids) if blocks
              else next((t for t in layer_tokens if t is not None), None))
    cam_heads = [find_cam_head(model, f, explained) if explained.dim() == 2 else None for f in feature_maps]

    if "guided" in input_gradients and _replace_relus(model) == 0:
        warnings.warn("the model has no nn.ReLU/ReLU6 modules: its guided gradient equals the plain input gradient")
    output_shape = [int(s) for s in explained.shape[1:]]
    share_at_input = bool(input_gradients) or bool(blocks) or reads_seed(model) or not _rows_can_repeat_at_layer(
        model, layers, reshapes, cam_heads, example, output, output_shape, layer_tokens)
    wrapper = ExplainerModule(model, layers, reshapes, cam_heads, input_gradients, share_at_input, output,
                              layer_tokens, blocks).eval()
    # two targets an image, so that K stays symbolic
    seed = torch.randn(batch, 2, *output_shape, generator=torch.Generator().manual_seed(1))
    batch_dim = torch.export.Dim("batch", min=1)
    targets_dim = torch.export.Dim("targets", min=1, max=MAX_TARGETS)

    with _tracing_context():
        program = torch.export._trace._export(
            wrapper, (example, seed),
            dynamic_shapes={"input": {0: batch_dim}, "seed": {0: batch_dim, 1: targets_dim}},
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
    attention_records = [contract.Attention(block, tuple(int(s) for s in shape[1:]), contract.attention_name(i),
                                            contract.attention_gradient_name(i))
                         for i, (block, shape) in enumerate(zip(blocks, attention_shapes))]
    tail_markers = [f"onnxcam_tail_input_{i}" for i in range(len(layers))]
    output_names = [contract.OUTPUT]
    output_names += [l.activation for l in described] + [l.gradient for l in described]
    output_names += [l.cam_weight for l in described if l.cam_weight]
    output_names += list(gradient_outputs.values())
    output_names += [a.probabilities for a in attention_records] + [a.gradient for a in attention_records]
    output_names += tail_markers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program, (example, seed), input_names=[contract.INPUT, contract.SEED],
            output_names=output_names,
            opset_version=OPSET, dynamo=True, optimize=True, verbose=False,
            custom_translation_table=onnx_rules.table(),
        )
    model_proto = onnx_program.model_proto
    tails = onnx_passes.find_tails(model_proto, tail_markers, [list(r.shape[1:]) for r in raw], contract.OUTPUT)
    described = [dataclasses.replace(layer, tail=_tail_record(tail, raw_output, reshape))
                 for layer, tail, raw_output, reshape in zip(described, tails, raw, reshapes)]
    record = contract.metadata_record(
        input_shape=tuple(example.shape[1:]), output_shape=output_shape, layers=described,
        preprocessing=preprocessing, labels=labels, architecture=architecture, exporter=_exporter_version(),
        input_gradients=gradient_outputs, output_source=source, tokens=tokens, attention=attention_records,
        attention_complete=complete,
    )
    onnx_passes.drop_matmul_broadcast_expands(model_proto)
    _name_batch_dimension(model_proto)
    wrapper.remove_hooks()

    def reference(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return select_output(model(torch.from_numpy(images)), output).float().numpy()

    def convert(temporary: Path) -> dict:
        from onnxcam.export.precision import convert_to_fp16

        progress("converting to float16 …")
        return convert_to_fp16(temporary, temporary)

    def check(temporary: Path) -> None:
        progress("checking the graph against the model …")
        check_explainer(temporary, reference, EXPORT_TOLERANCE["float16" if fp16 else "float32"],
                        what="the exported graph", error=ValueError,
                        advice="export another layer, or report this with the model")

    return write_checked(model_proto, record, Path(path), check, convert if fp16 else None)


def reads_seed(model: nn.Module) -> bool:
    """Whether ``model(input, seed_rows)`` takes the seed rows ``[N·K, *O]`` too, to build a cheaper
    backward exact for the seeds it accepts (``models/detection.py``: ``LocalRawHeads``); it returns
    the output and a tensor of the same values whose backward is the cheaper one. Its rows are
    then one per (image, target) from the input on."""
    return bool(getattr(model, "reads_seed", False))


def _rows_can_repeat_at_layer(model, layers, reshapes, cam_heads, example, output, output_shape, tokens) -> bool:
    """Whether the model still runs when rows are repeated from the first chosen layer on
    (false when a tensor from before the layer is combined with one after it, as U-Nets
    and FPNs do); if not, rows are repeated from the input."""
    wrapper = ExplainerModule(model, layers, reshapes, cam_heads, output=output, tokens=tokens)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # two images, so that a [2]-row tensor meeting a [4]-row one fails (one image would broadcast)
            outputs = wrapper(example[:2], torch.ones(2, 2, *output_shape))
        return outputs[0].shape[0] == 4
    except RuntimeError:
        return False
    finally:
        wrapper.remove_hooks()


def _tail_record(tail: tuple[str, list[str]] | None, raw_output: torch.Tensor, reshape: str) -> dict | None:
    """What the runtime needs to run the model from a layer's output on (Ablation-CAM): the
    tensor the rest of the model reads, its shape without the batch, its channel axis, and the
    side tensors the rest also reads (``subgraph.tail_sides``)."""
    if tail is None:
        return None
    return {"input": tail[0], "shape": [int(s) for s in raw_output.shape[1:]],
            "channel_axis": 1 if reshape == "none" else raw_output.dim() - 1, "sides": list(tail[1])}


def _name_batch_dimension(model_proto) -> None:
    """Name the symbolic sizes as the contract does: ``batch`` (images), ``targets`` (K) and
    ``rows`` (N·K, every output's first axis); the tracer calls them ``s0``, ``s28``, ``s28*s31``…"""
    inputs = {value.name: value for value in model_proto.graph.input}
    names = {}
    for input_name, axis, name in ((contract.INPUT, 0, "batch"), (contract.SEED, 1, "targets")):
        symbol = inputs[input_name].type.tensor_type.shape.dim[axis].dim_param
        if symbol:
            names[symbol] = name
    for value in [*model_proto.graph.input, *model_proto.graph.output, *model_proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
    for value in model_proto.graph.output:
        first = value.type.tensor_type.shape.dim[0]
        first.Clear()
        first.dim_param = "rows"


def _exporter_version() -> str:
    return f"onnxcam {onnxcam_version()}, torch {torch.__version__}"


@contextlib.contextmanager
def _tracing_context():
    """The math attention kernel (its backward decomposes into plain matmuls), interpolation as
    matrix products (``interpolation.py``: its traced backward is a slow scatter), quiet logs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]), interpolation.as_matrix_products(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
