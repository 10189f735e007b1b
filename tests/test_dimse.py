"""The DICOM door against real DCMTK peers: C-ECHO, C-STORE, AE-title checks, bad input."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import CTImageStorage

from tests.conftest import PYDICOM_FILES, Huren, dcmtk, dcmtk_env, huren_config
from tests.factory import instance, write

COMPRESSED = [
    "JPEG2000.dcm",                    # JPEG 2000
    "MR_small_jp2klossless.dcm",       # JPEG 2000 lossless
    "MR_small_jpeg_ls_lossless.dcm",   # JPEG-LS lossless
    "MR_small_RLE.dcm",                # RLE lossless
    "SC_rgb_jpeg_dcmtk.dcm",           # JPEG baseline
    "JPGExtended.dcm",                 # JPEG extended
    "image_dfl.dcm",                   # deflated explicit VR little endian
]


def client(huren: Huren) -> DICOMwebClient:
    return DICOMwebClient(huren.dicomweb)


def same_content(sent: Path, received) -> None:
    original = dcmread(sent)
    assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    for element in original:
        if element.tag == 0xFFFCFFFC:
            continue  # Data Set Trailing Padding: DCMTK drops it when sending
        if element.tag == 0x7FE00010:
            assert received.PixelData == original.PixelData
        else:
            assert received[element.tag] == element, element.keyword


def test_echo(huren: Huren) -> None:
    result = subprocess.run([dcmtk("echoscu"), "-aec", "HUREN", "127.0.0.1", str(huren.dicom_port)],
                            env=dcmtk_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_wrong_called_ae_is_rejected(huren: Huren) -> None:
    result = subprocess.run([dcmtk("echoscu"), "-aec", "NOT_HUREN", "127.0.0.1", str(huren.dicom_port)],
                            env=dcmtk_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr


HOSPITAL_A = {"id": "hosp-a", "name": "Hospital A", "ae_titles": ["CT_A", "DR_A"]}


def test_with_hospitals_only_their_ae_titles_associate(tmp_path: Path) -> None:
    config = huren_config(tmp_path, hospitals=[HOSPITAL_A])
    server = Huren(tmp_path, config).start()
    try:
        path = write(instance(), tmp_path / "ct.dcm")
        refused = server.storescu(path, calling="STRANGER")
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stderr
        accepted = server.storescu(path, calling="CT_A")
        assert accepted.returncode == 0, accepted.stderr
    finally:
        server.stop()
    with sqlite3.connect(tmp_path / "index.db") as db:
        assert db.execute("SELECT hospital_id, calling_ae FROM instances").fetchall() == [("hosp-a", "CT_A")]


def test_an_ae_title_calling_from_an_address_not_listed_is_aborted(tmp_path: Path) -> None:
    config = huren_config(tmp_path, hospitals=[{**HOSPITAL_A, "addresses": ["10.1.0.0/16"]},
                                               {"id": "b", "name": "B", "ae_titles": ["CT_B"],
                                                "addresses": ["127.0.0.1"]}])
    server = Huren(tmp_path, config).start()
    try:
        path = write(instance(), tmp_path / "ct.dcm")
        refused = server.storescu(path, calling="CT_A")
        assert refused.returncode != 0
        accepted = server.storescu(path, calling="CT_B")
        assert accepted.returncode == 0, accepted.stderr
    finally:
        server.stop()
    assert "does not call from there" in server.log.read_text()
    with sqlite3.connect(tmp_path / "index.db") as db:
        assert db.execute("SELECT hospital_id, calling_ae FROM instances").fetchall() == [("b", "CT_B")]


def test_storescu_series_comes_back_identical(any_huren: Huren, tmp_path: Path) -> None:
    study, series = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.1.1"
    paths = [
        write(instance(rows=512, columns=512, StudyInstanceUID=study, SeriesInstanceUID=series,
                       InstanceNumber=n, SOPInstanceUID=f"{series}.{n}"), tmp_path / "ct" / f"{n}.dcm")
        for n in range(1, 21)
    ]
    result = any_huren.storescu(tmp_path / "ct", extra=("+sd",))
    assert result.returncode == 0, result.stderr
    found = client(any_huren).search_for_instances(study, series)
    assert len(found) == 20
    received = {ds.SOPInstanceUID: ds for ds in client(any_huren).retrieve_series(study, series)}
    for path in paths:
        same_content(path, received[dcmread(path).SOPInstanceUID])


@pytest.mark.parametrize("name", COMPRESSED)
def test_dcmsend_keeps_files_in_their_transfer_syntax(huren: Huren, name: str) -> None:
    path = PYDICOM_FILES / name
    result = huren.storescu(path, tool="dcmsend")
    assert result.returncode == 0, result.stdout + result.stderr
    ds = dcmread(path)
    received = client(huren).retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    same_content(path, received)


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_uncompressed_arrives_as_explicit_little_endian(huren: Huren, name: str) -> None:
    # Of the uncompressed syntaxes a sender proposes we accept Explicit VR Little
    # Endian first: Big Endian is retired (PS3.5 A.3), Implicit VR loses VRs.
    path = PYDICOM_FILES / name
    assert huren.storescu(path, tool="dcmsend").returncode == 0
    ds = dcmread(path)
    received = client(huren).retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert received.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert [e.tag for e in received] == [e.tag for e in ds]
    assert (received.pixel_array == ds.pixel_array).all()


def test_store_twice_is_one_instance(huren: Huren, tmp_path: Path) -> None:
    path = write(instance(), tmp_path / "ct.dcm")
    for _ in range(2):
        result = huren.storescu(path)
        assert result.returncode == 0, result.stderr
    assert len(client(huren).search_for_instances()) == 1
    # Each association's log line says what its C-STOREs came to.
    ended = [json.loads(line) for line in huren.log.read_text().splitlines()
             if line.startswith("{") and json.loads(line)["event"] == "association released"]
    assert [line["instances"] for line in ended] == [{"stored": 1}, {"duplicate": 1}]


def send_raw(huren: Huren, path: Path, calling: str = "RAWSCU", sop_class: str = CTImageStorage) -> int:
    """C-STORE the file's bytes as they are (pynetdicom streams them without decoding)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1"])
    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", huren.dicom_port, ae_title=huren.ae_title)
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous
    return status.Status


def test_bad_instances_get_a_failure_status_and_lose_nothing(huren: Huren, tmp_path: Path) -> None:
    good = write(instance(rows=64, columns=64), tmp_path / "good.dcm")
    assert huren.storescu(good).returncode == 0

    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(write(instance(rows=64, columns=64), tmp_path / "t.dcm").read_bytes()[:-2000])
    assert send_raw(huren, truncated) == 0xC000

    no_uid = write(instance(), tmp_path / "no-uid.dcm")
    ds = dcmread(no_uid)
    del ds.SOPInstanceUID
    ds.save_as(no_uid)
    assert send_raw(huren, no_uid) == 0xA900

    other = write(instance(), tmp_path / "other.dcm")
    ds = dcmread(other)
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ds.save_as(other)
    assert send_raw(huren, other) == 0xA900  # dataset does not match the request's UID

    ds = dcmread(good)
    found = client(huren).search_for_instances()
    assert [r["00080018"]["Value"][0] for r in found] == [ds.SOPInstanceUID]
    back = client(huren).retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    same_content(good, back)


def test_unknown_sop_class_is_not_accepted(huren: Huren, tmp_path: Path) -> None:
    path = write(instance(SOPClassUID="1.2.3.4.5.6"), tmp_path / "odd.dcm")
    result = huren.storescu(path)
    assert result.returncode != 0 or "No presentation context" in result.stderr
    assert client(huren).search_for_instances() == []


@pytest.mark.parametrize("charset, name, query, expected", [
    ("GB18030", "张^三", "张*", {"Alphabetic": "张^三"}),
    ("GBK", "Li^Si=李^四", "LI^SI", {"Alphabetic": "Li^Si", "Ideographic": "李^四"}),
    ("ISO_IR 192", "Wang^Wu=王^五", "王^五", {"Alphabetic": "Wang^Wu", "Ideographic": "王^五"}),
    (["", "ISO 2022 IR 58"], b"Zhang^San=\x1b$)A\xd5\xc5^\x1b$)A\xc8\xfd", "ZHANG^SAN",
     {"Alphabetic": "Zhang^San", "Ideographic": "张^三"}),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎", "山田*",
     {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}),
    ("ISO_IR 100", "Müller^Jürgen", "müller*", {"Alphabetic": "Müller^Jürgen"}),
])
def test_names_in_every_character_set(huren: Huren, tmp_path: Path, charset, name, query, expected) -> None:
    ds = instance(SpecificCharacterSet=charset)
    ds.PatientName = name
    path = write(ds, tmp_path / "named.dcm")
    result = huren.storescu(path)
    assert result.returncode == 0, result.stderr
    found = client(huren).search_for_studies(search_filters={"PatientName": query})
    assert [r["00100010"]["Value"][0] for r in found] == [expected]


def test_each_association_negotiates_from_the_same_contexts(huren: Huren) -> None:
    """Associations share the acceptor's contexts without copying their UIDs; one
    negotiation must not change what the next is offered."""
    for proposed in ([JPEG2000Lossless], [ImplicitVRLittleEndian], [JPEG2000Lossless],
                     [ImplicitVRLittleEndian, ExplicitVRLittleEndian]):
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(CTImageStorage, proposed)
        assoc = ae.associate("127.0.0.1", huren.dicom_port, ae_title="HUREN")
        try:
            assert assoc.is_established
            [accepted] = assoc.accepted_contexts
            # The encoded syntax if proposed, else Explicit VR Little Endian (scp.PREFERRED_SYNTAXES).
            wanted = ExplicitVRLittleEndian if ExplicitVRLittleEndian in proposed else proposed[0]
            assert accepted.transfer_syntax == [wanted]
        finally:
            assoc.release()
