"""HTTP validators and freshness for what the archive serves (RFC 9110 §8.8, §13; RFC 9111 §5.2).

An archived instance never changes in place: its bytes are named by their
SHA-256, kept in the index. An entity tag built from those digests (and from
whatever else shapes the answer: the transfer syntax, rendering parameters,
the root of BulkDataURIs) therefore changes exactly when the answer does, and
a client that sends it back in ``If-None-Match`` gets a 304 without the body
being read from the blob store. Answers are ``private`` when access control
is on: a shared cache must not hand one hospital's images to another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import Response

from archive.retrieve import Located

MAX_AGE = 365 * 24 * 3600  # instance content is immutable: a year, as for any fingerprinted asset


def etag(items: Iterable[Located], *shape: object) -> str:
    """A strong entity tag for an answer built from `items` and the parameters in `shape`."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.sop_uid}:{item.sha256};".encode())
    digest.update(repr(shape).encode())
    return f'"{digest.hexdigest()[:40]}"'


def cache_headers(request: Request, tag: str, *, immutable: bool = True) -> dict[str, str]:
    """ETag and Cache-Control for an answer; `immutable` for one instance's content.

    Aggregates (a study's metadata, which grows as instances arrive) are
    revalidated on each use instead (``no-cache``: stored, but checked with
    ``If-None-Match``).
    """
    scope = "private" if request.app.state.config.access_enforced else "public"
    freshness = f"max-age={MAX_AGE}, immutable" if immutable else "no-cache"
    return {"ETag": tag, "Cache-Control": f"{scope}, {freshness}", "Vary": "Accept, Authorization"}


def not_modified(request: Request, headers: dict[str, str]) -> Response | None:
    """A 304 when the request's ``If-None-Match`` names the answer's ETag (weak comparison), else ``None``."""
    wanted = request.headers.get("if-none-match")
    if wanted is None:
        return None
    tags = {t.strip().removeprefix("W/") for t in wanted.split(",")}
    if "*" in tags or headers["ETag"] in tags:
        return Response(status_code=304, headers=headers)
    return None


def boundary(headers: dict[str, str]) -> str:
    """A multipart boundary fixed by the answer's ETag, so that the same answer is the same bytes.

    A strong entity tag promises byte-identical representations (RFC 9110 §8.8.1);
    a random boundary per response would break that promise. 40 hex digits occur
    in no image by accident any more than a random UUID does.
    """
    return "huren-" + headers["ETag"].strip('"')
