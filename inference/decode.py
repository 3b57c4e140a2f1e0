"""Decoding one cell image into the network's input, or saying exactly why it cannot be used.

A cell image becomes a square uint8 RGB array of the model's input size:

1. identify the format from the bytes (JPEG, PNG, BMP or TIFF, ``ACCEPTED_FORMATS``; the file
   extension is not trusted);
2. refuse images larger than ``max_pixels`` before decoding anything (decompression bombs);
   refuse a TIFF that holds more than one frame (a z-stack, time series or multi-page file: which
   frame shows the cell is not ours to guess, and classifying the first would silently drop the
   others) and a TIFF of 32-bit or signed integer samples (no scale to 8 bits is known);
3. for JPEG, ask libjpeg-turbo for a reduced-size decode (DCT scaling by 1/2, 1/4 or 1/8, the
   largest reduction that still leaves at least the input size): a 360x363 slide crop decodes at
   90x91 for a 64-pixel model, sixteen times fewer pixels. simplejpeg does this about twice as
   fast as Pillow's ``draft`` and releases the GIL, so decoding threads scale; JPEGs it cannot
   take (CMYK, unusual headers) go through Pillow's ``draft`` instead;
4. bring any mode to 8-bit RGB: grayscale and palette are expanded, transparency is composited
   over white (the colour of an empty slide), 16-bit grayscale samples are scaled by 255/65535, not
   clipped (16-bit RGB TIFF: Pillow keeps each sample's high byte, v // 256, which is within one
   level of that scaling);
5. keep the central square whose side is ``crop`` times the shorter side (the scanner centres the
   cell; cropping the margin of red cells makes the white cell fill more of the input) and resize
   it (bilinear with antialiasing) to the input size.

Problems that concern one cell raise ``CellRejected`` with a reason; the runner records it and
goes on with the next cell.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from dataclasses import dataclass
from typing import Final

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

#: Formats a scanner saves cells in; anything else is rejected with this list in the message.
#: (Pillow's format names; BMP and TIFF are what many microscope cameras write.)
ACCEPTED_FORMATS: Final[tuple[str, ...]] = ("JPEG", "PNG", "BMP", "TIFF")
#: File extensions the slide-set and labelled-library readers treat as cell images.
IMAGE_EXTENSIONS: Final[tuple[str, ...]] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: The accepted formats as a message says them: "JPEG, PNG, BMP or TIFF".
ACCEPTED_FORMATS_TEXT: Final[str] = ", ".join(ACCEPTED_FORMATS[:-1]) + " or " + ACCEPTED_FORMATS[-1]
#: Default ceiling on width x height; a single-cell crop is far below (360 x 363 = 130,680).
DEFAULT_MAX_PIXELS: Final[int] = 4096 * 4096

#: Bytes per pixel of the widest accepted layout stored uncompressed (16-bit RGBA TIFF) ...
_MAX_BYTES_PER_PIXEL: Final[int] = 8
#: ... plus room for headers, colour profiles and metadata.
_HEADER_ALLOWANCE: Final[int] = 1 << 20


def max_file_bytes(max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The most bytes read from one cell file: an image within ``max_pixels`` stored uncompressed at
    8 bytes per pixel (16-bit RGBA), plus 1 MiB of headers; 129 MiB at the default pixel limit.
    A larger file cannot hold an acceptable image, and reading stops one byte past the cap."""
    return max_pixels * _MAX_BYTES_PER_PIXEL + _HEADER_ALLOWANCE


_FILE_TYPES: Final[tuple[tuple[int, str], ...]] = (
    (stat.S_IFIFO, "FIFO"),
    (stat.S_IFCHR, "character device"),
    (stat.S_IFBLK, "block device"),
    (stat.S_IFSOCK, "socket"),
    (stat.S_IFDIR, "folder"),
    (stat.S_IFLNK, "symbolic link"),
)


def not_regular_reason(mode: int) -> str | None:
    """None for a regular file, else the reason it cannot be a cell: "not a regular file (FIFO)"."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for t, name in _FILE_TYPES if stat.S_IFMT(mode) == t), "unknown type")
    return f"not a regular file ({kind})"


def read_cell_file(path: str | os.PathLike[str], max_bytes: int, identity: tuple[int, int] | None = None) -> bytes:
    """The bytes of one cell file, opened so that nothing but a regular file is ever read.

    The file is opened with ``O_NONBLOCK`` (a FIFO swapped in after listing cannot block the open),
    then ``fstat`` of the open descriptor must show a regular file, the same (st_dev, st_ino) as
    ``identity`` when given (the file the listing saw), and at most ``max_bytes`` bytes; reading
    stops one byte past the cap, so a file that keeps growing is refused, not read to the end.
    Raises CellRejected with the reason, OSError when the file cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        reason = not_regular_reason(st.st_mode)
        if reason is not None:
            raise CellRejected(reason)
        if identity is not None and identity != (0, 0) and (st.st_dev, st.st_ino) != identity:
            raise CellRejected("file was replaced by another file after the batch was listed")
        if st.st_size > max_bytes:
            raise CellRejected(_too_many_bytes(st.st_size, max_bytes))
        chunks: list[bytes] = []
        got = 0
        while got <= max_bytes:
            block = os.read(fd, min(1 << 20, max_bytes + 1 - got))
            if not block:
                break
            chunks.append(block)
            got += len(block)
        if got > max_bytes:
            raise CellRejected(_too_many_bytes(None, max_bytes))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _too_many_bytes(size: int | None, max_bytes: int) -> str:
    now = f"{size:,} bytes" if size is not None else "more bytes than when listed"
    return (
        f"file holds {now}, above the limit of {max_bytes:,} bytes per cell file (derived from the "
        "pixel limit); a single-cell crop is expected"
    )


# We enforce our own limit before decoding; Pillow's own check would warn on stderr instead.
Image.MAX_IMAGE_PIXELS = None


class CellRejected(Exception):
    """This cell cannot be classified; ``str(self)`` is the reason recorded in the run."""


@dataclass(frozen=True)
class DecodedCell:
    pixels: np.ndarray  # (size, size, 3) uint8
    source_mode: str  # Pillow mode of the file as stored (RGB, L, RGBA, I;16, ...)
    source_width: int
    source_height: int


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale: scale the full 0..65535 range to 0..255 instead of clipping at 255.
        a = np.asarray(im, dtype=np.float64)
        a8 = np.clip(np.rint(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(a8).convert("RGB")
    if mode == "F":
        raise CellRejected("floating-point image (mode F); expected 8- or 16-bit RGB or grayscale")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _square_resize(im: Image.Image, size: int, crop: float = 1.0) -> Image.Image:
    w, h = im.size
    if w == h == size and crop == 1.0:
        return im
    side = min(w, h) * crop
    left, top = (w - side) / 2, (h - side) / 2
    return im.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


def _too_large(width: int, height: int, max_pixels: int, what: str = "a single-cell crop") -> CellRejected:
    return CellRejected(
        f"image is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,} "
        f"(possible decompression bomb); {what} is expected"
    )


def _too_small(width: int, height: int, what: str = "a single-cell crop") -> CellRejected:
    return CellRejected(f"image is only {width}x{height} pixels; expected {what} of at least 8x8")


def _refuse_unusable_tiff(im: Image.Image) -> None:
    """Multi-frame TIFFs and integer samples wider than 16 bits are refused, with the reason."""
    if getattr(im, "is_animated", False):  # reads the second frame's header only, not every frame
        raise CellRejected(
            "TIFF holds more than one frame (a z-stack, time series or multi-page file); expected one "
            "image per cell file: save the frame to classify as a file of its own"
        )
    if im.mode == "I":
        raise CellRejected(
            "TIFF with 32-bit or signed integer samples (mode I); expected 8- or 16-bit unsigned RGB or grayscale"
        )


_JPEG_MAGIC: Final[bytes] = b"\xff\xd8\xff"
_FAST_JPEG_COLORSPACES: Final[dict[str, str]] = {"YCbCr": "RGB", "Gray": "L"}


def _decode_jpeg_fast(data: bytes, size: int, max_pixels: int, crop: float) -> DecodedCell | None:
    """The libjpeg-turbo path; None hands the file to Pillow (which also words the errors)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in _FAST_JPEG_COLORSPACES:
        return None
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels)
    if width < 8 or height < 8:
        raise _too_small(width, height)
    try:
        need = math.ceil(size / crop)
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=need, min_width=need, strict=True)
    except ValueError as e:
        raise CellRejected(f"corrupt or truncated image: {e}") from None
    pixels = np.asarray(_square_resize(Image.fromarray(rgb), size, crop), dtype=np.uint8)
    return DecodedCell(pixels, _FAST_JPEG_COLORSPACES[colorspace], width, height)


def _open_accepted(data: bytes) -> Image.Image:
    """Pillow's lazy open (header only) of an image in one of ``ACCEPTED_FORMATS``, by content."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise CellRejected(
            f"not a readable image (unknown or damaged header); expected {ACCEPTED_FORMATS_TEXT}"
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise CellRejected(f"cannot open image: {e}") from None
    if im.format not in ACCEPTED_FORMATS:
        raise CellRejected(f"unsupported image format {im.format}; expected {ACCEPTED_FORMATS_TEXT}")
    return im


def decode_cell(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS, crop: float = 1.0) -> DecodedCell:
    """Decode one image file's bytes into a (size, size, 3) uint8 array, or raise CellRejected."""
    if not 0.1 <= crop <= 1.0:
        raise ValueError(f"crop must lie in [0.1, 1], got {crop}")
    if not data:
        raise CellRejected("empty file (0 bytes)")
    if data.startswith(_JPEG_MAGIC):
        fast = _decode_jpeg_fast(data, size, max_pixels, crop)
        if fast is not None:
            return fast
    im = _open_accepted(data)
    width, height = im.size
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels)
    if width < 8 or height < 8:
        raise _too_small(width, height)
    source_mode = im.mode
    try:
        if im.format == "TIFF":
            _refuse_unusable_tiff(im)
        if im.format == "JPEG":
            need = math.ceil(size / crop)
            im.draft("RGB", (need, need))
        im.load()
        rgb = _to_rgb(im)
        out = _square_resize(rgb, size, crop)
        pixels = np.asarray(out, dtype=np.uint8)
    except CellRejected:
        raise
    except (OSError, ValueError, SyntaxError, MemoryError) as e:
        raise CellRejected(f"corrupt or truncated image: {e}") from None
    if pixels.shape != (size, size, 3):  # pragma: no cover - guards the contract above
        raise CellRejected(f"decoded to unexpected shape {pixels.shape}")
    return DecodedCell(pixels, source_mode, width, height)


_FIELD: Final[str] = "a microscope field"


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one image file's bytes at full size into an (H, W, 3) uint8 RGB array, or raise CellRejected.

    The same checks as ``decode_cell`` (format told by content, ``ACCEPTED_FORMATS``, the pixel limit
    checked on the header before any pixel is decoded, multi-frame and 32-bit TIFFs refused, any mode
    brought to 8-bit RGB), without the square crop and resize: for whole microscope fields.
    """
    if not data:
        raise CellRejected("empty file (0 bytes)")
    if data.startswith(_JPEG_MAGIC):
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            colorspace = ""
        if colorspace in _FAST_JPEG_COLORSPACES:
            if width * height > max_pixels:
                raise _too_large(width, height, max_pixels, _FIELD)
            if width < 8 or height < 8:
                raise _too_small(width, height, _FIELD)
            try:
                return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
            except ValueError as e:
                raise CellRejected(f"corrupt or truncated image: {e}") from None
    im = _open_accepted(data)
    width, height = im.size
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels, _FIELD)
    if width < 8 or height < 8:
        raise _too_small(width, height, _FIELD)
    try:
        if im.format == "TIFF":
            _refuse_unusable_tiff(im)
        im.load()
        return np.asarray(_to_rgb(im), dtype=np.uint8)
    except CellRejected:
        raise
    except (OSError, ValueError, SyntaxError, MemoryError) as e:
        raise CellRejected(f"corrupt or truncated image: {e}") from None
