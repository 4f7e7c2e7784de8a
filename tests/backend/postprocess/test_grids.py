"""Annotated grids (A1111's draw_grid_annotations / draw_prompt_matrix) and split/combine of tiles."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backend.errors import InvalidRequest
from backend.postprocess.grids import (
    GridAnnotation,
    combine_grid,
    draw_grid_annotations,
    draw_prompt_matrix,
    get_font,
    split_grid,
)
from backend.postprocess.images import image_grid

CELL = 64
WHITE = (255, 255, 255)


def _cells(cols: int, rows: int, color: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    return image_grid([Image.new("RGB", (CELL, CELL), color)] * (cols * rows), rows=rows)


def _inked(region: Image.Image, background: tuple[int, int, int] = WHITE) -> int:
    """Pixels that differ from the background."""
    return int(np.any(np.asarray(region) != np.array(background, dtype=np.uint8), axis=2).sum())


def _labels(*texts: str) -> list[list[GridAnnotation]]:
    return [[GridAnnotation(text)] for text in texts]


def test_legend_sizes_follow_a1111_layout() -> None:
    grid = _cells(2, 2)
    result = draw_grid_annotations(grid, CELL, CELL, _labels("Steps: 2", "Steps: 3"), _labels("CFG: 5", "CFG: 7"))
    fontsize = (CELL + CELL) // 25
    pad_left = CELL * 3 // 4
    pad_top = result.height - grid.height
    assert result.width == grid.width + pad_left
    # The top row is at least the label height plus two line spacings.
    assert pad_top >= fontsize // 2 * 2
    # Cells are pasted unchanged after the padding.
    assert np.array_equal(np.asarray(result.crop((pad_left, pad_top, result.width, result.height))), np.asarray(grid))
    # Labels are drawn in the legend areas, nowhere else.
    assert _inked(result.crop((pad_left, 0, result.width, pad_top))) > 0
    assert _inked(result.crop((0, pad_top, pad_left, result.height))) > 0
    assert _inked(result.crop((0, 0, pad_left, pad_top))) == 0


def test_each_label_sits_over_its_own_column() -> None:
    result = draw_grid_annotations(_cells(3, 1), CELL, CELL, _labels("", "x", ""), _labels(""))
    top = result.height - CELL
    ink = [_inked(result.crop((CELL * i, 0, CELL * (i + 1), top))) for i in range(3)]
    assert ink[0] == 0 and ink[1] > 0 and ink[2] == 0


def test_no_labels_means_no_legend_area() -> None:
    grid = _cells(2, 1)
    result = draw_grid_annotations(grid, CELL, CELL, _labels("", ""), _labels(""))
    assert result.size == grid.size
    assert np.array_equal(np.asarray(result), np.asarray(grid))


def test_margins_go_between_cells_only() -> None:
    grid = _cells(3, 2)
    result = draw_grid_annotations(grid, CELL, CELL, _labels("", "", ""), _labels("", ""), margin=10)
    assert result.size == (grid.width + 2 * 10, grid.height + 10)
    pixels = np.asarray(result)
    assert tuple(pixels[5, CELL + 5]) == WHITE  # the gap after the first column
    assert tuple(pixels[5, CELL + 10 + 5]) != WHITE  # the second cell


def test_inactive_labels_use_the_inactive_colour_and_a_strike() -> None:
    grid = _cells(1, 1, color=(0, 0, 0))
    opts = {"grid_text_inactive_color": "#ff0000"}
    active = draw_grid_annotations(grid, CELL, CELL, [[GridAnnotation("word", True)]], _labels(""), opts=opts)
    inactive = draw_grid_annotations(grid, CELL, CELL, [[GridAnnotation("word", False)]], _labels(""), opts=opts)
    top = active.height - CELL
    red = np.all(np.asarray(inactive.crop((0, 0, CELL, top))) == (255, 0, 0), axis=2).sum()
    assert red > 0
    assert np.all(np.asarray(active.crop((0, 0, CELL, top))) == (255, 0, 0), axis=2).sum() == 0


def test_long_labels_wrap_onto_more_lines() -> None:
    grid = _cells(1, 1)
    short = draw_grid_annotations(grid, CELL, CELL, _labels("a"), _labels(""))
    long = draw_grid_annotations(grid, CELL, CELL, _labels("many words that cannot fit on one line"), _labels(""))
    assert long.height > short.height


def test_label_counts_must_match_the_grid() -> None:
    with pytest.raises(InvalidRequest, match="horizontal texts"):
        draw_grid_annotations(_cells(2, 1), CELL, CELL, _labels("a"), _labels(""))
    with pytest.raises(InvalidRequest, match="vertical texts"):
        draw_grid_annotations(_cells(2, 1), CELL, CELL, _labels("a", "b"), _labels("", ""))


def test_prompt_matrix_labels_every_combination() -> None:
    # base|a|b|c: a and b across (4 columns), c down (2 rows).
    grid = _cells(4, 2)
    result = draw_prompt_matrix(grid, CELL, CELL, ["base", "a", "b", "c"])
    assert result.width == grid.width + CELL * 3 // 4
    assert result.height > grid.height


def test_font_falls_back_to_the_bundled_one() -> None:
    assert get_font(12, "/no/such/font.ttf").size == 12
    assert get_font(0).size == 1


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    channels = [np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                np.full((height, width, 1), 90, np.float32)]
    return Image.fromarray(np.concatenate(channels, axis=2).astype(np.uint8))


@pytest.mark.parametrize("size, tile, overlap, count", [((200, 150), 64, 16, 12), ((128, 128), 64, 0, 4),
                                                        ((64, 64), 64, 32, 1)])
def test_split_and_combine_round_trip(size: tuple[int, int], tile: int, overlap: int, count: int) -> None:
    image = _gradient(*size)
    grid = split_grid(image, tile, tile, overlap)
    assert grid.tile_count == count
    assert all(t.image.size == (tile, tile) for t in grid.tiles())
    # Tiles cover the image and the last ones are flush with its edges.
    assert grid.rows[-1].y + tile == size[1] and grid.rows[0].tiles[-1].x + tile == size[0]
    assert np.array_equal(np.asarray(combine_grid(grid)), np.asarray(image))


def test_combine_blends_across_the_overlap() -> None:
    grid = split_grid(Image.new("RGB", (112, 64)), 64, 64, 16)
    assert [t.x for t in grid.tiles()] == [0, 48]
    grid.rows[0].tiles[0].image = Image.new("RGB", (64, 64), (0, 0, 0))
    grid.rows[0].tiles[1].image = Image.new("RGB", (64, 64), (255, 255, 255))
    row = np.asarray(combine_grid(grid))[0, :, 0]
    assert row[47] == 0 and row[64] == 255
    ramp = row[48:64]
    assert np.all(np.diff(ramp.astype(int)) >= 0) and 0 <= ramp[0] < 20 and ramp[-1] > 230


def test_overlap_must_be_smaller_than_a_tile() -> None:
    with pytest.raises(InvalidRequest, match="overlap"):
        split_grid(Image.new("RGB", (128, 128)), 64, 64, 64)
