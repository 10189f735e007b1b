"""gateway/dimse.py reads and writes C-STORE command sets and file meta byte for byte
as pynetdicom (with pydicom) does, and leaves to pynetdicom what it does not read."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from gateway.dimse import decode_command, file_meta, store_request, store_response

EVEN_UID = "1.2.826.0.1.3680043.8.498.1234"
ODD_UID = "1.2.826.0.1.3680043.8.498.12345"


def _pynetdicom_command(message: DIMSEMessage, primitive: C_STORE) -> bytes:
    message.primitive_to_message(primitive)
    (pdata,) = list(message.encode_msg(1, 0))[:1]
    return pdata.presentation_data_value_list[0][1][1:]


def _primitive(**values: object) -> C_STORE:
    primitive = C_STORE()
    for name, value in values.items():
        setattr(primitive, name, value)
    return primitive


def _request(**values: object) -> C_STORE:
    return _primitive(**{"MessageID": 7, "AffectedSOPClassUID": CTImageStorage, "AffectedSOPInstanceUID": ODD_UID,
                         "Priority": 2, "DataSet": BytesIO(b"\0\0"), **values})


def _response(**values: object) -> C_STORE:
    return _primitive(**{"MessageIDBeingRespondedTo": 7, "AffectedSOPClassUID": MRImageStorage,
                         "AffectedSOPInstanceUID": EVEN_UID, "Status": 0x0000, **values})


@pytest.mark.parametrize("sop_uid", [EVEN_UID, ODD_UID])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEG2000Lossless])
def test_file_meta_is_pynetdicoms(sop_uid: str, syntax: str) -> None:
    expected = BytesIO()
    expected.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(expected, create_file_meta(sop_class_uid=CTImageStorage, sop_instance_uid=sop_uid,
                                                    transfer_syntax=syntax))  # type: ignore[arg-type]
    assert file_meta(CTImageStorage, sop_uid, syntax) == expected.getvalue()


@pytest.mark.parametrize("values", [
    {},
    {"MoveOriginatorApplicationEntityTitle": "PACS_A", "MoveOriginatorMessageID": 3},
    {"Priority": 0, "MessageID": 65535, "AffectedSOPInstanceUID": EVEN_UID},
])
def test_a_store_request_reads_as_pynetdicom_reads_it(values: dict[str, object],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom_config, "STORE_RECV_CHUNKED_DATASET", False)
    encoded = _pynetdicom_command(C_STORE_RQ(), _request(**values))
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((5, b"\x03" + encoded))
    message = DIMSEMessage()
    message.decode_msg(pdata)  # the command; its data set would follow
    theirs = message.message_to_primitive()
    ours = store_request(decode_command(encoded), 5)
    assert ours is not None
    for name in ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
                 "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours._context_id == 5


def test_commands_other_than_a_store_with_a_data_set_are_left_to_pynetdicom() -> None:
    request = _request()
    request.DataSet = None
    assert store_request(decode_command(_pynetdicom_command(C_STORE_RQ(), request)), 1) is None
    assert store_request(decode_command(_pynetdicom_command(C_STORE_RSP(), _response())), 1) is None


@pytest.mark.parametrize("values", [
    {},
    {"Status": 0xA700, "ErrorComment": "index unavailable: database is locked"},
    {"Status": 0xC000, "ErrorComment": "odd"},
    {"AffectedSOPInstanceUID": ODD_UID, "Status": 0xB007},
])
def test_a_store_response_is_written_as_pynetdicom_writes_it(values: dict[str, object]) -> None:
    response = _response(**values)
    assert store_response(response) == _pynetdicom_command(C_STORE_RSP(), _response(**values))


def test_responses_only_pynetdicom_writes() -> None:
    assert store_response(_response(Status=0xA900, OffendingElement=[0x00100010])) is None
    assert store_response(_response(Status=0xC000, ErrorComment="病人 ID 不符")) is None


@pytest.mark.parametrize("encoded", [
    b"\x00\x00\x00\x01\x02\x00",  # shorter than an element header
    b"\x00\x00\x00\x01\x04\x00\x00\x00\x01\x00",  # a value past the end
    b"\x08\x00\x16\x00\x02\x00\x00\x00\x31\x00",  # not of group 0000
])
def test_a_malformed_command_set_is_refused(encoded: bytes) -> None:
    with pytest.raises(ValueError):
        decode_command(encoded)


def test_a_command_without_its_required_elements_is_refused() -> None:
    elements = decode_command(_pynetdicom_command(C_STORE_RQ(), _request()))
    del elements[0x1000]  # Affected SOP Instance UID
    with pytest.raises(KeyError):
        store_request(elements, 1)

