"""``onnxcam features``: a grid of the strongest channels of a layer's activation."""

from __future__ import annotations

from pathlib import Path

import click

from onnxcam.runtime.cli.common import provider_option, write_png
from onnxcam.runtime.files import check_writable


@click.command("features")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--layer", default=None, help="Explained layer to show. Default: the graph's first.")
@click.option("-n", "--count", type=click.IntRange(min=1), default=16, show_default=True,
              help="How many channels: the strongest by mean activation.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG to write. Default: <image>.<layer>.features.png in the current folder.")
@provider_option()
def command(model: Path, image: Path, layer: str | None, count: int, output: Path | None, provider: str) -> None:
    """Write a grid of the strongest channels of a layer's activation for IMAGE.

    Each cell is one channel of the feature map, normalised on its own and labelled with
    its index, strongest (largest mean) first.

    \b
    Example:
      onnxcam features effnet.onnx cat.jpg --count 25 -o cat-features.png
    """
    from onnxcam.runtime.explainer import Explainer
    from onnxcam.runtime.contract import shown
    from onnxcam.runtime.image import WRITE_SUFFIXES, ImageError, check_image, feature_grid, load_batch

    explainer = Explainer(model, providers=provider)
    chosen = explainer.contract.layer(layer if layer is not None else 0)
    output = output or Path(f"{image.stem}.{chosen.name}.features.png")
    if output.suffix.lower() not in WRITE_SUFFIXES:
        raise ImageError(f"{shown(output)}: cannot write {output.suffix or 'suffix-less'} images; "
                         f"name a {', '.join(WRITE_SUFFIXES)} file")
    check_writable(output)
    check_image(image)
    batch, _ = load_batch([image], explainer.contract)
    activation = explainer.activations(batch, chosen)[0]
    grid, channels = feature_grid(activation, count)
    write_png(output, grid)
    click.echo(f"wrote {shown(output)}: channels {', '.join(map(str, channels))} of {chosen.name} "
               f"{list(chosen.shape)}")
