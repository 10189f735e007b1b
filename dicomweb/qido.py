"""QIDO-RS: search for studies, series and instances (PS3.18 §10.6).

Query parameters are matching keys (keyword or tag), ``includefield``,
``limit``, ``offset`` and ``fuzzymatching``. A key that names no DICOM
attribute is a 400; a real attribute that cannot be matched on is ignored
and named in a ``Warning`` header, as §8.3.4.3 allows.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from archive.index.query import Level, Query, QueryError, parse_attribute, search, unsupported
from dicomweb.errors import DicomWebError

CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
MAX_LIMIT = 10_000


def parse_query(request: Request, level: Level) -> tuple[Query, list[str]]:
    """Read the query parameters of `request` into a :class:`Query`.

    Returns the query and the names of the ignored (unsupported) keys.
    """
    params = request.query_params
    query = Query(
        level=level, matches={}, include=set(),
        study_uid=request.path_params.get("study"),
        series_uid=request.path_params.get("series"),
    )
    query.limit = _number(params, "limit", MAX_LIMIT)
    query.offset = _number(params, "offset", None) or 0
    fuzzy = params.get("fuzzymatching", "false").lower()
    if fuzzy not in ("true", "false"):
        raise DicomWebError(400, "must be true or false", "fuzzymatching")
    for value in params.getlist("includefield"):
        for name in filter(None, (v.strip() for v in value.split(","))):
            if name == "all":
                query.include_all = True
            else:
                query.include.add(_attribute(name))
    ignored = []
    for name, value in params.multi_items():
        if name in CONTROL:
            continue
        if "." in name:
            ignored.append(name)  # sequence matching is not supported yet
            continue
        tag = _attribute(name)
        if unsupported(level, [tag]):
            ignored.append(name)
            continue
        if tag in query.matches:
            raise DicomWebError(400, "given more than once", name)
        query.matches[tag] = value
    return query, ignored


def respond(request: Request, level: Level) -> Response:
    """Answer a QIDO-RS request at `level`."""
    query, ignored = parse_query(request, level)
    app = request.app.state
    try:
        with app.db.reading() as conn:
            results = search(conn, query, str(request.base_url).rstrip("/") + app.root)
    except QueryError as exc:
        raise DicomWebError(400, str(exc), exc.parameter) from None
    headers = {}
    if ignored:
        headers["Warning"] = f'299 huren "The following attributes are not supported for matching: {", ".join(ignored)}"'
    return Response(orjson.dumps(results), media_type="application/dicom+json", headers=headers)


def studies(request: Request) -> Response:
    return respond(request, Level.STUDY)


def series(request: Request) -> Response:
    return respond(request, Level.SERIES)


def instances(request: Request) -> Response:
    return respond(request, Level.INSTANCE)


def _attribute(name: str) -> int:
    try:
        return parse_attribute(name)
    except QueryError as exc:
        raise DicomWebError(400, str(exc), exc.parameter) from None


def _number(params, name: str, ceiling: int | None) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise DicomWebError(400, "must be a non-negative integer", name)
    value = int(raw)
    return min(value, ceiling) if ceiling is not None else value
