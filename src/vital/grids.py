"""Compose result images into captioned grids for looking at and comparing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def as_saved(pixels: torch.Tensor) -> torch.Tensor:
    """``pixels`` as an 8-bit image file holds them: clamped to [0, 1], rounded to 1/255.

    Scores that a record keeps are computed on these, so that they hold for the PNG the user
    gets (a class can be top-1 on the float image and second on the file).
    """
    return ((pixels.detach().float().clamp(0, 1) * 255).round() / 255).to(pixels.dtype)


def to_image(pixels: torch.Tensor, alpha: torch.Tensor | None = None) -> Image.Image:
    """(3, H, W) pixels in [0, 1] (and an optional (H, W) alpha) as a Pillow image."""
    array = (as_saved(pixels).cpu().permute(1, 2, 0).numpy() * 255).round()
    if alpha is not None:
        alpha_channel = (alpha.detach().cpu().clamp(0, 1).numpy() * 255).round()[..., None]
        array = np.concatenate([array, alpha_channel], axis=-1)
    return Image.fromarray(array.astype(np.uint8))


def display_pixels(pixels: torch.Tensor, low: float = 1.0, high: float = 99.0) -> torch.Tensor:
    """Clip (3, H, W) pixels to their ``low``-``high`` percentiles and min-max normalise them.

    This is how an image is shown with its transparency map (METHOD.md section 3, as MaCo
    shows its results).
    """
    values = pixels.detach().float()
    bottom = torch.quantile(values.flatten(), low / 100)
    top = torch.quantile(values.flatten(), high / 100)
    clipped = values.clamp(bottom, top)
    return (clipped - bottom) / (top - bottom).clamp_min(1e-12)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _fit(text: str, font: ImageFont.ImageFont, width: int, draw: ImageDraw.ImageDraw) -> str:
    while text and draw.textlength(text, font=font) > width - 6:
        text = text[:-2] + "…"
        if text == "…":
            break
    return text


def grid(
    images: Sequence[Image.Image],
    captions: Sequence[str] = (),
    columns: int | None = None,
    cell: int = 224,
    row_labels: Sequence[str] = (),
) -> Image.Image:
    """Lay ``images`` out in a grid with a caption under each and optional row labels.

    RGBA images are shown over a checkerboard so that transparency is visible.
    """
    if not images:
        raise ValueError("grid needs at least one image")
    columns = columns or min(len(images), 6)
    rows = -(-len(images) // columns)
    font = _font(13)
    caption_height = 20 if captions else 0
    label_width = 110 if row_labels else 0
    sheet = Image.new(
        "RGB",
        (label_width + columns * (cell + 4) + 4, rows * (cell + caption_height + 4) + 4),
        "white",
    )
    draw = ImageDraw.Draw(sheet)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        left = label_width + 4 + column * (cell + 4)
        top = 4 + row * (cell + caption_height + 4)
        sheet.paste(_flatten(image.resize((cell, cell), Image.Resampling.LANCZOS)), (left, top))
        if i < len(captions):
            text = _fit(captions[i], font, cell, draw)
            draw.text((left + 2, top + cell + 3), text, fill="black", font=font)
    for row, label in enumerate(row_labels):
        top = 4 + row * (cell + caption_height + 4) + cell // 2
        draw.text((4, top), _fit(label, font, label_width, draw), fill="black", font=font)
    return sheet


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode != "RGBA":
        return image.convert("RGB")
    rows, columns = np.indices(image.size[::-1]) // 16
    board = (rows + columns) % 2
    checker = Image.fromarray((np.where(board, 200, 240)).astype(np.uint8)).convert("RGB")
    checker.paste(image, mask=image.getchannel("A"))
    return checker
