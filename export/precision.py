"""fp16 explainer graphs for CUDA: weights and arithmetic in float16, inputs and outputs float32."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from onnxcam.export.onnx_io import write_explainer
from onnxcam.runtime import contract


def _detach_outputs(graph: onnx.GraphProto) -> None:
    """Give each graph output its own Identity, so no node consumes an output tensor.

    The float16 converter casts outputs back to float32 under their own names; a node that
    also read such a tensor (ResNet's GAP reads ``activation_0``) would then get float32
    while typed float16, and onnxruntime refuses the model.
    """
    outputs = {o.name for o in graph.output}
    renamed = {name: f"{name}__value" for name in outputs}
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    for value in graph.value_info:
        value.name = renamed.get(value.name, value.name)
    for name in outputs:
        graph.node.append(onnx.helper.make_node("Identity", [renamed[name]], [name], name=f"output/{name}"))


def convert_to_fp16(source: str | Path, destination: str | Path) -> dict:
    """Write a float16 copy of the explainer graph at ``source``; returns its metadata record.

    Inputs and outputs stay float32 (Casts at the edges), so the runtime, the methods and the
    contract are unchanged; the record gains ``"precision": "float16"``. Meant for CUDA, where
    half-precision kernels exist; onnxruntime's CPU provider runs few ops in float16.
    """
    from onnxconverter_common import float16

    model = onnx.load(str(source))
    records = [p for p in model.metadata_props if p.key == contract.METADATA_KEY]
    if not records:
        raise contract.ContractError(f"{source}: not an onnxcam explainer graph; export one first")
    record = json.loads(records[0].value)
    _detach_outputs(model.graph)
    # kept in float32: scatter-add (max-pool backward) has no float16 kernel on some providers;
    # LayerNormalization's mean and inverse-std outputs (which the backward pass reads) are float32
    # by the ONNX spec whatever the input type (its stash_type), and the converter would retype them
    # float16, a graph onnxruntime refuses (ConvNeXt, Swin, ViT) — and normalising in float32 is
    # also what mixed-precision training does
    block = list(float16.DEFAULT_OP_BLOCK_LIST) + ["ScatterElements", "LayerNormalization"]
    converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    record["precision"] = "float16"
    for layer in record["layers"]:
        layer["tail"] = None  # the tail now reads a float16 copy of the layer's output; Ablation-CAM needs fp32
    write_explainer(converted, record, Path(destination))
    return record
