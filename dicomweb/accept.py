"""Accept headers read once: media ranges with their parameters, best first (RFC 9110 §12.5.1).

Every retrieval resource asks the same question — which of the representations
I can make does the client prefer? — so the header is parsed and ranked here,
and a malformed one is a 400 that names the header (PS3.18 §8.7.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomweb.errors import DicomWebError
from dicomweb.multipart import media_type

MULTIPART = "multipart/related"


@dataclass(frozen=True)
class Wanted:
    """One element of an Accept header."""

    kind: str                 # the media range, lower case: "image/jpeg", "*/*"
    params: dict[str, str]    # its parameters except q, names lower case
    quality: float            # the q-value, 1.0 when absent

    @property
    def part(self) -> str:
        """The type of the parts wanted: ``type=`` of a multipart/related range, else the range."""
        if self.kind == MULTIPART:
            return self.params.get("type", "*/*").strip('"').lower()
        return self.kind

    @property
    def syntax(self) -> str | None:
        """The ``transfer-syntax`` parameter (a UID or ``*``), or ``None`` when absent."""
        value = self.params.get("transfer-syntax")
        return value.strip('"') if value is not None else None

    def admits(self, kind: str) -> bool:
        """Whether the part type of this range covers the concrete media type `kind`."""
        part = self.part
        return part in ("*/*", kind) or (part.endswith("/*") and kind.startswith(part[:-1]))


def ranked(accept: str | None) -> list[Wanted]:
    """The Accept header's elements, highest q-value first (stable for equal q), q=0 left out.

    An absent or empty header is ``*/*``.

    Raises
    ------
    DicomWebError
        400 when an element is not a media range or its q-value is not a number from 0 to 1.
    """
    elements = [e for e in (accept or "").split(",") if e.strip()] or ["*/*"]
    found = []
    for element in elements:
        kind, params = media_type(element)
        if kind.count("/") != 1 or not all(kind.split("/")):
            raise DicomWebError(400, f"malformed Accept element {element.strip()!r}: not a media range",
                                "accept")
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = -1.0
        if not 0 <= quality <= 1:
            raise DicomWebError(400, f"malformed Accept element {element.strip()!r}: q must be from 0 to 1",
                                "accept")
        if quality > 0:
            found.append(Wanted(kind, params, quality))
    return sorted(found, key=lambda w: -w.quality)


def not_acceptable(accept: str | None, offered: str) -> DicomWebError:
    """The 406 for a header none of whose elements can be served; `offered` says what can."""
    return DicomWebError(406, f"cannot answer with any of {accept or '*/*'!r}; this resource offers {offered}",
                         "accept")
