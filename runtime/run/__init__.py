"""Production runs (docs/runs.md): many images through one explainer graph, into a run folder.

One file per part, each importable alone (no torch anywhere here):

- ``inputs``   — the images of a run: files, folders (recursive), globs, file lists, manifests
- ``folder``   — the run folder: its lock, ``run.json``, the results table, resume, ``--force``
- ``render``   — one image's outputs from a batch's explanations: overlay files and table rows
- ``pipeline`` — decode, explain and write overlapped in threads, in order, with a progress report
- ``report``   — ``report.html`` over a run folder
- ``ray_engine`` — the same run on a Ray cluster (``onnxcam[ray]``)
"""
