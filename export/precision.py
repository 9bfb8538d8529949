"""fp16 explainer graphs for CUDA: weights and arithmetic in float16, inputs and outputs float32."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from onnxcam.export.onnx_io import write_explainer
from onnxcam.runtime import contract, graphkit


def convert_to_fp16(source: str | Path, destination: str | Path) -> dict:
    """Write a float16 copy of the explainer graph at ``source``; returns its metadata record.

    Inputs and outputs stay float32 (Casts at the edges), so the runtime, the methods and the
    contract are unchanged; the record gains ``"precision": "float16"``. Meant for CUDA, where
    half-precision kernels exist; onnxruntime's CPU provider runs few ops in float16.
    """
    model = onnx.load(str(source))
    records = [p for p in model.metadata_props if p.key == contract.METADATA_KEY]
    if not records:
        raise contract.ContractError(f"{source}: not an onnxcam explainer graph; export one first")
    record = json.loads(records[0].value)
    converted = graphkit.to_float16(model)
    record["precision"] = "float16"
    for layer in record["layers"]:
        layer["tail"] = None  # the tail now reads a float16 copy of the layer's output; Ablation-CAM needs fp32
    write_explainer(converted, record, Path(destination))
    return record
