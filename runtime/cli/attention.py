"""``onnxcam attention``: a transformer block's attention matrix as a heatmap, and one query token's
attention over the patches as an overlay on the image."""

from __future__ import annotations

from pathlib import Path

import click

from onnxcam.runtime.cli.common import provider_option, read_labels
from onnxcam.runtime.files import staged
from onnxcam.runtime.contract import InputError, shown

HEAD_HELP = "A head index 0..heads-1, or the heads' element-wise mean, max or min."


@click.command("attention")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-b", "--block", default="-1", show_default="the last",
              help="Attention block: its module name, or its index among the graph's blocks (-1: the last).")
@click.option("--head", default="mean", show_default=True, help=HEAD_HELP)
@click.option("-q", "--query", default=None,
              help="Query token of the overlay: an index, cls, or a patch row,column. Default: the class token, "
                   "else the centre patch.")
@click.option("--token-names", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A text file naming the tokens for the heatmap's axes: one a line, one per token "
                   "(blank lines are skipped).")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("onnxcam-out"),
              show_default=True, help="Folder for the pictures (created if missing).")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Overlay opacity.")
@provider_option()
def command(model: Path, image: Path, block: str, head: str, query: str | None, token_names: Path | None,
            out_dir: Path, alpha: float, provider: str) -> None:
    """Show where a transformer block of MODEL attends, for IMAGE.

    MODEL is an explainer graph exported with `--attention`. Writes
    OUT/<image>.attention.<block>.<head>.png, the block's attention matrix (query tokens by
    row, key tokens by column, colour = weight), and
    OUT/<image>.attention.<block>.<head>.query-<token>.png, the query token's attention over
    the patches on the image as the model saw it (resized and cropped), scaled to its own
    minimum and maximum.

    \b
    Examples:
      onnxcam export vit_b_16 --attention all -o vit.onnx
      onnxcam attention vit.onnx cat.jpg                          (last block, mean of heads, cls)
      onnxcam attention vit.onnx cat.jpg --block 3 --head 5 --query 7,7 --out attention/
    """
    from onnxcam.runtime.attention_plot import (fuse_heads, head_choice, matrix_heatmap, query_map, query_token,
                                                token_labels, token_slug)
    from onnxcam.runtime.explainer import Explainer
    from onnxcam.runtime.image import check_image, load_batch, overlay, save_image

    explainer = Explainer(model, providers=provider)
    contract = explainer.contract
    chosen = contract.attention_block(block)
    index = contract.attention.index(chosen)
    heads, count = chosen.shape[0], chosen.shape[1]
    head = head_choice(head, heads)
    tokens = contract.tokens
    labels = token_labels(tokens, count, read_labels(token_names) if token_names is not None else None)
    if tokens is None and query is not None:
        raise InputError("--query needs a graph that records how its tokens lie on the image; "
                               "re-export it with a current `onnxcam export`")
    query_index = query_token(query, tokens, count) if tokens is not None else None
    check_image(image)

    batch, views = load_batch([image], contract)
    attention = explainer.attention(batch, blocks=[chosen.name])[chosen.name][0]
    matrix = fuse_heads(attention, head)
    stem = f"{image.stem}.attention.{index}.{head}"
    what = f"{chosen.name} (block {index}), head {head}"
    heatmap = matrix_heatmap(matrix, labels, f"{image.name}: {what}")
    with staged(out_dir) as out:
        out.write(f"{stem}.png", lambda target: save_image(target, heatmap))
        lines = [f"wrote {shown(out_dir / f'{stem}.png')}: attention of {what}, {count}x{count} tokens"]
        if query_index is not None:
            grid = query_map(matrix[query_index], tokens)
            low, high = float(grid.min()), float(grid.max())
            picture = overlay(views[0], (grid - low) / (high - low) if high > low else grid * 0, alpha=alpha)
            name = f"{stem}.query-{token_slug(tokens, query_index)}.png"
            out.write(name, lambda target: save_image(target, picture))
            lines.append(f"wrote {shown(out_dir / name)}: token {query_index} ({labels[query_index]})'s attention "
                         f"over the {tokens.grid[0]}x{tokens.grid[1]} patches, {low:.3g}..{high:.3g}")
    for line in lines:
        click.echo(line)
    if query_index is None:
        click.echo("no query overlay: the graph does not record how its tokens lie on the image", err=True)
