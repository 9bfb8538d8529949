"""The benchmark runs end to end (a smoke test at a tiny size; no timing assertions)."""

from __future__ import annotations

from click.testing import CliRunner

from onnxcam.runtime.cli import main


def test_bench_smoke(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--model", "resnet18", "--batch", "1", "--batch", "2",
                                       "--size", "64", "--seconds", "0", "--runs", "1", "--device", "cpu"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = [line for line in result.output.splitlines() if line.startswith("| ")]
    runners = {line.split("|")[2].strip() for line in table[2:]}
    assert runners == {"pgc GradCAM", "pgc GradCAM++", "ort forward", "onnxcam gradcam", "onnxcam gradcam++"}
    assert len(table) == 2 + 2 * 5
    for line in table[2:]:
        assert float(line.split("|")[3]) > 0  # images/s
