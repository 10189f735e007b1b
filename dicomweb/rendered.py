"""WADO-RS rendered and thumbnail resources (PS3.18 §10.4.1.1.3, §10.4.1.1.4, §8.3.5).

``.../rendered`` at instance level is one picture (an animated GIF of every
frame for a multi-frame instance asked for as ``image/gif``); at frame level
one picture per frame (one animated GIF for ``image/gif``); at study and series
level a ``multipart/related`` body with one picture per image instance.
``.../thumbnail`` is one small picture that stands for the resource: the
middle image of the first series with images, its middle frame, fitted in
128×128 unless a viewport is given.

Thumbnails are kept once made in a small in-memory cache per process
(:class:`Thumbnails`), keyed by the instance's content digest and every
parameter. Not in the blob store: a thumbnail is a few kilobytes and cheap to
make again, the archive stays plain Part-10 files (the design's object layout),
and nothing outlives a replaced or deleted instance — the key changes with the
content, and the access check runs before the cache is looked at.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from archive.bulkdata import NoSuchBulkData, frame_arrays, frame_count
from archive.render import ENCODINGS, RenderError, Rendering, Viewport, encode, parse, picture, render
from archive.retrieve import Located
from archive.storage import BlobStore
from dicomweb.accept import MULTIPART, ranked
from dicomweb.bulkdata import frame_numbers
from dicomweb.caching import boundary as multipart_boundary
from dicomweb.caching import cache_headers, etag, not_modified
from dicomweb.errors import DicomWebError
from dicomweb.multipart import write_parts
from dicomweb.resources import located

THUMBNAIL = Viewport(128, 128)
log = logging.getLogger("huren.rendered")


class Thumbnails:
    """A least-recently-used map of made thumbnails, bounded by their total size in bytes."""

    def __init__(self, budget: int = 32 * 1024 * 1024) -> None:
        self.budget = budget
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()  # endpoints run in a thread pool

    def get(self, key: str) -> bytes | None:
        with self._lock:
            body = self._entries.get(key)
            if body is not None:
                self._entries.move_to_end(key)
            return body

    def put(self, key: str, body: bytes) -> None:
        with self._lock:
            if key in self._entries or len(body) > self.budget:
                return
            self._entries[key] = body
            self._size += len(body)
            while self._size > self.budget:
                self._size -= len(self._entries.popitem(last=False)[1])


def rendered(request: Request) -> Response:
    """``GET .../rendered`` at study, series, instance and frame level."""
    rendering = _rendering(request)
    found = located(request)
    params = request.path_params
    if "instance" not in params:
        return _many(request, found, rendering)
    [item] = found
    store = request.app.state.store
    numbers = frame_numbers(params["frames"]) if "frames" in params else None
    try:
        count = frame_count(store, item)
    except NoSuchBulkData:
        raise DicomWebError(406, "the instance has no image to render", "accept") from None
    if numbers is not None and max(numbers) > count:
        raise DicomWebError(404, f"frame {max(numbers)} does not exist; the instance has {count} frame(s)")
    kind = _media(request, multi_frame=count > 1 and numbers is None or bool(numbers and len(numbers) > 1))
    headers = cache_headers(request, etag([item], request.url.path, kind, rendering))
    if (unchanged := not_modified(request, headers)) is not None:
        return unchanged
    if kind != "image/gif":  # stills: each frame read alone
        shown = numbers or [1]
        if len(shown) > 1:
            return _multipart(kind, headers, (_still(store, item, n, rendering, kind) for n in shown))
        return Response(_still(store, item, shown[0], rendering, kind), media_type=kind, headers=headers)
    blob = b"".join(store.read(item.blob_key))
    return Response(_render(blob, numbers, rendering, kind, item), media_type=kind, headers=headers)


def thumbnail(request: Request) -> Response:
    """``GET .../thumbnail`` at study, series, instance and frame level: one representative picture."""
    rendering = _rendering(request)
    if rendering.viewport is None:
        rendering = Rendering(rendering.window, THUMBNAIL, rendering.quality, rendering.annotation)
    found = located(request)
    params = request.path_params
    item = _representative(found)
    store = request.app.state.store
    try:
        count = frame_count(store, item)
    except NoSuchBulkData:
        raise DicomWebError(406, "the resource has no image to show", "accept") from None
    if "frames" in params:
        numbers = frame_numbers(params["frames"])
        if len(numbers) != 1 or numbers[0] > count:
            raise DicomWebError(404 if numbers[0] > count else 400,
                                f"a thumbnail shows one existing frame of {count}", "frames")
        frame = numbers[0]
    else:
        frame = (count + 1) // 2
    kind = _media(request, multi_frame=False)
    headers = cache_headers(request, etag([item], "thumbnail", frame, kind, rendering))
    if (unchanged := not_modified(request, headers)) is not None:
        return unchanged
    cache: Thumbnails = request.app.state.thumbnails
    key = headers["ETag"]
    body = cache.get(key)
    if body is None:
        body = _still(store, item, frame, rendering, kind)
        cache.put(key, body)
    return Response(body, media_type=kind, headers=headers)


def _representative(found: list[Located]) -> Located:
    """The middle image of the first series that has images (instances with frames indexed at ingest)."""
    images = [item for item in found if item.frames] or found
    first_series = [item for item in images if item.series_uid == images[0].series_uid]
    return first_series[(len(first_series) - 1) // 2]


def _many(request: Request, found: list[Located], rendering: Rendering) -> Response:
    """A study or series: one picture per image instance, as the parts of one multipart body."""
    kind = _media(request, multi_frame=False, multipart=True)
    headers = cache_headers(request, etag(found, request.url.path, kind, rendering), immutable=False)
    if (unchanged := not_modified(request, headers)) is not None:
        return unchanged
    store = request.app.state.store

    def pictures() -> Iterator[bytes]:
        for item in found:
            try:
                yield render(b"".join(store.read(item.blob_key)), None, rendering, kind)
            except RenderError as exc:  # not an image (a report, a presentation state): nothing to show
                log.info("not rendered: %s", exc, extra={"study": item.study_uid, "sop": item.sop_uid})

    return _multipart(kind, headers, pictures())


def _multipart(kind: str, headers: dict[str, str], bodies: Iterator[bytes]) -> Response:
    boundary = multipart_boundary(headers)
    parts = (({"Content-Type": kind}, iter((body,))) for body in bodies)
    return StreamingResponse(write_parts(boundary, parts), headers=headers,
                             media_type=f'{MULTIPART}; type="{kind}"; boundary={boundary}')


def _still(store: BlobStore, item: Located, frame: int, rendering: Rendering, kind: str) -> bytes:
    """One frame as a still picture. A compressed frame indexed at ingest is read alone (header and
    fragments by range), not with the rest of a multi-frame object."""
    try:
        header, [pixels] = frame_arrays(store, item, [frame])
        return encode([picture(pixels, header, rendering, frame)], kind, rendering.quality, header)
    except RenderError as exc:
        raise _refused(exc, item) from None
    except (AttributeError, KeyError, NotImplementedError, ValueError) as exc:
        raise _refused(RenderError(f"the instance has no image to render ({exc})"), item) from None


def _render(blob: bytes, frames: list[int] | None, rendering: Rendering, kind: str, item: Located) -> bytes:
    try:
        return render(blob, frames, rendering, kind)
    except RenderError as exc:
        raise _refused(exc, item) from None


def _refused(exc: RenderError, item: Located) -> DicomWebError:
    """The answer to a picture that cannot be made: 400 naming a bad parameter, else 406."""
    log.info("not rendered: %s", exc, extra={"study": item.study_uid, "sop": item.sop_uid})
    return DicomWebError(406 if exc.parameter is None else 400, str(exc), exc.parameter or "accept")


def _rendering(request: Request) -> Rendering:
    query = request.query_params
    try:
        return parse(query.get("window"), query.get("viewport"), query.get("quality"), query.get("annotation"))
    except RenderError as exc:
        raise DicomWebError(400, str(exc), exc.parameter) from None


def _media(request: Request, *, multi_frame: bool, multipart: bool = False) -> str:
    """The rendered media type to answer with (PS3.18 §8.7.4): the best-ranked of JPEG, PNG and GIF.

    A wildcard means JPEG for one frame and GIF for several (the defaults of
    Table 8.7.4-1). Raises 406 naming what is offered.
    """
    accept = request.query_params.get("accept") or request.headers.get("accept")  # PS3.18 §8.3.3.1: accept= wins
    for wanted in ranked(accept):
        if wanted.kind == MULTIPART and not multipart:
            continue
        if wanted.part in ENCODINGS:
            return wanted.part
        if wanted.admits("image/jpeg"):
            return "image/gif" if multi_frame else "image/jpeg"
    offered = ", ".join(ENCODINGS)
    raise DicomWebError(406, f"cannot answer with any of {accept!r}; this resource offers "
                             f"{f'{MULTIPART} of ' if multipart else ''}{offered}", "accept")
