"""The recognition API (JSON, below ``/api``): what a hospital information
system asks before a doctor orders a repeat exam, and each study's
compliance record.

- ``GET /api/recognition?patient_id=…&issuer=…&days=30[&item=…][&hospital=…][&source=…]``:
  the person's recognisable results of the last `days` days (default 30),
  newest first, with the re-examination reasons a doctor may record instead.
  Only results the asking hospital accepts are listed: the caller's hospital,
  or for an admin (and while access is open) the one `hospital` names, if any.
  Without `issuer`, the PatientID is the asking hospital's own.
- ``GET /api/studies/{study}/compliance``: the study's compliance record (404
  for a study the caller may not see, as for one never archived).
- ``POST /api/studies/{study}/compliance``: judge the study now, without
  waiting for its quiet period, and answer its record.
"""

from __future__ import annotations

import datetime
import os
import socket

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from archive.config import Config, Hospital
from archive.guideline.lookup import describe, recognised
from dicomweb.errors import DicomWebError
from dicomweb.resources import audit, caller, visible_study
from dicomweb.urls import root_url

MAX_DAYS = 3650
OWNER = f"{socket.gethostname()}:{os.getpid()}:api"


async def lookup(request: Request) -> Response:
    """``GET /api/recognition``."""
    state = request.app.state
    config = state.config
    params = request.query_params
    for name in params:
        if name not in ("patient_id", "issuer", "days", "item", "hospital", "source"):
            raise DicomWebError(400, "unknown parameter; expected patient_id, issuer, days, item, "
                                     "hospital or source", name)
    patient_id = params.get("patient_id", "").strip()
    if not patient_id or len(patient_id) > 64:
        raise DicomWebError(400, "a PatientID of 1 to 64 characters is required", "patient_id")
    asker = _asker(request)
    issuer = params.get("issuer", "").strip() or (asker.id if asker else "")
    if not issuer:
        raise DicomWebError(400, "required (the issuer of the PatientID, e.g. a resident ID "
                                 "authority) unless hospital names the asking hospital", "issuer")
    days = params.get("days", "30")
    if not days.isdigit() or not 1 <= int(days) <= MAX_DAYS:
        raise DicomWebError(400, f"must be a whole number of days from 1 to {MAX_DAYS}", "days")
    item = params.get("item")
    if item is not None and not any(i.code == item for rs in config.rule_sets for i in rs.items):
        raise DicomWebError(400, f"{item!r} is not an exam item of the configured rule sets", "item")
    source = _hospital(config, params.get("source"), "source")
    today = datetime.date.today()

    def find() -> list:
        with state.db.reading() as conn:
            return recognised(conn, config, patient_id, issuer, days=int(days), today=today,
                              asker=asker, item=item, source=source.id if source else None)

    results = await run_in_threadpool(find)
    audit(request, "query", "success", detail=f"recognition {request.url.query} ({len(results)} result(s))")
    root = root_url(request)
    return JSONResponse({
        "patient": {"patient_id": patient_id, "issuer": issuer},
        "asking_hospital": asker.id if asker else None,
        "days": int(days),
        "as_of": today.isoformat(),
        "results": [describe(r, f"{root}/studies/{r.study_uid}") for r in results],
        "reexamination_reasons": {
            rs.id: [reason.model_dump() for reason in rs.reexamination_reasons] for rs in config.rule_sets
        },
    })


async def compliance(request: Request) -> Response:
    """``GET /api/studies/{study}/compliance``: 404 for a study not archived."""
    study = request.path_params["study"]
    return JSONResponse(await run_in_threadpool(_record, request, study))


async def judge_now(request: Request) -> Response:
    """``POST /api/studies/{study}/compliance``: judge at once; 409 while another process judges it."""
    state = request.app.state
    study = request.path_params["study"]
    if not state.config.rule_sets:
        raise DicomWebError(409, "no guideline rule sets are configured (guideline.rule_sets)")
    await run_in_threadpool(visible_study, request, study)
    if not await run_in_threadpool(state.compliance.judge_now, study, OWNER):
        raise DicomWebError(409, f"study {study} is being judged by another process; try again")
    return JSONResponse(await run_in_threadpool(_record, request, study))


def _record(request: Request, study: str) -> dict:
    visible_study(request, study)
    record = request.app.state.compliance.record(study)
    if record is None:  # deleted since
        raise DicomWebError(404, "no such study in the archive")
    return record


def _asker(request: Request) -> Hospital | None:
    """The asking hospital: the caller's own, or for an admin the one named by `hospital`."""
    config = request.app.state.config
    who = caller(request)
    named = request.query_params.get("hospital")
    if not who.sees_everything:
        if named not in (None, who.hospital_id):
            raise DicomWebError(400, "a hospital asks as itself; only admins may name another",
                                "hospital")
        return config.hospital(who.hospital_id)
    return _hospital(config, named, "hospital")


def _hospital(config: Config, hospital_id: str | None, parameter: str) -> Hospital | None:
    if hospital_id is None:
        return None
    hospital = config.hospital(hospital_id)
    if hospital is None:
        raise DicomWebError(400, f"{hospital_id!r} is not a configured hospital", parameter)
    return hospital
