"""``DELETE`` of a study, series or instance (not in PS3.18: dcm4chee and
dicomweb-client's ``delete_*`` methods use the resource's own URL).

Off unless ``delete.enabled``: 405 saying so. Once access control is on, only
an admin deletes: a hospital gets 403 for a study it may see and, as
everywhere, 404 for one it may not. The answer is 200 with what was removed;
the index rows and the objects go together (:mod:`archive.delete`).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from archive.delete import Deleter, NothingToDelete, StillQueued
from archive.policy import visible
from dicomweb.errors import DicomWebError
from dicomweb.resources import audit, caller, visible_study


async def remove(request: Request) -> Response:
    """``DELETE /studies/{study}[/series/{series}[/instances/{instance}]]``."""
    state = request.app.state
    params = request.path_params
    where = {"study_uid": params["study"], "series_uid": params.get("series"), "sop_uid": params.get("instance")}
    if not state.config.delete.enabled:
        error = DicomWebError(405, "deleting is disabled on this server (delete.enabled: false)")
        error.headers = {"Allow": "GET, POST" if "series" not in params else "GET"}
        raise error
    who = caller(request)
    if state.config.access_enforced and not who.admin:
        await run_in_threadpool(visible_study, request, params["study"])  # 404 if not visible
        audit(request, "delete", "denied", detail=f"403 {request.url.path}", **where)
        raise DicomWebError(403, "only an admin may delete studies, series or instances")
    deleter = Deleter(state.db, state.store)
    try:
        deleted = await run_in_threadpool(deleter.delete, params["study"], params.get("series"),
                                          params.get("instance"), visible(state.config, who))
    except NothingToDelete as exc:
        audit(request, "delete", "failure", detail=f"404 {request.url.path}", **where)
        raise DicomWebError(404, f"no such {exc} in the archive") from None
    except StillQueued as exc:
        audit(request, "delete", "failure", detail=f"409 {request.url.path}", **where)
        raise DicomWebError(409, str(exc)) from None
    audit(request, "delete", "success", detail=f"{deleted.instances} instance(s)", **where)
    return JSONResponse({"study_instance_uid": deleted.study_uid, "series_instance_uid": deleted.series_uid,
                         "sop_instance_uid": deleted.sop_uid, "instances": deleted.instances,
                         "study_removed": deleted.study_removed})
