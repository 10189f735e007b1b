"""WADO-RS bodies streamed in large reads (dicomweb.streaming): the same bytes, fewer sends, nothing left open."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from starlette.testclient import TestClient

from archive.config import Config, S3Storage
from archive.guideline.compliance import Compliance
from archive.index.database import Database
from archive.ingest import Ingest, Source
from archive.storage import BlobStore
from archive.storage.filesystem import FilesystemStore
from archive.storage.s3 import S3Store
from dicomweb.app import build_app
from dicomweb.streaming import in_threads
from tests.conftest import audit_trail
from tests.factory import instance, write

DICOM = "application/dicom"


class Served:
    """An app over a store holding one series; the stored files' bytes in instance order."""

    def __init__(self, store: BlobStore, tmp_path: Path, shapes: list[tuple[int, int, int]]) -> None:
        self.db = Database(f"sqlite:///{tmp_path / 'index.db'}")
        self.db.migrate()
        self.store = store
        ingest = Ingest(self.db, store)
        first = instance()
        self.study, self.series = first.StudyInstanceUID, first.SeriesInstanceUID
        self.files: list[bytes] = []
        for n, (rows, columns, frames) in enumerate(shapes, 1):
            ds = instance(rows=rows, columns=columns, frames=frames, InstanceNumber=n,
                          StudyInstanceUID=self.study, SeriesInstanceUID=self.series)
            path = write(ds, tmp_path / f"{n}.dcm")
            self.files.append(path.read_bytes())
            ingest.ingest(path, Source("dimse", "hosp-a", "CT_A"))
        config = Config()
        self.app = build_app(config, self.db, store, ingest, tmp_path / "spool", Compliance(self.db, config),
                             audit_trail(self.db))
        self.url = f"/dicom-web/studies/{self.study}/series/{self.series}"
        self.syntax = str(dcmread(BytesIO(self.files[0]), stop_before_pixels=True).file_meta.TransferSyntaxUID)


@pytest.fixture(params=["filesystem", "s3"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Served:
    if request.param == "filesystem":
        store: BlobStore = FilesystemStore(tmp_path / "archive")
    else:
        store = S3Store(S3Storage.model_validate(request.getfixturevalue("s3_storage")))
    # Small and large objects: headers and CRLFs join, a slice-sized object is one piece.
    return Served(store, tmp_path, [(16, 16, 1), (512, 512, 1), (64, 32, 2)])


def test_the_series_body_is_the_stored_files_between_boundaries(served: Served) -> None:
    with TestClient(served.app) as client:
        answer = client.get(served.url, headers={"Accept": f'multipart/related; type="{DICOM}"'})
    assert answer.status_code == 200
    boundary = re.search(r"boundary=([^;\s]+)", answer.headers["content-type"]).group(1)
    expected = b"".join(
        f"--{boundary}\r\nContent-Type: {DICOM}; transfer-syntax={served.syntax}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n" for data in served.files
    ) + f"--{boundary}--\r\n".encode()
    assert answer.content == expected
    # Known before the first read: not chunked.
    assert answer.headers["content-length"] == str(len(expected))
    assert "transfer-encoding" not in answer.headers


def test_ranges_of_one_instance(served: Served) -> None:
    data = served.files[1]
    with TestClient(served.app) as client:
        url = served.url + "/instances/" + dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID
        middle = client.get(url, headers={"Accept": DICOM, "Range": "bytes=100-299"})
        tail = client.get(url, headers={"Accept": DICOM, "Range": "bytes=-50"})
        whole = client.get(url, headers={"Accept": DICOM})
        past = client.get(url, headers={"Accept": DICOM, "Range": f"bytes={len(data)}-"})
    assert middle.status_code == 206 and middle.content == data[100:300]
    assert middle.headers["content-range"] == f"bytes 100-299/{len(data)}"
    assert tail.status_code == 206 and tail.content == data[-50:]
    assert whole.status_code == 200 and whole.content == data and whole.headers["content-length"] == str(len(data))
    assert past.status_code == 416


def test_reads_are_chunked_not_whole(served: Served) -> None:
    # The S3 body is streamed chunk by chunk as the file is read: a large object is never one read.
    key = f"{served.study}/{served.series}/"
    big = next(k for k in served.store.keys() if k.startswith(key) and len(b"".join(served.store.read(k))) > 500_000)
    chunks = list(served.store.read(big, chunk_size=200_000))
    assert [len(c) for c in chunks[:-1]] == [200_000] * (len(chunks) - 1) and len(chunks) == 3
    assert b"".join(chunks) == served.files[1]


def test_each_object_is_two_sends(tmp_path: Path) -> None:
    served = Served(FilesystemStore(tmp_path / "archive"), tmp_path, [(512, 512, 1)] * 4)
    messages: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            messages.append(message["body"])

    asyncio.run(served.app(_scope(served.url), _requested(asyncio.Event()), send))
    # A part's delimiter and headers (with the CRLF ending the one before), then its object;
    # then the CRLF and closing delimiter, and the empty message that ends the body.
    assert len(messages) == 2 * 4 + 2
    assert messages[-2].startswith(b"\r\n--") and messages[-2].endswith(b"--\r\n") and messages[-1] == b""
    assert messages[1:-2:2] == served.files


def test_a_client_that_goes_away_leaves_no_file_open(tmp_path: Path) -> None:
    # 6 MB objects: the first batch of reads stops inside one, which stays open until closed.
    served = Served(FilesystemStore(tmp_path / "archive"), tmp_path, [(1024, 1024, 3)] * 2)
    archive = str(tmp_path / "archive")
    seen_open: list[int] = []

    def open_in_archive() -> int:
        return sum(os.readlink(f"/proc/self/fd/{fd}").startswith(archive) for fd in os.listdir("/proc/self/fd")
                   if os.path.exists(f"/proc/self/fd/{fd}"))

    async def scenario() -> int:
        gone = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                seen_open.append(open_in_archive())
                gone.set()  # the client disconnects after the first piece

        await served.app(_scope(served.url), _requested(gone), send)
        for _ in range(100):  # the trip under way ends, then closes the object
            if not open_in_archive():
                break
            await asyncio.sleep(0.02)
        return open_in_archive()

    assert asyncio.run(scenario()) == 0
    assert seen_open and seen_open[0] == 1  # the object was open mid-stream: the test saw the case it is for


def test_in_threads_joins_small_pieces_and_keeps_the_bytes() -> None:
    big = [bytes([n]) * 100_000 for n in range(3)]
    pieces = [b"--b\r\nhead\r\n\r\n", big[0], b"\r\n", b"--b\r\nhead\r\n\r\n", big[1], big[2], b"\r\n", b"--b--\r\n"]
    for batch in (1, 150_000, 10**9):
        out = asyncio.run(_collect(iter(pieces), batch))
        assert b"".join(out) == b"".join(pieces)
        assert [len(p) for p in out if len(p) >= 100_000] == [100_000] * 3  # large pieces pass as they are
        if batch > 1:  # one trip holds both runs of small pieces between objects
            assert b"\r\n--b\r\nhead\r\n\r\n" in out


def test_in_threads_raises_after_the_bytes_before_and_closes() -> None:
    closed = []

    def failing() -> Iterator[bytes]:
        try:
            yield b"x" * 100_000
            raise OSError("the disk went away")
        finally:
            closed.append(True)

    got: list[bytes] = []

    async def run() -> None:
        async for piece in in_threads(failing(), batch=1):
            got.append(piece)

    with pytest.raises(OSError, match="disk went away"):
        asyncio.run(run())
    assert got == [b"x" * 100_000] and closed == [True]


async def _collect(chunks: Iterator[bytes], batch: int) -> list[bytes]:
    return [piece async for piece in in_threads(chunks, batch)]


def _scope(path: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"accept", f'multipart/related; type="{DICOM}"'.encode()), (b"host", b"test")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}


def _requested(gone: asyncio.Event) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI receive: the request, then a disconnect once `gone` is set."""
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}
    return receive

