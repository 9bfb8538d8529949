"""Attention matrices as pictures, with numpy and OpenCV only (no matplotlib, no seaborn).

A transformer block's attention probabilities ``[heads, T, T]`` (row ``q``: how query token
``q`` spreads its attention over the ``T`` key tokens; each row sums to 1) become:

- ``matrix_heatmap``: the ``[T, T]`` matrix as a heatmap, query by row, key by column, as
  ``seaborn.heatmap`` draws it, with token labels, axis titles and a colour bar;
- ``query_map``: one query token's row over the patch tokens, laid out on the patch grid
  (``[h, w]``), for an overlay on the image.

Tokens are ``Tokens.prefix`` leading tokens (class, distillation, register) followed by the
``h × w`` patches row by row (``onnxcam.runtime.contract.Tokens``). The colours are those of
onnxcam's overlays (``onnxcam.runtime.image.colorize``, jet).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from onnxcam.runtime.contract import InputError
from onnxcam.runtime.image import colorize
from onnxcam.runtime.methods import attention_rollout

if TYPE_CHECKING:
    from onnxcam.runtime.contract import Tokens

FUSIONS = tuple(attention_rollout.FUSIONS)  # mean, max, min: the head fusions rollout knows too
CLASS_TOKEN = "cls"

FONT = cv2.FONT_HERSHEY_SIMPLEX
LABEL_SCALE = 0.4  # tick labels: about 9 pixels high
TITLE_SCALE = 0.5  # axis titles and the title
LABEL_CHARACTERS = 14  # longer token names are cut (…"..")
MATRIX_PIXELS = 900  # the matrix side aimed at: 4-pixel cells for ViT-B/16's 197 tokens
LARGEST_CELL = 48  # small matrices: cells of at most 48 pixels
PAD = 10
BAR_WIDTH = 18
INK = 0  # text and frames: black on white


def head_choice(head: int | str, heads: int) -> int | str:
    """``head`` checked against ``heads``: a head index ``0..heads-1`` (an int, or its digits as text)
    or one of ``FUSIONS``; an ``InputError`` (one line) otherwise."""
    text = str(head).strip().lower()
    if text in FUSIONS:
        return text
    try:
        index = int(text)
    except ValueError:
        index = None
    if index is None or not 0 <= index < heads:
        raise InputError(f"head {head} is not one of this block's heads: give a head 0..{heads - 1} "
                         f"or a fusion of all {heads}: {', '.join(FUSIONS)}")
    return index


def fuse_heads(attention: np.ndarray, head: int | str) -> np.ndarray:
    """One head of ``attention`` ``[heads, T, T]``, or their element-wise ``mean``, ``max`` or ``min``:
    ``float32 [T, T]`` (query by row, key by column)."""
    attention = np.asarray(attention, dtype=np.float32)
    if attention.ndim != 3 or attention.shape[1] != attention.shape[2]:
        raise InputError(f"attention must be [heads, T, T], got shape {list(attention.shape)}")
    choice = head_choice(head, attention.shape[0])
    if isinstance(choice, int):
        return attention[choice].copy()
    return attention_rollout.fuse_heads(attention[None], choice)[0].astype(np.float32)


def _check_tokens(tokens: Tokens, count: int) -> None:
    h, w = tokens.grid
    if tokens.prefix + h * w != count:
        raise InputError(f"the attention has {count} tokens, but the graph's tokens are {tokens.prefix} + "
                         f"{h}x{w} patches = {tokens.prefix + h * w}; re-export the graph")


def token_labels(tokens: Tokens | None, count: int, names: Sequence[str] | None = None) -> list[str]:
    """A label for each of ``count`` tokens: ``names`` where given (one per token, e.g. a text model's
    words); else ``cls`` for the first prefix token, ``tok1``, ``tok2``… for further prefix tokens
    (distillation, register) and ``r,c`` (row, column on the patch grid) for the patches; token
    indices where the graph does not say how its tokens lie (``tokens`` None)."""
    if names is not None:
        names = [str(name) for name in names]
        if len(names) != count:
            raise InputError(f"{len(names)} token names were given but the attention has {count} tokens; "
                             "give one name per token, one a line")
        return names
    if tokens is None:
        return [str(i) for i in range(count)]
    _check_tokens(tokens, count)
    prefix = [CLASS_TOKEN] + [f"tok{i}" for i in range(1, tokens.prefix)]
    h, w = tokens.grid
    return prefix[:tokens.prefix] + [f"{r},{c}" for r in range(h) for c in range(w)]


def query_token(text: str | int | None, tokens: Tokens, count: int) -> int:
    """The index of the query token ``text`` names: an index ``0..count-1``, ``cls`` (the first prefix
    token) or ``r,c`` (a patch: row, column on the grid). None: the class token where there is one,
    else the centre patch. An ``InputError`` (one line) for a token the block does not have."""
    _check_tokens(tokens, count)
    h, w = tokens.grid
    forms = f"give an index 0..{count - 1}" + (", cls" if tokens.prefix else "") + \
        f" or a patch row,column (0,0..{h - 1},{w - 1})"
    if text is None:
        return 0 if tokens.prefix else tokens.prefix + (h // 2) * w + w // 2
    words = str(text).strip().lower()
    if words == CLASS_TOKEN:
        if not tokens.prefix:
            raise InputError(f"query 'cls': this model has no class token (its {count} tokens are all "
                             f"patches); {forms}")
        return 0
    if "," in words:
        try:
            row, column = (int(part) for part in words.split(","))
        except ValueError:
            raise InputError(f"query {text!r} is not a token; {forms}") from None
        if not (0 <= row < h and 0 <= column < w):
            raise InputError(f"query patch {row},{column} is out of range: the patch grid is {h}x{w}; {forms}")
        return tokens.prefix + row * w + column
    try:
        index = int(words)
    except ValueError:
        raise InputError(f"query {text!r} is not a token; {forms}") from None
    if not 0 <= index < count:
        raise InputError(f"query token {index} is out of range: the block has {count} tokens; {forms}")
    return index


def token_slug(tokens: Tokens, index: int) -> str:
    """A file-name part for token ``index``: ``cls``, ``tok1``…, or ``r-c`` for a patch."""
    return token_labels(tokens, tokens.prefix + tokens.grid[0] * tokens.grid[1])[index].replace(",", "-")


def query_map(attention_row: np.ndarray, tokens: Tokens) -> np.ndarray:
    """One query token's attention ``[T]`` over the patch tokens, on the patch grid: ``float32 [h, w]``
    (the prefix tokens dropped; patch ``(r, c)`` is token ``prefix + r·w + c``)."""
    row = np.asarray(attention_row, dtype=np.float32).reshape(-1)
    _check_tokens(tokens, row.size)
    h, w = tokens.grid
    return row[tokens.prefix:].reshape(h, w).copy()


def _printable(text: str, limit: int = LABEL_CHARACTERS) -> str:
    """``text`` as OpenCV's Hershey fonts can draw it (ASCII; others as ``?``), cut to ``limit`` characters."""
    text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return text if len(text) <= limit else text[:limit - 2] + ".."


def _text(text: str, scale: float) -> np.ndarray:
    """``text`` in black on white: grey ``uint8 [h, w]``, tight around the letters (descenders included)."""
    (width, height), baseline = cv2.getTextSize(text or " ", FONT, scale, 1)
    image = np.full((height + baseline + 2, width + 2), 255, np.uint8)
    cv2.putText(image, text, (1, height + 1), FONT, scale, INK, 1, cv2.LINE_AA)
    return image


def _paste(canvas: np.ndarray, stamp: np.ndarray, top: int, left: int) -> None:
    """Darken ``canvas`` (RGB) with the grey ``stamp`` at ``(top, left)``, clipped to the canvas."""
    top, left = int(top), int(left)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + stamp.shape[0], canvas.shape[0]), min(left + stamp.shape[1], canvas.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    part = stamp[y0 - top:y1 - top, x0 - left:x1 - left, None]
    np.minimum(canvas[y0:y1, x0:x1], part, out=canvas[y0:y1, x0:x1])


def cell_size(count: int) -> int:
    """Pixels per matrix cell for ``count`` tokens: the matrix about ``MATRIX_PIXELS`` wide, cells at most
    ``LARGEST_CELL`` and at least 1."""
    return max(1, min(LARGEST_CELL, MATRIX_PIXELS // max(count, 1)))


def _format(value: float) -> str:
    return f"{value:.3g}"


def matrix_heatmap(matrix: np.ndarray, labels: Sequence[str], title: str = "") -> np.ndarray:
    """An attention matrix ``[T, T]`` drawn as ``seaborn.heatmap`` draws it: RGB ``uint8 [H', W', 3]``.

    Query tokens are the rows (y axis, top to bottom), key tokens the columns (x axis, left to
    right); a cell's colour is its weight on the jet map of onnxcam's overlays, from the matrix's
    minimum (dark blue) to its maximum (dark red), which the colour bar on the right names. Each cell
    is ``cell_size(T)`` pixels square; token ``labels`` (one per token) stand left of the rows and,
    turned, below the columns: all of them where they fit, else every k-th, so that none overlap.
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    count = matrix.shape[0]
    if matrix.ndim != 2 or matrix.shape[1] != count or count == 0:
        raise InputError(f"an attention matrix must be [T, T], got shape {list(matrix.shape)}")
    if len(labels) != count:
        raise InputError(f"{len(labels)} labels for {count} tokens; give one label per token")
    cell = cell_size(count)
    side = cell * count
    low, high = float(np.min(matrix)), float(np.max(matrix))
    levels = (matrix - low) / (high - low) if high > low else np.zeros_like(matrix)
    picture = np.repeat(np.repeat(colorize(levels), cell, axis=0), cell, axis=1)

    stamps = [_text(_printable(label), LABEL_SCALE) for label in labels]
    pitch = max(s.shape[0] for s in stamps) + 2  # the room one label needs across its line
    step = -(-pitch // cell)  # label every step-th token
    shown = range(0, count, step)
    label_length = max(stamps[i].shape[1] for i in shown)
    query_title = np.rot90(_text("query", TITLE_SCALE))  # reads bottom to top, as matplotlib's ylabel
    key_title = _text("key", TITLE_SCALE)
    title_stamp = _text(_printable(title, 120), TITLE_SCALE) if title else np.full((0, 0), 255, np.uint8)
    bar_ticks = [_text(_format(high), LABEL_SCALE), _text(_format(low), LABEL_SCALE)]

    top = PAD + title_stamp.shape[0] + (PAD if title else 0)
    left = PAD + query_title.shape[1] + PAD + label_length + 4
    bar_left = left + side + 2 * PAD
    width = max(bar_left + BAR_WIDTH + 6 + max(t.shape[1] for t in bar_ticks) + PAD,
                left + side // 2 + title_stamp.shape[1] // 2 + PAD)
    height = top + side + 4 + label_length + PAD + key_title.shape[0] + PAD
    canvas = np.full((height, width, 3), 255, np.uint8)
    canvas[top:top + side, left:left + side] = picture

    for i in shown:  # rows: right-aligned next to the matrix; columns: turned, their ends at the matrix
        centre = i * cell + cell // 2
        _paste(canvas, stamps[i], top + centre - stamps[i].shape[0] // 2, left - 4 - stamps[i].shape[1])
        turned = np.rot90(stamps[i])
        _paste(canvas, turned, top + side + 4, left + centre - turned.shape[1] // 2)
    _paste(canvas, query_title, top + side // 2 - query_title.shape[0] // 2, PAD)
    _paste(canvas, key_title, top + side + 4 + label_length + PAD, left + side // 2 - key_title.shape[1] // 2)
    if title:
        _paste(canvas, title_stamp, PAD, max(PAD, left + side // 2 - title_stamp.shape[1] // 2))

    bar = colorize(np.linspace(1.0, 0.0, side, dtype=np.float32)[:, None].repeat(BAR_WIDTH, axis=1))
    canvas[top:top + side, bar_left:bar_left + BAR_WIDTH] = bar
    cv2.rectangle(canvas, (bar_left - 1, top - 1), (bar_left + BAR_WIDTH, top + side), (INK,) * 3, 1)
    for y, tick in ((top, bar_ticks[0]), (top + side - 1, bar_ticks[1])):
        cv2.line(canvas, (bar_left + BAR_WIDTH, y), (bar_left + BAR_WIDTH + 3, y), (INK,) * 3, 1)
        _paste(canvas, tick, min(max(y - tick.shape[0] // 2, 0), height - tick.shape[0]),
               bar_left + BAR_WIDTH + 6)
    return canvas
