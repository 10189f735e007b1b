"""WADO-RS: retrieve instances and metadata (PS3.18 §10.4).

Instances are sent as ``multipart/related; type="application/dicom"``, each
part streamed from the blob store in the transfer syntax it was received in
(the default, and what ``transfer-syntax=*`` asks for), or transcoded to the
syntax the client names (:mod:`archive.transcode`), the best-ranked one that
every instance can be given in. One instance asked for as bare
``application/dicom`` is a single-part answer that honours HTTP ``Range``.
Metadata is the DICOM JSON kept at ingest, streamed row by row.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import orjson
from pydicom.uid import JPEGBaseline8Bit
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from archive.retrieve import Located, metadata
from archive.storage import BlobNotFound, BlobStore, StoreUnavailable
from archive.transcode import CannotTranscode, check, transcoded
from dicomweb.accept import ranked
from dicomweb.caching import boundary as multipart_boundary
from dicomweb.caching import cache_headers, etag, not_modified
from dicomweb.errors import DicomWebError
from dicomweb.multipart import body_length, write_parts
from dicomweb.resources import located, visible_to
from dicomweb.streaming import BATCH, in_threads
from dicomweb.urls import root_url

DICOM = "application/dicom"
log = logging.getLogger("huren.wado")


def retrieve(request: Request) -> Response:
    """``GET /studies/{study}[/series/{series}[/instances/{instance}]]``."""
    found = located(request)
    syntax, single = _negotiate(request, found)
    if single and len(found) == 1:
        return single_part(request, found[0], syntax)
    # A study or series grows as instances arrive: revalidate; one instance never changes.
    headers = cache_headers(request, etag(found, "instances", syntax), immutable="instance" in request.path_params)
    if (unchanged := not_modified(request, headers)) is not None:
        return unchanged
    store = request.app.state.store
    boundary = multipart_boundary(headers)
    as_stored = syntax in ("*", None) or all(item.transfer_syntax == syntax for item in found)
    # The first object is opened before the 200 goes out: a store that cannot be
    # read is a 503 (a 500 when the object is missing), never a 200 cut short.
    first = _open(store, found[0])

    def stored_headers(item: Located) -> dict[str, str]:
        return {"Content-Type": f"{DICOM}; transfer-syntax={item.transfer_syntax}",
                "Content-Length": str(item.size)}

    def parts() -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
        for n, item in enumerate(found):
            chunks = _midstream(store, item, first if n == 0 else None)
            if syntax in ("*", None) or syntax == item.transfer_syntax:
                yield stored_headers(item), chunks
                continue
            try:
                body = transcoded(chunks, syntax)
            except CannotTranscode as exc:
                # The status went out with the first part: end the body short, so the
                # client sees a broken multipart instead of a silently missing instance.
                log.error("transcoding failed mid-stream: %s", exc, extra={
                    "study": item.study_uid, "sop": item.sop_uid, "syntax": syntax})
                raise
            yield {"Content-Type": f"{DICOM}; transfer-syntax={syntax}",
                   "Content-Length": str(len(body))}, iter((body,))

    if as_stored:
        # Every size is in the index: a Content-Length, so no chunked framing to copy each object into.
        headers["Content-Length"] = str(body_length(boundary, ((stored_headers(i), i.size) for i in found)))
    return StreamingResponse(
        in_threads(write_parts(boundary, parts())), headers=headers,
        media_type=f'multipart/related; type="{DICOM}"; boundary={boundary}',
    )


def _open(store: BlobStore, item: Located, start: int = 0, length: int | None = None,
          chunk_size: int = BATCH) -> Iterator[bytes]:
    """Open an instance's object (from `start`, `length` bytes) for reads of `chunk_size`;
    500 when the index has it and the store does not, 503 when the store does not answer."""
    try:
        return store.read(item.blob_key, start, length, chunk_size)
    except BlobNotFound:
        log.error("index/store disagreement: the object of an indexed instance is missing",
                  extra={"study": item.study_uid, "series": item.series_uid, "sop": item.sop_uid,
                         "key": item.blob_key})
        raise DicomWebError(500, f"instance {item.sop_uid} is indexed but its object is missing "
                                 "from the store") from None
    except StoreUnavailable as exc:
        raise DicomWebError(503, f"{exc}; try again later") from None


def _midstream(store: BlobStore, item: Located, opened: Iterator[bytes] | None) -> Iterator[bytes]:
    """The object's chunks (from `opened`, or read now); a failure after the 200 is
    logged as an index/store disagreement and raised on, so the server aborts the
    response (the client sees a broken transfer, never a short 200)."""
    try:
        yield from opened if opened is not None else store.read(item.blob_key, chunk_size=BATCH)
    except Exception as exc:
        log.error("index/store disagreement: an object failed mid-response; response aborted",
                  extra={"study": item.study_uid, "series": item.series_uid, "sop": item.sop_uid,
                         "key": item.blob_key, "error": str(exc).strip().splitlines()[0] if str(exc).strip()
                         else type(exc).__name__})
        raise


def retrieve_metadata(request: Request) -> Response:
    """``GET .../metadata`` at study, series or instance level; ETag and If-None-Match (304)."""
    state = request.app.state
    params = request.path_params
    found = located(request)
    root = root_url(request)
    # A study's metadata changes as instances arrive: revalidate, never assume fresh.
    headers = cache_headers(request, etag(found, "metadata", root), immutable="instance" in params)
    if (unchanged := not_modified(request, headers)) is not None:
        return unchanged
    documents = metadata(state.db, root, params["study"], params.get("series"), params.get("instance"),
                         visible_to(request))

    def body() -> Iterator[bytes]:
        yield b"["
        for i, document in enumerate(documents):
            yield document if i == 0 else b"," + document
        yield b"]"

    return StreamingResponse(body(), media_type="application/dicom+json", headers=headers)


def _negotiate(request: Request, found: list[Located]) -> tuple[str | None, bool]:
    """The transfer syntax to send (a UID, ``*`` or ``None``: as stored) and whether single-part was asked.

    Elements are tried best q-value first; one whose syntax some instance
    cannot be given in is passed over. Raises 406 when none can be served
    (PS3.18 §8.7.1), naming why the best one could not.
    """
    accept = request.headers.get("accept")
    reason = f'this resource is multipart/related; type="{DICOM}" (or {DICOM} for one instance)'
    for wanted in ranked(accept):
        if wanted.kind != DICOM and not (wanted.kind in ("*/*", "multipart/*", "multipart/related")
                                         and wanted.admits(DICOM)):
            continue
        syntax = wanted.syntax
        if syntax in (None, "*"):
            return syntax, wanted.kind == DICOM
        try:
            bits = _bits_allocated(request) if syntax == JPEGBaseline8Bit else {}
            for item in found:
                check(item.transfer_syntax, syntax, bits.get(item.sop_uid))
        except CannotTranscode as exc:
            if reason.startswith("this resource"):
                reason = str(exc)
            continue
        return syntax, wanted.kind == DICOM
    raise DicomWebError(406, f"cannot answer with any of {accept!r}: {reason}", "accept")


def _bits_allocated(request: Request) -> dict[str, int]:
    """Bits Allocated of each image instance in the request's scope, from the metadata kept at ingest."""
    params = request.path_params
    bits = {}
    for document in metadata(request.app.state.db, "", params["study"], params.get("series"),
                             params.get("instance"), visible_to(request)):
        attributes = orjson.loads(document)
        value = attributes.get("00280100", {}).get("Value")
        if value:
            bits[attributes["00080018"]["Value"][0]] = int(value[0])
    return bits


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def single_part(request: Request, item: Located, syntax: str | None) -> Response:
    """One instance as a single-part ``application/dicom`` answer, with ``Range`` (RFC 9110 §14)."""
    as_stored = syntax in (None, "*") or syntax == item.transfer_syntax
    sent_syntax = item.transfer_syntax if as_stored else syntax
    headers = cache_headers(request, etag([item], "instance", sent_syntax))
    if (unchanged := not_modified(request, headers)) is not None:
        return unchanged
    store = request.app.state.store
    body: bytes | None = None
    if not as_stored:
        assert syntax is not None
        try:
            body = transcoded(_open(store, item), syntax)
        except CannotTranscode as exc:
            raise DicomWebError(406, str(exc), "accept") from None
    size = item.size if body is None else len(body)
    headers |= {"Accept-Ranges": "bytes", "Content-Type": f"{DICOM}; transfer-syntax={sent_syntax}"}
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    span = _span(wanted, size) if wanted and if_range in (None, headers["ETag"]) else None
    if span is None:
        chunks = _midstream(store, item, _open(store, item)) if body is None else iter((body,))
        return StreamingResponse(in_threads(chunks), headers=headers | {"Content-Length": str(size)})
    start, length = span
    chunks = (_midstream(store, item, _open(store, item, start, length)) if body is None
              else iter((body[start:start + length],)))
    return StreamingResponse(in_threads(chunks), status_code=206, headers=headers | {
        "Content-Length": str(length), "Content-Range": f"bytes {start}-{start + length - 1}/{size}"})


def _span(header: str, size: int) -> tuple[int, int] | None:
    """``(start, length)`` of a single byte range; ``None`` to send the whole (several ranges, or none parsed).

    Raises 416 when the range lies wholly past the end.
    """
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # a suffix: the last N bytes
        length = min(int(last), size)
        return (size - length, length) if length else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        refused = DicomWebError(416, f"range {header!r} starts past the end of the {size}-byte object", "range")
        refused.headers = {"Content-Range": f"bytes */{size}"}
        raise refused
    if end < start:
        return None
    return start, end - start + 1
