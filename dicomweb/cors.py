"""Cross-origin requests: browser viewers (OHIF) served from another origin.

A viewer at ``https://viewer.example`` calls DICOMweb here with a bearer
token. The browser first sends a preflight (``OPTIONS`` with
``Access-Control-Request-Method``, Fetch standard §3.2.2), which carries no
credentials, and then reads the answers only if they name its origin. The
origins are ``access.cors.origins``; none configured, no CORS headers at all.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware

from archive.config import Config

METHODS = ["GET", "POST", "DELETE", "OPTIONS"]
REQUEST_HEADERS = ["Authorization", "Accept", "Content-Type"]
# Response headers a viewer's script reads: the multipart Content-Type with its
# boundary and Content-Length (CORS-safelisted already, listed so the list is
# whole), Warning (QIDO-RS results cut short, PS3.18 §8.3.4.3), Content-Location
# and Location (STOW-RS), ETag (caching).
EXPOSED_HEADERS = ["Content-Type", "Content-Length", "Content-Location", "Warning", "ETag", "Location"]


def install(app: Starlette, config: Config) -> None:
    """Answer preflights and label responses for the configured origins.

    Call after :func:`dicomweb.auth.install`: Starlette's ``add_middleware``
    wraps the application, so the middleware added last is the outermost.
    CORS must be outermost so that preflights are answered before
    authentication and so that a 401 carries the headers a viewer needs to
    read it. Call before `app` serves its first request.
    """
    cors = config.access.cors
    if not cors.origins:
        return
    app.add_middleware(
        CORSMiddleware, allow_origins=cors.origins, allow_credentials=True, allow_methods=METHODS,
        allow_headers=REQUEST_HEADERS, expose_headers=EXPOSED_HEADERS, max_age=cors.max_age,
    )
