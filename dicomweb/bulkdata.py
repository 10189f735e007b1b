"""WADO-RS bulk data and frames (PS3.18 §10.4.1.1.5 and §10.4.1.1.6).

``.../bulkdata/{path}`` answers the BulkDataURIs that metadata hands out;
``.../frames/{list}`` answers single frames of the pixel data, as viewers ask
for them. Both are ``multipart/related``. Compressed pixel data goes out as
stored (``image/jpeg``, ``image/jls``, ``image/jp2``, ...) when the client
accepts it, else decoded to ``application/octet-stream`` little endian pixels.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.uid import (
    JPEG2000,
    JPEG2000MC,
    UID,
    ExplicitVRBigEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from archive.bulkdata import PIXEL_DATA, NoSuchBulkData, bulk_value, decoded_frames, frame_count, stored_frames
from archive.retrieve import Located
from archive.transcode import can_transcode
from dicomweb.errors import DicomWebError
from dicomweb.multipart import media_type, new_boundary, write_parts
from dicomweb.resources import located

OCTETS = "application/octet-stream"
NATIVE = "1.2.840.10008.1.2.1"  # what octet-stream frames are encoded as (PS3.18 §8.7.3.3.2)
MEDIA_TYPES = {
    JPEGBaseline8Bit: "image/jpeg", JPEGExtended12Bit: "image/jpeg", JPEGLossless: "image/jpeg",
    JPEGLosslessSV1: "image/jpeg", JPEGLSLossless: "image/jls", JPEGLSNearLossless: "image/jls",
    JPEG2000Lossless: "image/jp2", JPEG2000: "image/jp2", JPEG2000MCLossless: "image/jpx",
    JPEG2000MC: "image/jpx", RLELossless: "image/dicom-rle",
}
Part = tuple[dict[str, str], Iterator[bytes]]


def frames(request: Request) -> Response:
    """``GET .../instances/{instance}/frames/{n[,n...]}``."""
    numbers = _frame_numbers(request.path_params["frames"])
    [item] = located(request)
    store = request.app.state.store
    try:
        if _as_stored(request, item):
            return _parts(_stored_type(item), item, stored_frames(store, item, numbers))
        return _parts(OCTETS, item, [iter((f,)) for f in decoded_frames(store, item, numbers)])
    except NoSuchBulkData as exc:
        raise DicomWebError(404, str(exc)) from None


def bulkdata(request: Request) -> Response:
    """``GET .../instances/{instance}/bulkdata/{path}``: one value a BulkDataURI points to."""
    path = request.path_params["path"].upper()
    [item] = located(request)
    store = request.app.state.store
    try:
        if path == f"{PIXEL_DATA:08X}" and UID(item.transfer_syntax).is_compressed:
            every = list(range(1, frame_count(store, item) + 1))
            if _as_stored(request, item):
                return _parts(_stored_type(item), item, stored_frames(store, item, every))
            return _parts(OCTETS, item, [iter((f,)) for f in decoded_frames(store, item, every)])
        _accepts(request, OCTETS, NATIVE)
        return _parts(OCTETS, item, [bulk_value(store, item, path)])
    except NoSuchBulkData as exc:
        raise DicomWebError(404, str(exc)) from None


def _frame_numbers(raw: str) -> list[int]:
    try:
        numbers = [int(n) for n in raw.split(",")]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        raise DicomWebError(400, f"{raw!r} is not a comma-separated list of frame numbers from 1",
                            "frames")
    return numbers


def _stored_type(item: Located) -> str:
    return MEDIA_TYPES.get(UID(item.transfer_syntax), OCTETS)


def _as_stored(request: Request, item: Located) -> bool:
    """Whether the client takes the pixels as stored; else it wants native octet-stream.

    Native pixels are "as stored" only in little endian. Raises 406 when
    the client accepts neither.
    """
    syntax = UID(item.transfer_syntax)
    native = not syntax.is_compressed and syntax != ExplicitVRBigEndian
    if syntax.is_compressed and _accepts(request, _stored_type(item), syntax, fail=False):
        return True
    if syntax.is_compressed and not can_transcode(syntax, NATIVE):
        raise DicomWebError(406, f"pixel data in {syntax.name} cannot be decoded here", "accept")
    _accepts(request, OCTETS, NATIVE)
    return native


def _accepts(request: Request, kind: str, syntax: str, *, fail: bool = True) -> bool:
    """Whether an element of the Accept header admits `kind` in `syntax` (406 if not and `fail`)."""
    accept = request.headers.get("accept", "*/*")
    for element in accept.split(","):
        wanted, params = media_type(element)
        if wanted == "multipart/related":
            wanted = params.get("type", "*/*").strip('"').lower()
        if wanted not in ("*/*", kind) and not (wanted == "image/*" and kind.startswith("image/")):
            continue
        if params.get("transfer-syntax", "*") in ("*", syntax):
            return True
    if fail:
        raise DicomWebError(406, f"cannot answer with any of {accept!r}; this resource is "
                                 f'multipart/related; type="{kind}"', "accept")
    return False


def _parts(kind: str, item: Located, bodies: list[Iterator[bytes]]) -> Response:
    part_type = kind if kind == OCTETS else f"{kind}; transfer-syntax={item.transfer_syntax}"
    parts: list[Part] = [({"Content-Type": part_type}, body) for body in bodies]
    boundary = new_boundary()
    return StreamingResponse(write_parts(boundary, parts),
                             media_type=f'multipart/related; type="{kind}"; boundary={boundary}')
