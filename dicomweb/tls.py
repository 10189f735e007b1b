"""Client certificates on the HTTPS door, handed to the application as ASGI's TLS extension.

The handshake verifies a client certificate against ``http.tls.client_ca``
(:func:`archive.tls.server_context`), but uvicorn keeps the certificate to
itself. :class:`CertifyingProtocol` puts it in each request's scope as the
ASGI TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``, PEM),
where :mod:`dicomweb.auth` maps it to a hospital as the DICOM door does.
"""

from __future__ import annotations

import asyncio
import ssl

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol


class CertifyingProtocol(H11Protocol):
    """Uvicorn's HTTP/1.1 protocol, adding the TLS extension when the client showed a certificate."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # asyncio calls this once the handshake is done: the certificate, if any, was verified.
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            self.app = _with_certificate(self.app, ssl.DER_cert_to_PEM_cert(der))


def _with_certificate(app: ASGIApp, pem: str) -> ASGIApp:
    """`app`, told of the connection's client certificate in every HTTP scope."""
    async def certified(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("extensions", {})["tls"] = {"client_cert_chain": [pem]}
        await app(scope, receive, send)
    return certified


def client_certificate(scope: Scope) -> bytes | None:
    """The DER client certificate the handshake verified for this request; ``None`` without one."""
    chain = scope.get("extensions", {}).get("tls", {}).get("client_cert_chain")
    return ssl.PEM_cert_to_DER_cert(chain[0]) if chain else None
