"""Digests taken while receiving equal digests read back from the file."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from archive.digests import Digests, file_digests
from dicomweb.multipart import PartReader

CT = Path(get_testdata_file("CT_small.dcm"))


def _fed(data: bytes, sizes: list[int]) -> tuple[str, str]:
    digests, position = Digests(), 0
    for size in sizes:
        digests.update(data[position:position + size])
        position += size
    digests.update(data[position:])
    return digests.hexdigests()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300), max_size=40))
def test_any_split_of_the_bytes_gives_the_file_digests(sizes: list[int]) -> None:
    data = CT.read_bytes()
    assert _fed(data, sizes) == file_digests(CT)


def test_the_data_set_digest_leaves_out_the_file_meta() -> None:
    data = CT.read_bytes()
    whole, dataset = file_digests(CT)
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    assert whole == hashlib.sha256(data).hexdigest()
    assert dataset == hashlib.sha256(data[meta_end:]).hexdigest()


def test_a_file_without_meta_group_length_is_hashed_whole_for_both(tmp_path: Path) -> None:
    for data in (b"short", b"\0" * 128 + b"DICM" + b"\x02\x00\x01\x00OB" + b"\0" * 40):
        path = tmp_path / "odd.dcm"
        path.write_bytes(data)
        expected = hashlib.sha256(data).hexdigest()
        assert file_digests(path) == (expected, expected) == _fed(data, [1, 3])


def test_stow_parts_are_hashed_as_they_are_written(tmp_path: Path) -> None:
    boundary = "b0undary"
    data = CT.read_bytes()
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n" for _ in range(2)
    ) + f"--{boundary}--\r\n".encode()
    reader = PartReader(boundary, tmp_path)
    for start in range(0, len(body), 1000):  # chunks that end anywhere, inside the meta too
        reader.feed(body[start:start + 1000])
    parts = reader.finish()
    assert len(parts) == 2
    for part in parts:
        assert part.digests.hexdigests() == file_digests(part.path) == file_digests(CT)
