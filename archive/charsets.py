"""Character-set decoding fixes applied before any dataset is read.

pydicom 3.0 lists ``iso_ir_58`` (GB2312, for ISO 2022 IR 58) among the
encodings whose escape sequences Python strips by itself; Python's codec does
not, so names from older Chinese equipment came out as ``'\\x1b$)A张^三'``.
Taking it off that list makes pydicom strip the sequence and handle
delimiters itself. The fix applies only while the flaw is present.
"""

from __future__ import annotations

from pydicom import charset


def _leaves_escape_sequence() -> bool:
    return "\x1b" in b"\x1b$)A\xd5\xc5".decode("iso_ir_58")


if "iso_ir_58" in charset.handled_encodings and _leaves_escape_sequence():
    # pydicom leaves this tuple unannotated, so its type is inferred as exactly three strings.
    charset.handled_encodings = tuple(  # type: ignore[assignment]
        e for e in charset.handled_encodings if e != "iso_ir_58"
    )
