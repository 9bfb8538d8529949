"""What several commands share: options read from the registries, image paths, atomic writes."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from onnxcam.runtime.files import write_atomically
from onnxcam.runtime.image import ImageError
from onnxcam.runtime.methods import METHODS, get_method
from onnxcam.runtime.targets import KINDS

PROVIDERS = ("auto", "cpu", "cuda")


def method_help(prefix: str) -> str:
    """Help text listing the methods registered in ``onnxcam.runtime.methods``."""
    gradient_free = [m.name for m in METHODS.values() if not m.input_gradient]
    input_space = [m.name for m in METHODS.values() if m.input_gradient]
    return (f"{prefix}: {', '.join(gradient_free)}; with an --input-gradient export: {', '.join(input_space)}.")


def canonical_methods(names) -> tuple[str, ...]:
    """Method names as registered, once each, in the order given (unknown names raise one line)."""
    return tuple(dict.fromkeys(get_method(name).name for name in names))


def target_help() -> str:
    """Help text listing the target kinds registered in ``onnxcam.runtime.targets``."""
    kinds = "; ".join(f"{kind.syntax}" for kind in KINDS.values())
    return ("What to explain. Default: each image's top class (class scores), predicted side (one logit) or "
            f"largest class (segmentation maps). A class id or label, or KIND:VALUE — {kinds}.")


def embedder(explainer):
    """``path → [D]``: the model's own output for an image file (a similarity target's reference)."""
    from onnxcam.runtime.image import load_batch

    return lambda path: explainer.forward(load_batch([path], explainer.contract)[0])[0]


def provider_option():
    return click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
                        help="onnxruntime execution provider; 'cuda' fails rather than falling back to CPU.")


def image_paths(images: tuple[Path, ...]) -> list[Path]:
    """The image files named in ``images`` (folders expanded), each checked before any work (it decodes
    whole, within the pixel limit), or an ``ImageError`` naming the first bad one."""
    from onnxcam.runtime.image import IMAGE_SUFFIXES, check_image, find_images, shown

    paths = find_images(images)
    if not paths:
        raise ImageError("no image files found in " + ", ".join(shown(i) for i in images) +
                         f"; name images ({', '.join(IMAGE_SUFFIXES)}) or folders holding them")
    for path in paths:
        check_image(path)
    return paths


def safe(method_name: str) -> str:
    return method_name.replace("+", "p")


def write_png(path: Path, rgb: np.ndarray) -> None:
    """An image file at ``path``, whole or not at all."""
    from onnxcam.runtime.image import save_image

    write_atomically(path, lambda temporary: save_image(temporary, rgb))


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(text))


def save_npy(path: Path, array: np.ndarray) -> None:
    """``array`` as float32 ``.npy`` at ``path`` (a staged file: see ``runtime/files.py``)."""
    with open(path, "wb") as handle:
        np.save(handle, np.asarray(array, dtype=np.float32))


def read_labels(labels_file: Path | None) -> list[str] | None:
    if labels_file is None:
        return None
    return [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
