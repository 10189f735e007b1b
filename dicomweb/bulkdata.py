"""WADO-RS bulk data and frames (PS3.18 §10.4.1.1.5 and §10.4.1.1.6).

``.../bulkdata/{path}`` answers the BulkDataURIs that metadata hands out;
``.../frames/{list}`` answers single frames of the pixel data, as viewers ask
for them. Both are ``multipart/related``. Compressed pixel data goes out as
stored (``image/jpeg``, ``image/jls``, ``image/jp2``, ...) when the client
accepts it or says ``transfer-syntax=*``, never decoded on the server then;
re-encoded (:mod:`archive.transcode`) when the client names another image
syntax; decoded to ``application/octet-stream`` little endian pixels when that
is what it asks for.
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

from archive.bulkdata import (
    PIXEL_DATA,
    NoSuchBulkData,
    bulk_value,
    decoded_frames,
    frame_arrays,
    frame_count,
    stored_frames,
)
from archive.retrieve import Located
from archive.transcode import CannotTranscode, can_transcode, check, encoded_frame
from dicomweb.accept import not_acceptable, ranked
from dicomweb.caching import boundary as multipart_boundary
from dicomweb.caching import cache_headers, etag
from dicomweb.errors import DicomWebError
from dicomweb.multipart import write_parts
from dicomweb.resources import located
from dicomweb.streaming import in_threads

OCTETS = "application/octet-stream"
NATIVE = "1.2.840.10008.1.2.1"  # what octet-stream frames are encoded as (PS3.18 §8.7.3.3.2)
MEDIA_TYPES = {
    JPEGBaseline8Bit: "image/jpeg", JPEGExtended12Bit: "image/jpeg", JPEGLossless: "image/jpeg",
    JPEGLosslessSV1: "image/jpeg", JPEGLSLossless: "image/jls", JPEGLSNearLossless: "image/jls",
    JPEG2000Lossless: "image/jp2", JPEG2000: "image/jp2", JPEG2000MCLossless: "image/jpx",
    JPEG2000MC: "image/jpx", RLELossless: "image/dicom-rle",
}
# What an image type means when the client names no transfer syntax (PS3.18 Table 8.7.3-5).
DEFAULT_SYNTAX = {"image/jpeg": JPEGBaseline8Bit, "image/jls": JPEGLSLossless, "image/jp2": JPEG2000Lossless,
                  "image/dicom-rle": RLELossless}
Part = tuple[dict[str, str], Iterator[bytes]]


def frames(request: Request) -> Response:
    """``GET .../instances/{instance}/frames/{n[,n...]}``."""
    numbers = frame_numbers(request.path_params["frames"])
    [item] = located(request)
    try:
        return _pixels(request, item, numbers)
    except NoSuchBulkData as exc:
        raise DicomWebError(404, str(exc)) from None


def bulkdata(request: Request) -> Response:
    """``GET .../instances/{instance}/bulkdata/{path}``: one value a BulkDataURI points to."""
    path = request.path_params["path"].upper()
    [item] = located(request)
    store = request.app.state.store
    try:
        if path == f"{PIXEL_DATA:08X}" and UID(item.transfer_syntax).is_compressed:
            return _pixels(request, item, list(range(1, frame_count(store, item) + 1)))
        if not any(w.admits(OCTETS) and w.syntax in (None, "*", NATIVE) for w in ranked(_accept(request))):
            raise not_acceptable(_accept(request), f'multipart/related; type="{OCTETS}"')
        return _parts(OCTETS, NATIVE, request, item, [bulk_value(store, item, path)])
    except NoSuchBulkData as exc:
        raise DicomWebError(404, str(exc)) from None


def _pixels(request: Request, item: Located, numbers: list[int]) -> Response:
    """Frames `numbers` in the best-ranked representation the client accepts (PS3.18 §8.7.3.3.2)."""
    store = request.app.state.store
    mode, syntax = _choose(request, item)
    if mode == "stored":
        return _parts(_stored_type(item), item.transfer_syntax, request, item,
                      stored_frames(store, item, numbers))
    if mode == "native":
        return _parts(OCTETS, NATIVE, request, item, [iter((f,)) for f in decoded_frames(store, item, numbers)])
    count = frame_count(store, item)
    if not all(1 <= n <= count for n in numbers):
        raise NoSuchBulkData(f"frame {max(numbers)} does not exist; the instance has {count} frame(s)")
    try:
        header, arrays = frame_arrays(store, item, numbers)
        bodies = [encoded_frame(frame, header, syntax) for frame in arrays]
    except CannotTranscode as exc:
        raise DicomWebError(406, str(exc), "accept") from None
    return _parts(MEDIA_TYPES[UID(syntax)], syntax, request, item, [iter((b,)) for b in bodies])


def _choose(request: Request, item: Located) -> tuple[str, str]:
    """How to send the pixels: ``("stored", uid)``, ``("native", uid)`` or ``("encode", target uid)``.

    ``transfer-syntax=*`` with any media type, or the stored media type with the
    stored syntax (or none named), means as stored: compressed frames leave
    untouched, for the client to decode. ``application/octet-stream`` alone
    means native little endian pixels (its default syntax); an image type with
    another syntax, or its default (:data:`DEFAULT_SYNTAX`), means re-encoded.
    Raises 406 when no element can be served.
    """
    stored = UID(item.transfer_syntax)
    stored_type = _stored_type(item)
    # Native pixels are "as stored" only in little endian.
    stored_usable = stored.is_compressed or stored != ExplicitVRBigEndian
    accept = _accept(request)
    reason = ""
    for wanted in ranked(accept):
        syntax = wanted.syntax
        if syntax == "*" and (wanted.admits(stored_type) or wanted.admits(OCTETS)) or (
                syntax in (None, stored) and wanted.admits(stored_type) and wanted.part != OCTETS):
            if stored_usable:
                return "stored", stored
            syntax = NATIVE
        if wanted.admits(OCTETS) and syntax in (None, NATIVE, "*"):
            if not stored.is_compressed and stored_usable:
                return "stored", stored
            if can_transcode(stored, NATIVE):
                return "native", NATIVE
            reason = f"pixel data in {stored.name} cannot be decoded here"
            continue
        target = syntax or DEFAULT_SYNTAX.get(wanted.part)
        if target and target in MEDIA_TYPES and wanted.admits(MEDIA_TYPES[UID(target)]):
            try:
                check(stored, target)
            except CannotTranscode as exc:
                reason = str(exc)
                continue
            return "encode", target
    raise not_acceptable(accept, reason or f'multipart/related; type="{stored_type}" or "{OCTETS}"')


def frame_numbers(raw: str) -> list[int]:
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


def _accept(request: Request) -> str | None:
    return request.headers.get("accept")


def _parts(kind: str, syntax: str, request: Request, item: Located, bodies: list[Iterator[bytes]]) -> Response:
    """A multipart answer of `bodies` in `kind` and `syntax`, cacheable as the immutable instance is.

    The transfer syntax is named on each part and on the whole (PS3.18 §8.7.3.5): viewers
    read it from either to pick their decoder.
    """
    part_type = f"{kind}; transfer-syntax={syntax}"
    parts: list[Part] = [({"Content-Type": part_type}, body) for body in bodies]
    headers = cache_headers(request, etag([item], request.url.path, syntax))
    boundary = multipart_boundary(headers)
    return StreamingResponse(in_threads(write_parts(boundary, parts)), headers=headers,
                             media_type=f'multipart/related; type="{kind}"; transfer-syntax={syntax}; '
                                        f"boundary={boundary}")
