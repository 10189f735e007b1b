"""Sharing a study with another hospital, for a consultation or a referral.

- ``POST /api/studies/{study}/shares`` with JSON ``{"hospital": ID, "days": N}``
  (or ``"expires": "<ISO 8601 date-time>"``): 201 and the share;
- ``GET /api/studies/{study}/shares``: the study's shares;
- ``DELETE /api/studies/{study}/shares/{id}``: revoke one (204).

Only the study's hospital or an admin may share or revoke; a study the
caller may not see is a 404, as everywhere.
"""

from __future__ import annotations

import datetime

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from archive import shares
from dicomweb.errors import DicomWebError
from dicomweb.resources import audit, caller, visible_study

MAX_DAYS = 365


async def create(request: Request) -> Response:
    """``POST /api/studies/{study}/shares``."""
    study_pk = await run_in_threadpool(_owned, request)
    hospital_id, expires_at = _body(request, await request.body())
    share = await run_in_threadpool(shares.create, request.app.state.db, study_pk, hospital_id,
                                    expires_at, caller(request).actor)
    audit(request, "share", "success", study_uid=share.study_uid,
          detail=f"shared {share.id} with {hospital_id} until {share.as_json()['expires_at']}")
    return JSONResponse(share.as_json(), status_code=201)


async def listing(request: Request) -> Response:
    """``GET /api/studies/{study}/shares``."""
    study_pk = await run_in_threadpool(_owned, request)
    found = await run_in_threadpool(shares.of_study, request.app.state.db, study_pk)
    return JSONResponse([share.as_json() for share in found])


async def revoke(request: Request) -> Response:
    """``DELETE /api/studies/{study}/shares/{share}``."""
    study_pk = await run_in_threadpool(_owned, request)
    raw = request.path_params["share"]
    if not raw.isdigit() or not await run_in_threadpool(shares.revoke, request.app.state.db, study_pk,
                                                        int(raw)):
        raise DicomWebError(404, "no such share of this study, or revoked already", "share")
    audit(request, "share", "success", study_uid=request.path_params["study"], detail=f"revoked share {raw}")
    return Response(status_code=204)


def _owned(request: Request) -> int:
    """The study's key, if the caller may manage its shares (403 otherwise, 404 if unseen)."""
    study_pk = visible_study(request, request.path_params["study"])
    who = caller(request)
    if not who.sees_everything and shares.owner_of(request.app.state.db, study_pk) != who.hospital_id:
        raise DicomWebError(403, "only the study's hospital or an admin may share it")
    return study_pk


def _body(request: Request, raw: bytes) -> tuple[str, datetime.datetime]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise DicomWebError(400, "the body must be a JSON object: {\"hospital\": ..., \"days\": ...}") from None
    if not isinstance(body, dict):
        raise DicomWebError(400, "the body must be a JSON object: {\"hospital\": ..., \"days\": ...}")
    for key in body:
        if key not in ("hospital", "days", "expires"):
            raise DicomWebError(400, "unknown key; expected hospital, and days or expires", key)
    hospital = request.app.state.config.hospital(body.get("hospital"))
    if hospital is None:
        raise DicomWebError(400, "must name a configured hospital", "hospital")
    now = datetime.datetime.now(datetime.UTC)
    if ("days" in body) == ("expires" in body):
        raise DicomWebError(400, "give exactly one of days and expires", "days")
    if "days" in body:
        days = body["days"]
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
            raise DicomWebError(400, f"must be a whole number of days from 1 to {MAX_DAYS}", "days")
        return hospital.id, now + datetime.timedelta(days=days)
    try:
        expires = datetime.datetime.fromisoformat(str(body["expires"]))
    except ValueError:
        raise DicomWebError(400, "must be an ISO 8601 date-time", "expires") from None
    expires = expires if expires.tzinfo else expires.replace(tzinfo=datetime.UTC)
    if not now < expires <= now + datetime.timedelta(days=MAX_DAYS):
        raise DicomWebError(400, f"must be in the future and within {MAX_DAYS} days", "expires")
    return hospital.id, expires
