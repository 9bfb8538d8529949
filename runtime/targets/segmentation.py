"""``segmentation``: class ``c`` summed over a mask, ``Σ_hw mask ⊙ output[c]``, for
``[N, classes, H, W]`` outputs (pytorch-grad-cam's ``SemanticSegmentationTarget``).

The mask is the model's own ``argmax == c`` (built in the graph from the output: the pixels where
class ``c`` has the largest score; an exact tie counts for each tied class) unless a
mask is given: ``[H, W]`` for all images, ``[N, H, W]`` or ``[N, K, H, W]``, any size (resized
to the output, nearest, then ``> 0``). Each image has its own mask, also in one batch
(pytorch-grad-cam returns zero maps when a batch has fewer targets than images, its #264).
A negative class ``-j`` is the class with the ``j``-th most pixels in the model's argmax.
Seed: ``e_c ⊗ mask``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from onnxcam.runtime.contract import TARGET, Contract, InputError
from onnxcam.runtime.graphkit import Builder
from onnxcam.runtime.targets.base import (Seeded, Target, as_seed, check_classes, class_caption, one_hot, to_images,
                                          per_image_array, require_rank, resolve_ranks, rows_of)

MASK = "mask"


def fit_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A mask ``[h, w]`` (any numbers; > 0 is inside) resized to ``size`` nearest → float32 0/1 ``[H, W]``."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or 0 in mask.shape:
        raise InputError(f"a segmentation mask must be a 2-D [H, W] image, got shape {tuple(mask.shape)}; "
                         "give one mask per image")
    inside = (mask > 0).astype(np.uint8)
    if inside.shape != tuple(size):
        inside = cv2.resize(inside, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return inside.astype(np.float32)


@dataclass(frozen=True)
class SegmentationTarget(Target):
    """classes: class id(s) as for ``class`` (``-j``: the j-th largest class in the argmax); masks:
    None (the model's own argmax == class), or ``[H, W]`` / ``[N, H, W]`` / ``[N, K, H, W]`` in the
    geometry of the model's input (``load_mask`` brings a mask drawn on the photo there), any size."""

    classes: Any = -1
    masks: Any = None

    name = "segmentation"
    syntax = "segmentation:CLASS[:MASK.png]  (CLASS: id, label, or -j for the j-th largest class)"
    summary = "class c summed over a mask of a [N, classes, H, W] output (the model's own argmax by default)"
    has_classes = True
    output_ranks = (3,)

    @classmethod
    def parse(cls, text, contract, embed=None):
        """``CLASS`` or ``CLASS:MASK_IMAGE`` (a mask drawn on the photo, bright inside)."""
        class_text, _, mask_path = text.partition(":")
        masks = load_mask(mask_path, contract.preprocessing) if mask_path else None
        return cls(classes=contract.class_id(class_text), masks=masks)

    @property
    def graph_key(self) -> str:
        return f"{self.name}/{'own' if self.masks is None else 'given'}-mask"

    def fits(self, contract: Contract) -> None:
        require_rank(contract, self.name, (3,), "[N, classes, H, W]",
                     "use --target class:ID for class scores, or output:INDEX for any element")

    def per_image(self) -> int | None:
        array = np.asarray(self.classes)
        return array.shape[1] if array.ndim == 2 else None

    def feeds(self, contract: Contract, images: int) -> dict[str, np.ndarray]:
        classes = per_image_array(self.classes, images, "segmentation class")
        check_classes(classes, contract.output.shape[0])
        feeds = {TARGET: classes}
        if self.masks is not None:
            size = tuple(contract.output.shape[1:])
            masks = np.asarray(self.masks)
            if masks.ndim == 2:
                masks = np.broadcast_to(masks, (images, *masks.shape))
            if masks.ndim == 3:
                if len(masks) != images:
                    raise InputError(f"got {len(masks)} segmentation masks for a batch of {images} image(s); "
                                      "give one per image or one for all")
                masks = masks[:, None]
            if masks.ndim != 4 or masks.shape[0] != images:
                raise InputError(f"segmentation masks of shape {tuple(masks.shape)} do not fit a batch of "
                                  f"{images}; give [H, W], [N, H, W] or [N, K, H, W]")
            if masks.shape[1] not in (1, classes.shape[1]):
                raise InputError(f"got {masks.shape[1]} masks an image for {classes.shape[1]} classes an image; "
                                 "give one mask per class, or one for all")
            fitted = np.stack([[fit_mask(m, size) for m in image] for image in masks])
            feeds[MASK] = np.ascontiguousarray(np.broadcast_to(fitted, (images, classes.shape[1], *size)))
        return feeds

    def build(self, b: Builder, output: str, contract) -> Seeded:
        classes = contract.output.shape[0]
        # the argmax as "equal to the pixel's maximum": 2x faster than ArgMax over the class axis in
        # onnxruntime (measured at [4, 21, 224, 224]); exact float ties (none in practice) count for each
        top = b.op("ReduceMax", [output, b.ints([1])], keepdims=1)  # [R, 1, H, W]
        winners = b.op("Cast", [b.op("GreaterOrEqual", [output, top])], to=1)  # [R, C, H, W]
        counts = b.op("ReduceSum", [winners, b.ints([2, 3])], keepdims=0)  # pixels per class
        resolved = resolve_ranks(b, rows_of(b, TARGET), counts, classes)
        index = b.op("Expand", [b.op("Reshape", [resolved, b.ints([-1, 1, 1, 1])]), b.op("Shape", [top])])
        if self.masks is None:
            mask = b.op("GatherElements", [winners, index], axis=1)  # [R, 1, H, W]
        else:
            mask = b.op("Unsqueeze", [rows_of(b, MASK), b.ints([1])])
        hot = b.op("Unsqueeze", [one_hot(b, resolved, classes), b.ints([2, 3])])  # [R, C, 1, 1]
        seed = b.op("Mul", [hot, mask])  # [R, C, H, W]
        # the score from the class's own plane, not from a product over every class
        plane = b.op("GatherElements", [output, index], axis=1)
        score = b.op("ReduceSum", [b.op("Mul", [plane, mask]), b.ints([1, 2, 3])], keepdims=0)
        return Seeded(seed=as_seed(b, seed, TARGET, output), rows=TARGET, score=score,
                      resolved=to_images(b, resolved))

    def row_mask(self, row: int, feeds: dict[str, np.ndarray], class_id: int, output_row: np.ndarray) -> np.ndarray:
        """The mask of row ``row``, ``float32 [H, W]``: given, or the output's own argmax == class."""
        if MASK in feeds:
            return feeds[MASK].reshape(-1, *output_row.shape[1:])[row]
        return (output_row[class_id] >= output_row.max(axis=0)).astype(np.float32)

    def scorer(self, row, feeds, resolved, output_row):
        class_id = int(resolved.reshape(-1)[row])
        mask = self.row_mask(row, feeds, class_id, output_row)
        return lambda outputs: (outputs[:, class_id] * mask).reshape(len(outputs), -1).sum(axis=1)

    def describe(self, contract, row, resolved):
        return class_caption(contract, resolved.reshape(-1)[row])

    def decorate(self, picture, row, feeds, resolved, output_row):
        """The mask's outline (the model's own argmax == class, or the given mask)."""
        from onnxcam.runtime.image import outline

        return outline(picture, self.row_mask(row, feeds, int(resolved.reshape(-1)[row]), output_row))


def load_mask(path, preprocessing: dict) -> np.ndarray:
    """A mask image file drawn on the photo (same size; bright is inside) → ``uint8 [H, W]`` 0/255 in
    the model's view: resized and centre-cropped as the photo is (``image.fit_to_input``)."""
    from onnxcam.runtime.image import fit_to_input, load_image

    view = fit_to_input(load_image(path, preprocessing), preprocessing)
    return np.where(view.max(axis=2) >= 128, 255, 0).astype(np.uint8)
