"""The ``onnxcam`` command line: one command per file in this folder, assembled here.

export (needs torch), augment (onnx only), explain, detect, evaluate, features, attention, bake, info
(onnxruntime only), bench (torch and pytorch-grad-cam). Heavy imports happen inside the commands, so
``--help`` and ``--version`` stay fast. Errors print one line on stderr
(``Error: what was wrong; what to do``) and exit 1; usage errors exit 2 (click's
convention). Output files are written whole or not at all.
"""

from __future__ import annotations

import click

from onnxcam.runtime.cli import augment, bench, evaluate, explain, export, features, info
from onnxcam.runtime.cli import attention, bake, detect, report
from onnxcam.runtime.contract import ContractError, InputError, first_line, shown
from onnxcam.runtime.image import ImageError
from onnxcam.runtime.providers import ProviderError

USER_ERRORS = (ContractError, InputError, ImageError, ProviderError, FileNotFoundError, ValueError)
COMMANDS = (export, augment, explain, detect, evaluate, features, attention, bake, info, bench, report)
DEBUG_VARIABLE = "ONNXCAM_DEBUG"  # set to 1 to see the traceback of an unexpected error


class OnnxcamGroup(click.Group):
    """Turns every error into one ``Error:`` line: exit 1 (what was wrong; what to do); an
    interrupt exits 130. Files of the run are already removed by then (``runtime/files.py``), but for
    ``explain``'s finished images, which a run folder keeps (docs/runs.md)."""

    def invoke(self, ctx):
        import os

        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except USER_ERRORS as error:
            raise click.ClickException(first_line(error)) from None
        except KeyboardInterrupt:
            click.echo("Error: interrupted; no output of this run was kept", err=True)
            raise click.exceptions.Exit(130) from None
        except MemoryError:
            raise click.ClickException("out of memory; lower --batch-size, or use smaller images") from None
        except OSError as error:
            where = f"{shown(error.filename)}: " if error.filename else ""
            raise click.ClickException(f"{where}{error.strerror or first_line(error)}; check the path, its "
                                       "permissions and the free disk space") from None
        except Exception as error:  # a bug of onnxcam's: still one line, the traceback on request
            if os.environ.get(DEBUG_VARIABLE):
                raise
            raise click.ClickException(f"unexpected {type(error).__name__}: {first_line(error)}; please report "
                                       f"this with the command ({DEBUG_VARIABLE}=1 shows the traceback)") from None


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
    4. Maps from any onnxruntime, no onnxcam: onnxcam bake resnet50.onnx -m gradcam -o baked.onnx
    """
    try:
        import onnxruntime
    except ImportError:  # installed without the cpu or gpu extra
        from onnxcam.runtime.providers import NO_RUNTIME

        raise click.ClickException(NO_RUNTIME) from None

    # onnxruntime's CUDA provider logs, as errors, every cuDNN engine it tries and drops while
    # choosing convolution algorithms in exact float32; failures that matter raise instead
    onnxruntime.set_default_logger_severity(4)


for _module in COMMANDS:
    main.add_command(_module.command)

if __name__ == "__main__":
    main()
