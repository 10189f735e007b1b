"""Response bodies read from the blob store in worker threads, in large batches.

A blob store yields bytes from blocking calls (file reads, S3 ``GET`` bodies),
so they cannot run on the event loop. Starlette pulls a blocking iterator one
chunk per thread trip; a series retrieve of 300 CT slices made three trips and
three ASGI sends per slice (header, object, CRLF). :func:`in_threads` makes one
trip per few megabytes, reads the next batch while the event loop sends this
one, and joins the small pieces between objects, so each object costs one
large read and two sends. uvicorn offers no zero-copy send (no ASGI
``http.response.zerocopysend``), so large reads are the cheapest way left.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

BATCH = 4 * 1024 * 1024  # bytes per thread trip, and per read of an object (one read per CT slice)
SMALL = 64 * 1024  # pieces below this (part headers, CRLFs) go out joined, not one send each

# One per process, started on first use (after ``workers`` forked). A response
# holds at most one trip at a time, so this bounds concurrent reads, not responses.
_readers = ThreadPoolExecutor(max_workers=32, thread_name_prefix="huren-read")


async def in_threads(chunks: Iterator[bytes], batch: int = BATCH) -> AsyncIterator[bytes]:
    """Yield the bytes of `chunks`, pulled in a worker thread about `batch` bytes per trip.

    The next batch is read while the current one is sent. Whatever `chunks`
    raises is raised here, after the bytes before it went out (a failure after
    the 200 then aborts the response). `chunks` is closed when the body ends
    or the client goes away (if it is a generator), which closes the objects it
    has open; if a trip is under way then, once that trip ends.
    """
    trip: Future[tuple[list[bytes], bool]] = _readers.submit(_pull, chunks, batch)
    try:
        while True:
            pieces, more = await asyncio.wrap_future(trip)
            if more:
                trip = _readers.submit(_pull, chunks, batch)
            for piece in pieces:
                yield piece
            if not more:
                return
    finally:
        # Closing a generator another thread is running raises: let that thread close it.
        if (close := getattr(chunks, "close", None)) is not None:
            trip.add_done_callback(lambda _: close())


def _pull(chunks: Iterator[bytes], batch: int) -> tuple[list[bytes], bool]:
    """At least `batch` bytes of `chunks` (less at the end), small pieces joined; and whether more follow."""
    pieces: list[bytes] = []
    small: list[bytes] = []
    total = 0
    for chunk in chunks:
        if len(chunk) < SMALL:
            small.append(chunk)
        else:
            if small:
                pieces.append(b"".join(small))
                small = []
            pieces.append(chunk)
        total += len(chunk)
        if total >= batch:
            break
    else:
        return pieces + [b"".join(small)] * bool(small), False
    return pieces + [b"".join(small)] * bool(small), True
