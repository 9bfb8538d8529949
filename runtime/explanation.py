"""What ``Explainer.explain`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxcam.runtime.methods import softmax


@dataclass
class Explanation:
    """maps: ``float32 [N, H, W]`` in [0, 1] at input resolution (fused over layers).
    logits: the model's output per image, ``[N, *O]`` (class logits ``[N, classes]`` for a
    classifier, ``[N, classes, H, W]`` for a segmenter, ``[N, D]`` for an embedding model).
    targets: the classes explained, ``int64 [N]``, for target kinds with classes (class,
    softmax, binary, segmentation); None for the others.
    target_scores: the target's own score per image, ``float32 [N]`` (the logit, the
    probability, the masked sum, the cosine similarity…).
    kind: the target kind's name. layer_maps: per layer name, the raw weighted sum before
    ReLU/normalisation, ``[N, h, w]``, float32 (float64 where its values pass float32's
    ±3.4e38: the method's maths then ran in float64, ``Method.raw_map``); rollout methods keep
    theirs under ``"attention"``, ``[N, h, w]`` on the token grid. attributions: input-space methods only (saliency,
    guided backprop, guided Grad-CAM): the signed attribution per input channel,
    ``[N, C, H, W]``; their ``maps`` are its ``max_c |·|``.

    With several targets per image (``[N, K]`` targets, or ``top_k``) every per-target array
    gains a K axis after N: maps ``[N, K, H, W]``, targets ``[N, K]``, …
    """

    maps: np.ndarray
    logits: np.ndarray
    targets: np.ndarray | None
    method: str
    target_scores: np.ndarray | None = None
    kind: str = "class"
    layer_maps: dict[str, np.ndarray] = field(default_factory=dict)
    attributions: np.ndarray | None = None

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of class scores over the classes, ``[N, classes]`` (``[N, classes, H, W]`` maps:
        per pixel)."""
        return np.moveaxis(softmax(np.moveaxis(self.logits, 1, -1)), -1, 1)

    @property
    def scores(self) -> np.ndarray:
        """Softmax probability of each explained class of a classifier, ``[N]`` (``[N, K]``)."""
        rows = self.targets.reshape(len(self.targets), -1)
        return np.take_along_axis(softmax(self.logits), rows, axis=1).reshape(self.targets.shape)

    def per_image(self, images: int) -> "Explanation":
        """Rows ``[N·K, …]`` (one per image and target, image-major) regrouped as ``[N, K, …]``."""
        def group(array):
            return None if array is None else array.reshape(images, -1, *array.shape[1:])
        return Explanation(maps=group(self.maps), logits=self.logits,
                           targets=None if self.targets is None else self.targets.reshape(images, -1),
                           method=self.method, target_scores=group(self.target_scores), kind=self.kind,
                           layer_maps={k: group(v) for k, v in self.layer_maps.items()},
                           attributions=group(self.attributions))

    def single(self) -> "Explanation":
        """``[N, 1, …]`` per-target arrays as ``[N, …]`` (one target an image)."""
        def squeeze(array):
            return None if array is None else array[:, 0]
        return Explanation(maps=squeeze(self.maps), logits=self.logits, targets=squeeze(self.targets),
                           method=self.method, target_scores=squeeze(self.target_scores), kind=self.kind,
                           layer_maps={k: squeeze(v) for k, v in self.layer_maps.items()},
                           attributions=squeeze(self.attributions))


def stack_columns(columns: list[Explanation]) -> Explanation:
    """Explanations of one target column each → one with a K axis after N."""
    def stack(arrays):
        return None if arrays[0] is None else np.stack(arrays, axis=1)
    first = columns[0]
    return Explanation(maps=stack([c.maps for c in columns]), logits=first.logits,
                       targets=stack([c.targets for c in columns]), method=first.method,
                       target_scores=stack([c.target_scores for c in columns]), kind=first.kind,
                       layer_maps={name: stack([c.layer_maps[name] for c in columns]) for name in first.layer_maps},
                       attributions=stack([c.attributions for c in columns]))
