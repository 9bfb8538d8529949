"""What several commands share: options read from the registries, image paths, atomic writes."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

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
    """The image files named in ``images`` (folders expanded), or an ``ImageError`` naming the first bad one."""
    from onnxcam.runtime.image import IMAGE_SUFFIXES, find_images

    paths = find_images(images)
    if not paths:
        raise ImageError("no image files found in " + ", ".join(map(str, images)) +
                         f" (looked for {', '.join(IMAGE_SUFFIXES)})")
    unreadable = [p for p in paths if not _readable_image(p)]
    if unreadable:
        raise ImageError(f"{unreadable[0]}: not a readable image (expected PNG, JPEG, BMP, TIFF or WebP); "
                         "remove it or name the images one by one")
    return paths


def _readable_image(path: Path) -> bool:
    import cv2

    return path.is_file() and path.stat().st_size > 0 and cv2.haveImageReader(str(path))


def unique_stems(paths: list[Path]) -> list[str]:
    """Output names per image: the file stem, with the suffix added where stems collide."""
    stems = [p.stem for p in paths]
    return [p.name.replace(".", "_") if stems.count(p.stem) > 1 else p.stem for p in paths]


def safe(method_name: str) -> str:
    return method_name.replace("+", "p")


def write_png(path: Path, rgb: np.ndarray) -> None:
    from onnxcam.runtime.image import save_image

    partial = path.with_name(path.stem + ".partial" + path.suffix)
    try:
        save_image(partial, rgb)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(text)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def write_npy(path: Path, array: np.ndarray) -> None:
    partial = path.with_name(path.stem + ".partial.npy")
    try:
        np.save(partial, np.asarray(array, dtype=np.float32))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def read_labels(labels_file: Path | None) -> list[str] | None:
    if labels_file is None:
        return None
    return [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
