#!/usr/bin/env python
"""Speed benchmark: onnxcam vs pytorch-grad-cam vs a plain onnxruntime forward, in one process.

Same as `onnxcam bench`; see `python tools/bench.py --help`. Example (the README's table):

    python tools/bench.py --model resnet50 --batch 1 --batch 8 --batch 64 --fp16
"""

from onnxcam.runtime.cli.bench import command as bench

if __name__ == "__main__":
    bench()
