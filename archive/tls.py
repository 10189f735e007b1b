"""TLS for both doors: the server context, and the hospital a client certificate speaks for.

DICOM over TLS follows PS3.15 Annex B.9–B.11 (the BCP 195 TLS Secure
Transport Connection Profiles), which require TLS 1.2 or later; HTTPS for
DICOMweb uses the same context. A client certificate names a hospital through
``hospitals[].certificates``: its subject common name or its SHA-256 fingerprint.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from archive.config import Config, ConfigError, Hospital, Tls

# A SHA-256 fingerprint as written in configuration: 64 hex digits, bare or in
# colon-separated pairs as `openssl x509 -fingerprint -sha256` prints it.
_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{64}|(?:[0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}")


def server_context(tls: Tls) -> ssl.SSLContext:
    """A TLS 1.2+ server context with `tls`'s certificate chain and key loaded.

    When ``tls.client_ca`` is set, clients are asked for a certificate signed by
    it: one that does not verify fails the handshake; none at all fails it only
    when ``tls.require_client_certificate``.

    Raises :class:`ConfigError` naming the file that is missing, unreadable, not
    PEM, an encrypted key, or a key that does not match the certificate.
    """
    for path in (tls.certificate, tls.key, tls.client_ca):
        if path is not None:
            _readable(path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # PS3.15 B.9: BCP 195, no TLS 1.0/1.1
    try:
        x509.load_pem_x509_certificates(tls.certificate.read_bytes())
    except ValueError:
        raise ConfigError(f"{tls.certificate}: not a PEM certificate") from None
    try:
        context.load_cert_chain(tls.certificate, tls.key, password=_no_password(tls.key))
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"{tls.key}: does not match the certificate {tls.certificate}") from None
        if exc.reason is None:  # OpenSSL found no key in the file
            raise ConfigError(f"{tls.key}: not a PEM private key") from None
        # Refused by OpenSSL's security level, e.g. EE_KEY_TOO_SMALL for RSA under 2048 bits.
        raise ConfigError(f"{tls.certificate}: {exc.reason.lower().replace('_', ' ')}") from None
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except ssl.SSLError:
            raise ConfigError(f"{tls.client_ca}: not a PEM CA certificate") from None
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    return context


def certificate_names(peer_cert_der: bytes) -> set[str]:
    """The names a certificate answers to: its subject common names and its
    SHA-256 fingerprint (64 lower-case hex digits, no colons)."""
    return {*common_names(peer_cert_der), hashlib.sha256(peer_cert_der).hexdigest()}


def common_names(peer_cert_der: bytes) -> list[str]:
    """The subject common names (CN) of a DER certificate, usually one."""
    subject = x509.load_der_x509_certificate(peer_cert_der).subject
    return [str(attribute.value) for attribute in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def hospital_for_certificate(config: Config, peer_cert_der: bytes) -> Hospital | None:
    """The hospital whose ``certificates`` list a name of this certificate, or ``None``.

    Only call this with a certificate the handshake verified against
    ``client_ca``: a common name proves nothing on a certificate anyone could
    have made. Servers ask for client certificates only when ``client_ca`` is set.
    """
    names = certificate_names(peer_cert_der)
    for hospital in config.hospitals:
        if any(_normal(entry) in names for entry in hospital.certificates):
            return hospital
    return None


def _normal(entry: str) -> str:
    """A configured certificate name as :func:`certificate_names` spells it."""
    entry = entry.strip()
    if _FINGERPRINT.fullmatch(entry):
        return entry.replace(":", "").lower()
    return entry


def _readable(path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _no_password(key: Path) -> Callable[[], bytes]:
    """A password callback that refuses: without it OpenSSL would prompt on the terminal."""
    def refuse() -> bytes:
        raise ConfigError(f"{key}: the private key is encrypted; give it unencrypted (readable by Huren only)")
    return refuse
