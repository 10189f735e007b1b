"""Which hospital an association speaks for, by its calling AE title."""

from __future__ import annotations

from archive.config import Config


def allowed_calling_aes(config: Config) -> list[str]:
    """The calling AE titles that may associate; empty means anyone may."""
    if not config.dicom.restrict_calling_ae:
        return []
    return [aet for hospital in config.hospitals for aet in hospital.ae_titles]


def hospital_of(config: Config, calling_ae: str) -> str | None:
    """The id of the hospital that owns `calling_ae`, if any."""
    hospital = config.hospital_for_ae(calling_ae.strip())
    return hospital.id if hospital else None
