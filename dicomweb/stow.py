"""STOW-RS: store instances (PS3.18 §10.5).

The body (``multipart/related; type="application/dicom"``) is spooled part by
part to files, never held in memory, and each part goes through the same
ingest call as C-STORE, a few at a time so that one part's parsing overlaps
another's fsyncs. The answer lists stored instances in
ReferencedSOPSequence and refused ones in FailedSOPSequence with the same
failure codes C-STORE answers with.
"""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from archive.ingest import Failure, Ingest, IngestError, Source, Stored
from dicomweb.errors import DicomWebError
from dicomweb.multipart import Part, PartReader, media_type
from dicomweb.resources import audit, caller
from dicomweb.urls import root_url

log = logging.getLogger("huren.stow")
DICOM = "application/dicom"
PREAMBLE = b"\0" * 128 + b"DICM"
PARALLEL_PARTS = 4  # parts of one request archived at once
RETRY_AFTER = 30  # seconds a client refused with 503 is asked to wait


async def store(request: Request) -> Response:
    """``POST /studies`` and ``POST /studies/{study}``."""
    state = request.app.state
    kind, params = media_type(request.headers.get("content-type"))
    part_type = params.get("type", DICOM).strip('"').lower()
    if kind != "multipart/related" or part_type != DICOM:
        raise DicomWebError(415, 'STOW-RS takes multipart/related; type="application/dicom"',
                            "content-type")
    if not params.get("boundary"):
        raise DicomWebError(400, "multipart/related needs a boundary parameter", "content-type")
    declared = request.headers.get("content-length")
    limit = state.config.http.max_request_bytes
    if declared and declared.isdigit() and int(declared) > limit:
        raise DicomWebError(413, f"the body is larger than {limit} bytes", "content-length")

    reader = PartReader(params["boundary"], state.spool)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise DicomWebError(413, f"the body is larger than {limit} bytes", "content-length")
            reader.feed(chunk)
        parts = reader.finish()
    except DicomWebError:
        reader.discard()
        raise
    except ClientDisconnect:
        reader.discard()
        raise DicomWebError(400, "the client closed the connection before the body ended") from None
    except ValueError as exc:
        reader.discard()
        raise DicomWebError(400, f"malformed multipart body: {exc}", "content-type") from None
    if not parts:
        raise DicomWebError(400, "the multipart body has no parts", "content-type")

    # A hospital stores only as itself: its studies are its own (archive.ingest refuses
    # instances of another hospital's study).
    source = Source("stow", caller(request).hospital_id)
    study = request.path_params.get("study")
    outcomes = await run_in_threadpool(_ingest_all, state.ingest, parts, source, study)
    for outcome in outcomes:
        if isinstance(outcome, Stored):
            audit(request, "store", "success", study_uid=outcome.study_uid, series_uid=outcome.series_uid,
                  sop_uid=outcome.sop_uid, detail=outcome.outcome.value)
        else:
            audit(request, "store", "failure", sop_uid=outcome.sop_uid or None,
                  detail=f"0x{outcome.failure.value:04X}")
    root = root_url(request)
    return _answer(outcomes, root, study)


def _ingest_all(ingest: Ingest, parts: list[Part], source: Source,
                study: str | None) -> list[Stored | IngestError]:
    if len(parts) == 1:
        return [_ingest_part(ingest, source, study, parts[0])]
    with ThreadPoolExecutor(min(PARALLEL_PARTS, len(parts)), thread_name_prefix="stow") as pool:
        return list(pool.map(partial(_ingest_part, ingest, source, study), parts))


def _ingest_part(ingest: Ingest, source: Source, study: str | None, part: Part) -> Stored | IngestError:
    if part.content_type not in ("", DICOM):
        os.unlink(part.path)
        return IngestError(Failure.CANNOT_UNDERSTAND, f"part of type {part.content_type} is not {DICOM}")
    try:
        _as_part10(part.path)
        return ingest.ingest(part.path, source, expected_study=study)
    except IngestError as exc:
        log.warning("STOW-RS refused: %s", exc, extra={"sop": exc.sop_uid, "door": "stow"})
        return exc


def _as_part10(path: Path) -> None:
    """Give a part that starts with its file meta group, but lacks the preamble and
    ``DICM`` prefix, both — so that the archive holds only Part-10 files.

    pydicom's ``dcmwrite`` writes a newly made dataset that way, and
    dicomweb-client's ``store_instances`` sends what it writes.
    """
    with open(path, "rb") as fp:
        head = fp.read(len(PREAMBLE))
    if head[128:] == b"DICM" or head[:2] != b"\x02\x00" or not head[4:6].isalpha():
        return
    whole = path.with_suffix(".p10")
    with open(path, "rb") as source, open(whole, "wb") as target:
        target.write(PREAMBLE)
        shutil.copyfileobj(source, target, 1024 * 1024)
    os.replace(whole, path)


def _answer(outcomes: list[Stored | IngestError], root: str, study: str | None) -> Response:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-3) and its HTTP status."""
    referenced, failed = [], []
    for outcome in outcomes:
        if isinstance(outcome, Stored):
            referenced.append({
                "00081150": {"vr": "UI", "Value": [outcome.sop_class_uid]},
                "00081155": {"vr": "UI", "Value": [outcome.sop_uid]},
                "00081190": {"vr": "UR", "Value": [
                    f"{root}/studies/{outcome.study_uid}/series/{outcome.series_uid}"
                    f"/instances/{outcome.sop_uid}"]},
            })
        else:
            item = {"00081197": {"vr": "US", "Value": [outcome.failure.value]}}
            if outcome.sop_class_uid:
                item["00081150"] = {"vr": "UI", "Value": [outcome.sop_class_uid]}
            if outcome.sop_uid:
                item["00081155"] = {"vr": "UI", "Value": [outcome.sop_uid]}
            failed.append(item)
    body: dict[str, object] = {}
    studies = {o.study_uid for o in outcomes if isinstance(o, Stored)}
    if study or len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{root}/studies/{study or studies.pop()}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else 202 if referenced else 409
    headers = {}
    if not referenced and all(o.failure is Failure.OUT_OF_RESOURCES for o in outcomes
                              if isinstance(o, IngestError)):
        # Nothing kept, and only for want of the index, the store or queue room: a
        # condition that passes, so the client is told to come back (RFC 9110 §15.6.4).
        # The reason in a Warning header (PS3.18 §8.10.3): the body is a DICOM data set.
        reason = str(next(o for o in outcomes if isinstance(o, IngestError)))
        status, headers = 503, {"Retry-After": str(RETRY_AFTER),
                                "Warning": f'299 huren "{_quoted(reason)}"'}
    return Response(orjson.dumps(body), status_code=status, headers=headers,
                    media_type="application/dicom+json")


def _quoted(text: str) -> str:
    """`text` fit for a quoted-string header value (printable ASCII, no quotes)."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)
