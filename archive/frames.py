"""Where each frame of the pixel data lies in a stored Part-10 file.

Offsets are recorded at ingest so that one frame can later be read with a
ranged request (S3 ``Range``, a file ``seek``) instead of the whole object.
Walking the pixel-data element also proves the file is complete: a file cut
short inside its pixel data is refused here.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

Fragment = tuple[int, int]          # (file offset, length)
FrameIndex = list[list[Fragment]]   # one list of fragments per frame

PIXEL_TAGS = {0x7FE00010: None, 0x7FE00008: "OF", 0x7FE00009: "OD"}
_ITEM, _SEQ_DELIM = 0xFFFEE000, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF


class TruncatedPixelData(ValueError):
    """The pixel data runs past the end of the file, or its fragments are malformed."""


def read_pixel_header(fp: BinaryIO, implicit: bool, little: bool) -> tuple[int, str, int] | None:
    """Read the element header at the current position of `fp`.

    `implicit` and `little` are the encoding the dataset was actually read
    with (some senders mislabel it). Returns ``(tag, vr, length)`` with `fp`
    left at the first value byte, or ``None`` when no pixel-data element is there.
    """
    start = fp.read(8)
    if len(start) < 8:
        return None
    group, elem = struct.unpack("<HH" if little else ">HH", start[:4])
    tag = group << 16 | elem
    if tag not in PIXEL_TAGS:
        return None
    if implicit:
        (length,) = struct.unpack("<I" if little else ">I", start[4:8])
        # Implicit VR native pixel data is OW (PS3.5 A.1); encapsulated is OB
        # (A.4), which an implicit VR data set under a compressed syntax may carry.
        vr = PIXEL_TAGS[tag] or ("OB" if length == UNDEFINED else "OW")
    else:
        vr = start[4:6].decode("ascii", "replace")
        rest = fp.read(4)
        if len(rest) < 4:
            raise TruncatedPixelData("pixel data header cut short")
        (length,) = struct.unpack("<I" if little else ">I", rest)
    return tag, vr, length


def index_frames(fp: BinaryIO, little: bool, length: int, *, frames: int, rows: int,
                 columns: int, samples: int, bits_allocated: int,
                 photometric: str = "") -> FrameIndex | None:
    """Locate every frame of the pixel data whose value starts at ``fp.tell()``.

    Returns ``None`` when frames cannot be addressed by byte ranges (1-bit
    frames that are not byte aligned, or fragments that cannot be grouped).

    Raises
    ------
    TruncatedPixelData
        If the value is longer than what is left of the file.
    """
    start = fp.tell()
    size = os.fstat(fp.fileno()).st_size
    frames = max(frames, 1)
    if length != UNDEFINED:
        if start + length > size:
            raise TruncatedPixelData(f"pixel data needs {length} bytes, the file has {size - start}")
        frame_bits = rows * columns * samples * bits_allocated
        if photometric == "YBR_FULL_422":
            # Native 4:2:2 keeps two samples per pixel, not three (PS3.3 C.7.6.3.1.2).
            frame_bits = frame_bits * 2 // 3
        if frame_bits % 8 and frames > 1:
            return None
        frame_len = frame_bits // 8
        if frame_len * frames > length:
            raise TruncatedPixelData(f"{frames} frames need {frame_len * frames} bytes, pixel data has {length}")
        return [[(start + i * frame_len, frame_len)] for i in range(frames)]

    header = struct.Struct("<HHI" if little else ">HHI")
    items: list[Fragment] = []
    position = start
    while True:
        raw = fp.read(8)
        if len(raw) < 8:
            raise TruncatedPixelData("encapsulated pixel data has no sequence delimiter")
        group, elem, item_len = header.unpack(raw)
        tag = group << 16 | elem
        position += 8
        if tag == _SEQ_DELIM:
            break
        if tag != _ITEM or item_len == UNDEFINED or position + item_len > size:
            raise TruncatedPixelData(f"bad fragment at byte {position - 8}")
        items.append((position, item_len))
        position += item_len
        fp.seek(position)
    if not items:
        raise TruncatedPixelData("encapsulated pixel data has no offset table item")
    table, fragments = items[0], items[1:]
    if not fragments:
        raise TruncatedPixelData("encapsulated pixel data has no fragments")
    if frames == 1:
        return [fragments]
    if len(fragments) == frames:
        return [[f] for f in fragments]
    if table[1]:
        fp.seek(table[0])
        count = table[1] // 4
        offsets = struct.unpack(("<" if little else ">") + "I" * count, fp.read(4 * count))
        first = fragments[0][0] - 8
        bounds = [first + o for o in offsets] + [position]
        grouped = [[f for f in fragments if lo <= f[0] - 8 < hi] for lo, hi in zip(bounds, bounds[1:])]
        if len(grouped) == frames and all(grouped):
            return grouped
    return None
