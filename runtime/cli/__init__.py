"""The ``onnxcam`` command line: one command per file in this folder, assembled here.

export (needs torch), augment (onnx only), explain, evaluate, features, info (onnxruntime
only), bench (torch and pytorch-grad-cam). Heavy imports happen inside the commands, so
``--help`` and ``--version`` stay fast. Errors print one line on stderr
(``Error: what was wrong; what to do``) and exit 1; usage errors exit 2 (click's
convention). Output files are written whole or not at all.
"""

from __future__ import annotations

import click

from onnxcam.runtime.cli import augment, bench, evaluate, explain, export, features, info
from onnxcam.runtime.contract import ContractError, InputError
from onnxcam.runtime.image import ImageError
from onnxcam.runtime.providers import ProviderError

USER_ERRORS = (ContractError, InputError, ImageError, ProviderError, FileNotFoundError, ValueError)
COMMANDS = (export, augment, explain, evaluate, features, info, bench)


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
    """Explain vision models (classifiers, segmenters, embedding models) with CAM / Grad-CAM /
    Grad-CAM++ and their family on onnxruntime.

    \b
    1. Once, where PyTorch is installed:   onnxcam export resnet50 -o resnet50.onnx
       or, from any ONNX model:            onnxcam augment model.onnx -o explainer.onnx
    2. Anywhere with onnxruntime:          onnxcam explain resnet50.onnx photos/ --out maps/
    3. See what a graph holds:             onnxcam info resnet50.onnx
    """
    import onnxruntime

    # onnxruntime's CUDA provider logs, as errors, every cuDNN engine it tries and drops while
    # choosing convolution algorithms in exact float32; failures that matter raise instead
    onnxruntime.set_default_logger_severity(4)


for _module in COMMANDS:
    main.add_command(_module.command)

if __name__ == "__main__":
    main()
