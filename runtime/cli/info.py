"""``onnxcam info``: what an explainer graph holds."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("info")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw metadata record as JSON.")
def command(model: Path, as_json: bool) -> None:
    """Print what the explainer graph MODEL holds: inputs, output, target kinds, layers, preprocessing, labels."""
    from onnxcam.runtime.bake import BakedRecord
    from onnxcam.runtime.explainer import Explainer
    from onnxcam.runtime.providers import open_session, read_model
    from onnxcam.runtime.targets import KINDS

    baked = BakedRecord.read(read_model(model))
    if baked is not None:
        _baked(model, baked, as_json)
        return
    explainer = Explainer(model, providers="cpu")
    contract = explainer.contract
    if as_json:
        click.echo(next(p.value for p in explainer.model.metadata_props if p.key == "onnxcam"))
        return
    session = open_session(explainer.model.SerializeToString(), ["CPUExecutionProvider"], what=str(model))
    click.echo(f"{model}")
    click.echo(f"  architecture: {contract.architecture or 'unknown'}   precision: {contract.precision}   "
               f"exporter: {contract.exporter}   format: {contract.version}")
    click.echo("  inputs:")
    for item in session.get_inputs():
        click.echo(f"    {item.name:<18} {item.type:<22} {item.shape}")
    click.echo("  outputs:")
    for item in session.get_outputs():
        click.echo(f"    {item.name:<18} {item.type:<22} {item.shape}")
    output = contract.output
    source = f" (model output {output.source!r})" if output.source else ""
    click.echo(f"  explained output: [N, {', '.join(map(str, output.shape))}]{source}, {output.score}"
               + (f"; {output.classes} classes" if output.classes else ""))
    if contract.seeded:
        fitting = [name for name, kind in KINDS.items() if kind.accepts(output.shape)]
        click.echo(f"  target kinds: {', '.join(fitting)} (chosen at explain time with --target)")
        click.echo("  targets: a list per image, explained in one call (--top-k)")
    else:
        click.echo("  target kinds: class only (format 1; re-export for the others)")
        click.echo("  targets: " + ("a list per image, explained in one call (--top-k)" if explainer.takes_target_lists
                                    else "one per image (--top-k makes one call per rank)"))
    click.echo("  input gradients: " + (", ".join(contract.input_gradients) or
                                        "none (re-export with --input-gradient for saliency / guided backprop)"))
    click.echo("  layers:")
    for index, layer in enumerate(contract.layers):
        missing = [name for name, absent in (("cam", not layer.cam_weight), ("ablationcam", not layer.tail)) if absent]
        methods_ = "all" + (f" but {', '.join(missing)}" if missing else "")
        click.echo(f"    [{index}] {layer.name}  [C,h,w]={list(layer.shape)}  reshape={layer.reshape}  methods: {methods_}")
    if contract.tokens is not None:
        click.echo(f"  tokens: {contract.tokens.prefix} leading + {contract.tokens.grid[0]}x{contract.tokens.grid[1]} "
                   "patch grid")
    if contract.attention:
        heads, count = contract.attention[0].shape[:2]
        rollout = "attention-rollout, gradient-rollout" if contract.attention_complete else \
            "no rollout (some blocks only; re-export with --attention all)"
        click.echo(f"  attention: {len(contract.attention)} block(s), {heads} heads x {count}x{count} tokens "
                   f"(`onnxcam attention`; methods {rollout})")
    elif contract.tokens is not None:
        click.echo("  attention: none (re-export with --attention all for rollout and `onnxcam attention`)")
    if contract.detection is not None:
        found = contract.detection
        names = f"{len(found.labels)} labels ({', '.join(found.labels[1:4])}, …)" if found.labels else "no labels"
        click.echo(f"  detection: {found.family} raw heads, {sum(found.levels)} anchors in {len(found.levels)} levels, "
                   f"{found.classes} classes, {names}; score threshold {found.params['score_thresh']} "
                   "(explain each detection with `onnxcam detect`)")
    pre = contract.preprocessing
    resize = f"resize shorter side to {pre['resize']}, centre-crop" if pre.get("resize") else "resize to"
    click.echo(f"  preprocessing: {resize} {pre['size'][0]}x{pre['size'][1]}, {pre.get('channel_order', 'RGB')}, "
               f"/{pre.get('scale', 255)}, mean {pre.get('mean')}, std {pre.get('std')}")
    if contract.labels:
        shown = ", ".join(contract.labels[:5])
        click.echo(f"  labels: {len(contract.labels)} ({shown}, …)")
    else:
        click.echo("  labels: none (classes are shown by id)")


def _baked(model: Path, record, as_json: bool) -> None:
    """What a baked file (``onnxcam bake``) takes and returns."""
    import dataclasses
    import json

    if as_json:
        click.echo(json.dumps(dataclasses.asdict(record)))
        return
    explainer = record.explainer
    click.echo(f"{model}")
    click.echo(f"  baked file: {record.method} over layer(s) {', '.join(record.layers)} of "
               f"{explainer.get('architecture') or 'a model'}   precision: {record.precision}")
    click.echo(f"  input: {record.input['name']} {record.input['dtype']} {record.input['shape']}  "
               f"({record.input['layout']})")
    fed = {name: spec for name, spec in record.target["inputs"].items() if spec["fed"]}
    baked = {name: spec["value"] for name, spec in record.target["inputs"].items() if not spec["fed"]}
    click.echo(f"  target: {record.target['kind']}" + "".join(f"; input {name} {spec['dtype']} {spec['shape']}"
                                                              for name, spec in fed.items())
               + "".join(f"; {name} = {value} baked in" for name, value in baked.items()))
    click.echo("  outputs:")
    for name, spec in record.outputs.items():
        click.echo(f"    {name:<10} {spec['dtype']:<8} {spec['shape']}")
    if record.overlay:
        click.echo(f"  overlay: {record.overlay['colormap']}, alpha {record.overlay['alpha']}")
    labels = explainer.get("labels") or []
    click.echo(f"  labels: {len(labels)} in the record (explainer.labels; `onnxcam info --json`)" if labels
               else "  labels: none (classes are shown by id)")
