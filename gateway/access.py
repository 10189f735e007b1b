"""Which hospital an association speaks for: its calling AE title, checked
against the addresses the hospital calls from.

Once hospitals are configured, only their AE titles may associate: any other
calling AE title is rejected in the A-ASSOCIATE-RJ with the reason PS3.8
§9.3.4 gives for it ("calling-AE-title-not-recognized", by pynetdicom's
``require_calling_aet``). A known AE title calling from an address its
hospital does not list is only known once the association is negotiated; it
is then aborted (A-ABORT), before any operation.
"""

from __future__ import annotations

import ipaddress

from pynetdicom.association import Association

from archive.config import Config
from archive.policy import Caller
from gateway.tls import tls_hospital


def allowed_calling_aes(config: Config) -> list[str]:
    """The calling AE titles that may associate; empty (no hospitals configured) means anyone."""
    return [aet for hospital in config.hospitals for aet in hospital.ae_titles]


def hospital_of(config: Config, calling_ae: str) -> str | None:
    """The id of the hospital that owns `calling_ae`, if any."""
    hospital = config.hospital_for_ae(calling_ae.strip())
    return hospital.id if hospital else None


def caller_of(config: Config, calling_ae: str, address: str, certified: str | None = None) -> Caller | None:
    """The caller an association from `calling_ae` at `address` is; ``None`` if refused.

    `certified` is the hospital a verified TLS client certificate speaks for
    (:func:`gateway.tls.tls_hospital`): it proves the hospital, where an AE
    title only claims it, so an AE title of another hospital is refused.
    Without hospitals configured everyone may store, as the hospital its AE
    title names if any.
    """
    calling_ae = calling_ae.strip()
    hospital = config.hospital_for_ae(calling_ae)
    if certified is not None:
        if hospital is not None and hospital.id != certified:
            return None
        return Caller("dimse", calling_ae, hospital_id=certified, address=address)
    if hospital is None:
        if config.hospitals:
            return None
        return Caller("dimse", calling_ae, address=address)
    if hospital.addresses and not _listed(address, hospital.addresses):
        return None
    return Caller("dimse", calling_ae, hospital_id=hospital.id, address=address)


def association_caller(config: Config, assoc: Association) -> Caller | None:
    """:func:`caller_of` for an association, its TLS client certificate included."""
    requestor = assoc.requestor
    return caller_of(config, requestor.ae_title, requestor.address, tls_hospital(config, assoc))


def _listed(address: str, networks: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(network, strict=False) for network in networks)
