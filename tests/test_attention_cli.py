"""Attention pictures: the heatmap read back cell by cell, head fusion, token labels and the query map
against numpy, and ``onnxcam attention`` end to end on a small torchvision ViT against torch's own
``nn.MultiheadAttention`` weights."""

from __future__ import annotations


import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import skimage_photo
from onnxcam.runtime.attention_plot import (cell_size, fuse_heads, matrix_heatmap, query_map, query_token,
                                            token_labels)
from onnxcam.runtime.contract import InputError, Tokens
from onnxcam.runtime.image import load_image
from test_cli import assert_one_line_error

# jet as OpenCV defines it, RGB, one row per level 0..255: every level has its own colour
JET = cv2.cvtColor(cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET),
                   cv2.COLOR_BGR2RGB)[:, 0].astype(np.int64)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def coloured(image: np.ndarray) -> np.ndarray:
    """Where ``image`` is a colour of the map (every jet colour's channels spread ≥ 128; text is grey)."""
    return np.ptp(image.astype(np.int64), axis=2) >= 100


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of True in a 1-D mask."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2]))


def matrix_area(image: np.ndarray, count: int) -> tuple[int, int, int]:
    """``(top, left, cell)`` of the matrix, found from the picture alone: the leftmost block of
    coloured columns (the colour bar is the second), square, ``count`` equal cells a side."""
    columns = runs(coloured(image).any(axis=0))
    assert len(columns) == 2, columns  # the matrix and the colour bar, white between them
    left, right = columns[0]
    rows = runs(coloured(image[:, left:right]).any(axis=1))
    assert len(rows) == 1, rows
    top, bottom = rows[0]
    assert bottom - top == right - left and (right - left) % count == 0, (top, bottom, left, right)
    return int(top), int(left), int((right - left) // count)


def cell_levels(image: np.ndarray, count: int) -> np.ndarray:
    """The jet level ``[T, T]`` of each cell's centre pixel (query row y, key column x)."""
    top, left, cell = matrix_area(image, count)
    centres = top + np.arange(count) * cell + cell // 2, left + np.arange(count) * cell + cell // 2
    pixels = image[np.ix_(*centres)].astype(np.int64)  # [T, T, 3]
    distance = np.abs(pixels[:, :, None, :] - JET[None, None]).sum(axis=3)
    assert distance.min(axis=2).max() == 0, "a cell's centre is not a colour of the map"
    return distance.argmin(axis=2)


def expected_levels(matrix: np.ndarray) -> np.ndarray:
    return (matrix - matrix.min()) / (matrix.max() - matrix.min()) * 255


# ---------------------------------------------------------------- pure functions


def test_fuse_heads_against_numpy():
    attention = np.random.default_rng(0).random((3, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(fuse_heads(attention, "mean"), attention.mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(fuse_heads(attention, "max"), attention.max(axis=0))
    np.testing.assert_array_equal(fuse_heads(attention, "MIN"), attention.min(axis=0))
    np.testing.assert_array_equal(fuse_heads(attention, 2), attention[2])
    np.testing.assert_array_equal(fuse_heads(attention, "1"), attention[1])
    for bad in (3, -1, "median", "1.5"):
        with pytest.raises(InputError) as error:
            fuse_heads(attention, bad)
        message = str(error.value)
        assert "\n" not in message and "0..2" in message and "mean, max, min" in message, message


def test_token_labels_for_class_distillation_and_register_tokens():
    assert token_labels(Tokens(1, (2, 3)), 7) == ["cls", "0,0", "0,1", "0,2", "1,0", "1,1", "1,2"]
    assert token_labels(Tokens(2, (2, 2)), 6) == ["cls", "tok1", "0,0", "0,1", "1,0", "1,1"]
    assert token_labels(Tokens(0, (3, 1)), 3) == ["0,0", "1,0", "2,0"]
    assert token_labels(Tokens(5, (1, 2)), 7)[:6] == ["cls", "tok1", "tok2", "tok3", "tok4", "0,0"]
    assert token_labels(None, 3) == ["0", "1", "2"]
    words = ["[CLS]", "a", "cat", "[SEP]"]
    assert token_labels(None, 4, words) == words and token_labels(Tokens(0, (2, 2)), 4, words) == words
    with pytest.raises(InputError, match=r"^3 token names were given but the attention has 4 tokens"):
        token_labels(None, 4, words[:3])
    with pytest.raises(InputError, match=r"1 \+ 2x3 patches = 7"):
        token_labels(Tokens(1, (2, 3)), 8)


def test_query_map_puts_each_patch_on_its_grid_cell():
    for tokens in (Tokens(2, (2, 3)), Tokens(0, (3, 2)), Tokens(1, (4, 4))):
        h, w = tokens.grid
        count = tokens.prefix + h * w
        for row in range(h):
            for column in range(w):
                one_hot = np.zeros(count, np.float32)
                one_hot[tokens.prefix + row * w + column] = 1
                expected = np.zeros((h, w), np.float32)
                expected[row, column] = 1
                np.testing.assert_array_equal(query_map(one_hot, tokens), expected)
                assert query_token(f"{row},{column}", tokens, count) == tokens.prefix + row * w + column
        for prefix_token in range(tokens.prefix):  # attention to class / distillation tokens is not on the image
            assert not query_map(np.eye(count, dtype=np.float32)[prefix_token], tokens).any()


def test_query_token_choices():
    vit, no_class = Tokens(1, (4, 4)), Tokens(0, (3, 4))
    assert query_token(None, vit, 17) == 0 and query_token("cls", vit, 17) == 0 and query_token("16", vit, 17) == 16
    assert query_token(None, no_class, 12) == 1 * 4 + 2  # the centre patch (1, 2)
    for text, pattern in (("17", r"query token 17 is out of range: the block has 17 tokens"),
                          ("4,0", r"query patch 4,0 is out of range: the patch grid is 4x4"),
                          ("-1", r"out of range"), ("x", r"query 'x' is not a token")):
        with pytest.raises(InputError, match=pattern):
            query_token(text, vit, 17)
    with pytest.raises(InputError, match=r"no class token"):
        query_token("cls", no_class, 12)


def test_heatmap_is_oriented_query_by_row_key_by_column():
    count = 7
    matrix = np.random.default_rng(1).uniform(0.2, 0.3, (count, count)).astype(np.float32)
    matrix[2, 5], matrix[4, 1] = 0.9, 0.05  # one hot cell off the diagonal, one cold one
    image = matrix_heatmap(matrix, token_labels(Tokens(1, (2, 3)), count), "orientation")
    levels = cell_levels(image, count)
    assert np.unravel_index(levels.argmax(), levels.shape) == (2, 5) and levels[2, 5] == 255
    assert np.unravel_index(levels.argmin(), levels.shape) == (4, 1) and levels[4, 1] == 0
    np.testing.assert_allclose(levels, expected_levels(matrix), atol=1)  # every cell, not only the extremes
    # the colour bar: the maximum's colour at the top, the minimum's at the bottom
    bar_left, bar_right = runs(coloured(image).any(axis=0))[1]
    bar = image[:, (bar_left + bar_right) // 2].astype(np.int64)
    bar_rows = np.flatnonzero(coloured(image[:, bar_left:bar_right]).any(axis=1))
    assert (bar[bar_rows[0]] == JET[255]).all() and (bar[bar_rows[-1]] == JET[0]).all()


def test_heatmap_size_and_labels_that_never_overlap():
    rng = np.random.default_rng(2)
    for tokens in (Tokens(1, (4, 4)), Tokens(1, (14, 14)), Tokens(0, (3, 5))):
        count = tokens.prefix + tokens.grid[0] * tokens.grid[1]
        image = matrix_heatmap(rng.random((count, count)), token_labels(tokens, count), f"{count} tokens")
        top, left, cell = matrix_area(image, count)
        side = cell * count
        if count == 197:  # ViT-B/16
            assert 800 <= min(image.shape[:2]) and max(image.shape[:2]) <= 1100, image.shape
            assert cell >= 4
        else:
            assert cell >= 40  # small matrices get big cells
        dark = image.max(axis=2) < 128
        # row labels end just left of the matrix, column labels (turned) start just below it: one run of
        # ink per label drawn (labels that touched would make one run), centred on its token's cell, evenly
        for ink, offset, origin in ((dark[:, left - 12:left - 2].any(axis=1), 0, top),
                                    (dark[top + side + 2:top + side + 14, left - 3:left + side].any(axis=0),
                                     left - 3, left)):
            centres = np.array([offset + (a + b - 1) / 2 for a, b in runs(ink)])
            spacing = np.diff(centres)
            step = int(round(spacing.mean() / cell))
            assert step >= 1 and np.abs(spacing - step * cell).max() <= 2, (spacing, cell)
            assert abs(centres[0] - (origin + cell / 2)) <= 3 and len(centres) == -(-count // step)
            if count <= 20:
                assert step == 1  # all labels where they fit
            else:
                assert step * cell >= 10 and len(centres) >= 20


def test_cell_size_targets_a_readable_picture():
    assert cell_size(197) * 197 in range(780, 1000) and cell_size(577) >= 1 and cell_size(2) == 48


# ---------------------------------------------------------------- the CLI on a small ViT

BLOCKS = ("encoder.layers.encoder_layer_0.self_attention", "encoder.layers.encoder_layer_1.self_attention")


def run(*args):
    return CliRunner().invoke(main(), [str(a) for a in args], catch_exceptions=False)


def main():
    from onnxcam.runtime.cli import main as cli

    return cli


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A 2-block, 2-head torchvision ViT on 64x64 inputs (4x4 patches + class token: 17 tokens), its query and
    key projections scaled up so that attention is far from uniform, exported with all attention blocks."""
    import torch
    import torchvision

    from onnxcam.export import export_explainer

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.self_attention.in_proj_weight[:64] *= 4  # W_q, W_k
    path = tmp_path_factory.mktemp("vit") / "vit.onnx"
    export_explainer(model, path, ["encoder.layers.encoder_layer_1"], (2, 3, 64, 64), attention="all")
    return model, path


@pytest.fixture(scope="module")
def torch_attention(vit):
    """Block name → ``[heads, T, T]`` for chelsea: ``nn.MultiheadAttention`` with ``need_weights=True,
    average_attn_weights=False`` on the block's own input (its LayerNorm output), hooked."""
    import torch

    from onnxcam.runtime import Explainer, load_batch

    model, path = vit
    batch, _ = load_batch([skimage_photo("chelsea.png")], Explainer(path, providers="cpu").contract)
    inputs = {}
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: inputs.__setitem__(name, args[0])) for name in BLOCKS]
    with torch.no_grad():
        model(torch.from_numpy(batch))
        weights = {name: model.get_submodule(name)(inputs[name], inputs[name], inputs[name], need_weights=True,
                                                   average_attn_weights=False)[1][0].numpy() for name in BLOCKS}
    for hook in hooks:
        hook.remove()
    return weights


def test_explainer_attention_equals_torch(vit, torch_attention):
    from onnxcam.runtime import Explainer, load_batch

    explainer = Explainer(vit[1], providers="cpu")
    assert explainer.contract.tokens == Tokens(1, (4, 4))
    batch, _ = load_batch([skimage_photo("chelsea.png")], explainer.contract)
    attention = explainer.attention(batch)
    assert sorted(attention) == sorted(BLOCKS)
    for name in BLOCKS:
        assert attention[name].shape == (1, 2, 17, 17)
        np.testing.assert_allclose(attention[name][0].sum(axis=-1), 1, atol=1e-5)
        np.testing.assert_allclose(attention[name][0], torch_attention[name], atol=1e-4, rtol=0)
    assert np.ptp(torch_attention[BLOCKS[1]]) > 0.3  # far from uniform: the colours below mean something


def test_cli_draws_the_attention_torch_computes(vit, torch_attention, tmp_path):
    from onnxcam.runtime import Explainer, load_batch, overlay

    out = tmp_path / "out"
    result = run("attention", vit[1], skimage_photo("chelsea.png"), "--out", out, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    names = ["chelsea.attention.1.mean.png", "chelsea.attention.1.mean.query-cls.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [f"wrote {out / n}" for n in names]
    assert all((out / n).read_bytes().startswith(PNG_SIGNATURE) for n in names)
    # the matrix: the last block, heads averaged, each cell the colour of torch's weight
    matrix = torch_attention[BLOCKS[1]].mean(axis=0)
    heatmap = load_image(out / names[0])
    assert heatmap.shape[0] >= 17 * 40 and heatmap.shape[1] >= 17 * 40
    np.testing.assert_allclose(cell_levels(heatmap, 17), expected_levels(matrix), atol=1.01)
    # the overlay: the class token's row over the 4x4 patches, on the 64x64 view the model saw
    picture = load_image(out / names[1])
    assert picture.shape == (64, 64, 3)
    _, views = load_batch([skimage_photo("chelsea.png")], Explainer(vit[1], providers="cpu").contract)
    grid = matrix[0, 1:].reshape(4, 4)
    expected = overlay(views[0], (grid - grid.min()) / (grid.max() - grid.min()))
    assert np.abs(picture.astype(int) - expected.astype(int)).max() <= 3


def test_cli_head_query_block_by_name_and_token_names(vit, torch_attention, tmp_path):
    out = tmp_path / "out"
    names_file = tmp_path / "tokens.txt"
    names_file.write_text("\n".join(["[CLS]"] + [f"patch{i}" for i in range(16)]) + "\n")
    result = run("attention", vit[1], skimage_photo("chelsea.png"), "--block", "encoder.layers.encoder_layer_0",
                 "--head", "1", "--query", "2,3", "--token-names", names_file, "--out", out, "--provider", "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.attention.0.1.png",
                                                   "chelsea.attention.0.1.query-2-3.png"]
    levels = cell_levels(load_image(out / "chelsea.attention.0.1.png"), 17)
    np.testing.assert_allclose(levels, expected_levels(torch_attention[BLOCKS[0]][1]), atol=1.01)
    result = run("attention", vit[1], skimage_photo("chelsea.png"), "--block", "-2", "--head", "max", "--query",
                 "5", "--out", out)
    assert result.exit_code == 0, result.output
    levels = cell_levels(load_image(out / "chelsea.attention.0.max.png"), 17)
    np.testing.assert_allclose(levels, expected_levels(torch_attention[BLOCKS[0]].max(axis=0)), atol=1.01)
    assert (out / "chelsea.attention.0.max.query-1-0.png").is_file()  # token 5: patch (1, 0)


@pytest.mark.parametrize("arguments, pattern", [
    (("--block", "2"), r"attention block 2 is out of range; this graph has 2 block\(s\): 0\.\.1"),
    (("--block", "encoder.layers.encoder_layer_7"), r"attention block 'encoder\.layers\.encoder_layer_7' is not"),
    (("--head", "2"), r"head 2 is not one of this block's heads: give a head 0\.\.1 .*mean, max, min"),
    (("--head", "median"), r"head median is not one"),
    (("--query", "17"), r"query token 17 is out of range: the block has 17 tokens"),
    (("--query", "0,4"), r"query patch 0,4 is out of range: the patch grid is 4x4"),
    (("--token-names", "SIXTEEN"), r"16 token names were given but the attention has 17 tokens"),
])
def test_bad_input_is_one_line_and_no_file(vit, tmp_path, arguments, pattern):
    names_file = tmp_path / "sixteen.txt"
    names_file.write_text("\n".join(f"t{i}" for i in range(16)))
    arguments = [names_file if a == "SIXTEEN" else a for a in arguments]
    out = tmp_path / "out"
    result = run("attention", vit[1], skimage_photo("chelsea.png"), *arguments, "--out", out)
    assert_one_line_error(result, pattern)
    assert not out.exists()


def test_graph_without_attention(tmp_path):
    graph = tmp_path / "tiny.onnx"
    assert run("export", "zoo:tiny", "--layer", "features", "--input-size", "48", "-o", graph).exit_code == 0
    out = tmp_path / "out"
    result = run("attention", graph, skimage_photo("chelsea.png"), "--out", out)
    assert_one_line_error(result, r"this graph has no attention outputs; re-export it with `onnxcam export … "
                                  r"--attention all`")
    assert not out.exists()
