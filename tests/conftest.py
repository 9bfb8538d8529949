"""Shared fixtures: random-weight models exported once per test session, real photos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from zoo import LAYERS, build, input_size


def skimage_photo(name: str) -> Path:
    """A real photo shipped inside scikit-image (no download)."""
    import skimage

    path = Path(os.path.dirname(skimage.__file__)) / "data" / name
    assert path.is_file(), f"{path} missing: is scikit-image installed?"
    return path


class ExportedZoo:
    """Exports each architecture's explainer graph on first use, then serves it from disk."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._cache: dict[str, tuple] = {}

    def __call__(self, architecture: str):
        """→ (torch model, path of the explainer graph, layer names)."""
        if architecture not in self._cache:
            from onnxcam.export import export_explainer

            model = build(architecture)
            size = input_size(architecture)
            path = self.folder / f"{architecture}.onnx"
            export_explainer(model, path, LAYERS[architecture], (2, 3, size, size), architecture=architecture)
            self._cache[architecture] = (model, path, LAYERS[architecture])
        return self._cache[architecture]


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> ExportedZoo:
    return ExportedZoo(tmp_path_factory.mktemp("zoo"))


def random_batch(architecture: str, count: int = 3, seed: int = 7) -> np.ndarray:
    size = input_size(architecture)
    return np.random.default_rng(seed).standard_normal((count, 3, size, size)).astype(np.float32)


def one_hot_seed(classes, count: int) -> np.ndarray:
    """The seed of class targets for a format 2 graph: ``[N, 1, count]`` with a 1 at each image's class
    (``∂ logit[class] / ∂ logits``)."""
    classes = np.asarray(classes, np.int64).reshape(-1)
    seed = np.zeros((len(classes), 1, count), np.float32)
    seed[np.arange(len(classes)), 0, classes] = 1
    return seed


@pytest.fixture
def cuda_listed_but_broken(monkeypatch):
    """onnxruntime lists CUDA, but every session it opens comes back on the CPU only (what the GPU build does
    when the CUDA or cuDNN libraries are missing), on any machine. Yields the provider lists sessions were
    asked for."""
    import onnxruntime

    from onnxcam.runtime.providers import CPU, CUDA
    real_session = onnxruntime.InferenceSession
    asked = []

    def session_without_cuda(model, sess_options=None, providers=None, **kwargs):
        asked.append([p[0] if isinstance(p, tuple) else p for p in providers or []])
        return real_session(model, sess_options=sess_options, providers=[CPU], **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session_without_cuda)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    yield asked
