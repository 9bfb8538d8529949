"""Writing explainer graphs (torch-free; shared by ``export_explainer``, ``--fp16`` and ``augment``)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from onnxcam.runtime import contract


def write_explainer(model_proto: onnx.ModelProto, record: dict, path: Path) -> None:
    """Store ``record`` as the graph's only metadata and write the model to ``path``, through a
    temporary file beside it and a rename, so that a failed export leaves nothing."""
    del model_proto.metadata_props[:]
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = contract.METADATA_KEY, json.dumps(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        onnx.save_model(model_proto, str(partial))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def onnxcam_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxcam")
    except PackageNotFoundError:
        return "unknown"
