"""``onnxcam explain``: overlays of every method's map for every image, any target kind."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from onnxcam.runtime.cli.common import (canonical_methods, embedder, image_paths, method_help, output_stems,
                                        provider_option, safe, save_npy, target_help)
from onnxcam.runtime.cli.files import staged
from onnxcam.runtime.contract import shown

COLORMAPS = ("jet", "turbo", "inferno", "viridis", "magma", "hot")


@click.command("explain")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-m", "--method", "methods_", multiple=True, default=("gradcam",), show_default=True,
              help=method_help("Method (repeat for several)"))
@click.option("--eigen-smooth", is_flag=True,
              help="Reduce channels by their first principal component instead of their sum (less noise).")
@click.option("--aug-smooth", is_flag=True,
              help="Average six augmented passes (flips x 0.9/1/1.1 scaling): smoother maps, 6x the work.")
@click.option("-t", "--target", "target_text", default=None, help=target_help())
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=None,
              help="Explain each image's K best classes (class, softmax) or K largest classes (segmentation) in "
                   "one session call; one overlay per class, captioned with its name and score.")
@click.option("--layer", "layers", multiple=True, help="Explained layer(s) to use. Default: all in the graph.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("onnxcam-out"),
              show_default=True, help="Folder for the overlays (created if missing).")
@click.option("--save-maps", is_flag=True, help="Also save each map as float32 .npy [H, W] in [0, 1].")
@provider_option()
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per session call.")
@click.option("--colormap", type=click.Choice(COLORMAPS), default="jet", show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Heatmap opacity.")
@click.option("--head-fusion", type=click.Choice(["mean", "max", "min"]), default=None,
              help="attention-rollout: how heads are fused (default mean).")
@click.option("--discard-ratio", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="attention-rollout: share of the lowest attention weights zeroed per block (default 0.9).")
@click.option("--rollout-query", "query", type=click.Choice(["cls", "output"]), default=None,
              help="gradient-rollout: read the class token's row (cls, default) or the rows of the tokens the "
                   "score reads (output: for heads that read patches).")
def command(model: Path, images: tuple[Path, ...], methods_: tuple[str, ...], eigen_smooth: bool, aug_smooth: bool,
            target_text: str | None, top_k: int | None, layers: tuple[str, ...], out_dir: Path, save_maps: bool,
            provider: str, batch_size: int, colormap: str, alpha: float, head_fusion: str | None,
            discard_ratio: float | None, query: str | None) -> None:
    """Explain IMAGES (files or folders) with the explainer graph MODEL.

    Writes OUT/<image>.<method>.png, an overlay of the map on the image as the model
    saw it (resized and cropped), and prints what was explained with its score. With
    --top-k K: OUT/<image>.<method>.top<k>.png, each captioned with the class and score.
    Segmentation overlays show the mask's outline; similarity overlays the reference
    image. Guided backprop and guided Grad-CAM write the attribution itself as an image
    (pytorch-grad-cam's rendering).

    \b
    Examples:
      onnxcam explain resnet50.onnx cat.jpg photos/ -m gradcam -m gradcam++ --out maps/
      onnxcam explain resnet50.onnx cat.jpg --top-k 3 -m gradcam++
      onnxcam explain resnet50.onnx cat.jpg -t softmax:tabby
      onnxcam explain fcn.onnx street.jpg -t segmentation:person         (own mask: argmax == person)
      onnxcam explain fcn.onnx street.jpg -t segmentation:car:car-mask.png
      onnxcam explain embedder.onnx photos/ -t similarity:reference.jpg
      onnxcam explain detector.onnx page.png -t output:0,10:40,20:200    (a region of a map output)
      onnxcam explain vit.onnx cat.jpg -m gradient-rollout -m attention-rollout --head-fusion max
    """
    from onnxcam.runtime import targets as kinds
    from onnxcam.runtime.explainer import Explainer
    from onnxcam.runtime.image import attribution_image, caption, load_batch, overlay, save_image
    from onnxcam.runtime.methods import get_method

    methods_ = canonical_methods(methods_)
    # guided backprop and guided Grad-CAM are shown as the attribution itself; saliency as a heatmap
    attribution_images = {name: get_method(name).input_gradient == "guided" for name in methods_}
    given = {k: v for k, v in {"head_fusion": head_fusion, "discard_ratio": discard_ratio, "query": query}.items()
             if v is not None}
    options = {name: {k: v for k, v in given.items() if k in get_method(name).options} for name in methods_}
    unused = sorted(set(given) - {k for chosen in options.values() for k in chosen})
    if unused:
        flag = {"head_fusion": "--head-fusion", "discard_ratio": "--discard-ratio", "query": "--rollout-query"}
        raise click.UsageError(f"{flag[unused[0]]} applies to none of the chosen methods; "
                               f"{'it is for attention-rollout' if unused[0] != 'query' else 'it is for gradient-rollout'}")
    explainer = Explainer(model, providers=provider)
    contract = explainer.contract
    target = kinds.parse(target_text, contract, embed=embedder(explainer))
    target = explainer.target(target, top_k)  # checked against the output before any image is read
    paths = image_paths(images)
    chosen_layers = list(layers) or None
    stems = output_stems(paths)
    per_image = top_k or 1
    class_scores = target.name in ("class", "softmax") and contract.output.classes is not None

    with staged(out_dir) as out, click.progressbar(length=len(paths), label="explaining", file=sys.stderr,
                                                   hidden=len(paths) <= batch_size) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            batch, views = load_batch(chunk, contract)
            results = {m: explainer.explain(batch, method=m, targets=target, layers=chosen_layers, top_k=top_k,
                                            eigen_smooth=eigen_smooth, aug_smooth=aug_smooth, options=options[m])
                       for m in methods_}
            first = next(iter(results.values()))
            feeds = target.feeds(contract, len(chunk))
            resolved = None if first.targets is None else first.targets.reshape(len(chunk), -1)
            scores = {m: (r.scores if class_scores else r.target_scores).reshape(len(chunk), -1)
                      for m, r in results.items()}
            for i, path in enumerate(chunk):
                stem = stems[start + i]
                for method_name, result in results.items():
                    maps = result.maps.reshape(len(chunk), per_image, *result.maps.shape[-2:])
                    for rank in range(per_image):
                        row = i * per_image + rank
                        file_name = f"{stem}.{safe(method_name)}" + (f".top{rank + 1}" if top_k else "")
                        if attribution_images[method_name]:
                            attribution = result.attributions.reshape(len(chunk), per_image,
                                                                      *result.attributions.shape[-3:])[i, rank]
                            picture = attribution_image(attribution, contract.preprocessing.get("channel_order", "RGB"))
                        else:
                            picture = overlay(views[i], maps[i, rank], colormap, alpha)
                            picture = target.decorate(picture, row, feeds, resolved, first.logits[i])
                        if top_k:
                            picture = caption(picture, f"{target.describe(contract, row, resolved)} "
                                                       f"{_score_text(class_scores, scores[method_name][i, rank])}")
                        out.write(f"{file_name}.png", lambda target, picture=picture: save_image(target, picture))
                        if save_maps:
                            out.write(f"{file_name}.npy", lambda target, m=maps[i, rank]: save_npy(target, m))
                click.echo(_summary(path, contract, target, first, i, per_image, resolved, scores[first.method][i],
                                    class_scores))
            bar.update(len(chunk))
    click.echo(f"wrote {len(paths) * len(methods_) * per_image} image(s) to {shown(out_dir)}/", err=True)


def _score_text(class_scores: bool, value: float) -> str:
    return f"p={value:.3f}" if class_scores else f"score={value:.4g}"


def _summary(path, contract, target, first, i, per_image, resolved, scores, class_scores) -> str:
    """One line per image: the top class (class scores), and what was explained with its score."""
    explained = ", ".join(f"{target.describe(contract, i * per_image + k, resolved)!r} "
                          f"{_score_text(class_scores, scores[k])}" for k in range(per_image))
    if class_scores:
        top = int(first.logits[i].argmax())
        line = f"{shown(path)}: top {top} {contract.label(top)!r} p={first.probabilities[i, top]:.3f}"
        if per_image == 1:
            if int(resolved[i, 0]) == top:
                return line
            explained = f"{int(resolved[i, 0])} {explained}"
        return f"{line}; explained {explained}"
    return f"{shown(path)}: explained {explained}"
