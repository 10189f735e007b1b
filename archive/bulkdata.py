"""Bulk data of archived instances: single binary values and pixel-data frames.

The byte ranges recorded at ingest (:mod:`archive.frames`, the ``bulk`` map of
:mod:`archive.header`) let one value or one frame be read with a ranged read
of the stored object — a file ``seek`` or an S3 ``Range`` request — instead
of the whole object. Where no range was recorded (deflated files, values of
undefined length, frames that cannot be addressed by bytes, big endian files
whose values must be swapped), the object is read and parsed whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from itertools import chain

import numpy as np
import orjson
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian

from archive.retrieve import Located
from archive.storage import BlobStore

PIXEL_DATA = 0x7FE00010
# Bytes per value of the binary VRs whose byte order changes with endianness.
_WORD = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


class NoSuchBulkData(LookupError):
    """The instance has no bulk value at that path, or no such frame."""


def bulk_value(store: BlobStore, item: Located, path: str) -> Iterator[bytes]:
    """The little endian bytes of the value at `path` (``"00420011"``, ``"00540016/0/00280000"``).

    Raises
    ------
    NoSuchBulkData
        If `path` does not name a binary value of the instance.
    """
    ranges = orjson.loads(item.bulk) if item.bulk else {}
    if path in ranges and item.transfer_syntax != ExplicitVRBigEndian:
        offset, length = ranges[path]
        return store.read(item.blob_key, offset, length)
    element = _walk(_parsed(store, item), path)
    value = element.value
    if not isinstance(value, (bytes, bytearray)):
        raise NoSuchBulkData(f"{path} is not a binary value")
    if item.transfer_syntax == ExplicitVRBigEndian and element.VR in _WORD:
        value = _swapped(bytes(value), _WORD[element.VR])
    return iter((bytes(value),))


def frame_count(store: BlobStore, item: Located) -> int:
    """How many frames the instance's pixel data holds."""
    if item.frames:
        return len(orjson.loads(item.frames))
    ds = _parsed(store, item)
    if "PixelData" not in ds:
        raise NoSuchBulkData("the instance has no pixel data")
    return int(ds.get("NumberOfFrames") or 1)


def stored_frames(store: BlobStore, item: Located, numbers: list[int]) -> list[Iterator[bytes]]:
    """The frames `numbers` (1-based) as stored: compressed bitstreams, or native pixels.

    Native frames of a big endian object are not "as stored" in any useful
    sense; callers ask :func:`decoded_frames` for those.
    """
    if item.frames:
        index = orjson.loads(item.frames)
        _check(numbers, len(index))
        wanted = [_fragments(store, item.blob_key, index[n - 1]) for n in numbers]
        # The first read starts now: a store that cannot be read fails before the answer
        # begins (StoreUnavailable, a 503), not after a 200.
        (offset, length), *rest = index[numbers[0] - 1]
        wanted[0] = chain(store.read(item.blob_key, offset, length), _fragments(store, item.blob_key, rest))
        return wanted
    ds = _parsed(store, item)
    count = int(ds.get("NumberOfFrames") or 1)
    _check(numbers, count)
    if UID(item.transfer_syntax).is_compressed:
        frames = list(generate_frames(ds.PixelData, number_of_frames=count))
        return [iter((frames[n - 1],)) for n in numbers]
    return [iter((f,)) for f in decoded_frames(store, item, numbers)]


def decoded_frames(store: BlobStore, item: Located, numbers: list[int]) -> list[bytes]:
    """The frames `numbers` (1-based) decoded to native little endian pixels.

    Raises
    ------
    NoSuchBulkData
        If a frame number is out of range.
    """
    _, arrays = frame_arrays(store, item, numbers)
    return [a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for a in arrays]


def frame_arrays(store: BlobStore, item: Located, numbers: list[int]) -> tuple[Dataset, list[np.ndarray]]:
    """The frames `numbers` (1-based) decoded (colour as RGB), and the header that describes them.

    A compressed frame whose fragments were indexed at ingest is read and
    decoded alone: the header before the pixel data with one ranged read, the
    frame's fragments with another, never the rest of the object.

    Raises
    ------
    NoSuchBulkData
        If a frame number is out of range.
    """
    syntax = UID(item.transfer_syntax)
    if item.frames and syntax.is_compressed:
        index = orjson.loads(item.frames)
        _check(numbers, len(index))
        # The first fragment's value starts after the Pixel Data tag: the header stops there.
        header = dcmread(BytesIO(b"".join(store.read(item.blob_key, 0, index[0][0][0]))), stop_before_pixels=True)
        decoder = get_decoder(syntax)
        described = {
            "rows": header.Rows, "columns": header.Columns, "samples_per_pixel": header.SamplesPerPixel,
            "bits_allocated": header.BitsAllocated, "bits_stored": header.BitsStored,
            "pixel_representation": header.PixelRepresentation, "number_of_frames": 1,
            "photometric_interpretation": header.PhotometricInterpretation,
            "planar_configuration": header.get("PlanarConfiguration", 0),
        }
        arrays = [decoder.as_array(encapsulate([b"".join(_fragments(store, item.blob_key, index[n - 1]))]),
                                   index=0, **described)[0] for n in numbers]
        return header, arrays
    ds = _parsed(store, item)
    _check(numbers, int(ds.get("NumberOfFrames") or 1))
    decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
    return ds, [decoder.as_array(ds, index=n - 1)[0] for n in numbers]


def _fragments(store: BlobStore, key: str, fragments: list[list[int]]) -> Iterator[bytes]:
    for offset, length in fragments:
        yield from store.read(key, offset, length)


def _check(numbers: list[int], count: int) -> None:
    for n in numbers:
        if not 1 <= n <= count:
            raise NoSuchBulkData(f"frame {n} does not exist; the instance has {count} frame(s)")


def _parsed(store: BlobStore, item: Located) -> Dataset:
    return dcmread(BytesIO(b"".join(store.read(item.blob_key))))


def _walk(ds: Dataset, path: str):
    """The element at a bulk path: tags and item indexes joined by ``/``."""
    steps = path.split("/")
    node: Dataset = ds
    try:
        while True:
            tag = int(steps.pop(0), 16)
            element = node[tag]
            if not steps:
                return element
            node = element.value[int(steps.pop(0))]
    except (ValueError, KeyError, IndexError, TypeError):
        raise NoSuchBulkData(f"the instance has no bulk value at {path}") from None


def _swapped(value: bytes, width: int) -> bytes:
    usable = len(value) - len(value) % width
    words = np.frombuffer(value[:usable], dtype=f">u{width}")
    return words.astype(f"<u{width}").tobytes() + value[usable:]
