"""WADO-RS: retrieve instances and metadata (PS3.18 §10.4).

Instances are sent as ``multipart/related; type="application/dicom"``, each
part streamed from the blob store in the transfer syntax it was received in
(the default, and what ``transfer-syntax=*`` asks for). Metadata is the DICOM
JSON kept at ingest, streamed row by row.
"""

from __future__ import annotations

from collections.abc import Iterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from archive.retrieve import metadata
from archive.transcode import can_transcode, transcoded
from dicomweb.errors import DicomWebError
from dicomweb.multipart import media_type, new_boundary, write_parts
from dicomweb.resources import located, visible_to
from dicomweb.urls import root_url

DICOM = "application/dicom"


def retrieve(request: Request) -> Response:
    """``GET /studies/{study}[/series/{series}[/instances/{instance}]]``."""
    syntax = _negotiate(request.headers.get("accept", "*/*"))
    found = located(request)
    if syntax not in ("*", None):
        stuck = [i.sop_uid for i in found if not can_transcode(i.transfer_syntax, syntax)]
        if stuck:
            raise DicomWebError(406, f"cannot provide transfer syntax {syntax} for {len(stuck)} "
                                     f"instance(s), e.g. {stuck[0]}", "accept")
    store = request.app.state.store
    boundary = new_boundary()

    def parts() -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
        for item in found:
            if syntax in ("*", None) or syntax == item.transfer_syntax:
                headers = {"Content-Type": f"{DICOM}; transfer-syntax={item.transfer_syntax}",
                           "Content-Length": str(item.size)}
                yield headers, store.read(item.blob_key)
            else:
                body = transcoded(store.read(item.blob_key), syntax)
                yield {"Content-Type": f"{DICOM}; transfer-syntax={syntax}",
                       "Content-Length": str(len(body))}, iter((body,))

    return StreamingResponse(
        write_parts(boundary, parts()),
        media_type=f'multipart/related; type="{DICOM}"; boundary={boundary}',
    )


def retrieve_metadata(request: Request) -> Response:
    """``GET .../metadata`` at study, series or instance level."""
    state = request.app.state
    params = request.path_params
    located(request)
    root = root_url(request)
    documents = metadata(state.db, root, params["study"], params.get("series"), params.get("instance"),
                         visible_to(request))

    def body() -> Iterator[bytes]:
        yield b"["
        for i, document in enumerate(documents):
            yield document if i == 0 else b"," + document
        yield b"]"

    return StreamingResponse(body(), media_type="application/dicom+json")


def _negotiate(accept: str) -> str | None:
    """The transfer syntax the client wants: a UID, ``*`` (as stored) or ``None`` (default).

    Raises 406 when no element of the Accept header can be served (PS3.18 §8.7).
    """
    for element in accept.split(","):
        kind, params = media_type(element)
        if kind in ("*/*", "multipart/*", "multipart/related"):
            part = params.get("type", DICOM).strip('"').lower()
            if part in (DICOM, "*/*", "application/*"):
                syntax = params.get("transfer-syntax")
                if syntax is None or syntax == "*" or can_transcode(None, syntax):
                    return syntax
        elif kind == DICOM:
            return params.get("transfer-syntax")
    raise DicomWebError(406, f'cannot answer with any of {accept!r}; this resource is '
                             f'multipart/related; type="{DICOM}"', "accept")

