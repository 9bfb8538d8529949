"""``onnxcam detect``: every detection of a single-stage detector explained, one overlay each."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from onnxcam.runtime.cli.common import canonical_methods, image_paths, output_stems, provider_option, safe, save_npy
from onnxcam.runtime.cli.files import staged
from onnxcam.runtime.contract import shown
from onnxcam.runtime.image import COLORMAPS


@click.command("detect")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-m", "--method", "methods_", multiple=True, default=("gradcam",), show_default=True,
              help="Method (repeat for several): gradcam, gradcam++, hirescam, layercam, eigencam, ablationcam, …")
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=None,
              help="Explain detections scoring at least this. Default: the model's own threshold.")
@click.option("--max-detections", type=click.IntRange(min=1), default=None,
              help="Explain at most this many detections an image, best first.")
@click.option("--class", "classes", multiple=True, help="Only detections of this class (id or label; repeat).")
@click.option("--renormalise", is_flag=True,
              help="Normalise each map inside the boxes and zero it outside (pytorch-grad-cam's "
                   "renormalize_cam_in_bounding_boxes).")
@click.option("--layer", "layers", multiple=True, help="Explained layer(s) to use. Default: all in the graph.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("onnxcam-out"),
              show_default=True, help="Folder for the overlays (created if missing).")
@click.option("--save-maps", is_flag=True,
              help="Also save each map as float32 .npy [H, W] and the detections as <image>.detections.json.")
@provider_option()
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Images per session call.")
@click.option("--colormap", type=click.Choice(sorted(COLORMAPS)), default="jet", show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Heatmap opacity.")
def command(model: Path, images: tuple[Path, ...], methods_: tuple[str, ...], score_threshold: float | None,
            max_detections: int | None, classes: tuple[str, ...], renormalise: bool, layers: tuple[str, ...],
            out_dir: Path, save_maps: bool, provider: str, batch_size: int, colormap: str, alpha: float) -> None:
    """Explain each detection a single-stage detector (RetinaNet, FCOS, SSD) makes on IMAGES.

    The graph's raw head outputs are decoded as torchvision decodes them (boxes, scores,
    NMS); each kept box is explained by the raw class logit that made it, all boxes of a
    batch in one session call. Writes OUT/<image>.<method>.det<k>.png (the map, the box,
    its label and score) for the k-th best box, and OUT/<image>.<method>.png with every box
    over the largest of their maps.

    \b
    Examples:
      onnxcam detect retinanet.onnx street.jpg -m gradcam -m gradcam++ --max-detections 5
      onnxcam detect ssdlite.onnx photos/ --class person --score-threshold 0.5 --renormalise
    """
    import numpy as np

    from onnxcam.runtime.contract import InputError
    from onnxcam.runtime.detection.draw import draw_boxes
    from onnxcam.runtime.detection.explain import detection_of, explain_detections, renormalise_in_boxes
    from onnxcam.runtime.explainer import Explainer
    from onnxcam.runtime.image import caption, load_batch, overlay, save_image

    methods_ = canonical_methods(methods_)
    explainer = Explainer(model, providers=provider)
    record = detection_of(explainer)
    wanted = [_class_id(text, record) for text in classes] or None
    paths = image_paths(images)
    stems = output_stems(paths)
    written = 0
    with staged(out_dir) as out, click.progressbar(length=len(paths), label="explaining", file=sys.stderr,
                                                   hidden=len(paths) <= batch_size) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            batch, views = load_batch(chunk, explainer.contract)
            results = {m: explain_detections(explainer, batch, m, list(layers) or None, score_threshold,
                                             max_detections, wanted) for m in methods_}
            for i, path in enumerate(chunk):
                stem, first = stems[start + i], results[methods_[0]][i].detections
                if not len(first):
                    click.echo(f"{shown(path)}: no detection above the threshold"
                               + (" of the chosen class(es)" if wanted else "") + "; nothing written for it")
                    continue
                captions = [f"{record.label(int(l))} {s:.2f}" for l, s in zip(first.labels, first.scores)]
                for method_name in methods_:
                    maps = results[method_name][i].maps
                    if renormalise:
                        maps = np.stack([renormalise_in_boxes(m, first.boxes[k:k + 1]) for k, m in enumerate(maps)])
                    name = f"{stem}.{safe(method_name)}"
                    every = draw_boxes(overlay(views[i], maps.max(axis=0), colormap, alpha), first.boxes, captions,
                                       first.labels)
                    out.write(f"{name}.png", lambda target, p=every: save_image(target, p))
                    for k, map_ in enumerate(maps):
                        picture = draw_boxes(overlay(views[i], map_, colormap, alpha), first.boxes[k:k + 1],
                                             captions[k:k + 1], first.labels[k:k + 1])
                        picture = caption(picture, f"{method_name}: {captions[k]}")
                        out.write(f"{name}.det{k + 1}.png", lambda target, p=picture: save_image(target, p))
                        if save_maps:
                            out.write(f"{name}.det{k + 1}.npy", lambda target, m=map_: save_npy(target, m))
                    written += 1 + len(maps)
                if save_maps:
                    out.write(f"{stem}.detections.json",
                              lambda target, d=first: target.write_text(json.dumps(_described(d, record), indent=1)))
                click.echo(f"{shown(path)}: {len(first)} detection(s): "
                           + ", ".join(captions[:5]) + (", …" if len(first) > 5 else ""))
            bar.update(len(chunk))
        if not written:  # inside the staging: the output folder is not left behind either
            raise InputError("no image had a detection to explain; lower --score-threshold or check --class")
    click.echo(f"wrote {written} image(s) to {shown(out_dir)}/", err=True)


def _class_id(text: str, record) -> int:
    """A class id from an id or a label of the detector's classes."""
    from onnxcam.runtime.contract import InputError

    if text.lstrip("-").isdigit():
        value = int(text)
    elif record.labels and text in record.labels:
        value = record.labels.index(text)
    else:
        raise InputError(f"--class {text!r} is not a class id or one of the detector's labels"
                         + (f" (e.g. {', '.join(record.labels[1:4])})" if record.labels else "; give an id"))
    if not 0 <= value < record.classes:
        raise InputError(f"--class {value} is out of range: the detector has {record.classes} classes "
                         f"(0..{record.classes - 1})")
    return value


def _described(detections, record) -> list[dict]:
    """The detections as JSON rows: box (x1, y1, x2, y2, input pixels), label, class, score, and the
    raw output's anchor row and logit column that made them."""
    return [{"detection": k + 1, "box": [round(float(v), 3) for v in box], "class": int(label),
             "label": record.label(int(label)), "score": float(score), "anchor": int(anchor), "column": int(column)}
            for k, (box, label, score, anchor, column) in enumerate(zip(detections.boxes, detections.labels,
                                                                        detections.scores, detections.anchors,
                                                                        detections.columns))]
