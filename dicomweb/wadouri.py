"""WADO-URI (PS3.18 §9): ``GET .../wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…``.

The links hospital systems embed in reports. The object is looked up and
access-checked exactly as WADO-RS does (:func:`dicomweb.resources.located`),
then sent as the DICOM object (``contentType=application/dicom``, in
``transferSyntax``, by default Explicit VR Little Endian) or rendered
(``image/jpeg`` by default, ``image/png``, ``image/gif``) with ``frameNumber``,
``windowCenter``/``windowWidth``, ``rows``/``columns``, ``region``,
``imageQuality`` and ``annotation``. ``anonymize=yes`` is refused: this
archive does not de-identify on the way out.
"""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from starlette.requests import Request
from starlette.responses import Response

from archive.render import ENCODINGS, RenderError, Rendering, Viewport, parse, render
from archive.transcode import CannotTranscode, check
from dicomweb.caching import cache_headers, etag, not_modified
from dicomweb.errors import DicomWebError
from dicomweb.resources import located
from dicomweb.wado import DICOM, single_part

REQUIRED = {"studyUID": "study", "seriesUID": "series", "objectUID": "instance"}
UNBOUNDED = 8192  # the viewport side left free when only one of rows and columns is given


def wado(request: Request) -> Response:
    """Answer one WADO-URI request (PS3.18 §9.2)."""
    query = request.query_params
    if query.get("requestType") != "WADO":
        raise DicomWebError(400, "requestType must be WADO", "requestType")
    for name in REQUIRED:
        if not query.get(name):
            raise DicomWebError(400, f"{name} is required", name)
    if query.get("anonymize", "").lower() == "yes":
        raise DicomWebError(400, "anonymize=yes is not supported: this archive does not de-identify objects "
                                 "on retrieval", "anonymize")
    kinds = _content_types(query.get("contentType"))
    # The same look-up, sharing policy and audit as the WADO-RS path /studies/…/instances/….
    request.scope["path_params"] = {level: query[name] for name, level in REQUIRED.items()}
    [item] = located(request)
    if kinds[0] == DICOM:
        syntax = query.get("transferSyntax", ExplicitVRLittleEndian)
        try:
            check(item.transfer_syntax, syntax)
        except CannotTranscode as exc:
            raise DicomWebError(406, str(exc), "transferSyntax") from None
        return single_part(request, item, syntax)
    frame = _frame(query.get("frameNumber"))
    store = request.app.state.store
    blob = b"".join(store.read(item.blob_key))
    try:
        header = dcmread(BytesIO(blob), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises several kinds on a damaged object
        raise DicomWebError(500, f"the stored object cannot be read: {exc}") from None
    rendering = _rendering(request, header)
    kind = next((k for k in kinds if k in ENCODINGS), None)
    if "Rows" not in header:
        if DICOM in kinds or query.get("contentType") is None:
            return single_part(request, item, item.transfer_syntax)  # not an image: the object itself
        raise DicomWebError(406, "the object has no image; ask for contentType=application/dicom", "contentType")
    if kind is None:
        raise DicomWebError(406, f"cannot answer with contentType {query.get('contentType')!r}; offered: "
                                 f"{DICOM}, {', '.join(ENCODINGS)}", "contentType")
    count = int(header.get("NumberOfFrames") or 1)
    if frame is not None and frame > count:
        raise DicomWebError(400, f"frameNumber {frame} is past the last frame ({count})", "frameNumber")
    headers = cache_headers(request, etag([item], "wado", kind, frame, rendering))
    if (unchanged := not_modified(request, headers)) is not None:
        return unchanged
    try:
        body = render(blob, [frame] if frame else None, rendering, kind)
    except RenderError as exc:
        raise DicomWebError(400 if exc.parameter else 406, str(exc), exc.parameter or "contentType") from None
    return Response(body, media_type=kind, headers=headers)


def _content_types(raw: str | None) -> list[str]:
    """The contentType list (PS3.18 §9.2.3.1), image/jpeg when absent."""
    kinds = [k.split(";")[0].strip().lower() for k in (raw or "image/jpeg").split(",") if k.strip()]
    if not kinds or not all(k == DICOM or k in ENCODINGS or k in ("image/*", "*/*") for k in kinds):
        raise DicomWebError(406, f"cannot answer with contentType {raw!r}; offered: {DICOM}, "
                                 f"{', '.join(ENCODINGS)}", "contentType")
    return ["image/jpeg" if k in ("image/*", "*/*") else k for k in kinds]


def _frame(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise DicomWebError(400, f"frameNumber={raw!r} is not a frame number from 1", "frameNumber")
    return int(raw)


def _rendering(request: Request, header: Dataset) -> Rendering:
    """The WADO-URI presentation parameters as a :class:`Rendering` (PS3.18 §9.2.3)."""
    query = request.query_params
    try:
        base = parse(quality=query.get("imageQuality"), annotation=query.get("annotation"))
    except RenderError as exc:
        raise DicomWebError(400, str(exc).replace("quality=", "imageQuality="),
                            "imageQuality" if exc.parameter == "quality" else exc.parameter) from None
    window = None
    center, width = query.get("windowCenter"), query.get("windowWidth")
    if (center is None) != (width is None):
        raise DicomWebError(400, "windowCenter and windowWidth go together", "windowCenter")
    if center is not None:
        try:
            window = parse(window=f"{center},{width}").window
        except RenderError as exc:
            raise DicomWebError(400, str(exc).replace("window=", "windowCenter/windowWidth="),
                                "windowWidth") from None
    rows, columns = _size(query.get("rows"), "rows"), _size(query.get("columns"), "columns")
    region = _region(query.get("region"), int(header.get("Columns") or 1), int(header.get("Rows") or 1))
    viewport = None
    if rows or columns:
        viewport = Viewport(columns or UNBOUNDED, rows or UNBOUNDED, region)
    elif region:  # the region at the image's own resolution
        viewport = Viewport(max(1, round(region[2])), max(1, round(region[3])), region)
    return Rendering(window, viewport, base.quality, base.annotation)


def _size(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= UNBOUNDED:
        raise DicomWebError(400, f"{name}={raw!r} is not a whole number from 1 to {UNBOUNDED}", name)
    return int(raw)


def _region(raw: str | None, width: int, height: int) -> tuple[float, float, float, float] | None:
    """``region=x1,y1,x2,y2`` (fractions of the image, PS3.18 §9.2.3.2.4) as a pixel region."""
    if raw is None:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in raw.split(","))
    except ValueError:
        raise DicomWebError(400, f"region={raw!r} is not four comma-separated numbers", "region") from None
    if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise DicomWebError(400, f"region={raw!r}: need 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1", "region")
    return x1 * width, y1 * height, (x2 - x1) * width, (y2 - y1) * height
