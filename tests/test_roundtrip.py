"""Every file in pydicom's bundled test data goes in and comes back identical, or is refused.

Each file under ``pydicom/data/test_files`` (recursively) is one test case,
judged by these rules, in this order; the first that fails decides:

1. pydicom reads it as a Part-10 file (preamble, ``DICM``, file meta); else it
   is refused with 0xC000 (cannot understand). So are the READMEs, JSON, ICC
   and gzip files, and data sets without file meta (``no_meta.dcm``,
   ``rtstruct.dcm``): STOW-RS carries Part-10 files (PS3.18 §10.5).
2. The file meta names a transfer syntax; else 0xC000.
3. No value is shorter than its header says; else 0xC000. pydicom reads a
   value cut short by the end of the file without complaint
   (``MR_truncated.dcm``, ``rtplan_truncated.dcm``).
4. The data set has SOP Class, SOP Instance, Study and Series Instance UIDs;
   else 0xA900 (data set does not match the SOP class). This refuses the
   DICOMDIRs (Media Storage Directory objects have none of them), the
   private-sequence fragments and the JPEG-LS samples without study and series.
5. The SOP class is a storage SOP class; else 0x0122.

Everything else is a valid storage instance, flaws in values included
(``badVR.dcm``: an IS of ``1A``, a 65-character UID in a sequence;
``SC_rgb_jpeg.dcm``: an implicit VR data set under an explicit VR transfer
syntax): an archive keeps what modalities send, as they send it.

Pydicom's files reuse SOP Instance UIDs: ``MR_small*.dcm`` are one instance in
eight encodings, ``badVR.dcm`` and ``rtdose*.dcm`` seven variants of one. The
first file of each UID (in path order) goes to an archive on the default
``on_conflict: reject``; each later file with other bytes must be refused there
with 0x0111, leaving the first untouched, and goes in and comes back identical
in a second archive on ``on_conflict: replace``.

A file that cannot be read whole is refused by the ingest's header reader, which
:func:`test_file_cut_inside_a_value_is_unreadable` tests directly.
"""

from __future__ import annotations

import hashlib
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from archive.header import UnreadableInstance, read_header
from tests.conftest import PYDICOM_FILES, Huren, huren_config

CANNOT_UNDERSTAND, DATASET_MISMATCH, DUPLICATE_REJECTED = 0xC000, 0xA900, 0x0111
SOP_CLASS_NOT_SUPPORTED = 0x0122
UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
TRAILING_PADDING, PIXEL_DATA = 0xFFFCFFFC, 0x7FE00010
UNDEFINED = 0xFFFFFFFF
# The data set of SC_rgb_jpeg.dcm is implicit VR under an explicit VR transfer
# syntax; pydicom (and Huren) read it, DCMTK cannot, so dcmsend cannot send it.
DCMTK_UNREADABLE = {"SC_rgb_jpeg.dcm"}


@dataclass(frozen=True)
class Case:
    """One bundled file and what the rules above say about it."""

    path: Path
    refusal: int | None        # the FailureReason expected; None for a valid instance
    why: str
    sop_uid: str = ""

    @property
    def name(self) -> str:
        return self.path.relative_to(PYDICOM_FILES).as_posix()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the flawed values it still reads
        return dcmread(path)


def cut_short(ds: Dataset, where: str = "") -> str | None:
    """The first element whose value ends before its stated length, if any."""
    for tag in ds.keys():
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement):
            if raw.length != UNDEFINED and raw.value is not None and len(raw.value) < raw.length:
                return f"{where}{tag} has {len(raw.value)} of {raw.length} bytes"
        elif raw.VR == "SQ":
            for i, item in enumerate(raw.value):
                if found := cut_short(item, f"{where}{tag}[{i}] "):
                    return found
    return None


def judge(path: Path) -> Case:
    try:
        ds = read(path)
    except InvalidDicomError:
        return Case(path, CANNOT_UNDERSTAND, "not a Part-10 file")
    if not ds.file_meta.get("TransferSyntaxUID"):
        return Case(path, CANNOT_UNDERSTAND, "the file meta names no transfer syntax")
    if short := cut_short(ds):
        return Case(path, CANNOT_UNDERSTAND, f"cut short: {short}")
    if missing := [keyword for keyword in UIDS if not ds.get(keyword)]:
        return Case(path, DATASET_MISMATCH, f"no {', '.join(missing)}")
    if "Storage" not in UID(ds.SOPClassUID).name:
        return Case(path, SOP_CLASS_NOT_SUPPORTED, f"{ds.SOPClassUID} is not a storage SOP class")
    return Case(path, None, "valid", str(ds.SOPInstanceUID))


CASES = [judge(path) for path in sorted(PYDICOM_FILES.rglob("*")) if path.is_file()]
VALID = [case for case in CASES if case.refusal is None]
INVALID = [case for case in CASES if case.refusal is not None]
# The first file of each SOP Instance UID (reversed, so that the first one wins);
# later files with other bytes conflict with it.
FIRST = {case.sop_uid: case for case in reversed(VALID)}
CONFLICTING = [case for case in VALID if case.sha256 != FIRST[case.sop_uid].sha256]
SENTINEL = next(case for case in VALID if case.name == "CT_small.dcm")
# Flawed files make pydicom warn whenever they are read, here and in dicomweb-client.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")


def ids(case: Case) -> str:
    return case.name


@dataclass
class Archive:
    """A running Huren and a DICOMweb client for it."""

    server: Huren
    web: DICOMwebClient

    def stow(self, path: Path) -> httpx.Response:
        """STOW-RS the file's bytes as they are, one part."""
        boundary = uuid.uuid4().hex
        body = b"".join([f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                         path.read_bytes(), f"\r\n--{boundary}--\r\n".encode()])
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        return httpx.post(f"{self.server.dicomweb}/studies", content=body,
                          headers={"Content-Type": content_type}, timeout=60)

    def retrieve(self, ds: Dataset) -> Dataset:
        return self.web.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)

    def metadata(self, ds: Dataset) -> dict[str, Any]:
        return self.web.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                   ds.SOPInstanceUID)

    def sop_uids(self) -> set[str]:
        return {found["00080018"]["Value"][0] for found in self.web.search_for_instances()}


def running(tmp_path_factory: pytest.TempPathFactory, name: str, **sections: Any) -> Iterator[Archive]:
    workdir = tmp_path_factory.mktemp(name)
    server = Huren(workdir, huren_config(workdir, **sections)).start()
    try:
        yield Archive(server, DICOMwebClient(server.dicomweb))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """Huren on its defaults, conflicts rejected."""
    yield from running(tmp_path_factory, "rejecting")


@pytest.fixture(scope="module")
def replacing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """Huren with ``on_conflict: replace``, for the files that reuse another file's SOP Instance UID."""
    yield from running(tmp_path_factory, "replacing", ingest={"on_conflict": "replace"})


def assert_stored(response: httpx.Response, case: Case) -> None:
    assert response.status_code == 200, response.text
    [stored] = response.json()["00081199"]["Value"]
    assert stored["00081155"]["Value"] == [case.sop_uid]


def assert_refused(response: httpx.Response, failure: int, why: str) -> None:
    assert response.status_code == 409, f"{why}: {response.text}"
    [failed] = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [failure], f"{why}: {response.text}"


def assert_same_instance(sent: Dataset, received: Dataset,
                         ignore: Callable[[BaseTag], bool] = lambda tag: False) -> None:
    """Element for element what was sent, pixel data byte for byte; the file meta may differ
    except for the transfer syntax."""
    assert received.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert [t for t in received.keys() if not ignore(t)] == [t for t in sent.keys() if not ignore(t)]
    for element in sent:
        if not ignore(element.tag):
            assert received[element.tag] == element, f"{element.tag} {element.keyword}"


def expected_json(sent: Dataset) -> dict[str, Any]:
    """pydicom's DICOM JSON of `sent`, binary values inline.

    pydicom cannot write an IS or DS value that is no number (badVR.dcm's IS
    ``1A``); CP 1861 lets such values be JSON strings, so they are expected as sent.
    """
    expected: dict[str, Any] = {}
    for element in sent:
        key = f"{element.tag:08X}"
        try:
            expected[key] = element.to_json_dict(None, 0)
        except ValueError:
            assert element.VR in ("IS", "DS"), key
            values = element.value if element.VM > 1 else [element.value]
            expected[key] = {"vr": element.VR, "Value": [str(v) for v in values]}
    # Data Set Trailing Padding has no meaning (PS3.5 §7.8) and follows the pixel
    # data, where the metadata kept at ingest ends.
    expected.pop(f"{TRAILING_PADDING:08X}", None)
    return expected


def assert_same_json(expected: dict[str, Any], answer: dict[str, Any], where: str = "") -> None:
    """`answer` is `expected` except that binary values may be BulkDataURIs, of the same VR."""
    assert sorted(answer) == sorted(expected), where
    for key, value in answer.items():
        wanted = expected[key]
        if wanted == {"vr": "SQ", "Value": []}:
            # An empty attribute has no Value member (PS3.18 F.2.5); pydicom
            # writes an empty list for a sequence without items.
            wanted = {"vr": "SQ"}
        if "BulkDataURI" in value:
            assert value["vr"] == wanted["vr"] and "InlineBinary" in wanted, f"{where}{key}"
        elif value["vr"] == "SQ" and "Value" in value:
            assert len(value["Value"]) == len(wanted["Value"]), f"{where}{key}"
            for i, (item, wanted_item) in enumerate(zip(value["Value"], wanted["Value"])):
                assert_same_json(wanted_item, item, f"{where}{key}[{i}] ")
        else:
            assert value == wanted, f"{where}{key}"


def assert_round_trip(archive: Archive, case: Case) -> None:
    assert_stored(archive.stow(case.path), case)
    sent = read(case.path)
    assert_same_instance(sent, archive.retrieve(sent))
    assert_same_json(expected_json(sent), archive.metadata(sent))


@pytest.mark.parametrize("case", [c for c in VALID if c not in CONFLICTING], ids=ids)
def test_valid_file_comes_back_identical(archive: Archive, case: Case) -> None:
    assert_round_trip(archive, case)


@pytest.mark.parametrize("case", CONFLICTING, ids=ids)
def test_file_reusing_a_sop_instance_uid(archive: Archive, replacing: Archive, case: Case) -> None:
    first = FIRST[case.sop_uid]
    assert_stored(archive.stow(first.path), first)
    assert_refused(archive.stow(case.path), DUPLICATE_REJECTED, f"reuses {first.name}'s UID")
    kept = read(first.path)
    assert_same_instance(kept, archive.retrieve(kept))
    assert_round_trip(replacing, case)


@pytest.mark.parametrize("case", INVALID, ids=ids)
def test_invalid_file_is_refused(archive: Archive, case: Case) -> None:
    assert_stored(archive.stow(SENTINEL.path), SENTINEL)  # something that must not be lost
    before = archive.sop_uids()
    assert_refused(archive.stow(case.path), case.refusal, case.why)
    assert archive.sop_uids() == before
    kept = read(SENTINEL.path)
    assert_same_instance(kept, archive.retrieve(kept))


def dcmtk_rewrites(tag: BaseTag) -> bool:
    """What DCMTK changes when it encodes a file for the network: it recalculates
    group lengths (693_J2KI.dcm has a stale one), drops Data Set Trailing Padding
    and gives encapsulated pixel data the VR OB (693_J2KI.dcm has OW), keeping its bytes."""
    return tag.element == 0 or tag in (TRAILING_PADDING, PIXEL_DATA)


def test_dcmsend_sends_every_valid_file_in_one_association(tmp_path: Path) -> None:
    # One file per SOP Instance UID: under "reject" a second object is refused.
    cases = [c for c in FIRST.values() if c.name not in DCMTK_UNREADABLE]
    server = Huren(tmp_path, huren_config(tmp_path)).start()
    try:
        result = server.storescu(*(c.path for c in cases), tool="dcmsend", extra=("-ma",))
        assert result.returncode == 0, result.stdout + result.stderr
        web = DICOMwebClient(server.dicomweb)
        assert {found["00080018"]["Value"][0] for found in web.search_for_instances()} == {
            c.sop_uid for c in cases}
        for case in cases:
            sent = read(case.path)
            received = web.retrieve_instance(sent.StudyInstanceUID, sent.SeriesInstanceUID,
                                             sent.SOPInstanceUID)
            if received.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID:
                assert_same_instance(sent, received, dcmtk_rewrites)
                assert received.get("PixelData") == sent.get("PixelData"), case.name
                continue
            # Of the uncompressed syntaxes DCMTK offers we take Explicit VR Little
            # Endian (see test_dimse): same elements, same pixels, other bytes.
            assert sent.file_meta.TransferSyntaxUID in (ImplicitVRLittleEndian, ExplicitVRBigEndian)
            assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert [t for t in received.keys() if not dcmtk_rewrites(t)] == [
                t for t in sent.keys() if not dcmtk_rewrites(t)]
            if "PixelData" in sent:
                assert (received.pixel_array == sent.pixel_array).all(), case.name
    finally:
        server.stop()


def inside_values(path: Path) -> Iterator[int]:
    """A byte position inside each top-level value before the pixel data: the middle
    of a value of defined length, or the first item header of a sequence of undefined length."""
    ds = read(path)
    for tag in ds.keys():
        if tag >= PIXEL_DATA:
            return
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement):
            if 2 <= raw.length != UNDEFINED:
                yield raw.value_tell + raw.length // 2
        elif raw.VR == "SQ" and raw.value and raw.is_undefined_length:
            yield raw.file_tell + 4


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm",
                                  "MR_small_bigendian.dcm", "CT_small.dcm", "image_dfl.dcm"])
def test_file_cut_inside_a_value_is_unreadable(tmp_path: Path, name: str) -> None:
    # The ingest's header reader directly: pydicom reads a value cut short without
    # complaint, and a cut inside a sequence or a deflated stream made it raise
    # errors (struct.error, OSError, zlib.error) that were no refusal at all.
    data = (PYDICOM_FILES / name).read_bytes()
    if name == "image_dfl.dcm":  # value offsets lie in the inflated stream: cut the file in eighths
        cuts = [len(data) * k // 8 for k in range(2, 8)]
    else:
        cuts = list(inside_values(PYDICOM_FILES / name))
    assert cuts
    cut = tmp_path / name
    for end in cuts:
        cut.write_bytes(data[:end])
        with pytest.raises(UnreadableInstance):
            read_header(cut)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "SC_rgb_rle.dcm"])
def test_image_cut_just_before_its_pixel_data_is_unreadable(tmp_path: Path, name: str) -> None:
    data = (PYDICOM_FILES / name).read_bytes()
    ds = dcmread(PYDICOM_FILES / name)
    tag = b"\xe0\x7f\x10\x00" if ds.original_encoding[1] else b"\x7f\xe0\x00\x10"
    cut = tmp_path / name
    cut.write_bytes(data[:data.rindex(tag, 0, ds["PixelData"].file_tell)])
    with pytest.raises(UnreadableInstance, match="no Pixel Data"):
        read_header(cut)
