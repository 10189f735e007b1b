"""multipart/related bodies (RFC 2387) as PS3.18 §8.6 uses them: read and written as streams."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

from archive.digests import Digests


def media_type(header: str | None) -> tuple[str, dict[str, str]]:
    """Split a Content-Type or Accept element into its lower-cased type and parameters."""
    value, params = parse_options_header(header or "")
    return value.decode("latin-1").lower(), {
        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()
    }


@dataclass
class Part:
    """One received body part, spooled to a file, and the digests of its bytes
    taken as they were written (:class:`archive.digests.Digests`)."""

    path: Path
    headers: dict[str, str] = field(default_factory=dict)
    digests: Digests = field(default_factory=Digests)

    @property
    def content_type(self) -> str:
        return media_type(self.headers.get("content-type"))[0]


class PartReader:
    """Feed a multipart body chunk by chunk; each part is written to a file in `folder`."""

    def __init__(self, boundary: str, folder: Path) -> None:
        self.folder = folder
        self.parts: list[Part] = []
        self._file = None
        self._field = b""
        self._value = b""
        self._parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_part_data": self._data,
            "on_part_end": self._end,
        })

    def feed(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def finish(self) -> list[Part]:
        """End the body; return its parts. Raises ValueError if the body was cut short."""
        self._parser.finalize()
        if self._file is not None:
            raise ValueError("the multipart body ends inside a part")
        return self.parts

    def discard(self) -> None:
        """Remove every spooled part file (after an error)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        for part in self.parts:
            try:
                os.unlink(part.path)
            except FileNotFoundError:
                pass

    def _begin(self) -> None:
        handle, name = tempfile.mkstemp(suffix=".part", dir=self.folder)
        self._file = os.fdopen(handle, "wb")
        self.parts.append(Part(Path(name)))

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self.parts[-1].headers[self._field.decode("latin-1").strip().lower()] = (
            self._value.decode("latin-1").strip()
        )
        self._field = self._value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        assert self._file is not None
        view = memoryview(data)[start:end]
        self._file.write(view)
        self.parts[-1].digests.update(view)

    def _end(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None


def part_head(boundary: str, headers: dict[str, str]) -> bytes:
    """The delimiter line and headers that open a part (RFC 2046 §5.1.1)."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"--{boundary}\r\n{head}\r\n".encode("latin-1")


def write_parts(boundary: str, parts: Iterable[tuple[dict[str, str], Iterator[bytes]]]) -> Iterator[bytes]:
    """Yield a multipart body: each part's headers, then its chunks as they come."""
    for headers, chunks in parts:
        yield part_head(boundary, headers)
        yield from chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def body_length(boundary: str, parts: Iterable[tuple[dict[str, str], int]]) -> int:
    """The length of the body :func:`write_parts` writes for parts of these headers and sizes.

    Known before any object is read when each part is sent as stored, so the
    answer can carry a ``Content-Length`` instead of being chunked.
    """
    return sum(len(part_head(boundary, headers)) + size + 2 for headers, size in parts) + len(boundary) + 6
