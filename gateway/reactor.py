"""An event-driven receive path for pynetdicom's associations (PS3.8 §7, §9).

pynetdicom 3.0.4 runs each association on two threads that poll: the upper
layer (DUL) thread sleeps 1 ms whenever a turn of its loop finds nothing, and
the association thread sleeps 1 ms on every turn. A sender that waits for each
C-STORE response meets about three of those sleeps per instance. The socket is
read 4 KiB per ``recv`` and every P-DATA fragment is copied several times on
its way to the file it ends in.

Here the same two threads wait instead of sleeping:

- the DUL waits on its socket and on a wake-up written when the association
  thread queues something to send or stops it, bounded by the ARTIM timer;
  it reads each PDU whole with ``recv_into`` into a buffer of its own (the
  6-byte header first, then exactly the length it announces), and hands the
  P-DATA fragments on as views of that buffer, so the data set's bytes are
  not copied between the socket and the file;
- the association thread waits on an event that is set when a DIMSE message,
  a release or an abort arrives, or the DUL ends.

The state machine (:mod:`pynetdicom.fsm`) and its actions stay pynetdicom's;
this module replaces how events reach it. It is installed with
``make_server(..., request_handler=EventRequests)``;
``tests/test_receive_path.py`` fails when a pynetdicom method it overrides or
relies on changes (see ``docs/pynetdicom-event-driven.md``).
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import _PDU_TYPES, DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem
from pynetdicom.transport import RequestHandler

from gateway.dimse import StoreDIMSE

log = logging.getLogger("huren.dimse")

# The longest PDU a peer may send us: a P-DATA-TF within the maximum length we announce
# (dicom.max_pdu, PS3.8 §9.3.1 and D.1), or an association request, which even with a
# hundred presentation contexts stays far below a MiB.
ASSOCIATION_PDU_BYTES = 1024 * 1024

_HEADER = struct.Struct(">BxL")  # PDU type, reserved, PDU length (PS3.8 §9.3.1)
_P_DATA_TF = 0x04
# What a non-blocking read or write raises when it would have to wait (TLS says so with its own errors).
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _SignallingQueue(queue.Queue):
    """A queue that calls `signal` after every put, whoever puts."""

    def __init__(self, signal: Callable[[], None], items: queue.Queue) -> None:
        super().__init__()
        self._signal = signal
        self.queue.extend(items.queue)

    def _put(self, item: Any) -> None:
        super()._put(item)
        self._signal()


class EventRequests(RequestHandler):
    """pynetdicom's request handler, with its association made event-driven.

    A PDU longer than we accept (:data:`ASSOCIATION_PDU_BYTES`, or the
    maximum PDU length we announce if larger) ends the connection before its
    body is read: pynetdicom would read as much as the header says, up to 4 GiB.
    """

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        EventAssociation.adopt(assoc, max(self.ae.maximum_pdu_size, ASSOCIATION_PDU_BYTES),
                               f"{self.client_address[0]}:{self.client_address[1]}")
        return assoc


class EventAssociation(Association):
    """An association whose thread waits for work instead of polling every millisecond."""

    _arrived: threading.Event

    @classmethod
    def adopt(cls, assoc: Association, limit: int, peer: str) -> None:
        """Make the unstarted `assoc`, as pynetdicom built and configured it, event-driven.

        pynetdicom's request handler makes the association itself (by a local import of
        :class:`~pynetdicom.association.Association`), so the class is changed in place
        rather than its configuration repeated here; nothing is added to the instance's
        layout but attributes.
        """
        assoc.__class__ = cls
        assert isinstance(assoc, EventAssociation)
        assoc._arrived = threading.Event()
        # What the association thread waits for: a decoded DIMSE message (or the
        # (None, None) an abort puts there), and A-RELEASE and A-ABORT primitives.
        assoc.dimse.msg_queue = _SignallingQueue(assoc._arrived.set, assoc.dimse.msg_queue)
        assoc.dul.to_user_queue = _SignallingQueue(assoc._arrived.set, assoc.dul.to_user_queue)
        EventDUL.adopt(assoc.dul, limit, peer)
        StoreDIMSE.adopt(assoc.dimse)

    def _run_reactor(self) -> None:
        """Serve DIMSE requests until the association is released, aborted or times out.

        pynetdicom's loop, turn for turn, with a wait on :attr:`_arrived` (bounded by
        the network timeout) where it slept 1 ms.
        """
        try:
            self._serve()
        finally:
            # When another thread ended the association (release() or abort() from outside the
            # reactor), the DUL may still be sending its last PDU: pynetdicom's run_reactor closes
            # the socket as soon as this returns. (pynetdicom's own 1 ms sleep hid that race.)
            if self.dul.is_alive():
                self.dul.join(self.acse_timeout)
            self._discard_partial_data_set()

    def _discard_partial_data_set(self) -> None:
        """Remove the files left in the receive folder: that of a C-STORE data set the
        association ended in the middle of (pynetdicom leaves it open there), and the
        one made for the next. Only once the DUL, which writes them, has ended.
        """
        if not self.dul.is_alive():
            self.dimse.discard_files()  # type: ignore[attr-defined]

    def _serve(self) -> None:
        self._is_paused = False
        busy = True
        while not self._kill:
            if not busy:
                # Waiting touches no queue, so release() and the send_*() methods may go ahead.
                self._is_paused = True
                self._arrived.wait(max(self.dul._idle_timer.remaining, 0))
            # Cleared before the queues are looked at: whatever arrives from here on sets it again.
            self._arrived.clear()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            busy = msg is not None
            if msg is not None:
                self._serve_request(msg, context_id)  # type: ignore[arg-type]

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires for the abort
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                log.warning("association aborted: network timeout", extra={
                    "ae": self.requestor.ae_title, "timeout": self.network_timeout})
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True  # release() waits for the reactor to say so
                    self.release()
                else:
                    self.abort()
                self.kill()
                return


class EventDUL(DULServiceProvider):
    """The DICOM upper layer, waiting on its socket and its queues instead of polling."""

    _limit: int
    _peer: str
    _stopping: bool
    _waiting: bool
    _selector: selectors.BaseSelector
    _wake_reader: socket.socket
    _wake_writer: socket.socket
    _header: bytearray
    _pdu: bytearray | None
    _filled: int

    @classmethod
    def adopt(cls, dul: DULServiceProvider, limit: int, peer: str) -> None:
        """Make the unstarted `dul` event-driven (see :meth:`EventAssociation.adopt`)."""
        # pynetdicom sets _kill_thread directly (stop_dul) as well as through kill_dul():
        # the property below wakes the reactor either way.
        stopping = vars(dul).pop("_kill_thread")
        dul.__class__ = cls
        assert isinstance(dul, EventDUL)
        dul._stopping = stopping
        dul._limit, dul._peer = limit, peer
        dul._waiting = False
        dul._wake_reader, dul._wake_writer = socket.socketpair()
        dul._wake_reader.setblocking(False)
        dul._wake_writer.setblocking(False)
        dul._selector = selectors.DefaultSelector()
        dul._header, dul._pdu, dul._filled = bytearray(_HEADER.size), None, 0
        # What the reactor waits for besides its socket: primitives to send, and events
        # other threads raise (a socket closed under it, an invalid DIMSE message).
        dul.to_provider_queue = _SignallingQueue(dul._wake, dul.to_provider_queue)
        dul.event_queue = _SignallingQueue(dul._wake, dul.event_queue)

    @property
    def _kill_thread(self) -> bool:  # type: ignore[override]
        return self._stopping

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self._stopping = value
        self._wake()

    def _wake(self) -> None:
        """Interrupt the reactor's wait, if it is waiting (a no-op from the reactor itself)."""
        if self._waiting:
            try:
                self._wake_writer.send(b"\0")
            except OSError:
                pass  # a wake-up is pending already, or the reactor has ended

    def run(self) -> None:
        # The thread's target is pynetdicom's run_reactor, bound before adopt() changed the class.
        # (Huren leaves _config.PASS_CONTEXTVARS off, so that target carried no context either.)
        self.run_reactor()

    def run_reactor(self) -> None:
        """Run the state machine on what the peer sends and the local user asks, until stopped.

        Each turn: an ARTIM expiry (Evt18), then either one primitive to send or
        what the socket has of the next PDU, then every event queued. A turn that
        finds nothing waits for the socket, a wake-up or the ARTIM timer.
        """
        self._idle_timer.start()
        transport = self.socket
        assert transport is not None and transport.socket is not None
        # Non-blocking from here: reads never wait inside recv (a peer that stops halfway
        # through a PDU cannot hold the reactor), and _send waits with a bound.
        transport.socket.setblocking(False)
        self._selector.register(transport.socket, selectors.EVENT_READ)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        try:
            self.assoc._dul_ready.set()
            while not self._kill_thread:
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        progressed = True
                    else:
                        progressed = self._is_transport_event()
                        if progressed:
                            self._idle_timer.restart()
                except Exception as exc:
                    self._abort_on(exc)
                    return
                if not progressed and self.event_queue.empty():
                    self._wait()
                while not self._kill_thread:
                    try:
                        event = self.event_queue.get(block=False)
                    except queue.Empty:
                        break
                    self.state_machine.do_action(event)
        finally:
            self._selector.close()
            self._wake_reader.close()
            self._wake_writer.close()
            self.assoc._arrived.set()  # type: ignore[attr-defined]

    def _wait(self) -> None:
        """Wait for the socket, a wake-up, or the ARTIM timer to run out."""
        self._waiting = True
        try:
            # Checked again now that a put would wake us: one made before is not missed.
            if self._kill_thread or not self.to_provider_queue.empty() or not self.event_queue.empty():
                return
            ready = self._selector.select(max(self.artim_timer.remaining, 0))
        finally:
            self._waiting = False
        if any(key.fileobj is self._wake_reader for key, _ in ready):
            try:
                while self._wake_reader.recv(4096):
                    pass
            except BlockingIOError:
                pass

    def _abort_on(self, exc: Exception) -> None:
        """Send an A-ABORT outside the state machine after an exception in the reactor
        (as pynetdicom does: the state machine's state can no longer be trusted)."""
        log.error("association aborted: %s in the upper layer", type(exc).__name__,
                  exc_info=exc, extra={"peer": self._peer})
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x00
        self._write(abort.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True

    def _is_transport_event(self) -> bool:
        """Read what the socket has of the next PDU; ``True`` if anything happened.

        In Sta13 (awaiting the transport's close) the socket is closed as soon as it
        has nothing more to read, as pynetdicom does; nothing waits in that state.
        """
        transport = self.socket
        if transport is None or transport.socket is None:
            return False
        if self._read():
            return True
        if self.state_machine.current_state == "Sta13":
            transport.close()  # Evt17
            return True
        return False

    def _read(self) -> bool:
        """Read into the PDU being received until it is whole or the socket has no more.

        Returns ``True`` if bytes were read or an event was queued.
        """
        sock = self.socket.socket  # type: ignore[union-attr]
        progressed = False
        while True:
            buffer = self._header if self._pdu is None else self._pdu
            try:
                count = sock.recv_into(memoryview(buffer)[self._filled:])
            except _WOULD_BLOCK:
                return progressed
            except OSError as exc:
                log.info("connection lost while receiving a PDU", extra={"peer": self._peer, "error": str(exc)})
                self.event_queue.put("Evt17")
                return True
            if count == 0:  # the peer closed: part of a PDU is none (PS3.8 §9.1.2.1, Evt17)
                self._pdu, self._filled = None, 0
                self.event_queue.put("Evt17")
                return True
            progressed = True
            self._filled += count
            if self._pdu is None:
                if self._filled < _HEADER.size:
                    continue
                if not self._begin_pdu():
                    return True
            if self._pdu is not None and self._filled == len(self._pdu):
                pdu, self._pdu, self._filled = self._pdu, None, 0
                self._received(pdu)
                return True

    def _begin_pdu(self) -> bool:
        """Size the buffer of the PDU whose header has arrived; ``False`` if it is refused."""
        kind, length = _HEADER.unpack(self._header)
        self._filled = 0
        if bytes([kind]) not in _PDU_TYPES:
            log.warning("unknown PDU type received", extra={"peer": self._peer, "type": f"0x{kind:02X}"})
            self.event_queue.put("Evt19")
            return False
        if length > self._limit:
            log.warning("association aborted: a PDU longer than we accept", extra={
                "peer": self._peer, "length": length, "limit": self._limit})
            # Closed unread (Evt17), so the peer cannot make us hold what it announces.
            self.socket.close()  # type: ignore[union-attr]
            return False
        self._pdu = bytearray(_HEADER.size + length)
        self._pdu[:_HEADER.size] = self._header
        self._filled = _HEADER.size
        return True

    def _received(self, pdu: bytearray) -> None:
        """Decode a whole PDU and queue it with its event (Evt3, 4, 6, 10, 12, 13, 16 or 19)."""
        if self.assoc.get_handlers(evt.EVT_DATA_RECV):
            evt.trigger(self.assoc, evt.EVT_DATA_RECV, {"data": bytes(pdu)})
        pdu_class, event = _PDU_TYPES[bytes(pdu[:1])]
        try:
            if pdu[0] == _P_DATA_TF:
                decoded: Any = _p_data(pdu)
            else:
                decoded = pdu_class()
                decoded.decode(bytes(pdu))
        except Exception as exc:
            log.warning("undecodable PDU received", extra={"peer": self._peer, "error": str(exc)})
            self.event_queue.put("Evt19")
            return
        evt.trigger(self.assoc, evt.EVT_PDU_RECV, {"pdu": decoded})
        self.event_queue.put(event)
        self._recv_pdu.put(decoded)

    def _send(self, pdu: Any) -> None:
        """Encode and send `pdu` to the peer (Evt17 if the connection is gone)."""
        if self._write(pdu.encode()):
            evt.trigger(self.assoc, evt.EVT_PDU_SENT, {"pdu": pdu})

    def _write(self, data: bytes) -> bool:
        """Send all of `data`, waiting for room at most the network timeout between writes.

        Returns ``False``, with Evt17 queued, when the connection failed or stalled.
        """
        transport = self.socket
        sock = transport.socket if transport is not None else None
        if sock is None:
            self.event_queue.put("Evt17")
            return False
        view = memoryview(data)
        try:
            while view:
                try:
                    view = view[sock.send(view):]
                except _WOULD_BLOCK:
                    with selectors.DefaultSelector() as room:
                        room.register(sock, selectors.EVENT_WRITE)
                        if not room.select(self.network_timeout):
                            raise TimeoutError("the peer takes nothing more") from None
        except OSError as exc:
            log.info("connection lost while sending a PDU", extra={"peer": self._peer, "error": str(exc)})
            self.event_queue.put("Evt17")
            return False
        if self.assoc.get_handlers(evt.EVT_DATA_SENT):
            evt.trigger(self.assoc, evt.EVT_DATA_SENT, {"data": data})
        return True


def _p_data(pdu: bytearray) -> P_DATA_TF:
    """A P-DATA-TF PDU whose fragments are views of `pdu` (PS3.8 §9.3.5), not copies.

    Raises
    ------
    ValueError
        If an item's length runs past the PDU or leaves no room for its context ID.
    """
    decoded = P_DATA_TF()
    view = memoryview(pdu)
    offset, end = _HEADER.size, len(pdu)
    while offset < end:
        if end - offset < 5:
            raise ValueError("a presentation data value item shorter than its header")
        length = int.from_bytes(view[offset:offset + 4], "big")
        if length < 1 or offset + 4 + length > end:
            raise ValueError(f"a presentation data value item of {length} bytes in {end - offset}")
        item = PresentationDataValueItem()
        item.presentation_context_id = pdu[offset + 4]
        item.presentation_data_value = view[offset + 5:offset + 4 + length]  # type: ignore[assignment]
        decoded.presentation_data_value_items.append(item)
        offset += 4 + length
    return decoded
