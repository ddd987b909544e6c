"""Which picture formats hin reads, what the others are, and the one check Pillow lacks.

hin decodes JPEG, PNG, WebP, GIF, BMP and TIFF only (`READ_FORMATS`, passed to Pillow's
`Image.open(..., formats=...)` so that the format is chosen from these when a file is
opened): all are decoded in process by Pillow's own codecs. Formats Pillow could also open
are never tried, among them EPS and PDF, which Pillow hands to Ghostscript (a process, fed
through a temporary file). What the other bytes are (AVIF, HEIC, SVG, EPS, ...) is told from
their first bytes only, to say so in a refusal.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import BinaryIO

READ_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
READ_FORMATS_TEXT = "JPEG, PNG, WebP, GIF, BMP and TIFF"
HEAD_BYTES = 64               # enough to tell every format below
_INFLATE_STEP = 1 << 20       # bytes inflated at a time when counting a PNG's rows
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}      # by colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))       # interlace passes: first column, first row, steps


def _brand(*brands: bytes) -> Callable[[bytes], bool]:
    return lambda head: head[4:8] == b"ftyp" and head[8:12] in brands


_OTHER_FORMATS: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("AVIF", _brand(b"avif", b"avis")),
    ("HEIC/HEIF", _brand(b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")),
    ("SVG (XML)", lambda head: head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"<?xml", b"<svg"))),
    ("EPS/PostScript", lambda head: head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6"))),
    ("PDF", lambda head: head.startswith(b"%PDF")),
    ("JPEG XL", lambda head: head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL "))),
    ("JPEG 2000", lambda head: head.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51"))),
    ("ICO", lambda head: head.startswith(b"\x00\x00\x01\x00")),
    ("Photoshop (PSD)", lambda head: head.startswith(b"8BPS")),
)


def other_format(head: bytes) -> str | None:
    """The name of the picture or document format that bytes starting with `head` are in,
    where it is one hin knows and does not read; None otherwise."""
    return next((name for name, matches in _OTHER_FORMATS if matches(head)), None)


def not_readable(head: bytes) -> str:
    """Why bytes starting with `head` are not read: what they are, where known, and the fix."""
    known = other_format(head)
    what = f"its format is {known}, which hin does not read" if known else \
        "not a picture in a format hin reads"
    return (f"{what}; hin reads {READ_FORMATS_TEXT} only (unsupported format): convert it, "
            "e.g. to PNG or JPEG")


def png_rows_complete(file: BinaryIO) -> bool:
    """Whether a PNG's image data (IDAT) inflates to every row its header declares. Pillow
    accepts a compressed stream that ends early and leaves the missing rows black: a PNG
    declaring 7999x7999 with one row of data would be read as a 64 MP black picture."""
    file.seek(8)
    length, kind = struct.unpack(">I4s", file.read(8))
    header = file.read(length)
    if kind != b"IHDR" or len(header) < 13:
        return False
    width, height, depth, colour, _, _, interlaced = struct.unpack(">IIBBBBB", header[:13])
    bits = depth * _PNG_CHANNELS.get(colour, 4)
    expected = 0
    for x0, y0, dx, dy in (_ADAM7 if interlaced else ((0, 0, 1, 1),)):
        columns, rows = max(0, -(-(width - x0) // dx)), max(0, -(-(height - y0) // dy))
        if columns and rows:
            expected += rows * (1 + -(-columns * bits // 8))     # a filter byte per row
    inflater, produced = zlib.decompressobj(), 0
    file.seek(4, io.SEEK_CUR)                                   # IHDR's CRC
    while produced < expected:
        chunk_head = file.read(8)
        if len(chunk_head) < 8:
            break
        length, kind = struct.unpack(">I4s", chunk_head)
        if kind == b"IEND":
            break
        if kind != b"IDAT":
            file.seek(length + 4, io.SEEK_CUR)
            continue
        data = file.read(length)
        file.seek(4, io.SEEK_CUR)
        while data and produced < expected:
            out = inflater.decompress(data, _INFLATE_STEP)
            produced += len(out)
            data = inflater.unconsumed_tail
            if not out:
                break
    return produced >= expected
