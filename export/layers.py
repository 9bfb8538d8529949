"""Finding layers by dotted name and turning their outputs into ``[N, C, h, w]`` maps."""

from __future__ import annotations

import difflib

import torch
from torch import nn

from onnxcam.export.tokens import token_grid

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


def resolve_reshape(reshape: str, sample: torch.Tensor) -> str:
    """Pick the reshape for a layer output: ``none`` for ``[N,C,h,w]``, ``tokens`` for ``[N,T,C]``."""
    if reshape not in RESHAPES:
        raise ValueError(f"unknown reshape {reshape!r}; choose one of {', '.join(RESHAPES)}")
    if reshape != "auto":
        return reshape
    if sample.dim() == 4:
        return "none"
    if sample.dim() == 3:
        return "tokens"
    raise ValueError(
        f"layer output has shape {tuple(sample.shape)}; onnxcam explains [N,C,h,w] feature maps "
        "or [N,tokens,C] token sequences"
    )


def to_feature_map(output: torch.Tensor, reshape: str) -> torch.Tensor:
    """``[N, C, h, w]`` view of a layer output.

    ``tokens``: ``[N, T, C]`` → drop leading class tokens, lay the rest on a square grid.
    ``nhwc``: ``[N, h, w, C]`` → ``[N, C, h, w]``.
    """
    if reshape == "none":
        return output
    if reshape == "nhwc":
        return output.permute(0, 3, 1, 2)
    if reshape == "tokens":
        prefix, height, width = token_grid(int(output.shape[1]))
        grid = output[:, prefix:, :].reshape(output.shape[0], height, width, output.shape[2])
        return grid.permute(0, 3, 1, 2)
    raise ValueError(f"unknown reshape {reshape!r}")
