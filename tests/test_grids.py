import numpy as np
import torch
from PIL import Image

from vital.grids import grid, to_image


def test_transparent_cells_show_a_checkerboard():
    clear = Image.fromarray(np.zeros((64, 64, 4), dtype=np.uint8), "RGBA")
    sheet = np.asarray(grid([clear], cell=64))
    cell = sheet[4:68, 4:68, 0]
    assert cell[0, 0] == cell[16, 16] != cell[0, 16] == cell[16, 0]


def test_to_image_with_alpha_and_captions_fit():
    pixels = torch.rand(3, 10, 12)
    rgba = to_image(pixels, torch.ones(10, 12))
    assert rgba.mode == "RGBA" and rgba.size == (12, 10)
    sheet = grid([rgba, to_image(pixels)], ["a very long caption " * 5, "b"], cell=40)
    assert sheet.size[0] == 4 + 2 * 44
