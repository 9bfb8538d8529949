"""Images in and out: loading, preprocessing from the graph's metadata, overlays.

Reading is bounded: an image's size is read from its header before it is decoded, and
images past the pixel limit (``MAX_PIXELS``, or the environment variable
``ONNXCAM_MAX_PIXELS``) are refused; images far larger than the model's input are decoded
at 1/2, 1/4 or 1/8 of their size (README "Errors").
"""

from __future__ import annotations

import io
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from onnxcam.runtime.contract import Contract, shown

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
FORMATS = "PNG, JPEG, BMP, TIFF, WebP or GIF"
MAX_PIXELS = 100_000_000  # the default pixel limit: 100 megapixels (about 0.3 GB decoded)
MAX_PIXELS_VARIABLE = "ONNXCAM_MAX_PIXELS"
# decode at 1/2, 1/4, 1/8 size while each side keeps the pixels preprocessing resizes to: JPEG's scaled
# decoding averages (an antialiased downscale) and is faster; what cv2.resize is left with is a small step.
# On photos, the view is then closer to torchvision's antialiased Resize than full decoding's (tests/test_image.py)
REDUCED_MARGIN = 1
COLORMAPS = {
    "jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS, "magma": cv2.COLORMAP_MAGMA, "hot": cv2.COLORMAP_HOT,
}
_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


class ImageError(ValueError):
    """A file that cannot be read as an image."""


def pixel_limit() -> int:
    """The largest image (width × height) onnxcam decodes: ``$ONNXCAM_MAX_PIXELS`` or ``MAX_PIXELS``."""
    text = os.environ.get(MAX_PIXELS_VARIABLE)
    if text is None:
        return MAX_PIXELS
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise ImageError(f"{MAX_PIXELS_VARIABLE}={text!r} is not a positive whole number of pixels; "
                         f"set it to e.g. {MAX_PIXELS} or unset it")
    return limit


_QUIET = threading.Lock()
_quiet = {"depth": 0}  # callers inside quiet_native_stderr, on every thread


@contextmanager
def quiet_native_stderr():
    """Silence what native decoders (libpng, libjpeg, OpenCV's logger) print straight to file
    descriptor 2, so that a bad image gives onnxcam's one ``Error:`` line and nothing else.

    Safe from several threads at once (a run's decoders): the first to enter points descriptor 2
    at ``/dev/null`` and the last to leave restores it. Meanwhile Python's own ``sys.stderr``, where
    it is descriptor 2, writes to a copy of the real one, so messages and progress of other threads
    still show; a run wraps its whole pipeline in this, so that decoders never flip it back and forth.
    """
    with _QUIET:
        if _quiet["depth"] == 0:
            _quiet["state"] = _silence()
        _quiet["depth"] += 1
    try:
        yield
    finally:
        with _QUIET:
            _quiet["depth"] -= 1
            if _quiet["depth"] == 0:
                _restore(_quiet.pop("state"))


def _silence():
    """Point descriptor 2 at /dev/null; returns what ``_restore`` needs (None if stderr has no descriptor)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        return None
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    stream = sys.stderr
    try:
        redirect = stream.fileno() == 2
    except (OSError, ValueError, AttributeError):
        redirect = False
    if redirect:  # Python's writes go on to the real stderr
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), encoding=stream.encoding,
                                      errors=stream.errors, line_buffering=True)
    return saved, stream if redirect else None


def _restore(state) -> None:
    if state is None:
        return
    saved, stream = state
    if stream is not None:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = stream
    os.dup2(saved, 2)
    os.close(saved)


def image_size(path: str | Path, data: bytes | None = None) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header, without decoding it (an ``ImageError``
    if the file is missing, empty, not an image, or past the pixel limit)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if data is None:
        if not path.is_file():
            raise ImageError(f"{shown(path)}: no such file" + ("; it is a folder, name the images in it or the "
                                                             "folder as a whole" if path.is_dir() else
                                                             "; check the path"))
        data = _read(path)
    if not data:
        raise ImageError(f"{shown(path)}: the file is empty; remove it or name the images one by one")
    bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # onnxcam's own limit applies, below
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ImageError(f"{shown(path)}: not a readable image (expected {FORMATS}); "
                         "remove it or name the images one by one") from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
    limit = pixel_limit()
    if width * height > limit:
        raise ImageError(f"{shown(path)}: {width}x{height} is {width * height:,} pixels, past the limit of "
                         f"{limit:,}; shrink the image, or raise the limit with {MAX_PIXELS_VARIABLE}=N")
    if width <= 0 or height <= 0:
        raise ImageError(f"{shown(path)}: the header says {width}x{height} pixels; remove it")
    return width, height


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ImageError(f"{shown(path)}: cannot be read ({error.strerror}); check its permissions") from None


def check_image(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file that decodes whole (at 1/8 size, grey: cheap), or an
    ``ImageError``: what ``load_image`` would refuse, found before any work is done."""
    path = Path(path)
    data = _read(path) if path.is_file() else None
    width, height = image_size(path, data)
    _decode(path, data, cv2.IMREAD_REDUCED_GRAYSCALE_8)
    return width, height


def check_header(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file whose header reads and whose data is all there, without
    decoding it: what ``check_image`` finds of a missing, empty, truncated or oversized file at a tenth
    of its cost (a run checks every input before any work this way; a file corrupt inside is found
    when it is decoded). An ``ImageError`` otherwise."""
    path = Path(path)
    data = _read(path) if path.is_file() else None
    size = image_size(path, data)
    if not complete(data):
        raise ImageError(f"{shown(path)}: not a readable image (truncated or corrupt {FORMATS} file); "
                         "remove it or name the images one by one")
    return size


def complete(data: bytes) -> bool:
    """Whether an image file's bytes run to the end its format marks (PNG's IEND chunk, JPEG's EOI
    marker, GIF's trailer, the length a BMP or WebP header gives); True for formats with no such mark."""
    if data.startswith(b"\x89PNG"):
        return b"IEND" in data[-64:]
    if data.startswith(b"\xff\xd8"):
        return b"\xff\xd9" in data[-1024:]
    if data.startswith(b"GIF8"):
        return data.rstrip(b"\0").endswith(b";")
    if data.startswith(b"BM") and len(data) >= 6:
        return len(data) >= int.from_bytes(data[2:6], "little")
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return len(data) >= 8 + int.from_bytes(data[4:8], "little")
    return True


def _decode(path: Path, data: bytes, flags: int) -> np.ndarray:
    try:
        with quiet_native_stderr():
            image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        image = None
    if image is None:
        raise ImageError(f"{shown(path)}: not a readable image (truncated or corrupt {FORMATS} file); "
                         "remove it or name the images one by one")
    return image


def reduction(width: int, height: int, needed: Sequence[int] | None) -> int:
    """1, 2, 4 or 8: how much smaller than ``width × height`` an image can be decoded while each side
    keeps ``REDUCED_MARGIN`` times the pixels ``needed`` (``(h, w)``: what preprocessing resizes it to)."""
    if needed is None:
        return 1
    for factor in (8, 4, 2):
        if height // factor >= REDUCED_MARGIN * needed[0] and width // factor >= REDUCED_MARGIN * needed[1]:
            return factor
    return 1


def load_image(path: str | Path, preprocessing: dict[str, Any] | None = None) -> np.ndarray:
    """Read an image file as RGB ``uint8 [H, W, 3]`` (grey and alpha are converted; GIF: first frame).

    preprocessing: the graph's, where the image is for the model: an image at least
    ``2·REDUCED_MARGIN`` times larger per side than ``fit_to_input`` resizes it to is decoded at
    1/2, 1/4 or 1/8 of its size. Refuses images past the pixel limit (``pixel_limit``) before
    decoding them.
    """
    return read_image(path, preprocessing)[0]


def read_image(path: str | Path, preprocessing: dict[str, Any] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """``load_image``, and the file's ``(width, height)`` as its header gives it."""
    image, size = _decode_bgr(path, preprocessing)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), size


def load_view(path: str | Path, preprocessing: dict[str, Any], size: tuple[int, int] | None = None
              ) -> tuple[np.ndarray, tuple[int, int]]:
    """``fit_to_input(load_image(path, preprocessing))`` at less cost, and the file's ``(width, height)``:
    resized while still BGR (OpenCV's order), so only the model's view changes channel order. size: the
    ``(width, height)`` a ``check_header`` of this file already read (its header is then not read again)."""
    image, size = _decode_bgr(path, preprocessing, size)
    return cv2.cvtColor(fit_to_input(image, preprocessing), cv2.COLOR_BGR2RGB), size


def _decode_bgr(path: str | Path, preprocessing: dict[str, Any] | None,
                size: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """The file decoded as OpenCV gives it, BGR ``uint8 [h, w, 3]`` (reduced where ``preprocessing`` allows),
    and its ``(width, height)``: ``size`` if given, else its header's (checked against the pixel limit)."""
    path = Path(path)
    if not path.is_file():
        image_size(path)  # the one-line reason
    data = _read(path)
    width, height = size or image_size(path, data)
    factor = reduction(width, height, needed_size(preprocessing, width, height) if preprocessing else None)
    return _decode(path, data, _REDUCED.get(factor, cv2.IMREAD_COLOR)), (width, height)


def needed_size(preprocessing: dict[str, Any], width: int, height: int) -> tuple[int, int]:
    """``(h, w)``: the size ``fit_to_input`` resizes a ``width × height`` image to before cropping."""
    size_h, size_w = preprocessing["size"]
    shorter = preprocessing.get("resize")
    if not shorter:
        return size_h, size_w
    scale = shorter / min(height, width)
    return max(size_h, round(height * scale)), max(size_w, round(width * scale))


RESIZE_FIRST_LIMIT = 16  # resize the whole image, then crop, while that image is at most 16x the crop


def fit_to_input(image: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """Resize (and centre-crop) an RGB ``uint8 [h, w, 3]`` image to the model's ``[H, W, 3]`` view.

    With ``resize`` set, the shorter side goes to ``resize`` and the centre ``size`` is cut
    out (torchvision's ImageNet evaluation transform); otherwise the image is resized to
    ``size`` directly. For a very long strip, only the window that is kept is sampled (the same
    bilinear mapping), so memory stays that of the model's input.
    """
    height, width = preprocessing["size"]
    shorter = preprocessing.get("resize")
    if shorter:
        h, w = image.shape[:2]
        new_h, new_w = needed_size(preprocessing, w, h)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        if new_h * new_w > RESIZE_FIRST_LIMIT * height * width:
            return crop_resized(image, (new_h, new_w), (top, left), (height, width))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(image[top:top + height, left:left + width])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def crop_resized(image: np.ndarray, resized: Sequence[int], corner: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The ``size`` = ``(H, W)`` window at ``corner`` = ``(top, left)`` of ``image`` ``[h, w, 3]`` resized to
    ``resized`` = ``(h', w')``, sampled directly (``cv2.resize``'s bilinear mapping
    ``x = (x' + 0.5)·w/w' − 0.5``) without making the resized image."""
    h, w = image.shape[:2]
    sy, sx = h / resized[0], w / resized[1]
    matrix = np.float64([[sx, 0, (corner[1] + 0.5) * sx - 0.5], [0, sy, (corner[0] + 0.5) * sy - 0.5]])
    return cv2.warpAffine(image, matrix, (int(size[1]), int(size[0])), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def normalisation(preprocessing: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """The preprocessing's per-channel ``mean`` and ``std`` (float32 ``[3]``), ``scale`` and whether the
    model takes BGR, with their defaults (no mean, unit std, /255, RGB)."""
    mean = np.asarray(preprocessing.get("mean", (0.0, 0.0, 0.0)), dtype=np.float32)
    std = np.asarray(preprocessing.get("std", (1.0, 1.0, 1.0)), dtype=np.float32)
    bgr = preprocessing.get("channel_order", "RGB").upper() == "BGR"
    return mean, std, float(preprocessing.get("scale", 255.0)), bgr


def to_tensor(view: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` → normalised ``float32 [C, H, W]`` (channel order, /scale, mean, std)."""
    mean, std, scale, bgr = normalisation(preprocessing)
    pixels = view[..., ::-1] if bgr else view
    tensor = np.empty((3, *view.shape[:2]), np.float32)
    for channel, plane in enumerate(tensor):  # in place, plane by plane: the same float32 sums, no temporaries
        np.divide(pixels[..., channel], np.float32(scale), out=plane)
        np.subtract(plane, mean[channel], out=plane)
        np.divide(plane, std[channel], out=plane)
    return tensor


def load_batch(paths: Sequence[str | Path], contract: Contract) -> tuple[np.ndarray, list[np.ndarray]]:
    """Load and preprocess image files for a graph.

    Returns the batch ``float32 [N, C, H, W]`` and the RGB ``uint8 [H, W, 3]`` views the
    model saw (resized and cropped, not normalised), for overlays.
    """
    views = [fit_to_input(load_image(p, contract.preprocessing), contract.preprocessing) for p in paths]
    batch = np.stack([to_tensor(v, contract.preprocessing) for v in views]) if views else \
        np.zeros((0, *contract.input_shape), np.float32)
    return batch, views


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named in ``inputs``, directories expanded (sorted, image suffixes only)."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.iterdir() if is_image_name(p) and p.is_file())
        elif item.exists():
            found.append(item)
        else:
            raise ImageError(f"{shown(item)}: no such file or folder; check the path")
    return list(dict.fromkeys(found))  # a file named twice (also inside a folder named) is read once


def is_image_name(path: Path) -> bool:
    """An image suffix, and not hidden (``.name``: onnxcam's own unfinished outputs among others)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def colorize(map_: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A ``[h, w]`` map in [0, 1] as an RGB ``uint8 [h, w, 3]`` heatmap."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    levels = np.uint8(np.clip(map_, 0.0, 1.0) * 255)
    return cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, map_: np.ndarray, colormap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Blend a heatmap of ``map_`` over ``image``; returns RGB ``uint8 [H, W, 3]``.

    image: RGB ``uint8 [H, W, 3]`` (or grey ``[H, W]``; float images in [0, 1] are accepted too).
    map_: ``[h, w]`` in [0, 1], resized to the image if needed. alpha: heatmap weight in [0, 1].
    Unlike ``show_cam_on_image`` the result is not rescaled by its maximum and is always RGB.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3] RGB or [H, W] grey, got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):
        if image.max(initial=0) > 1.0:
            raise ValueError("a float image must hold values in [0, 1]; pass uint8 for 0..255")
        image = np.uint8(np.round(image * 255))
    height, width = image.shape[:2]
    map_ = np.asarray(map_, dtype=np.float32)
    if map_.shape != (height, width):
        map_ = cv2.resize(map_, (width, height), interpolation=cv2.INTER_LINEAR)
    heat = colorize(map_, colormap).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """A copy of RGB ``uint8 [H, W, 3]`` ``image`` with ``text`` on a dark band at the top."""
    captioned = np.ascontiguousarray(image).copy()
    height = max(14, image.shape[0] // 14)
    scale = height / 30
    captioned[:height] = (captioned[:height] * 0.35).astype(np.uint8)
    cv2.putText(captioned, text, (3, int(height * 0.75)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                1, cv2.LINE_AA)
    return captioned


def outline(image: np.ndarray, mask: np.ndarray, colour=(255, 255, 255)) -> np.ndarray:
    """A copy of RGB ``uint8 [H, W, 3]`` ``image`` with the outline of ``mask`` (``[h, w]``, > 0 inside;
    resized to the image, nearest) drawn on it."""
    height, width = image.shape[:2]
    inside = (np.asarray(mask) > 0).astype(np.uint8)
    if inside.shape != (height, width):
        inside = cv2.resize(inside, (width, height), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(inside, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    drawn = np.ascontiguousarray(image).copy()
    cv2.drawContours(drawn, contours, -1, colour, max(1, height // 150), cv2.LINE_8)
    return drawn


def inset(image: np.ndarray, thumbnail: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    """A copy of RGB ``uint8 [H, W, 3]`` ``image`` with ``thumbnail`` (RGB) in its bottom-right corner,
    ``fraction`` of the image's width, framed in white."""
    height, width = image.shape[:2]
    side = max(8, int(width * fraction))
    thumb_h = max(8, int(round(thumbnail.shape[0] * side / thumbnail.shape[1])))
    thumb_h = min(thumb_h, height - 4)
    small = cv2.resize(np.ascontiguousarray(thumbnail), (side, thumb_h), interpolation=cv2.INTER_AREA)
    framed = np.ascontiguousarray(image).copy()
    top, left = height - thumb_h - 2, width - side - 2
    framed[top - 2:top + thumb_h + 2, left - 2:left + side + 2] = 255
    framed[top:top + thumb_h, left:left + side] = small
    return framed


def attribution_image(attribution: np.ndarray, channel_order: str = "RGB") -> np.ndarray:
    """An input-space attribution ``[C, H, W]`` (guided backprop) as RGB ``uint8 [H, W, 3]``:
    standardised, scaled by 0.1 around grey and clipped, as pytorch-grad-cam's ``deprocess_image``."""
    image = attribution.transpose(1, 2, 0).astype(np.float32)
    image = (image - image.mean()) / (image.std() + 1e-5) * 0.1 + 0.5
    image = np.uint8(np.clip(image, 0, 1) * 255)
    return image[..., ::-1].copy() if channel_order.upper() == "BGR" else image


def strongest_channels(activation: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` channels of ``activation`` ``[C, h, w]`` with the largest mean, strongest first."""
    means = activation.reshape(activation.shape[0], -1).mean(axis=1)
    return np.argsort(-means, kind="stable")[:count]


def feature_grid(activation: np.ndarray, count: int = 16, tile: int = 96, colormap: str = "viridis") -> tuple[np.ndarray, np.ndarray]:
    """A grid image of the ``count`` strongest channels of one image's activation ``[C, h, w]``.

    Each channel is min-max normalised on its own, resized to ``tile`` pixels (nearest, so
    cells stay visible), coloured, and placed row by row, strongest first, with its index
    written in the corner. Returns (RGB ``uint8`` grid, the channel indices shown).
    """
    if activation.ndim != 3:
        raise ValueError(f"activation must be [C, h, w], got shape {activation.shape}")
    channels = strongest_channels(activation, min(count, activation.shape[0]))
    columns = int(np.ceil(np.sqrt(len(channels))))
    rows = int(np.ceil(len(channels) / columns))
    grid = np.zeros((rows * tile, columns * tile, 3), np.uint8)
    for slot, channel in enumerate(channels):
        plane = activation[channel].astype(np.float32)
        plane = (plane - plane.min()) / (plane.max() - plane.min() + 1e-7)
        cell = colorize(cv2.resize(plane, (tile, tile), interpolation=cv2.INTER_NEAREST), colormap)
        cv2.putText(cell, str(int(channel)), (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        top, left = (slot // columns) * tile, (slot % columns) * tile
        grid[top:top + tile, left:left + tile] = cell
    return grid, channels


WRITE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def save_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB ``uint8`` image (format from the suffix)."""
    path = Path(path)
    suffix = path.suffix.lower() or ".png"
    if suffix not in WRITE_SUFFIXES:
        raise ImageError(f"{shown(path)}: cannot write {suffix} images; name a {', '.join(WRITE_SUFFIXES)} file")
    ok, encoded = cv2.imencode(".tif" if suffix == ".tiff" else suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageError(f"{shown(path)}: OpenCV cannot encode this image; name a .png file")
    path.write_bytes(encoded.tobytes())
