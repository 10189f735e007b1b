"""Changing an instance's transfer syntax on the way out, when a client asks for one.

Objects are archived as received. A client that names a transfer syntax in
its Accept header (PS3.18 §8.7.3) gets the stored bytes when they already
match, else a decompressed copy in Explicit or Implicit VR Little Endian.
"""

from __future__ import annotations

from collections.abc import Iterable
from io import BytesIO

from pydicom import dcmread
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

TARGETS = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def can_transcode(source: str | None, target: str) -> bool:
    """Whether an instance stored in `source` can be served in `target`.

    With `source` ``None``, whether `target` can be served at all.
    """
    if source == target:
        return True
    if target not in TARGETS:
        return False
    if source is None:
        return True
    syntax = UID(source)
    if not syntax.is_compressed:
        return True
    try:
        return get_decoder(syntax).is_available
    except NotImplementedError:
        return False


def transcoded(chunks: Iterable[bytes], target: str) -> bytes:
    """The Part-10 object in `chunks`, re-encoded in `target` (one of :data:`TARGETS`)."""
    ds = dcmread(BytesIO(b"".join(chunks)))
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = UID(target)
    out = BytesIO()
    ds.save_as(out, implicit_vr=target == ImplicitVRLittleEndian, little_endian=True,
               enforce_file_format=True)
    return out.getvalue()
