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
    with pytest.raises(CellRejected, match="unsupported image format GIF; expected JPEG, PNG, BMP or TIFF"):
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


# --- BMP and TIFF (microscope-camera formats) -----------------------------------------------


def _encoded(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def _test_card(mode: str) -> Image.Image:
    """A 48x40 image with structure in every channel, in the given Pillow mode."""
    y, x = np.mgrid[0:40, 0:48]
    rgb = np.stack([x * 5, y * 6, (x + y) * 3 % 256], axis=-1).astype(np.uint8)
    im = Image.fromarray(rgb)
    return im.quantize(64) if mode == "P" else im.convert(mode)


@pytest.mark.parametrize(
    ("fmt", "mode", "options"),
    [
        ("BMP", "RGB", {}),
        ("BMP", "L", {}),
        ("BMP", "P", {}),
        ("TIFF", "RGB", {}),
        ("TIFF", "L", {}),
        ("TIFF", "P", {}),
        ("TIFF", "CMYK", {}),
        ("TIFF", "RGB", {"compression": "tiff_lzw"}),
        ("TIFF", "RGB", {"compression": "tiff_adobe_deflate"}),
    ],
)
def test_bmp_and_tiff_decode_exactly_like_the_same_pixels_in_png(fmt, mode, options):
    im = _test_card(mode)
    cell = decode_cell(_encoded(im, fmt, **options), 32, crop=0.8)
    assert (cell.source_mode, cell.source_width, cell.source_height) == (mode, 48, 40)
    assert np.array_equal(cell.pixels, decode_cell(_png(im.convert("RGB")), 32, crop=0.8).pixels)


def test_sixteen_bit_grayscale_tiff_is_scaled_not_clipped():
    a = np.full((64, 64), 65535, dtype=np.uint16)
    a[:, 32:] = 32896  # 128 * 257
    cell = decode_cell(_encoded(Image.fromarray(a), "TIFF"), 64)
    assert cell.source_mode.startswith("I;16")
    assert cell.pixels[0, 0, 0] == 255 and cell.pixels[0, 63, 0] == 128


def _tiff(a: np.ndarray, photometric: int, extra_samples: int | None = None) -> bytes:
    """An uncompressed one-strip little-endian TIFF of a (h, w) or (h, w, c) array, written by hand
    (TIFF 6.0, section 2) for sample layouts Pillow cannot write: 16-bit RGB, 32-bit integers."""
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    h, w = a.shape[:2]
    c = 1 if a.ndim == 2 else a.shape[2]
    bits = a.dtype.itemsize * 8
    n_tags = 9 + (extra_samples is not None)
    bits_at = 8 + 2 + 12 * n_tags + 4  # the BitsPerSample array follows the one IFD
    data_at = bits_at + 2 * c
    short, long_ = 3, 4
    tags = [
        (256, long_, 1, w),
        (257, long_, 1, h),
        (258, short, c, bits if c == 1 else bits_at),
        (259, short, 1, 1),  # no compression
        (262, short, 1, photometric),
        (273, long_, 1, data_at),
        (277, short, 1, c),
        (278, long_, 1, h),
        (279, long_, 1, a.nbytes),
    ]
    if extra_samples is not None:
        tags.append((338, short, 1, extra_samples))
    ifd = struct.pack("<H", n_tags) + b"".join(
        struct.pack("<HHIHH", t, typ, n, v, 0) if typ == short and n == 1 else struct.pack("<HHII", t, typ, n, v)
        for t, typ, n, v in tags
    )
    return (
        b"II*\x00"
        + struct.pack("<I", 8)
        + ifd
        + struct.pack("<I", 0)
        + struct.pack(f"<{c}H", *[bits] * c)
        + a.tobytes()
    )


def test_sixteen_bit_rgb_tiff_is_scaled_not_clipped():
    a = np.zeros((16, 16, 3), dtype=np.uint16)
    a[...] = (65535, 32896, 257)  # 255, 128 and 1 times 257
    cell = decode_cell(_tiff(a, photometric=2), 16)
    assert tuple(cell.pixels[8, 8]) == (255, 128, 1)


@pytest.mark.parametrize("fmt", ["TIFF", "PNG"])
def test_transparent_tiff_is_composited_over_white_like_png(fmt):
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[:32, :, :] = (200, 0, 0, 255)  # opaque red top half, transparent black bottom half
    cell = decode_cell(_encoded(Image.fromarray(rgba, mode="RGBA"), fmt), 64)
    assert cell.source_mode == "RGBA"
    assert tuple(cell.pixels[5, 5]) == (200, 0, 0) and tuple(cell.pixels[60, 5]) == (255, 255, 255)


def _bmp_with_alpha(rgba: np.ndarray) -> bytes:
    """A 32-bit BMP with a BITMAPV4HEADER whose bit fields include an alpha mask (Pillow writes
    BMP without alpha, so the file is written by hand): pixels bottom-up, stored B, G, R, A."""
    h, w = rgba.shape[:2]
    pixels = np.ascontiguousarray(rgba[::-1, :, [2, 1, 0, 3]]).tobytes()
    size_etc = (108, w, h, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)  # 32 bpp, BI_BITFIELDS, 72 dpi
    masks = (0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000)  # red, green, blue, alpha
    header = struct.pack("<IiiHHIIiiII4I", *size_etc, *masks) + b"BGRs" + bytes(36 + 12)  # sRGB, no gamma
    offset = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + pixels


def test_bmp_with_an_alpha_channel_is_composited_over_white():
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[:32, :, :] = (200, 0, 0, 255)
    cell = decode_cell(_bmp_with_alpha(rgba), 64)
    assert cell.source_mode == "RGBA"
    assert tuple(cell.pixels[5, 5]) == (200, 0, 0) and tuple(cell.pixels[60, 5]) == (255, 255, 255)


def test_multi_frame_tiff_is_refused_with_the_reason():
    frames = [_test_card("RGB"), _test_card("L").convert("RGB")]
    data = _encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    with pytest.raises(CellRejected, match=r"more than one frame .*z-stack.*save the frame to classify"):
        decode_cell(data, 32)


def test_thirty_two_bit_integer_tiff_is_refused_not_clipped():
    with pytest.raises(CellRejected, match="32-bit or signed integer samples"):
        decode_cell(_tiff(np.full((16, 16), 70_000, dtype=np.uint32), photometric=1), 16)


def _bmp_claiming_size(width: int, height: int) -> bytes:
    raw = bytearray(_encoded(Image.new("RGB", (8, 8)), "BMP"))
    raw[18:26] = struct.pack("<ii", width, height)  # BITMAPINFOHEADER width and height
    return bytes(raw)


def _tiff_claiming_size(width: int, height: int) -> bytes:
    raw = _tiff(np.zeros((8, 8), dtype=np.uint8), photometric=1)
    for tag, value in ((256, width), (257, height)):  # ImageWidth, ImageLength
        raw = raw.replace(struct.pack("<HHII", tag, 4, 1, 8), struct.pack("<HHII", tag, 4, 1, value))
    return raw


@pytest.mark.parametrize("claiming", [_bmp_claiming_size, _tiff_claiming_size], ids=["bmp", "tiff"])
def test_huge_bmp_or_tiff_is_refused_before_decoding(claiming):
    with pytest.raises(CellRejected, match="50000x50000 = 2,500,000,000 pixels, above the limit"):
        decode_cell(claiming(50_000, 50_000), 64)


def test_real_compressed_tiff_bomb_is_refused_under_a_lower_limit():
    bomb = _encoded(Image.new("L", (3000, 3000)), "TIFF", compression="tiff_adobe_deflate")
    assert len(bomb) < 50_000
    with pytest.raises(CellRejected, match="possible decompression bomb"):
        decode_cell(bomb, 64, max_pixels=1_000_000)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF"])
def test_truncated_bmp_or_tiff_is_rejected(fmt):
    data = _encoded(_test_card("RGB"), fmt)
    with pytest.raises(CellRejected, match="corrupt or truncated"):
        decode_cell(data[: len(data) // 2], 32)
