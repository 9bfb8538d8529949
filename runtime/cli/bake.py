"""``onnxcam bake``: an explainer graph + a method → one ONNX file any onnxruntime turns into maps
(``runtime/bake.py``; README "Run anywhere")."""

from __future__ import annotations

from pathlib import Path

import click

from onnxcam.runtime.cli.common import target_help
from onnxcam.runtime.files import check_writable, write_atomically
from onnxcam.runtime.image import COLORMAPS


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"HxW"`` → ``(H, W)``; a ``click.BadParameter`` for anything else."""
    if text is None:
        return None
    height, separator, width = text.lower().partition("x")
    if not separator or not height.isdigit() or not width.isdigit() or int(height) < 1 or int(width) < 1:
        raise click.BadParameter(f"{text!r} is not HxW (two whole numbers above 0, e.g. 300x451)")
    return int(height), int(width)


@click.command("bake")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-m", "--method", default="gradcam", show_default=True,
              help="The method to bake: one with an in-graph form (cam, gradcam, gradcam++, xgradcam, hirescam, "
                   "gradcam-elementwise, layercam).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The baked .onnx file to write.")
@click.option("--target", "target_text", default=None, help=target_help() + " Baked in, unless --target-input.")
@click.option("--target-input", is_flag=True,
              help="Keep the target kind's inputs (e.g. `target` int64 [N, K]: class ids, -j = j-th best) as "
                   "inputs fed each call, instead of baking --target in.")
@click.option("--layer", "layers", multiple=True, help="Explained layer(s) to bake (name or index). Default: all.")
@click.option("--raw-image", is_flag=True,
              help="Take uint8 RGB images [N, H, W, 3] and resize, crop and normalise them inside the graph.")
@click.option("--raw-size", default=None, metavar="HxW",
              help="The raw images' fixed size with --raw-image. Default: the size at which nothing is resampled "
                   "in the graph (the model's input, or the square its centre crop is cut from).")
@click.option("--overlay", is_flag=True, help="Also output the heatmap blended over the image (uint8 RGB).")
@click.option("--colormap", type=click.Choice(sorted(COLORMAPS)), default="jet", show_default=True,
              help="The overlay's colour map.")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="The overlay's heatmap weight.")
@click.option("--fp16", is_flag=True, help="The model's weights and arithmetic in float16 (for GPUs); inputs and "
                                           "outputs unchanged.")
def command(model: Path, method: str, output: Path, target_text: str | None, target_input: bool,
            layers: tuple[str, ...], raw_image: bool, raw_size: str | None, overlay: bool, colormap: str,
            alpha: float, fp16: bool) -> None:
    """Bake the explainer graph MODEL and a METHOD into one self-contained ONNX file.

    The file's outputs are the logits, the explained targets and their scores, and the maps
    (normalised, at the model's input size) — from any onnxruntime (web, mobile, Node, C#,
    Java, C++) with no onnxcam and no numerical code. `onnxcam info OUTPUT` says what it
    takes and returns.

    \b
    Examples:
      onnxcam bake effnet.onnx -m gradcam -o effnet.gradcam.onnx
      onnxcam bake effnet.onnx -m gradcam++ --raw-image --raw-size 480x640 --overlay -o web/model.onnx
      onnxcam bake effnet.onnx -m layercam --target-input -o layercam.onnx   (feed `target` each call)
    """
    from onnxcam.runtime.bake import BakedRecord, bake, save_baked
    from onnxcam.runtime.contract import parse_metadata, shown
    from onnxcam.runtime.providers import read_model
    from onnxcam.runtime.targets import parse

    size = parse_size(raw_size)
    if size is not None and not raw_image:
        raise click.UsageError("--raw-size is the size of raw images: give --raw-image too")
    check_writable(output)
    target = None
    if target_text is not None:
        metadata = {p.key: p.value for p in read_model(model).metadata_props}
        target = parse(target_text, parse_metadata(metadata, shown(model)), _embedder(model))
    baked = bake(model, method=method, target=target,
                 layers=[int(name) if name.lstrip("-").isdigit() else name for name in layers] or None,
                 raw_image=raw_image, raw_size=size, overlay=overlay, fp16=fp16, colormap=colormap, alpha=alpha,
                 target_inputs=target_input)
    write_atomically(output, lambda temporary: save_baked(baked, temporary))
    record = BakedRecord.read(baked)
    megabytes = output.stat().st_size / 2 ** 20
    click.echo(f"wrote {shown(output)} ({megabytes:.1f} MB, {record.precision}): {record.describe()}; "
               f"outputs {', '.join(record.outputs)}")


def _embedder(model: Path):
    """``path → [D]`` for a similarity target's reference image, the explainer opened only if asked."""
    def embed(path):
        from onnxcam.runtime.cli.common import embedder
        from onnxcam.runtime.explainer import Explainer

        return embedder(Explainer(model, providers="cpu"))(path)
    return embed
