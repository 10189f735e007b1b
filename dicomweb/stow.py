"""STOW-RS: store instances (PS3.18 §10.5).

The body (``multipart/related; type="application/dicom"``, or
``type="application/dicom+json"`` with bulk data parts: :mod:`dicomweb.stowjson`)
is spooled part by part to files, never held in memory, and each instance goes
through the same ingest call as C-STORE, a few at a time so that one part's
parsing overlaps another's fsyncs. The answer (PS3.18 Annex I) lists stored
instances in ReferencedSOPSequence, with a WarningReason when one was stored
with a warning, and refused ones in FailedSOPSequence with the same failure
codes C-STORE answers with. PS3.18 Table I.1-1 has no attribute for a reason's
text, so each failure and warning is also said in a ``Warning`` header
(``299 huren "<SOP Instance UID>: <why>"``), as dcm4chee does. The status is
200 when every instance was stored without warnings, 202 when some were
refused or had warnings, 409 when none was stored (§10.5.3).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import NamedTuple

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from archive.ingest import Failure, Ingest, IngestError, Outcome, Source, Stored
from archive.part10 import PREFIX, has_magic
from dicomweb import stowjson
from dicomweb.errors import DicomWebError, warning_header
from dicomweb.multipart import Part, PartReader, media_type
from dicomweb.resources import audit, caller
from dicomweb.urls import root_url

log = logging.getLogger("huren.stow")
DICOM = "application/dicom"
PARALLEL_PARTS = 4  # parts of one request archived at once
RETRY_AFTER = 30  # seconds a client refused with 503 is asked to wait


async def store(request: Request) -> Response:
    """``POST /studies`` and ``POST /studies/{study}``."""
    state = request.app.state
    kind, params = media_type(request.headers.get("content-type"))
    part_type = params.get("type", DICOM).strip('"').lower()
    if kind != "multipart/related" or part_type not in (DICOM, stowjson.DICOM_JSON):
        raise DicomWebError(415, 'STOW-RS takes multipart/related; type="application/dicom" or '
                            'type="application/dicom+json" (with bulk data parts)', "content-type")
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
    if part_type == DICOM:
        items: list[Item] = [(_dicom_part(part), None) for part in parts]
    else:
        items = await run_in_threadpool(_built, parts, state.spool)
    results = await run_in_threadpool(_ingest_all, state.ingest, items, source, study)
    outcomes = [outcome for outcome, _warning in results]
    for outcome in outcomes:
        if isinstance(outcome, Stored):
            audit(request, "store", "success", study_uid=outcome.study_uid, series_uid=outcome.series_uid,
                  sop_uid=outcome.sop_uid, detail=outcome.outcome.value)
        else:
            audit(request, "store", "failure", sop_uid=outcome.sop_uid or None,
                  detail=f"0x{outcome.failure.value:04X}")
    # Instances are logged one by one at DEBUG (archive.ingest); each request's counts here.
    counts = Counter(outcome.outcome.value if isinstance(outcome, Stored) else "refused" for outcome in outcomes)
    log.info("STOW-RS request", extra={"door": "stow", "hospital": source.hospital_id, "study": study,
                                       "instances": dict(counts)})
    root = root_url(request)
    return _answer(results, root, study)


class Received(NamedTuple):
    """A Part-10 file to archive, with its digests when taken as it was received."""

    path: Path
    digests: tuple[str, str] | None = None


# A WarningReason and its text; an instance to archive (with the warning building it
# gave) or its refusal; what came of it.
Warned = tuple[int, str] | None
Item = tuple[Received | IngestError, Warned]
Result = tuple[Stored | IngestError, Warned]
# PS3.18 I.2.1 (implementation-specific, B-range): a different instance under this SOP
# Instance UID is archived and was kept (ingest.on_conflict: keep); this one was not stored.
KEPT_ANOTHER = 0xB00C


def _dicom_part(part: Part) -> Received | IngestError:
    if part.content_type not in ("", DICOM):
        os.unlink(part.path)
        return IngestError(Failure.CANNOT_UNDERSTAND, f"part of type {part.content_type} is not {DICOM}")
    if _as_part10(part.path):
        return Received(part.path)  # its bytes changed: digests taken again
    return Received(part.path, part.digests.hexdigests())


def _built(parts: list[Part], folder: Path) -> list[Item]:
    """The instances of a metadata and bulk data request, as Part-10 files in `folder`."""
    items: list[Item] = []
    for built in stowjson.instances(parts, folder):
        items.append((built, None) if isinstance(built, IngestError) else (Received(built[0]), built[1]))
    return items


def _ingest_all(ingest: Ingest, items: list[Item], source: Source, study: str | None) -> list[Result]:
    if len(items) == 1:
        return [_ingest_item(ingest, source, study, items[0])]
    with ThreadPoolExecutor(min(PARALLEL_PARTS, len(items)), thread_name_prefix="stow") as pool:
        return list(pool.map(partial(_ingest_item, ingest, source, study), items))


def _ingest_item(ingest: Ingest, source: Source, study: str | None, item: Item) -> Result:
    received, warning = item
    try:
        if isinstance(received, IngestError):
            raise received
        stored = ingest.ingest(received.path, source, expected_study=study, digests=received.digests)
    except IngestError as exc:
        log.warning("STOW-RS refused: %s", exc, extra={"sop": exc.sop_uid, "door": "stow"})
        return exc, None
    if stored.outcome is Outcome.KEPT:
        warning = (KEPT_ANOTHER, "a different instance with this SOP Instance UID is archived and was kept "
                                 "(ingest.on_conflict: keep); this one was not stored")
    return stored, warning


def _as_part10(path: Path) -> bool:
    """Give a part that starts with its file meta group, but lacks the preamble and
    ``DICM`` prefix, both — so that the archive holds only Part-10 files. Returns
    whether it did.

    pydicom's ``dcmwrite`` writes a newly made dataset that way, and
    dicomweb-client's ``store_instances`` sends what it writes.
    """
    with open(path, "rb") as fp:
        head = fp.read(len(PREFIX))
    if has_magic(head) or head[:2] != b"\x02\x00" or not head[4:6].isalpha():
        return False
    whole = path.with_suffix(".p10")
    with open(path, "rb") as source, open(whole, "wb") as target:
        target.write(PREFIX)
        shutil.copyfileobj(source, target, 1024 * 1024)
    os.replace(whole, path)
    return True


def _answer(results: list[Result], root: str, study: str | None) -> Response:
    """The Store Instances Response Module (PS3.18 Table I.1-1) and its HTTP status."""
    outcomes = [outcome for outcome, _warning in results]
    referenced, failed, reasons = [], [], []
    for outcome, warning in results:
        if isinstance(outcome, Stored):
            item = {
                "00081150": {"vr": "UI", "Value": [outcome.sop_class_uid]},
                "00081155": {"vr": "UI", "Value": [outcome.sop_uid]},
                "00081190": {"vr": "UR", "Value": [
                    f"{root}/studies/{outcome.study_uid}/series/{outcome.series_uid}"
                    f"/instances/{outcome.sop_uid}"]},
            }
            if warning is not None:
                item["00081196"] = {"vr": "US", "Value": [warning[0]]}
                reasons.append(warning_header(f"{outcome.sop_uid}: {warning[1]}"))
            referenced.append(item)
        else:
            item = {"00081197": {"vr": "US", "Value": [outcome.failure.value]}}
            if outcome.sop_class_uid:
                item["00081150"] = {"vr": "UI", "Value": [outcome.sop_class_uid]}
            if outcome.sop_uid:
                item["00081155"] = {"vr": "UI", "Value": [outcome.sop_uid]}
            failed.append(item)
            named = outcome.sop_uid or "(no SOP Instance UID)"
            reasons.append(warning_header(f"{named}: {outcome}"))
    body: dict[str, object] = {}
    studies = {o.study_uid for o in outcomes if isinstance(o, Stored)}
    if study or len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [f"{root}/studies/{study or studies.pop()}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 200 if not reasons else 202 if referenced else 409
    headers = {"Warning": ", ".join(reasons)} if reasons else {}
    if not referenced and all(o.failure is Failure.OUT_OF_RESOURCES for o in outcomes
                              if isinstance(o, IngestError)):
        # Nothing kept, and only for want of the index, the store or queue room: a
        # condition that passes, so the client is told to come back (RFC 9110 §15.6.4).
        # The reason in a Warning header (PS3.18 §8.10.3): the body is a DICOM data set.
        reason = str(next(o for o in outcomes if isinstance(o, IngestError)))
        status, headers = 503, {"Retry-After": str(RETRY_AFTER),
                                "Warning": warning_header(reason)}
    return Response(orjson.dumps(body), status_code=status, headers=headers,
                    media_type="application/dicom+json")

