"""DICOM over TLS (PS3.15 Annex B.9–B.11): the handshake, and the hospital a
client certificate speaks for.

The DIMSE server wraps each connection it accepts on the TLS port in the
context of :func:`archive.tls.server_context`; once the handshake is done the
association's socket (``assoc.dul.socket.socket``) is an :class:`ssl.SSLSocket`
holding the certificate the peer presented, verified against ``dicom.tls.client_ca``.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from archive.config import Config
from archive.tls import common_names, hospital_for_certificate

if TYPE_CHECKING:
    from pynetdicom.association import Association

log = logging.getLogger("huren.dimse")


def handshake(client: ssl.SSLSocket, address: tuple[str, int], timeout: float | None) -> bool:
    """Complete the TLS handshake on an accepted connection within `timeout` seconds.

    Returns ``False`` (and logs why) when the peer is not speaking TLS, sends a
    certificate the client CA did not sign, sends none where one is required, or
    stays silent; the caller then closes the connection.
    """
    blocking = client.gettimeout()
    client.settimeout(timeout)  # a silent peer must not keep this thread forever
    try:
        client.do_handshake()
    except OSError as exc:  # ssl.SSLError included
        log.warning("TLS handshake failed", extra={"peer": f"{address[0]}:{address[1]}", "reason": str(exc)})
        return False
    client.settimeout(blocking)
    return True


def peer_certificate(assoc: Association) -> bytes | None:
    """The DER certificate the peer of `assoc` presented, or ``None``.

    ``None`` on a plain TCP association, when no client CA is configured (no
    certificate is asked for), when the client sent none, or once the
    connection is closed.
    """
    transport = assoc.dul.socket
    sock = transport.socket if transport is not None else None
    if isinstance(sock, ssl.SSLSocket):
        return sock.getpeercert(binary_form=True)
    return None


def tls_hospital(config: Config, assoc: Association) -> str | None:
    """The id of the hospital whose ``certificates`` name the peer's client certificate, or ``None``.

    The certificate was verified during the handshake, so unlike a calling AE
    title (which any sender may claim) it proves who is calling.
    """
    der = peer_certificate(assoc)
    hospital = hospital_for_certificate(config, der) if der else None
    return hospital.id if hospital else None


def certificate_name(assoc: Association) -> str | None:
    """The subject common name of the peer's client certificate, for logs."""
    der = peer_certificate(assoc)
    if der is None:
        return None
    return ", ".join(common_names(der)) or None
