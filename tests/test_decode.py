"""Decoding cell images: every mode a scanner might write, and every way a file can be broken."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from wbcv.inference.decode import CellRejected, decode_cell


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def real_jpeg(pbc_cells) -> bytes:
    return pbc_cells[0].path.read_bytes()


def test_real_cell_jpeg_decodes_at_reduced_size(real_jpeg):
    cell = decode_cell(real_jpeg, 64)
    assert cell.pixels.shape == (64, 64, 3) and cell.pixels.dtype == np.uint8
    assert (cell.source_width, cell.source_height, cell.source_mode) == (360, 363, "RGB")
    # draft() really reduces the decode: the JPEG decoder hands back 1/4 scale for a 64 px target.
    im = Image.open(io.BytesIO(real_jpeg))
    im.draft("RGB", (64, 64))
    assert im.size == (90, 91)
    # ... and the reduced decode stays close to a full decode resized the slow way.
    full = np.asarray(Image.open(io.BytesIO(real_jpeg)).convert("RGB").crop((0, 1, 360, 361)).resize((64, 64)))
    assert np.abs(full.astype(int) - cell.pixels.astype(int)).mean() < 6


def test_grayscale_is_expanded_to_three_equal_channels():
    g = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)), mode="L")
    cell = decode_cell(_png(g), 64)
    assert cell.source_mode == "L"
    assert np.array_equal(cell.pixels[..., 0], cell.pixels[..., 1])
    assert np.array_equal(cell.pixels[..., 0], np.asarray(g))


def test_transparency_is_composited_over_white():
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[:32, :, :] = (200, 0, 0, 255)  # opaque red top half, transparent black bottom half
    cell = decode_cell(_png(Image.fromarray(rgba, mode="RGBA")), 64)
    assert cell.source_mode == "RGBA"
    assert tuple(cell.pixels[5, 5]) == (200, 0, 0)
    assert tuple(cell.pixels[60, 5]) == (255, 255, 255)


def test_sixteen_bit_is_scaled_not_clipped():
    a = np.full((64, 64), 65535, dtype=np.uint16)
    a[:, 32:] = 32896  # 128 * 257
    cell = decode_cell(_png(Image.fromarray(a)), 64)
    assert cell.source_mode.startswith("I")
    assert cell.pixels[0, 0, 0] == 255 and cell.pixels[0, 63, 0] == 128


def test_palette_image_is_converted():
    p = Image.new("P", (64, 64))
    p.putpalette([10, 20, 30] * 256)
    assert tuple(decode_cell(_png(p), 64).pixels[0, 0]) == (10, 20, 30)


def test_non_square_image_is_centre_cropped():
    a = np.zeros((64, 128, 3), dtype=np.uint8)
    a[:, 32:96] = 255  # only the centre square is white
    assert decode_cell(_png(Image.fromarray(a)), 64).pixels.min() == 255


def test_truncated_jpeg_is_rejected(real_jpeg):
    with pytest.raises(CellRejected, match="corrupt or truncated"):
        decode_cell(real_jpeg[: len(real_jpeg) // 2], 64)


def test_corrupt_bytes_are_rejected(real_jpeg):
    with pytest.raises(CellRejected, match="not a readable image"):
        decode_cell(b"this is a text file, not an image\n" * 10, 64)
    with pytest.raises(CellRejected, match="empty file"):
        decode_cell(b"", 64)


def test_other_formats_are_rejected_by_content_not_extension():
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="GIF")
    with pytest.raises(CellRejected, match="unsupported image format GIF; expected JPEG or PNG"):
        decode_cell(buf.getvalue(), 64)


def _png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas (the classic decompression-bomb shape)."""
    raw = _png(Image.new("L", (8, 8)))
    ihdr_start = 8 + 8  # signature, then length + type of the IHDR chunk
    body = struct.pack(">II", width, height) + raw[ihdr_start + 8 : ihdr_start + 13]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return raw[:ihdr_start] + body + crc + raw[ihdr_start + 17 :]


def test_huge_image_is_refused_before_decoding():
    with pytest.raises(CellRejected, match="50000x50000 = 2,500,000,000 pixels, above the limit"):
        decode_cell(_png_claiming_size(50_000, 50_000), 64)


def test_real_compressed_bomb_is_refused_under_a_lower_limit():
    bomb = _png(Image.new("L", (3000, 3000)))  # 9 Mpx of zeros compress to a few kB
    assert len(bomb) < 50_000
    with pytest.raises(CellRejected, match="possible decompression bomb"):
        decode_cell(bomb, 64, max_pixels=1_000_000)


def test_tiny_image_is_refused():
    with pytest.raises(CellRejected, match="only 4x4 pixels"):
        decode_cell(_png(Image.new("RGB", (4, 4))), 64)
