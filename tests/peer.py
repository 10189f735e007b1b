"""A DICOM peer's PDUs as bytes, for tests that speak over a raw socket (PS3.8 §9.3),
built with pynetdicom's PDU classes."""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.transport import AddressInformation


def association_request(port: int, abstract_syntax: str, *, calling: str = "RAWPEER",
                        max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 §9.3.2) to ``HUREN`` at `port`, proposing `abstract_syntax`
    in Explicit VR Little Endian as presentation context 1, as pynetdicom's requestor sends it."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "HUREN"
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 1)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", port)
    context = build_context(abstract_syntax, [ExplicitVRLittleEndian])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    limit = MaximumLengthNotification()
    limit.maximum_length_received = max_pdu
    primitive.user_information = [limit]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()
