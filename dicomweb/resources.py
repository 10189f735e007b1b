"""The studies, series and instances a request names, as its caller may see them.

Every retrieval resource (WADO-RS instances, metadata, frames, bulk data) and
every search filters by the caller's sharing policy (:mod:`archive.policy`)
here, once. A resource the caller may not see answers exactly as one never
archived: the same 404 and the same body, so UIDs cannot be probed.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, select
from starlette.requests import Request

from archive.audit import AuditEvent
from archive.index.schema import studies
from archive.policy import Caller, visible
from archive.retrieve import Located, locate
from dicomweb.errors import DicomWebError


def caller(request: Request) -> Caller:
    """Who is asking, as the authentication middleware (:mod:`dicomweb.auth`) found."""
    return request.state.caller


def audit(request: Request, action: str, outcome: str, **fields: str | None) -> None:
    """Add an event by the request's caller to the audit trail (never raises: it queues)."""
    request.app.state.audit.record(AuditEvent(action, outcome, caller(request), **fields))


def visible_to(request: Request) -> ColumnElement[bool]:
    """The caller's sharing policy, a condition on the index's studies."""
    return visible(request.app.state.config, caller(request))


def visible_study(request: Request, study_uid: str) -> int:
    """The index key of a study the caller may see; the same 404 as :func:`located` if none.

    Runs a query: call it from a worker thread.
    """
    with request.app.state.db.reading() as conn:
        study_pk = conn.execute(
            select(studies.c.pk).where(studies.c.study_uid == study_uid, visible_to(request))
        ).scalar_one_or_none()
    if study_pk is None:
        raise DicomWebError(404, "no such study in the archive")
    return study_pk


def located(request: Request) -> list[Located]:
    """The instances of the study, series or instance in the request's path; 404 if none is visible."""
    params = request.path_params
    found = locate(request.app.state.db, params["study"], params.get("series"), params.get("instance"),
                   visible_to(request))
    where = {"study_uid": params["study"], "series_uid": params.get("series"), "sop_uid": params.get("instance")}
    if not found:
        audit(request, "retrieve", "failure", detail=f"404 {request.url.path}", **where)
        what = "instance" if "instance" in params else "series" if "series" in params else "study"
        raise DicomWebError(404, f"no such {what} in the archive")
    audit(request, "retrieve", "success", detail=f"{len(found)} instance(s) {request.url.path}", **where)
    return found
