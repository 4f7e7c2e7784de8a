"""Annotated grids and tiles, as A1111's modules/images.py draws and splits them (a1111.md 9, 11).

- `draw_grid_annotations` puts a grid of equal cells on a larger canvas with a label row on top
  (one label per column) and a label column on the left (one per row), optional margins between
  cells; labels wrap at word boundaries and shrink until they fit. Inactive labels are grey and
  struck through (the prompt matrix marks the parts an image does not use that way).
- `draw_prompt_matrix` labels a prompt-matrix grid: the first half of the variable parts across,
  the rest down, every combination of them.
- `split_grid` / `combine_grid` cut an image into overlapping tiles and blend processed tiles back
  with linear ramps over the overlaps (SD upscale).

Colours and the font come from A1111's options (grid_background_color, grid_text_active_color,
grid_text_inactive_color, font). The default font is the one bundled with Pillow, so nothing has to
be installed or downloaded. No torch here.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont

from backend.errors import InvalidRequest

# A1111's defaults for the options read here (modules/shared_options.py).
DEFAULT_GRID_OPTIONS: Mapping[str, Any] = {
    "grid_background_color": "#ffffff",
    "grid_text_active_color": "#000000",
    "grid_text_inactive_color": "#999999",
    "font": "",
}
# Width of the line striking through an inactive label.
_STRIKE_WIDTH = 4

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass
class GridAnnotation:
    """One label line of a grid legend (A1111's images.GridAnnotation)."""

    text: str = ""
    is_active: bool = True


def get_font(size: int, font_path: str = "") -> Font:
    """The font for grid labels: the `font` option's file when it loads, else Pillow's bundled font."""
    size = max(1, int(size))
    if font_path:
        try:
            return ImageFont.truetype(font_path, size)
        except OSError:
            pass  # A1111 also falls back to its default font when the configured one cannot be read
    return ImageFont.load_default(size=size)


@dataclass
class _Line:
    text: str
    is_active: bool
    width: int
    height: int
    allowed_width: int


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Font) -> tuple[int, int]:
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int) -> list[str]:
    """Greedy word wrap at `width` pixels; a single word longer than that keeps its own line."""
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _layout(draw: ImageDraw.ImageDraw, annotations: Sequence[GridAnnotation], font: Font,
            allowed_width: int) -> list[_Line]:
    lines: list[_Line] = []
    for annotation in annotations:
        for text in _wrap(draw, annotation.text, font, allowed_width):
            width, height = _text_size(draw, text, font)
            lines.append(_Line(text, annotation.is_active, width, height, allowed_width))
    return lines


def draw_grid_annotations(im: Image.Image, width: int, height: int, hor_texts: Sequence[Sequence[GridAnnotation]],
                          ver_texts: Sequence[Sequence[GridAnnotation]], margin: int = 0, *,
                          opts: Mapping[str, Any] | None = None) -> Image.Image:
    """`im` (a grid of `width` x `height` cells) with labels above the columns and left of the rows.

    A1111's layout: font size (width + height) // 25, line spacing half of it; the left column is
    3/4 of a cell wide when any row label has text (else absent); the top row is as tall as the
    tallest column label plus two line spacings (absent when no column label has text); `margin`
    pixels between cells. Returns a new RGB image.
    """
    options = {**DEFAULT_GRID_OPTIONS, **(opts or {})}
    background = ImageColor.getcolor(options["grid_background_color"], "RGB")
    active = ImageColor.getcolor(options["grid_text_active_color"], "RGB")
    inactive = ImageColor.getcolor(options["grid_text_inactive_color"], "RGB")
    cols, rows = im.width // width, im.height // height
    if cols != len(hor_texts):
        raise InvalidRequest("hor_texts", f"bad number of horizontal texts: {len(hor_texts)}; must be {cols}")
    if rows != len(ver_texts):
        raise InvalidRequest("ver_texts", f"bad number of vertical texts: {len(ver_texts)}; must be {rows}")

    fontsize = (width + height) // 25
    line_spacing = fontsize // 2
    font_path = str(options["font"] or "")
    font = get_font(fontsize, font_path)
    has_row_labels = any(annotation.text for texts in ver_texts for annotation in texts)
    pad_left = width * 3 // 4 if has_row_labels else 0

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1), background))
    columns = [_layout(measure, texts, font, width) for texts in hor_texts]
    row_lines = [_layout(measure, texts, font, pad_left) for texts in ver_texts]
    column_heights = [sum(line.height + line_spacing for line in lines) - line_spacing for lines in columns]
    # A1111 leaves the spacing out of the row labels' height, so they sit slightly low; kept for parity.
    row_heights = [sum(line.height for line in lines) for lines in row_lines]
    pad_top = max(column_heights) + line_spacing * 2 if sum(column_heights) > 0 else 0

    result = Image.new("RGB", (im.width + pad_left + margin * (cols - 1), im.height + pad_top + margin * (rows - 1)),
                       background)
    for row in range(rows):
        for col in range(cols):
            cell = im.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            result.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))

    draw = ImageDraw.Draw(result)

    def draw_lines(x: float, y: float, lines: list[_Line]) -> None:
        for line in lines:
            size, line_font = fontsize, font
            while _text_size(draw, line.text, line_font)[0] > line.allowed_width and size > 1:
                size -= 1
                line_font = get_font(size, font_path)
            draw.multiline_text((x, y + line.height / 2), line.text, font=line_font,
                                fill=active if line.is_active else inactive, anchor="mm", align="center")
            if not line.is_active:
                middle = y + line.height // 2
                draw.line((x - line.width // 2, middle, x + line.width // 2, middle), fill=inactive,
                          width=_STRIKE_WIDTH)
            y += line.height + line_spacing

    for col, lines in enumerate(columns):
        draw_lines(pad_left + (width + margin) * col + width / 2, pad_top / 2 - column_heights[col] / 2, lines)
    for row, lines in enumerate(row_lines):
        draw_lines(pad_left / 2, pad_top + (height + margin) * row + height / 2 - row_heights[row] / 2, lines)
    return result


def draw_prompt_matrix(im: Image.Image, width: int, height: int, all_prompts: Sequence[str], margin: int = 0, *,
                       opts: Mapping[str, Any] | None = None) -> Image.Image:
    """Label a prompt-matrix grid: `all_prompts` is [base, part1, part2, ...]; the first half of the
    parts label the columns, the rest the rows, each cell showing which parts it uses (A1111)."""
    parts = list(all_prompts[1:])
    boundary = math.ceil(len(parts) / 2)
    across, down = parts[:boundary], parts[boundary:]

    def labels(texts: list[str]) -> list[list[GridAnnotation]]:
        return [[GridAnnotation(text, is_active=bool(combination & (1 << i))) for i, text in enumerate(texts)]
                for combination in range(1 << len(texts))]

    return draw_grid_annotations(im, width, height, labels(across), labels(down), margin, opts=opts)


@dataclass
class Tile:
    """One tile of a split image: its left edge and width in the image, and its picture."""

    x: int
    width: int
    image: Image.Image


@dataclass
class TileRow:
    y: int
    height: int
    tiles: list[Tile] = field(default_factory=list)


@dataclass
class Grid:
    """An image split into overlapping tiles (A1111's images.Grid)."""

    rows: list[TileRow]
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int

    @property
    def tile_count(self) -> int:
        return sum(len(row.tiles) for row in self.rows)

    def tiles(self) -> list[Tile]:
        """Every tile, row by row."""
        return [tile for row in self.rows for tile in row.tiles]


def split_grid(image: Image.Image, tile_w: int = 512, tile_h: int = 512, overlap: int = 64) -> Grid:
    """Cut `image` into tile_w x tile_h tiles overlapping by at least `overlap` pixels (A1111's split_grid).

    Tiles are spread evenly, the last one flush with the right/bottom edge.
    """
    if tile_w <= overlap or tile_h <= overlap:
        raise InvalidRequest("overlap", f"must be smaller than the tile size {tile_w}x{tile_h}, got {overlap}")
    w, h = image.size
    cols = max(1, math.ceil((w - overlap) / (tile_w - overlap)))
    rows = max(1, math.ceil((h - overlap) / (tile_h - overlap)))
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0

    grid = Grid([], tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        y = min(int(row * dy), h - tile_h)
        tile_row = TileRow(y, tile_h)
        for col in range(cols):
            x = min(int(col * dx), w - tile_w)
            tile_row.tiles.append(Tile(x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))))
        grid.rows.append(tile_row)
    return grid


def _ramp(length: int, across: int, *, horizontal: bool) -> Image.Image:
    """An "L" mask rising linearly from 0 over `length` pixels (A1111's overlap blend)."""
    ramp = (np.arange(length, dtype=np.float32) * 255 / length).astype(np.uint8)
    array = np.tile(ramp[None, :], (across, 1)) if horizontal else np.tile(ramp[:, None], (1, across))
    return Image.fromarray(array, "L")


def combine_grid(grid: Grid) -> Image.Image:
    """Put the tiles back together, each blended over the previous one across the overlap."""
    overlap = grid.overlap
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    mask_w = _ramp(overlap, grid.tile_h, horizontal=True) if overlap else None
    mask_h = _ramp(overlap, grid.image_w, horizontal=False) if overlap else None
    for row in grid.rows:
        line = Image.new("RGB", (grid.image_w, row.height))
        for tile in row.tiles:
            if tile.x == 0 or mask_w is None:
                line.paste(tile.image, (tile.x, 0))
                continue
            line.paste(tile.image.crop((0, 0, overlap, row.height)), (tile.x, 0), mask=mask_w)
            line.paste(tile.image.crop((overlap, 0, tile.width, row.height)), (tile.x + overlap, 0))
        if row.y == 0 or mask_h is None:
            combined.paste(line, (0, row.y))
            continue
        combined.paste(line.crop((0, 0, line.width, overlap)), (0, row.y), mask=mask_h)
        combined.paste(line.crop((0, overlap, line.width, row.height)), (0, row.y + overlap))
    return combined
