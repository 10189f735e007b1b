"""QIDO-RS: search for studies, series and instances (PS3.18 §10.6).

Query parameters are matching keys (keyword or tag), ``includefield``,
``limit``, ``offset`` and ``fuzzymatching``. A key that names no DICOM
attribute is a 400; a real attribute that cannot be matched on is ignored
and named in a ``Warning`` header, as §8.3.4.3 allows; of the keys inside a
sequence, ``RequestAttributesSequence.RequestedProcedureID``,
``.ScheduledProcedureStepID`` and ``.AccessionNumber`` are matched at the series
and instance levels, where PS3.18 §10.6 lists them. With
``fuzzymatching=true`` PatientName also matches in Hanyu Pinyin
(:func:`archive.names.pinyin`); another person name given with it is matched
literally (case-insensitive), and a ``Warning`` header says so.
"""

from __future__ import annotations

import orjson
from pydicom.datadict import dictionary_VR, keyword_for_tag
from starlette.requests import Request
from starlette.responses import Response

from archive.index.query import (
    Level,
    Query,
    QueryError,
    is_sequence_supported,
    parse_attribute,
    parse_path,
    search,
    unsupported,
)
from dicomweb.errors import DicomWebError, warning_header
from dicomweb.resources import audit, visible_to
from dicomweb.urls import root_url

CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
TRUNCATED = warning_header("The number of results exceeded the maximum supported by the server. "
                    "Additional results can be requested.")


FUZZY_NAMES = {parse_attribute("PatientName")}  # person names matched fuzzily, the others literally


def parse_query(request: Request, level: Level) -> tuple[Query, list[str]]:
    """Read the query parameters of `request` into a :class:`Query`.

    Returns the query and the ``Warning`` header values it calls for (ignored
    keys, fuzzy matching not applied). The query's limit is what the client
    asked for, or ``None``.
    """
    params = request.query_params
    query = Query(
        level=level, matches={}, include=set(),
        study_uid=request.path_params.get("study"),
        series_uid=request.path_params.get("series"),
    )
    query.limit = _number(params, "limit")
    if query.limit == 0:
        raise DicomWebError(400, "must be a positive integer", "limit")
    query.offset = _number(params, "offset") or 0
    fuzzy = params.get("fuzzymatching", "false").lower()
    if fuzzy not in ("true", "false"):
        raise DicomWebError(400, "must be true or false", "fuzzymatching")
    query.fuzzy = fuzzy == "true"
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
            path = _path(name)
            if not is_sequence_supported(level, path):
                ignored.append(name)
            elif path in query.sequence_matches:
                raise DicomWebError(400, "given more than once", name)
            else:
                query.sequence_matches[path] = value
            continue
        tag = _attribute(name)
        if unsupported(level, [tag]):
            ignored.append(name)
            continue
        if tag in query.matches:
            raise DicomWebError(400, "given more than once", name)
        query.matches[tag] = value
    warnings = []
    if ignored:
        warnings.append(warning_header("The following attributes are not supported for matching: "
                                       + ", ".join(ignored)))
    literal = [keyword_for_tag(tag) for tag, value in query.matches.items()
               if query.fuzzy and value not in ("", "*") and tag not in FUZZY_NAMES and _is_name(tag)]
    if literal:
        # PS3.18 §8.3.4.1: fuzzy matching asked for but not performed is said in a Warning.
        warnings.append(warning_header(f"Fuzzy matching is not supported for {', '.join(literal)}; "
                                       "only literal matching has been performed on it"))
    return query, warnings


def respond(request: Request, level: Level) -> Response:
    """Answer a QIDO-RS request at `level`.

    At most ``http.max_query_results`` matches are returned; when the server's
    cap (not the client's own limit) cut the answer short, a ``Warning`` header
    says so, as PS3.18 §8.3.4.4 asks.
    """
    query, warnings = parse_query(request, level)
    app = request.app.state
    cap = app.config.http.max_query_results
    asked = query.limit
    returned = min(asked or cap, cap)
    query.limit = returned + 1  # the one more tells whether the answer was cut short
    try:
        with app.db.reading() as conn:
            results = search(conn, query, root_url(request), visible_to(request))
    except QueryError as exc:
        audit(request, "query", "failure", detail=f"400 {request.url.path}?{request.url.query}")
        raise DicomWebError(400, str(exc), exc.parameter) from None
    audit(request, "query", "success", study_uid=query.study_uid, series_uid=query.series_uid,
          detail=f"{request.url.path}?{request.url.query}")
    if len(results) > returned:
        results = results[:returned]
        if asked is None or asked > cap:
            warnings.append(TRUNCATED)
    headers = {"Warning": ", ".join(warnings)} if warnings else {}
    return Response(orjson.dumps(results), media_type="application/dicom+json", headers=headers)


def studies(request: Request) -> Response:
    return respond(request, Level.STUDY)


def series(request: Request) -> Response:
    return respond(request, Level.SERIES)


def instances(request: Request) -> Response:
    return respond(request, Level.INSTANCE)


def _path(name: str) -> tuple[int, ...]:
    try:
        return parse_path(name)
    except QueryError as exc:
        raise DicomWebError(400, str(exc), exc.parameter) from None


def _is_name(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "PN"
    except KeyError:
        return False


def _attribute(name: str) -> int:
    try:
        return parse_attribute(name)
    except QueryError as exc:
        raise DicomWebError(400, str(exc), exc.parameter) from None


def _number(params, name: str) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise DicomWebError(400, "must be a non-negative integer", name)
    return int(raw)
