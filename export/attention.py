"""Attention probabilities as explainer outputs (docs/explainer-graph.md, "Attention").

Models rarely form ``softmax(QKᵀ/√d)`` as a tensor of their own: ``nn.MultiheadAttention`` and
``F.scaled_dot_product_attention`` run fused kernels. While a model is exported, both run here as explicit maths instead, and each call's probabilities ``[N, heads, Tq, Tk]`` go
through a *tap*: kept (a clone the gradient is taken w.r.t.) and handed on (a second clone the
model multiplies with V). The output is the model's own within float32 rounding; the export
check compares it with the unpatched model.

The explicit maths is also the faster graph: exported through ``nn.MultiheadAttention``'s own
non-fused path (its packed in-projection, batch-first transposes and SDPA's math kernel), a
ViT-B/16 explainer ran Grad-CAM at 0.72× its plain forward on a 2-core CPU, and at 0.88× with
the explicit maths; so every export runs attention this way, tapped or not.

A *block* is the module that runs one attention call: an ``nn.MultiheadAttention``, or the
innermost module that calls ``F.scaled_dot_product_attention`` (timm's and HuggingFace's
``Attention`` modules). ``find_blocks`` lists them in the order the model runs them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tap = Callable[[str, torch.Tensor], torch.Tensor]  # (block name, probabilities) → the tensor the model goes on with


def probabilities(q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                  scale: float | None = None) -> torch.Tensor:
    """``softmax(q·kᵀ·scale + mask)``: ``[..., Tq, d]`` × ``[..., Tk, d]`` → ``[..., Tq, Tk]``
    (``F.scaled_dot_product_attention``'s maths; a boolean mask keeps the True entries)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return torch.softmax(scores, dim=-1)


class AttentionTaps:
    """Within ``with taps.active(model):``, every attention call runs as explicit maths, and the
    calls of the blocks in ``tapped`` hand their probabilities to ``tap``.

    seen: ``(block name, probabilities shape)`` of every call, in order (for ``find_blocks``).
    """

    def __init__(self, tapped: Sequence[str] = (), tap: Tap | None = None):
        self.tapped = set(tapped)
        self.tap = tap
        self.seen: list[tuple[str, tuple[int, ...]]] = []
        self._stack: list[str] = []

    def _attend(self, block: str, probs: torch.Tensor) -> torch.Tensor:
        self.seen.append((block, tuple(probs.shape)))
        if block in self.tapped and self.tap is not None:
            return self.tap(block, probs)
        return probs

    def _sdpa(self, original):
        def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                         scale=None, enable_gqa=False):
            if not self._stack or dropout_p or enable_gqa:
                return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                scale=scale, enable_gqa=enable_gqa)
            probs = self._attend(self._stack[-1], probabilities(query, key, attn_mask, is_causal, scale))
            return torch.matmul(probs, value)
        return scaled_dot_product_attention

    def _multihead(self, name: str, module: nn.MultiheadAttention):
        original = module.forward

        def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                    average_attn_weights=True, is_causal=False):
            if module.bias_k is not None or module.add_zero_attn:
                if name in self.tapped:
                    raise ValueError(f"attention block {name!r} uses bias_k/add_zero_attn, which onnxcam does not "
                                     "export; export without --attention")
                return original(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
            if not module.batch_first:
                query, key, value = (t.transpose(0, 1) for t in (query, key, value))
            if module._qkv_same_embed_dim:
                wq, wk, wv = module.in_proj_weight.chunk(3)
            else:
                wq, wk, wv = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
            bq, bk, bv = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None,) * 3
            heads = module.num_heads
            split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
            q, k, v = split(F.linear(query, wq, bq)), split(F.linear(key, wk, bk)), split(F.linear(value, wv, bv))
            mask = _additive_mask(attn_mask, key_padding_mask, q)
            probs = self._attend(name, probabilities(q, k, mask, is_causal))
            out = torch.matmul(probs, v).transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)
            out = F.linear(out, module.out_proj.weight, module.out_proj.bias)
            if not module.batch_first:
                out = out.transpose(0, 1)
            weights = (probs.mean(dim=1) if average_attn_weights else probs) if need_weights else None
            return out, weights
        return forward

    def _enter(self, name: str):
        def enter(module, inputs) -> None:
            self._stack.append(name)
        return enter

    def _leave(self, module, inputs, output) -> None:
        self._stack.pop()

    @contextlib.contextmanager
    def active(self, model: nn.Module) -> Iterator["AttentionTaps"]:
        handles, replaced = [], []
        for name, module in model.named_modules():
            if isinstance(module, nn.MultiheadAttention):
                module.forward = self._multihead(name, module)
                replaced.append(module)
            else:
                handles.append(module.register_forward_pre_hook(self._enter(name)))
                handles.append(module.register_forward_hook(self._leave))
        original = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = self._sdpa(original)
        try:
            yield self
        finally:
            F.scaled_dot_product_attention = original
            for handle in handles:
                handle.remove()
            for module in replaced:
                del module.forward
            self._stack.clear()


def _additive_mask(attn_mask, key_padding_mask, q: torch.Tensor) -> torch.Tensor | None:
    """``nn.MultiheadAttention``'s two masks as one, broadcastable to ``[N, heads, Tq, Tk]``
    (boolean masks there mean *masked out*, the opposite of SDPA's)."""
    mask = None
    for extra, shape in ((attn_mask, None), (key_padding_mask, (q.shape[0], 1, 1, -1))):
        if extra is None:
            continue
        if extra.dtype == torch.bool:
            extra = torch.zeros_like(extra, dtype=q.dtype).masked_fill(extra, float("-inf"))
        if shape is not None:
            extra = extra.reshape(shape)
        elif extra.dim() == 3:  # [N·heads, Tq, Tk]
            extra = extra.reshape(q.shape[0], q.shape[1], extra.shape[-2], extra.shape[-1])
        mask = extra if mask is None else mask + extra
    return mask


def find_blocks(model: nn.Module, example: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """Every attention call of one forward pass on ``example``: ``(block name, [N, heads, Tq, Tk])``, in order."""
    taps = AttentionTaps()
    # with a gradient to follow, as in the export: fused fast paths (nn.TransformerEncoderLayer's) stay off
    with torch.enable_grad(), taps.active(model):
        model(example.clone().requires_grad_(True))
    return taps.seen


def choose_blocks(model: nn.Module, example: torch.Tensor,
                  asked: str | Sequence[str]) -> tuple[list[str], bool, list[tuple[int, ...]]]:
    """The blocks ``asked`` names (``"all"``, or module names: a block, or a module holding exactly one
    block), checked: each runs once, as global self-attention over the image's tokens. Returns the
    block names in the order the model runs them, whether they are all of the model's blocks, and
    each one's probabilities shape ``[N, heads, T, T]``."""
    seen = find_blocks(model, example)
    if not seen:
        own = sorted({type(m).__name__ for m in model.modules() if "attention" in type(m).__name__.lower()})
        if own:
            windowed = " (windowed attention, as Swin's, is not a token × token matrix of the image either)" \
                if any("window" in name.lower() for name in own) else ""
            raise ValueError(f"the model's attention modules ({', '.join(own)}) compute attention with their own "
                             "maths, not nn.MultiheadAttention or F.scaled_dot_product_attention, so onnxcam cannot "
                             f"output it{windowed}; export without --attention and explain a layer")
        raise ValueError("the model runs no attention (nn.MultiheadAttention or F.scaled_dot_product_attention); "
                         "export without --attention")
    names = [name for name, _ in seen]
    asked = [asked] if isinstance(asked, str) else list(asked)
    if asked == ["all"]:
        chosen = list(dict.fromkeys(names))
    else:
        chosen = []
        for wanted in asked:
            inside = list(dict.fromkeys(n for n in names if n == wanted or n.startswith(wanted + ".")))
            if len(inside) != 1:
                found = "no attention" if not inside else f"{len(inside)} attention blocks ({inside[:3]}…)"
                raise ValueError(f"--attention {wanted!r}: that module runs {found}; name one of the model's "
                                 f"attention blocks, e.g. {names[0]!r}, or give 'all'")
            chosen.append(inside[0])
    found = []
    for block in chosen:
        shapes = [shape for name, shape in seen if name == block]
        if len(shapes) != 1:
            raise ValueError(f"attention block {block!r} runs {len(shapes)} times in one forward pass; "
                             "choose blocks that run once")
        batch, _, queries, keys = shapes[0]
        if batch != example.shape[0] or queries != keys:
            raise ValueError(f"attention block {block!r} computes attention of shape {list(shapes[0])}, not "
                             f"[N={example.shape[0]}, heads, T, T]: windowed (Swin) or cross attention is not a "
                             "token × token matrix of the image; --attention takes global self-attention blocks "
                             "(ViT, DeiT)")
        found.append(shapes[0])
    return chosen, set(chosen) == set(names), found
