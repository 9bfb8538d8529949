"""Finding layers by dotted name, telling where their channels are, and turning their outputs
into ``[N, C, h, w]`` maps."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from onnxcam.export.tokens import token_layout
from onnxcam.runtime.contract import Tokens

RESHAPES = ("auto", "none", "tokens", "nhwc")


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (dotted path, as in ``model.named_modules()``)."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"layer {name!r} does not exist in {type(model).__name__}.{hint} "
        "List the names with: python -c \"print([n for n, _ in model.named_modules()])\""
    )


def resolve_reshape(reshape: str, sample: torch.Tensor, evidence: dict[str, str] | None = None,
                    name: str = "the layer") -> str:
    """Pick the reshape for a layer output: ``tokens`` for ``[N,T,C]``; for a 4-D map ``none``
    (``[N,C,h,w]``) or ``nhwc`` (``[N,h,w,C]``) as ``evidence`` (``LayoutTracer``: ``{layout: the
    op that says so}``) says. A 4-D map about which the model says nothing, or contradicts itself,
    is refused: the user must say with ``--reshape``."""
    if reshape not in RESHAPES:
        raise ValueError(f"unknown reshape {reshape!r}; choose one of {', '.join(RESHAPES)}")
    if reshape != "auto":
        return reshape
    if sample.dim() == 3:
        return "tokens"
    if sample.dim() != 4:
        raise ValueError(
            f"layer output has shape {tuple(sample.shape)}; onnxcam explains [N,C,h,w] feature maps "
            "or [N,tokens,C] token sequences"
        )
    evidence = evidence or {}
    if len(evidence) == 1:
        return next(iter(evidence))
    shape = [int(s) for s in sample.shape[1:]]
    written = f"[N, {', '.join(map(str, shape))}]"
    ask = (f"pass --reshape nhwc if it is [N,h,w,C] (C = {shape[2]}), or --reshape none if it is "
           f"[N,C,h,w] (C = {shape[0]})")
    if not evidence:
        raise ValueError(f"cannot tell where the channels of {name!r} {written} are (no convolution, pooling, "
                         f"permute or linear layer next to it in the model says); {ask}")
    said = "; ".join(f"{op} says {'channels last' if layout == 'nhwc' else 'channels first'}"
                     for layout, op in sorted(evidence.items()))
    raise ValueError(f"cannot tell where the channels of {name!r} {written} are: the ops around it "
                     f"disagree ({said}); {ask}")


# What a torch op says about the layout of a 4-D tensor it makes or reads (the names as
# ``__torch_function__`` sees them, underscores stripped).
CHANNELS_FIRST_OPS = {
    "conv2d", "conv_transpose2d", "max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "lp_pool2d",
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices", "fractional_max_pool2d",
    "max_unpool2d", "batch_norm", "instance_norm", "group_norm", "local_response_norm", "pixel_shuffle",
    "pixel_unshuffle", "interpolate", "upsample", "upsample_bilinear", "upsample_nearest", "grid_sample",
    "dropout2d",
}
# ops whose 4-D output has the layout of their 4-D inputs (elementwise maths, moves along axes)
LAYOUT_KEEPING_OPS = {
    "add", "radd", "iadd", "sub", "rsub", "isub", "mul", "rmul", "imul", "div", "rdiv", "idiv", "truediv",
    "rtruediv", "itruediv", "true_divide", "pow", "rpow", "ipow", "neg", "abs", "exp", "log", "sqrt", "rsqrt",
    "maximum", "minimum", "where", "clamp", "clip", "clamp_min", "clamp_max", "relu", "relu6", "hardtanh",
    "gelu", "silu", "sigmoid", "hardsigmoid", "hardswish", "tanh", "elu", "selu", "celu", "leaky_relu",
    "prelu", "softplus", "mish", "threshold", "dropout", "alpha_dropout", "feature_alpha_dropout", "clone",
    "contiguous", "to", "float", "half", "double", "type", "type_as", "detach", "cat", "concat", "concatenate",
    "pad", "roll", "narrow", "split", "chunk", "getitem",
}
TO_CHANNELS_LAST, TO_CHANNELS_FIRST = (0, 2, 3, 1), (0, 3, 1, 2)
_TAG, _FLAGS = "_onnxcam_layout", "_onnxcam_layers"


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _permutation(args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    dims = kwargs.get("dims", args[1:])
    if len(dims) == 1 and isinstance(dims[0], (list, tuple, torch.Size)):
        dims = dims[0]
    try:
        return tuple(int(d) % 4 for d in dims) if len(dims) == 4 else None
    except (TypeError, ValueError):
        return None


def _reduced_axes(args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if isinstance(dims, int):
        dims = (dims,)
    if not isinstance(dims, (list, tuple)):
        return None
    try:
        return tuple(sorted(int(d) % 4 for d in dims))
    except (TypeError, ValueError):
        return None


def _normalises_last_axis(first, args: tuple, kwargs: dict) -> bool:
    shape = args[1] if len(args) > 1 else kwargs.get("normalized_shape", ())
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return isinstance(first, torch.Tensor) and first.dim() == 4 and shape == (first.shape[-1],)


class LayoutTracer(torch.overrides.TorchFunctionMode):
    """Tells, while the model runs once, where the channels of each chosen layer's 4-D output are.

    Every 4-D tensor the model makes gets a layout tag from the op that made it: channels first
    from a convolution, pooling, BatchNorm or interpolation (they read and write ``[N,C,h,w]``),
    channels last from ``permute(0,2,3,1)``, a ``linear`` or a ``layer_norm`` over the last axis
    of a 4-D tensor; elementwise ops, concatenation, padding and slicing pass their inputs' tag on.
    The layer's output is also followed forward through such ops, and what reads it speaks too:
    a convolution, pooling or ``permute(0,2,3,1)`` (channels first), a ``permute(0,3,1,2)``, a
    ``linear`` or a ``layer_norm`` over the last axis (channels last), a mean over axes (1, 2)
    (last) or (2, 3) (first). ``evidence[i]`` is ``{layout: the op that says so}`` for layer ``i``
    (``none`` or ``nhwc``; both where the model contradicts itself, empty where nothing says).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        super().__init__()
        self.evidence: list[dict[str, str]] = [{} for _ in layers]
        self._hooks = [find_layer(model, name).register_forward_hook(self._hook(index))
                       for index, name in enumerate(layers)]

    def _hook(self, index: int):
        def mark(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                tag = getattr(output, _TAG, None)
                if tag is not None:
                    self._say(index, tag)
                with contextlib.suppress(Exception):  # a tensor that takes no attributes is just not followed
                    setattr(output, _FLAGS, getattr(output, _FLAGS, frozenset()) | {index})
        return mark

    def _say(self, index: int, tag: dict[str, str]) -> None:
        for layout, op in tag.items():
            self.evidence[index].setdefault(layout, op)

    def remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        with contextlib.suppress(Exception):  # observing must never break the model's forward
            self._observe(getattr(func, "__name__", "").strip("_"), args, kwargs, result)
        return result

    def _observe(self, name: str, args: tuple, kwargs: dict, result) -> None:
        inputs = [t for t in _tensors(list(args) + list(kwargs.values())) if t.dim() == 4]
        outputs = [t for t in _tensors(result) if t.dim() == 4]
        first = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("input")
        says: dict[str, str] = {}  # what the op says about its first input (read) and its outputs (made)
        made: dict[str, str] | None = None
        if name in CHANNELS_FIRST_OPS:
            says = made = {"none": name}
        elif name == "permute":
            perm = _permutation(args, kwargs)
            if perm in (TO_CHANNELS_LAST, TO_CHANNELS_FIRST):
                text = f"permute{perm}"
                says = {"none" if perm == TO_CHANNELS_LAST else "nhwc": text}
                made = {"nhwc" if perm == TO_CHANNELS_LAST else "none": text}
        elif name == "linear" or (name == "layer_norm" and _normalises_last_axis(first, args, kwargs)):
            says = made = {"nhwc": f"{name} over the last axis"}
        elif name in ("mean", "sum", "amax", "amin", "max", "min", "logsumexp", "nanmean"):
            axes = _reduced_axes(args, kwargs)
            if axes in ((1, 2), (2, 3)):
                says = {"nhwc" if axes == (1, 2) else "none": f"{name} over axes {axes}"}
        if isinstance(first, torch.Tensor) and first.dim() == 4:
            for index in getattr(first, _FLAGS, ()):
                self._say(index, says)
        if name in LAYOUT_KEEPING_OPS:
            made, flags = {}, frozenset()
            for tensor in inputs:
                for layout, op in getattr(tensor, _TAG, {}).items():
                    made.setdefault(layout, op)
                flags |= getattr(tensor, _FLAGS, frozenset())
            for tensor in outputs:
                if flags:
                    setattr(tensor, _FLAGS, getattr(tensor, _FLAGS, frozenset()) | flags)
        if made:
            for tensor in outputs:
                setattr(tensor, _TAG, made)


@contextlib.contextmanager
def trace_layouts(model: nn.Module, layers: Sequence[str]) -> Iterator[LayoutTracer]:
    """``with trace_layouts(model, layers) as tracer: model(x)``, then read ``tracer.evidence``."""
    tracer = LayoutTracer(model, layers)
    try:
        with tracer:
            yield tracer
    finally:
        tracer.remove_hooks()


def to_feature_map(output: torch.Tensor, reshape: str, tokens: Tokens | None = None) -> torch.Tensor:
    """``[N, C, h, w]`` view of a layer output.

    ``tokens``: ``[N, T, C]`` → drop the ``tokens.prefix`` leading tokens, lay the rest on
    ``tokens.grid`` (default: ``token_layout(T)``, a square after 1, 0 or 2 leading tokens).
    ``nhwc``: ``[N, h, w, C]`` → ``[N, C, h, w]``.
    """
    if reshape == "none":
        return output
    if reshape == "nhwc":
        return output.permute(0, 3, 1, 2)
    if reshape == "tokens":
        tokens = tokens or token_layout(int(output.shape[1]))
        prefix, (height, width) = tokens.prefix, tokens.grid
        grid = output[:, prefix:, :].reshape(output.shape[0], height, width, output.shape[2])
        return grid.permute(0, 3, 1, 2)
    raise ValueError(f"unknown reshape {reshape!r}")
