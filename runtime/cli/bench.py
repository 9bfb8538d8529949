"""``onnxcam bench``: onnxcam against pytorch-grad-cam and a plain forward (needs onnxcam[export,test])."""

from __future__ import annotations

import click


@click.command("bench")
@click.option("--model", "architecture", default="resnet50", show_default=True, help="torchvision architecture.")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1), default=(1, 8, 64), show_default=True,
              help="Batch size (repeat for several).")
@click.option("--size", type=click.IntRange(min=32), default=224, show_default=True, help="Input size in pixels.")
@click.option("--layer", default=None, help="Layer to explain. Default: the recipe's.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--fp16", is_flag=True, help="Also time an fp16 explainer graph (CUDA).")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Minimum timed seconds per runner.")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True, help="Minimum timed calls per runner.")
@click.option("--attention", is_flag=True,
              help="Also time a graph exported with --attention all: Grad-CAM on it and both rollouts (transformers).")
def command(architecture: str, batches: tuple[int, ...], size: int, layer: str | None, device: str, fp16: bool,
          seconds: float, runs: int, attention: bool) -> None:
    """Time onnxcam against pytorch-grad-cam and a plain onnxruntime forward (needs onnxcam[export,test]).

    Runs everything in this process on one device and prints images/s, the ratios
    onnxcam / plain forward and onnxcam / pytorch-grad-cam, and peak memory.

    \b
    Example:
      onnxcam bench --model resnet50 --batch 1 --batch 8 --batch 64 --fp16
      onnxcam bench --model vit_b_16 --batch 4 --device cpu --attention
    """
    try:
        from onnxcam.export.bench import run
    except ImportError as error:
        raise click.ClickException(f"bench needs PyTorch and pytorch-grad-cam ({error.name} is missing); "
                                   "install them with: pip install 'onnxcam[export,test]'") from None
    run(architecture, batches, size, layer, device, fp16, seconds, runs, log=click.echo, attention=attention)
