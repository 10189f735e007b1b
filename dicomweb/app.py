"""The Starlette application: DICOMweb routes under the configured root, plus health."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from archive.audit import AuditTrail
from archive.config import Config
from archive.guideline.compliance import Compliance
from archive.index.database import Database
from archive.ingest import Ingest
from archive.storage import BlobStore
from dicomweb import auth, bulkdata, cors, qido, quality, recognition, shares, stow, wado
from dicomweb.errors import error_response


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
        Route("/health", health, methods=["GET"]),
        Route("/quality", quality.page, methods=["GET"]),
        Mount("/api", routes=api),
    ]
    routes += [Mount(root, routes=dicomweb)] if root else dicomweb
    app = Starlette(routes=routes, exception_handlers={HTTPException: error_response})
    # Authentication first, CORS after: the middleware added last is outermost.
    auth.install(app, config, db)
    cors.install(app, config)
    app.state.config = config
    app.state.db = db
    app.state.store = store
    app.state.ingest = ingest
    app.state.spool = spool
    app.state.compliance = compliance
    app.state.audit = audit
    app.state.root = root
    return app


def health(request: Request) -> Response:
    """200 when the index answers; 503 otherwise (for load balancers and monitors)."""
    try:
        with request.app.state.db.reading() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "index": str(exc)}, status_code=503)
    return JSONResponse({"status": "ok"})
