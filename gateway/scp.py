"""The DIMSE listener: one pynetdicom AE that answers C-ECHO and C-STORE.

Every storage SOP class is accepted in every transfer syntax pynetdicom knows
(PS3.5 §10), and objects are archived as received, never transcoded.
"""

from __future__ import annotations

import copy
import logging
import socket
import socketserver
import ssl
import threading

from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from archive.audit import AuditEvent, AuditTrail
from archive.config import Config
from archive.ingest import Ingest
from archive.policy import Caller
from gateway.access import allowed_calling_aes, association_caller, hospital_of
from gateway.reactor import EventRequests
from gateway.store import digest_received_files, handle_store, stored_counts
from gateway.tls import certificate_name, handshake, tls_hospital

log = logging.getLogger("huren.dimse")

# pynetdicom accepts the first of *our* syntaxes that the requestor proposes.
# A requestor proposes the uncompressed ones as a fallback it can convert to,
# so listing encoded syntaxes first keeps objects as the sender holds them;
# among uncompressed ones Explicit VR Little Endian wins (Big Endian is
# retired, Implicit VR loses the VRs of private elements).
UNCOMPRESSED = [ExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian]
PREFERRED_SYNTAXES = [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in UNCOMPRESSED] + UNCOMPRESSED


class _SharedContext(PresentationContext):
    """A presentation context whose deep copy shares its immutable UIDs.

    pynetdicom deep-copies the acceptor's contexts for every association so
    that negotiation cannot change them; ours are 170 storage SOP classes times
    every transfer syntax, and copying each UID made accepting an association
    cost over 100 ms. New lists over the same UIDs protect them just as well.
    """

    def __deepcopy__(self, memo: dict) -> _SharedContext:
        twin = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, list):
                setattr(twin, name, list(value))
        return twin

    @classmethod
    def of(cls, context: PresentationContext) -> _SharedContext:
        twin = cls.__new__(cls)
        vars(twin).update(vars(context))
        return twin


class NoDelayServer(ThreadedAssociationServer):
    """An association server whose accepted sockets send without Nagle's delay.

    It accepts on the `listen_socket` it is given (bound and listening,
    perhaps shared by forked workers) instead of binding its own.
    """

    def __init__(self, *args, listen_socket: socket.socket, **kwargs) -> None:
        self._listen_socket = listen_socket
        super().__init__(*args, **kwargs)
        self.contexts = [_SharedContext.of(context) for context in self.contexts]

    def server_bind(self) -> None:
        self.socket.close()
        self.socket = self._listen_socket
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass  # listening already, with the caller's backlog

    def server_close(self) -> None:
        # Close this process's handle only: pynetdicom's shutdown(SHUT_RDWR) would
        # stop every worker sharing the socket from accepting.
        self.socket.close()

    def shutdown(self) -> None:
        """Stop serving and close the socket.

        pynetdicom's own also takes the server off its AE's list, where only
        servers the AE started itself are, and fails for one made by ``make_server``.
        """
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def get_request(self):
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            # pynetdicom would shake hands here, in the one thread that accepts, where a
            # slow or silent peer holds up every other caller: the association's thread does.
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def process_request_thread(self, request, client_address) -> None:
        if isinstance(request, ssl.SSLSocket) and not handshake(request, client_address, self.ae.network_timeout):
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)


def build_ae(config: Config) -> AE:
    """The application entity, with the contexts and limits the configuration sets."""
    # Stream each received dataset to a file instead of memory, hashed as it is written.
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
    digest_received_files()
    # pynetdicom's own handlers narrate every PDU and DIMSE message at DEBUG and INFO,
    # which huren.logs drops (the "pynetdicom" logger is at WARNING): not bound, they cost nothing.
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    ae = AE(ae_title=config.dicom.ae_title)
    ae.maximum_pdu_size = config.dicom.max_pdu
    ae.network_timeout = config.dicom.network_timeout
    ae.acse_timeout = config.dicom.network_timeout
    ae.dimse_timeout = config.dicom.network_timeout
    ae.maximum_associations = 64
    ae.require_called_aet = config.dicom.check_called_ae
    ae.require_calling_aet = allowed_calling_aes(config)
    ae.add_supported_context(Verification, PREFERRED_SYNTAXES)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, PREFERRED_SYNTAXES)
    return ae


def start(config: Config, ingest: Ingest, trail: AuditTrail, listen_socket: socket.socket,
          ssl_context: ssl.SSLContext | None = None) -> NoDelayServer:
    """Start accepting on `listen_socket` in background threads; stop with ``server.shutdown()``.

    With `ssl_context`, every association on it is DICOM over TLS (PS3.15 Annex B.9).
    """
    ae = build_ae(config)
    handlers = [
        (evt.EVT_C_STORE, handle_store, [ingest, config, trail]),
        (evt.EVT_ACCEPTED, _check_accepted, [config, trail]),
        (evt.EVT_RELEASED, _log_association, ["released", config]),
        (evt.EVT_ABORTED, _log_association, ["aborted", config]),
        (evt.EVT_REJECTED, _rejected, [config, trail]),
    ]
    server = ae.make_server(listen_socket.getsockname()[:2], evt_handlers=handlers,
                            server_class=NoDelayServer, listen_socket=listen_socket, ssl_context=ssl_context,
                            request_handler=EventRequests)
    threading.Thread(target=server.serve_forever, name="dimse", daemon=True).start()
    log.info("DIMSE listening" if ssl_context is None else "DIMSE over TLS listening",
             extra={"ae": config.dicom.ae_title, "port": server.server_address[1]})
    return server


def _check_accepted(event: Event, config: Config, trail: AuditTrail) -> None:
    """Abort an association whose AE title calls from an address its hospital does not list,
    or that a client certificate of another hospital speaks for."""
    requestor = event.assoc.requestor
    if association_caller(config, event.assoc) is None:
        log.warning("association aborted: its AE title's hospital does not call from there", extra={
            "ae": requestor.ae_title, "hospital": hospital_of(config, requestor.ae_title),
            "certificate": certificate_name(event.assoc), "peer": f"{requestor.address}:{requestor.port}",
        })
        _denied(trail, requestor, "address or certificate not of the AE title's hospital")
        event.assoc.abort()
        return
    _log_association(event, "accepted", config)


def _rejected(event: Event, config: Config, trail: AuditTrail) -> None:
    _denied(trail, event.assoc.requestor, "association rejected (calling or called AE title)")
    _log_association(event, "rejected", config)


def _denied(trail: AuditTrail, requestor, reason: str) -> None:
    trail.record(AuditEvent("login", "denied", Caller("dimse", requestor.ae_title.strip() or "?",
                                                      address=requestor.address), detail=reason))


def _log_association(event: Event, what: str, config: Config) -> None:
    calling = event.assoc.requestor.ae_title
    log.info("association %s", what, extra={
        # A verified client certificate proves the hospital; a calling AE title only claims it.
        "ae": calling, "hospital": tls_hospital(config, event.assoc) or hospital_of(config, calling),
        "certificate": certificate_name(event.assoc),
        "peer": f"{event.assoc.requestor.address}:{event.assoc.requestor.port}",
        # What its C-STOREs came to, once it ends (instances are logged one by one at DEBUG).
        **({"instances": dict(stored_counts(event.assoc))} if what in ("released", "aborted") else {}),
    })
