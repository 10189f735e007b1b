"""Errors as JSON a user can act on: an HTTP status, a message, and the parameter at fault."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


class DicomWebError(HTTPException):
    """An error answer; `parameter` names the query parameter or header at fault."""

    def __init__(self, status_code: int, message: str, parameter: str | None = None) -> None:
        super().__init__(status_code, message)
        self.parameter = parameter


async def error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    body: dict[str, object] = {"error": exc.detail, "status": exc.status_code}
    parameter = getattr(exc, "parameter", None)
    if parameter:
        body["parameter"] = parameter
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def store_unavailable(request: Request, exc: Exception) -> Response:
    """A blob store that failed or gave no answer before the response began: 503."""
    return JSONResponse({"error": f"{exc}; try again later", "status": 503}, status_code=503,
                        headers={"Retry-After": "30"})


def warning_header(text: str) -> str:
    """An HTTP ``Warning`` value saying `text` (code 299, RFC 7234 §5.5; PS3.18 §8.10.3), its
    quoted string kept to printable ASCII without quotes, as a header must be."""
    quoted = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)
    return f'299 huren "{quoted}"'
