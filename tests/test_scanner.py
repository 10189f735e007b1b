"""The header's fast path (archive.scanner) gives what pydicom's path gives, or steps aside.

Each file is read twice by :func:`archive.header.read_header`: as it is, and with
the scanner switched off so pydicom reads it. The two results (the whole
``InstanceHeader``, or the refusal's message) must be equal, for every file in
pydicom's test data, cut-short copies of each, and files made here to reach
what those lack: character sets, sequences of both lengths, bulk values in
items, private and UN elements.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from archive import header
from archive.header import InstanceHeader, UnreadableInstance, read_header
from archive.scanner import scan
from tests.factory import instance, write

PYDICOM_FILES = sorted(Path(f) for f in get_testdata_files("*")
                       if os.path.isfile(f) and not f.endswith((".json", ".py", ".txt", ".gz", ".bz2")))


def read(path: Path) -> InstanceHeader | str:
    try:
        return read_header(path)
    except UnreadableInstance as exc:
        return f"refused: {exc}"


def both(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[InstanceHeader | str, InstanceHeader | str]:
    """The result with the scanner, then without it (pydicom's path)."""
    fast = read(path)
    with monkeypatch.context() as patch:
        patch.setattr(header, "scan", lambda _fd, _size: None)
        slow = read(path)
    return fast, slow


def scanned(path: Path) -> bool:
    with open(path, "rb") as fp:
        return scan(fp.fileno(), os.fstat(fp.fileno()).st_size) is not None


@pytest.mark.parametrize("source", PYDICOM_FILES, ids=lambda p: p.name)
def test_same_result_as_pydicom_for_every_test_file_and_its_cut_copies(
        source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = source.read_bytes()
    cuts = sorted({len(data), len(data) - 1, 132, 300, *(len(data) * k // 8 for k in range(1, 8))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own complaints about the files
        for cut in (c for c in cuts if 0 < c <= len(data)):
            path = tmp_path / f"cut-{cut}.dcm"
            path.write_bytes(data[:cut])
            fast, slow = both(path, monkeypatch)
            assert fast == slow, f"{source.name} cut at {cut} of {len(data)} bytes"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm",
                                  "waveform_ecg.dcm", "test-SR.dcm", "SC_rgb_jpeg_gdcm.dcm"])
def test_explicit_little_endian_files_take_the_fast_path(name: str) -> None:
    assert scanned(Path(get_testdata_file(name)))


@pytest.mark.parametrize("name", [
    "MR_small_implicit.dcm",      # implicit VR
    "MR_small_bigendian.dcm",     # explicit VR big endian
    "image_dfl.dcm",              # deflated
    "SC_rgb_jpeg.dcm",            # an implicit VR data set under an explicit VR syntax
    "no_meta.dcm",                # no file meta
])
def test_other_encodings_are_left_to_pydicom(name: str) -> None:
    assert not scanned(Path(get_testdata_file(name)))


@pytest.mark.parametrize("charset, name, description", [
    ("ISO_IR 192", "王^小明=王^小明", "胸部 CT"),
    ("GB18030", "张^三=张^三", "头颅平扫"),
    ("GBK", "李^四", "腹部增强"),
    (["", "ISO 2022 IR 58"], "Zhang^San=张^三", "胸部"),
    (["ISO 2022 IR 6", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎", "Chest"),
    ("ISO_IR 100", "Müller^Jürgen", "Thorax ÄÖÜ"),
])
def test_character_sets_decode_as_pydicom_decodes_them(
        charset: str | list[str], name: str, description: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    code = Dataset()
    code.CodeValue, code.CodeMeaning = "X1", description
    ds = instance(SpecificCharacterSet=charset, PatientName=name, StudyDescription=description,
                  ProcedureCodeSequence=Sequence([code]))
    path = write(ds, tmp_path / "charset.dcm")
    assert scanned(path)
    fast, slow = both(path, monkeypatch)
    assert fast == slow
    assert isinstance(fast, InstanceHeader) and fast.study["study_description"] == description


def test_an_item_with_its_own_character_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    item = Dataset()
    item.SpecificCharacterSet = "GB18030"
    item.CodeValue, item.CodeMeaning = "X1", "胸部"
    ds = instance(SpecificCharacterSet="ISO_IR 100", StudyDescription="Thorax",
                  ProcedureCodeSequence=Sequence([item]))
    path = write(ds, tmp_path / "item-charset.dcm")
    fast, slow = both(path, monkeypatch)
    assert fast == slow and scanned(path)
    assert b"\xe8\x83\xb8\xe9\x83\xa8" in fast.metadata  # 胸部, decoded as GB18030


@pytest.mark.parametrize("undefined", [True, False], ids=["undefined-length", "defined-length"])
def test_sequences_items_and_bulk_values_inside_them(
        undefined: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3.4"
    inner.ReferencedFrameNumber = [1, 2, 3]
    outer = Dataset()
    outer.CodeValue = "A"
    outer.ReferencedImageSequence = Sequence([inner, Dataset()])
    outer.add_new(0x00091010, "OB", b"\x01" * 3000)  # bulk, inside an item
    ds = instance(ProcedureCodeSequence=Sequence([outer]), ReferencedStudySequence=Sequence([]))
    ds.add_new(0x00290010, "LO", "HUREN TEST")
    ds.add_new(0x00291010, "OB", b"\x02" * 40)      # inline binary
    ds.add_new(0x00291011, "OB", b"\x03" * 5000)    # top-level bulk, with its place in the file
    ds.add_new(0x00291012, "UN", b"\x04" * 2000)    # UN, bulk
    ds.add_new(0x00291013, "AT", [0x00100010, 0x00200013])
    ds.add_new(0x00291014, "FD", [1.5, -2.25])
    for element in (ds["ProcedureCodeSequence"], outer["ReferencedImageSequence"]):
        element.is_undefined_length = undefined
        for item in element.value:
            item.is_undefined_length_sequence_item = undefined
    path = write(ds, tmp_path / "sequences.dcm")
    assert scanned(path)
    fast, slow = both(path, monkeypatch)
    assert fast == slow
    assert isinstance(fast, InstanceHeader)
    assert set(fast.bulk) == {"00291011", "00291012", "7FE00010"}
    assert b"/bulkdata/00081032/0/00091010" in fast.metadata


def test_a_small_un_value_is_left_to_pydicom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(instance(), tmp_path / "un.dcm")
    data = path.read_bytes()
    pixel_data = data.index(b"\xe0\x7f\x10\x00OW")
    # (0040,0254) sent as UN: pydicom gives it its dictionary VR, LO.
    un = struct.pack("<HH", 0x0040, 0x0254) + b"UN\0\0" + struct.pack("<I", 8) + b"PROTOCOL"
    path.write_bytes(data[:pixel_data] + un + data[pixel_data:])
    assert not scanned(path)
    fast, slow = both(path, monkeypatch)
    assert fast == slow
    assert isinstance(fast, InstanceHeader) and b'"00400254":{"vr":"LO"' in fast.metadata


def test_other_transfer_syntaxes_of_the_same_instance_give_the_same_header(
        tmp_path: Path) -> None:
    ds = instance(StudyDescription="Thorax")
    explicit = read_header(write(ds, tmp_path / "explicit.dcm"))
    for syntax in (ImplicitVRLittleEndian, ExplicitVRBigEndian):
        ds.file_meta.TransferSyntaxUID = syntax
        path = tmp_path / f"{syntax}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert not scanned(path)
        other = read_header(path)
        assert other.metadata == explicit.metadata and other.transfer_syntax == syntax


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value


def test_tags_out_of_order_are_left_to_pydicom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(instance(), tmp_path / "ordered.dcm")
    data = path.read_bytes()
    # An element appended after the pixel data goes unread; one put before the
    # data set's first element comes out of order.
    meta_end = 132 + 12 + struct.unpack_from("<I", data, 140)[0]
    swapped = data[:meta_end] + _element(0x00200013, b"IS", b"7 ") + data[meta_end:]
    path.write_bytes(swapped)
    assert not scanned(path)
    fast, slow = both(path, monkeypatch)
    assert fast == slow


def test_a_value_running_past_the_end_of_its_item_is_left_to_pydicom(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    item = Dataset()
    item.CodeValue = "ABCD"
    ds = instance(ProcedureCodeSequence=Sequence([item]))
    ds["ProcedureCodeSequence"].is_undefined_length = False
    item.is_undefined_length_sequence_item = False
    path = write(ds, tmp_path / "item.dcm")
    data = bytearray(path.read_bytes())
    at = data.index(b"\x08\x00\x00\x01SH\x04\x00ABCD")
    data[at + 6] = 6  # CodeValue now claims 6 bytes: 2 more than its item holds
    path.write_bytes(bytes(data))
    assert not scanned(path)
    fast, slow = both(path, monkeypatch)
    assert fast == slow


def test_a_file_system_that_cannot_map_files_falls_back_to_pydicom(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(instance(StudyDescription="Thorax"), tmp_path / "unmappable.dcm")
    mapped = read_header(path)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(19, "No such device")  # what mmap(2) says on a file system without it

    monkeypatch.setattr("archive.scanner.mmap.mmap", refuse)
    assert not scanned(path)
    assert read_header(path) == mapped
