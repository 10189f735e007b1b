"""C-STORE requests in and responses out without a pydicom data set per command.

pynetdicom decodes every command set into a pydicom :class:`~pydicom.dataset.Dataset`,
copies it element by element into a primitive, builds the received file's meta
information as another data set, and encodes each response the same way: about
0.8 ms of a 512x512 CT slice's 6 ms on one association. A C-STORE command set
is a handful of implicit VR little endian elements (PS3.7 §9.1.1, §9.3.1, E.1),
so :class:`StoreDIMSE` reads and writes those of C-STORE itself and leaves every
other message, and any C-STORE it cannot read, to pynetdicom unchanged.

It is pynetdicom's DIMSE provider with two methods overridden; it is installed
on each association by :mod:`gateway.reactor`, and only while nobody listens
to ``EVT_DIMSE_RECV`` or ``EVT_DIMSE_SENT``, which carry pynetdicom's message
objects.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from io import BytesIO
from pathlib import Path
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, dimse_messages, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from archive.part10 import PREFIX

log = logging.getLogger("huren.dimse")

_ELEMENT = struct.Struct("<HHL")  # group, element, value length: implicit VR little endian (PS3.5 §7.1.3)
_US = struct.Struct("<H")

# Command elements (PS3.7 E.1) by tag.
GROUP_LENGTH = 0x00000000
AFFECTED_SOP_CLASS = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
RESPONDED_TO = 0x00000120
PRIORITY = 0x00000700
DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE = 0x00001000
MOVE_ORIGINATOR_AE = 0x00001030
MOVE_ORIGINATOR_ID = 0x00001031

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101  # CommandDataSetType: any other value announces one


def decode_command(encoded: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """The elements of an implicit VR little endian command set, by tag.

    Raises
    ------
    ValueError
        If an element runs past the end or is not of group 0000.
    """
    view = memoryview(encoded)
    elements: dict[int, bytes] = {}
    offset = 0
    while offset < len(view):
        if len(view) - offset < _ELEMENT.size:
            raise ValueError("a command element shorter than its header")
        group, element, length = _ELEMENT.unpack_from(view, offset)
        offset += _ELEMENT.size
        if group != 0 or offset + length > len(view):
            raise ValueError(f"command element ({group:04X},{element:04X}) of {length} bytes is malformed")
        elements[element] = bytes(view[offset:offset + length])
        offset += length
    return elements


def encode_command(elements: dict[int, bytes]) -> bytes:
    """An implicit VR little endian command set of `elements` (values padded to even
    length already), in tag order and led by its group length."""
    body = b"".join(_ELEMENT.pack(0, tag, len(value)) + value
                    for tag, value in sorted(elements.items()) if tag != GROUP_LENGTH)
    return _ELEMENT.pack(0, GROUP_LENGTH, 4) + len(body).to_bytes(4, "little") + body


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the file meta information pynetdicom writes before a
    received data set (PS3.10 §7.1), as explicit VR little endian."""
    elements = b"".join((
        _explicit(0x0001, b"OB", b"\x00\x01"),
        _explicit(0x0002, b"UI", _uid(sop_class_uid)),
        _explicit(0x0003, b"UI", _uid(sop_instance_uid)),
        _explicit(0x0010, b"UI", _uid(transfer_syntax)),
        _explicit(0x0012, b"UI", _uid(PYNETDICOM_IMPLEMENTATION_UID)),
        _explicit(0x0013, b"SH", _text(PYNETDICOM_IMPLEMENTATION_VERSION)),
    ))
    return PREFIX + _explicit(0x0000, b"UL", len(elements).to_bytes(4, "little")) + elements


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    """A group 0002 element in explicit VR little endian (PS3.5 §7.1.2)."""
    if vr == b"OB":
        return struct.pack("<HH2s2xL", 2, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def _uid(value: str) -> bytes:
    encoded = value.encode("ascii")
    return encoded + b"\0" if len(encoded) % 2 else encoded


def _text(value: str) -> bytes:
    encoded = value.encode("ascii")
    return encoded + b" " if len(encoded) % 2 else encoded


def _read_text(value: bytes) -> str:
    return value.decode("ascii").rstrip("\0 ")


def _read_us(value: bytes) -> int:
    (number,) = _US.unpack(value)
    return number


def store_request(elements: dict[int, bytes], context_id: int) -> C_STORE | None:
    """The C-STORE request primitive of a decoded command set, or ``None`` when the
    command is another one or announces no data set.

    Raises
    ------
    ValueError, TypeError, KeyError
        If a value is missing, malformed or refused by the primitive.
    """
    if _read_us(elements[COMMAND_FIELD]) != C_STORE_RQ or _read_us(elements[DATA_SET_TYPE]) == NO_DATA_SET:
        return None
    request = C_STORE()
    request.MessageID = _read_us(elements[MESSAGE_ID])
    request.AffectedSOPClassUID = _read_text(elements[AFFECTED_SOP_CLASS])
    request.AffectedSOPInstanceUID = _read_text(elements[AFFECTED_SOP_INSTANCE])
    request.Priority = _read_us(elements[PRIORITY])
    if elements.get(MOVE_ORIGINATOR_AE):
        request.MoveOriginatorApplicationEntityTitle = _read_text(elements[MOVE_ORIGINATOR_AE])
    if elements.get(MOVE_ORIGINATOR_ID):
        request.MoveOriginatorMessageID = _read_us(elements[MOVE_ORIGINATOR_ID])
    request._context_id = context_id
    return request


def store_response(response: C_STORE) -> bytes | None:
    """The encoded command set of a C-STORE response primitive, or ``None`` when it
    carries what only pynetdicom encodes (an Offending Element, a comment that is
    not ASCII)."""
    if response.OffendingElement or response.MessageIDBeingRespondedTo is None or response.Status is None:
        return None
    elements = {
        AFFECTED_SOP_CLASS: _uid(str(response.AffectedSOPClassUID)),
        COMMAND_FIELD: _US.pack(C_STORE_RSP),
        RESPONDED_TO: _US.pack(response.MessageIDBeingRespondedTo),
        DATA_SET_TYPE: _US.pack(NO_DATA_SET),
        STATUS: _US.pack(response.Status),
        AFFECTED_SOP_INSTANCE: _uid(str(response.AffectedSOPInstanceUID)),
    }
    if response.ErrorComment:
        try:
            elements[ERROR_COMMENT] = _text(response.ErrorComment)
        except UnicodeEncodeError:
            return None
    return encode_command(elements)


def _new_file() -> Any:
    """A file for a received data set, made as pynetdicom makes it (through the module
    attribute that :func:`gateway.store.digest_received_files` points at its own)."""
    return dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")  # type: ignore[attr-defined]


class StoreDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, reading C-STORE requests and writing their
    responses itself.

    A request's data set is written, as pynetdicom writes it, to the file
    ``pynetdicom.dimse_messages.NamedTemporaryFile`` makes, after the file meta
    information; the request primitive reaches the association as pynetdicom's would.
    """

    _storing: C_STORE | None  # the request whose data set is arriving
    _spare: Any  # the file the next data set will be written to, made ahead, or None

    @classmethod
    def adopt(cls, dimse: DIMSEServiceProvider) -> None:
        """Make the unstarted association's `dimse` provider read C-STOREs itself."""
        dimse.__class__ = cls
        assert isinstance(dimse, StoreDIMSE)
        dimse._storing = None
        dimse._spare = None

    def _observed(self) -> bool:
        """Whether a handler wants pynetdicom's message objects."""
        return bool(self.assoc.get_handlers(evt.EVT_DIMSE_RECV) or self.assoc.get_handlers(evt.EVT_DIMSE_SENT))

    def receive_primitive(self, primitive: P_DATA) -> None:
        items = primitive.presentation_data_value_list
        for index, (context_id, data) in enumerate(items):
            if self.message is not None:  # a message pynetdicom is decoding
                self._leave(items[index:])
                return
            control = data[0]
            storing = self._storing
            if storing is not None:
                if control & 1:
                    log.warning("association aborted: a command arrived inside a C-STORE data set",
                                extra={"ae": self.assoc.requestor.ae_title})
                    self.dul.event_queue.put("Evt19")
                    return
                storing._dataset_file.write(memoryview(data)[1:])  # type: ignore[union-attr]
                if control & 2:
                    self._stored(storing)
                continue
            if control & 3 == 3 and not self._observed() and self._begin_store(context_id, data):
                continue
            self._leave(items[index:])
            return

    def _leave(self, items: list[tuple[int, Any]]) -> None:
        """Have pynetdicom decode the rest of a P-DATA, from a message it reads itself."""
        rest = P_DATA()
        rest.presentation_data_value_list.extend(items)
        super().receive_primitive(rest)

    def _begin_store(self, context_id: int, data: Any) -> bool:
        """Start receiving the data set of the C-STORE request whose whole command is
        `data`; ``False`` leaves the command to pynetdicom."""
        try:
            request = store_request(decode_command(memoryview(data)[1:]), context_id)
            if request is None:
                return False
            transfer_syntax = self.assoc._accepted_cx[context_id].transfer_syntax[0]  # type: ignore[index]
            meta = file_meta(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                             str(transfer_syntax))
        except (ValueError, TypeError, KeyError, struct.error, UnicodeError):
            return False  # pynetdicom decodes it again and says what is wrong
        written, self._spare = self._spare or _new_file(), None
        written.write(meta)
        request._dataset_file = written
        request._dataset_path = Path(written.name)
        request.DataSet = BytesIO()  # empty, as pynetdicom leaves it when writing to a file
        self._storing = request
        return True

    def _stored(self, request: C_STORE) -> None:
        """Hand the complete request to the association, then make the next one's file.

        Made now, while the association archives this instance, rather than when the
        next command arrives: creating a file in a folder whose file system has just
        committed (the previous instance's fsyncs) can block for a few tenths of a
        millisecond, and a sender waiting for each response would wait that long too.
        """
        request._dataset_file.file.flush()  # type: ignore[union-attr]
        self._storing = None
        self.msg_queue.put((request._context_id, request))
        try:
            self._spare = _new_file()
        except OSError as exc:
            # This instance is whole and is answered; the next command tries again, and a
            # failure then ends the association as pynetdicom's own would.
            log.warning("cannot make the next data set's file", extra={
                "ae": self.assoc.requestor.ae_title, "error": str(exc)})

    def discard_files(self) -> None:
        """Remove the file of a data set the association ended in the middle of, and
        the one made for the next; call once nothing writes them any more."""
        message_file = getattr(self.message, "_data_set_file", None) if self.message is not None else None
        storing_file = self._storing._dataset_file if self._storing is not None else None
        self._storing = None
        for written in (storing_file, message_file, self._spare):
            if written is not None:
                written.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(written.name)
        self._spare = None

    def send_msg(self, primitive: Any, context_id: int) -> None:
        encoded = None
        if isinstance(primitive, C_STORE) and not self._observed():
            encoded = store_response(primitive)
        if encoded is None or (0 < self.maximum_pdu_size < len(encoded) + 6):
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
        self.dul.send_pdu(pdata)
