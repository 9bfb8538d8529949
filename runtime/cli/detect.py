"""``onnxcam detect``: every detection of a single-stage detector explained, one overlay each."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from onnxcam.runtime.cli.common import canonical_methods, image_paths, provider_option, safe, save_npy
from onnxcam.runtime.files import staged
from onnxcam.runtime.run.inputs import output_stems
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
    """Explain each detection a detector makes on IMAGES.

    The graph's raw head outputs are decoded as torchvision decodes them (boxes, scores,
    NMS); each kept box is explained by the raw class logit that made it, all boxes of a
    batch in one session call. Writes OUT/<image>.<method>.det<k>.png (the map, the box,
    its label and score) for the k-th best box, and OUT/<image>.<method>.png with every box
    over the largest of their maps. A Faster R-CNN features graph (<stem>.features.onnx,
    from onnxcam export fasterrcnn_*) is explained as pytorch-grad-cam's tutorial does:
    -m eigencam (one map an image) or -m ablationcam (a map a detection, its box score).

    \b
    Examples:
      onnxcam detect retinanet.onnx street.jpg -m gradcam -m gradcam++ --max-detections 5
      onnxcam detect ssdlite.onnx photos/ --class person --score-threshold 0.5 --renormalise
      onnxcam detect frcnn.features.onnx street.jpg -m eigencam -m ablationcam --max-detections 3
    """
    from onnxcam.runtime.contract import InputError
    from onnxcam.runtime.detection.explain import detection_of, explain_detections
    from onnxcam.runtime.explainer import Explainer
    from onnxcam.runtime.image import load_batch

    methods_ = canonical_methods(methods_)
    from onnxcam.runtime.detection import two_stage

    if two_stage.is_features_graph(model):
        return _two_stage(model, images, methods_, score_threshold, max_detections, classes, renormalise, out_dir,
                          save_maps, provider, colormap, alpha)
    explainer = Explainer(model, providers=provider)
    record = detection_of(explainer)
    wanted = [_class_id(text, record.labels, record.classes) for text in classes] or None
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
                maps = {method_name: results[method_name][i].maps for method_name in methods_}
                written += _write_image(out, stem, views[i], first, captions, maps, renormalise, save_maps, colormap,
                                        alpha)
                if save_maps:
                    out.write(f"{stem}.detections.json",
                              lambda target, d=first: target.write_text(json.dumps(_described(d, record), indent=1)))
                click.echo(f"{shown(path)}: {len(first)} detection(s): "
                           + ", ".join(captions[:5]) + (", …" if len(first) > 5 else ""))
            bar.update(len(chunk))
        if not written:  # inside the staging: the output folder is not left behind either
            raise InputError("no image had a detection to explain; lower --score-threshold or check --class")
    click.echo(f"wrote {written} image(s) to {shown(out_dir)}/", err=True)


def _write_image(out, stem: str, view, found, captions: list[str], maps: dict, renormalise: bool, save_maps: bool,
                 colormap: str, alpha: float) -> int:
    """One image's files for each method: ``maps[method]`` ``[D, H, W]``, one a detection of ``found`` (boxes,
    labels): the picture with every box, one per detection, and the ``.npy`` maps; returns the pictures' count."""
    import numpy as np

    from onnxcam.runtime.detection.draw import draw_boxes
    from onnxcam.runtime.detection.explain import renormalise_in_boxes
    from onnxcam.runtime.image import caption, overlay, save_image

    written = 0
    for method_name, method_maps in maps.items():
        if renormalise:
            method_maps = np.stack([renormalise_in_boxes(m, found.boxes[k:k + 1]) for k, m in enumerate(method_maps)])
        name = f"{stem}.{safe(method_name)}"
        every = draw_boxes(overlay(view, method_maps.max(axis=0), colormap, alpha), found.boxes, captions,
                           found.labels)
        out.write(f"{name}.png", lambda target, p=every: save_image(target, p))
        for k, map_ in enumerate(method_maps):
            picture = draw_boxes(overlay(view, map_, colormap, alpha), found.boxes[k:k + 1], captions[k:k + 1],
                                 found.labels[k:k + 1])
            picture = caption(picture, f"{method_name}: {captions[k]}")
            out.write(f"{name}.det{k + 1}.png", lambda target, p=picture: save_image(target, p))
            if save_maps:
                out.write(f"{name}.det{k + 1}.npy", lambda target, m=map_: save_npy(target, m))
        written += 1 + len(method_maps)
    return written


TWO_STAGE_METHODS = ("eigencam", "ablationcam")


def _two_stage(model: Path, images, methods_, score_threshold, max_detections, classes, renormalise, out_dir,
               save_maps, provider, colormap, alpha) -> None:
    """``detect`` on a Faster R-CNN features graph (``runtime/detection/two_stage.py``): EigenCAM (one map an
    image, drawn for each box, as pytorch-grad-cam's tutorial) and Ablation-CAM (one map a detection, its own
    box-score target)."""
    import numpy as np

    from onnxcam.runtime.contract import InputError
    from onnxcam.runtime.detection import two_stage
    from onnxcam.runtime.detection.explain import filtered
    from onnxcam.runtime.image import fit_to_input, load_image, to_tensor

    refused = [m for m in methods_ if m not in TWO_STAGE_METHODS]
    if refused:
        raise InputError(f"-m {refused[0]}: Faster R-CNN is explained with {' or '.join(TWO_STAGE_METHODS)} "
                         "(gradient methods are not available for it yet); use -m eigencam or -m ablationcam")
    detector = two_stage.load(model, providers=provider)
    labels = detector.record.get("labels") or []
    wanted = [_class_id(text, labels, len(labels) or None) for text in classes] or None
    paths = image_paths(images)
    stems = output_stems(paths)
    written = 0
    with staged(out_dir) as out:
        for path, stem in zip(paths, stems):
            view = fit_to_input(load_image(path), detector.preprocessing)
            batch = to_tensor(view, detector.preprocessing)[None]
            found = two_stage.detect(detector, batch)[0]
            found = found.take(filtered(found.scores, found.labels, score_threshold, max_detections, wanted))
            if not len(found):
                click.echo(f"{shown(path)}: no detection above the threshold"
                           + (" of the chosen class(es)" if wanted else "") + "; nothing written for it")
                continue
            captions = [f"{two_stage.label(detector, int(l))} {s:.2f}" for l, s in zip(found.labels, found.scores)]
            maps = {}
            for method_name in methods_:
                if method_name == "eigencam":
                    maps[method_name] = np.repeat(two_stage.eigencam(detector, batch), len(found), axis=0)
                else:
                    maps[method_name] = np.stack([two_stage.ablation_cam(detector, batch, found.labels[k:k + 1],
                                                                         found.boxes[k:k + 1]).map
                                                  for k in range(len(found))])
            written += _write_image(out, stem, view, found, captions, maps, renormalise, save_maps, colormap, alpha)
            if save_maps:
                rows = [{"detection": k + 1, "box": [round(float(v), 3) for v in box], "class": int(label),
                         "label": two_stage.label(detector, int(label)), "score": float(score)}
                        for k, (box, label, score) in enumerate(zip(found.boxes, found.labels, found.scores))]
                out.write(f"{stem}.detections.json", lambda target, r=rows: target.write_text(json.dumps(r, indent=1)))
            click.echo(f"{shown(path)}: {len(found)} detection(s): " + ", ".join(captions[:5])
                       + (", …" if len(found) > 5 else ""))
        if not written:
            raise InputError("no image had a detection to explain; lower --score-threshold or check --class")
    click.echo(f"wrote {written} image(s) to {shown(out_dir)}/", err=True)


def _class_id(text: str, labels, classes: int | None) -> int:
    """A class id from an id or one of the detector's ``labels`` (checked against ``classes`` where known)."""
    from onnxcam.runtime.contract import InputError

    if text.lstrip("-").isdigit():
        value = int(text)
    elif labels and text in labels:
        value = list(labels).index(text)
    else:
        raise InputError(f"--class {text!r} is not a class id or one of the detector's labels"
                         + (f" (e.g. {', '.join(labels[1:4])})" if labels else "; give an id"))
    if classes is not None and not 0 <= value < classes:
        raise InputError(f"--class {value} is out of range: the detector has {classes} classes "
                         f"(0..{classes - 1})")
    return value


def _described(detections, record) -> list[dict]:
    """The detections as JSON rows: box (x1, y1, x2, y2, input pixels), label, class, score, and the
    raw output's anchor row and logit column that made them."""
    return [{"detection": k + 1, "box": [round(float(v), 3) for v in box], "class": int(label),
             "label": record.label(int(label)), "score": float(score), "anchor": int(anchor), "column": int(column)}
            for k, (box, label, score, anchor, column) in enumerate(zip(detections.boxes, detections.labels,
                                                                        detections.scores, detections.anchors,
                                                                        detections.columns))]
