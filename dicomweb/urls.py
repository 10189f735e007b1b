"""URLs this server hands out (RetrieveURL, BulkDataURI), as the client reaches it."""

from __future__ import annotations

from starlette.requests import Request

DEFAULT_PORTS = {"http": 80, "https": 443}


def root_url(request: Request) -> str:
    """The DICOMweb root URL: ``http.public_url`` if set, else from the request's Host header.

    dicomweb-client sends ``Host`` without the port (its workaround for
    psf/requests#4392); left as it is, every URL handed back to it would point
    at port 80. A Host without a port is therefore read as the port the
    request came in on. Behind a reverse proxy, set ``http.public_url``.
    """
    state = request.app.state
    if state.config.http.public_url:
        return state.config.http.public_url + state.root
    base = request.base_url
    server = request.scope.get("server")
    host = request.headers.get("host", "")
    if server and ":" not in host.rpartition("]")[2] and server[1] != DEFAULT_PORTS.get(base.scheme):
        base = base.replace(port=server[1])
    return str(base).rstrip("/") + state.root
