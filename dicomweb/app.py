"""The Starlette application: DICOMweb routes under the configured root, plus health."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from archive.audit import AuditTrail
from archive.config import Config
from archive.guideline.compliance import Compliance
from archive.index.database import Database
from archive.ingest import Ingest
from archive.storage import BlobStore, StoreUnavailable
from dicomweb import (
    auth,
    bulkdata,
    cors,
    delete,
    metrics,
    qido,
    quality,
    recognition,
    rendered,
    shares,
    stow,
    wado,
    wadouri,
)
from dicomweb.errors import error_response, store_unavailable


def build_app(config: Config, db: Database, store: BlobStore, ingest: Ingest, spool: Path,
              compliance: Compliance, audit: AuditTrail) -> Starlette:
    """The HTTP application over an opened index, blob store and ingest path."""
    study = "/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{instance}"
    dicomweb = [
        Route("/studies", qido.studies, methods=["GET"]),
        Route("/studies", stow.store, methods=["POST"]),
        Route("/series", qido.series, methods=["GET"]),
        Route("/instances", qido.instances, methods=["GET"]),
        Route(study, wado.retrieve, methods=["GET"]),
        Route(study, stow.store, methods=["POST"]),
        Route(study + "/metadata", wado.retrieve_metadata, methods=["GET"]),
        Route(study + "/series", qido.series, methods=["GET"]),
        Route(study + "/instances", qido.instances, methods=["GET"]),
        Route(series, wado.retrieve, methods=["GET"]),
        Route(series + "/metadata", wado.retrieve_metadata, methods=["GET"]),
        Route(series + "/instances", qido.instances, methods=["GET"]),
        Route(instance, wado.retrieve, methods=["GET"]),
        Route(instance + "/metadata", wado.retrieve_metadata, methods=["GET"]),
        Route(instance + "/frames/{frames}", bulkdata.frames, methods=["GET"]),
        Route(instance + "/bulkdata/{path:path}", bulkdata.bulkdata, methods=["GET"]),
        *[Route(level, delete.remove, methods=["DELETE"]) for level in (study, series, instance)],
        *[Route(level + "/rendered", rendered.rendered, methods=["GET"])
          for level in (study, series, instance, instance + "/frames/{frames}")],
        *[Route(level + "/thumbnail", rendered.thumbnail, methods=["GET"])
          for level in (study, series, instance, instance + "/frames/{frames}")],
        Route("/wado", wadouri.wado, methods=["GET"]),
    ]
    root = config.http.dicomweb_root
    api = [
        Route("/recognition", recognition.lookup, methods=["GET"]),
        Route("/studies/{study}/compliance", recognition.compliance, methods=["GET"]),
        Route("/studies/{study}/compliance", recognition.judge_now, methods=["POST"]),
        Route("/studies/{study}/shares", shares.create, methods=["POST"]),
        Route("/studies/{study}/shares", shares.listing, methods=["GET"]),
        Route("/studies/{study}/shares/{share}", shares.revoke, methods=["DELETE"]),
        Route("/quality", quality.report, methods=["GET"]),
    ]
    routes = [
        Route("/health", ready, methods=["GET"]),
        Route("/livez", live, methods=["GET"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
        Route("/readyz", ready, methods=["GET"]),
        Route("/quality", quality.page, methods=["GET"]),
        Mount("/api", routes=api),
    ]
    routes += [Mount(root, routes=dicomweb)] if root else dicomweb
    if root:  # WADO-URI links are often written against the server's root (PS3.18 §9)
        routes.append(Route("/wado", wadouri.wado, methods=["GET"]))
    app = Starlette(routes=routes, exception_handlers={HTTPException: error_response,
                                                      StoreUnavailable: store_unavailable})
    # JSON (metadata, searches) compressed for clients that accept gzip; pixels and
    # DICOM objects are compressed already or too large to be worth the CPU.
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=6, exclude_content_types=(
        "multipart/*", "image/*", "video/*", "application/dicom", "application/octet-stream"))
    # Authentication first, CORS after: the middleware added last is outermost.
    auth.install(app, config, db, audit)
    cors.install(app, config)
    app.state.config = config
    app.state.db = db
    app.state.store = store
    app.state.ingest = ingest
    app.state.spool = spool
    app.state.compliance = compliance
    app.state.audit = audit
    app.state.root = root
    app.state.thumbnails = rendered.Thumbnails()
    return app


PROBE_TIMEOUT = 5.0  # seconds a readiness probe waits for the index or the store


def live(request: Request) -> Response:
    """``/livez``: 200 while this process answers HTTP (for restarts by an orchestrator)."""
    return JSONResponse({"status": "alive"})


async def ready(request: Request) -> Response:
    """``/readyz`` and ``/health``: 200 when the index and the blob store answer within
    ``PROBE_TIMEOUT``; 503 naming the one that did not (for load balancers and monitors)."""
    state = request.app.state

    def index() -> None:
        with state.db.reading() as conn:
            conn.execute(text("SELECT 1"))

    checks = {"index": index, "store": state.store.check}
    answers = await asyncio.gather(*(_probe(check) for check in checks.values()))
    body: dict[str, object] = dict(zip(checks, answers, strict=True))
    ok = all(answer == "ok" for answer in answers)
    outbox = state.ingest.outbox
    if outbox.enabled and body["index"] == "ok":
        # Not ready while the store is down (archived objects cannot be read), though
        # C-STORE and STOW-RS still archive into the outage queue: said here for monitors.
        count, size = await run_in_threadpool(outbox.depth)
        body["queue"] = {"objects": count, "bytes": size, "max_bytes": outbox.settings.max_bytes}
    return JSONResponse({"status": "ready" if ok else "unavailable", **body}, status_code=200 if ok else 503)


async def _probe(check) -> str:
    try:
        await asyncio.wait_for(run_in_threadpool(check), PROBE_TIMEOUT)
    except TimeoutError:
        return f"no answer within {PROBE_TIMEOUT:g} s"
    except Exception as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return "ok"
