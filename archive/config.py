"""The configuration model: what ``conf/huren.yaml`` may say, and its defaults.

Every room reads its settings from :class:`Config`; nothing else parses YAML.
Unknown keys are refused so that a misspelt setting never silently falls back
to a default. Relative paths are taken from the working directory the
``huren`` command runs in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DicomConfig(Section):
    """The DIMSE listener (PS3.8)."""

    ae_title: AETitle = "HUREN"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    # pynetdicom pays per PDU, so a large PDU is what makes C-STORE fast.
    max_pdu: int = Field(1_048_576, ge=16_384, le=2**32 - 1)
    # True: only the AE titles listed under hospitals may associate.
    restrict_calling_ae: bool = False
    # True: refuse associations addressed to another called AE title.
    check_called_ae: bool = True
    network_timeout: float = Field(60.0, gt=0)


class HttpConfig(Section):
    """The DICOMweb listener (PS3.18)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    dicomweb_root: str = "/dicom-web"
    # Where clients reach this server, when not at the address they connect to
    # (behind a reverse proxy): the base of every RetrieveURL and BulkDataURI.
    public_url: str | None = Field(None, pattern=r"^https?://[^/]+$")
    # Bodies larger than this (STOW-RS) are refused with 413.
    max_request_bytes: int = Field(4 * 1024**3, ge=1024)
    # QIDO-RS answers at most this many matches; more are paged with limit/offset.
    max_query_results: int = Field(1000, ge=1, le=100_000)

    @field_validator("dicomweb_root")
    @classmethod
    def _root_is_a_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value.rstrip("/") or ""


class FilesystemStorage(Section):
    backend: Literal["filesystem"] = "filesystem"
    path: Path = Path("./var/archive")


class S3Storage(Section):
    """An S3-compatible bucket (AWS, MinIO, Ceph RGW, a cloud vendor's OSS).

    Credentials come from the standard AWS environment variables or files.
    """

    backend: Literal["s3"]
    bucket: str = Field(min_length=3)
    endpoint_url: str | None = None
    prefix: str = ""
    region: str | None = None
    multipart_threshold: int = Field(16 * 1024**2, ge=5 * 1024**2)
    multipart_chunk: int = Field(16 * 1024**2, ge=5 * 1024**2)
    max_connections: int = Field(16, ge=1)

    @field_validator("prefix")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        return value.strip("/")


class IndexConfig(Section):
    """The SQL index; SQLite embedded by default, PostgreSQL when it grows."""

    url: str = "sqlite:///./var/index.db"
    pool_size: int = Field(8, ge=1)

    @field_validator("url")
    @classmethod
    def _known_dialect(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value


class IngestConfig(Section):
    """How received objects become archived instances."""

    # A different object arriving under a SOP Instance UID already archived:
    # keep the first, replace it, or reject the newcomer.
    on_conflict: Literal["keep", "replace", "reject"] = "reject"
    # Received objects are written here before they are archived.
    spool: Path = Path("./var/spool")


class Hospital(Section):
    """A pilot hospital and the AE titles its modalities and PACS call from."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = Field(min_length=1)
    ae_titles: list[AETitle] = []


class Config(Section):
    dicom: DicomConfig = DicomConfig()
    http: HttpConfig = HttpConfig()
    storage: Annotated[FilesystemStorage | S3Storage, Field(discriminator="backend")] = (
        FilesystemStorage()
    )
    index: IndexConfig = IndexConfig()
    ingest: IngestConfig = IngestConfig()
    hospitals: list[Hospital] = []
    #: Processes that serve DICOM and HTTP together; one uses one CPU core.
    workers: int = Field(1, ge=1, le=64)

    @model_validator(mode="after")
    def _unique_names(self) -> "Config":
        ids: set[str] = set()
        owners: dict[str, str] = {}
        for hospital in self.hospitals:
            if hospital.id in ids:
                raise ValueError(f"hospitals: id {hospital.id!r} is listed twice")
            ids.add(hospital.id)
            for aet in hospital.ae_titles:
                if aet in owners:
                    raise ValueError(
                        f"hospitals: AE title {aet!r} belongs to both {owners[aet]!r} and {hospital.id!r}"
                    )
                owners[aet] = hospital.id
        return self

    def hospital_for_ae(self, ae_title: str) -> Hospital | None:
        """Return the hospital that owns `ae_title`, or ``None``."""
        for hospital in self.hospitals:
            if ae_title in hospital.ae_titles:
                return hospital
        return None


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and key."""


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML configuration file.

    Raises
    ------
    ConfigError
        If the file is missing, is not YAML, or a key, type or value is wrong.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + "; ".join(_describe(err) for err in exc.errors())) from None


def _describe(error: dict) -> str:
    # Drop pydantic's union-branch names (e.g. "s3") so the key reads as in YAML.
    loc = [str(p) for p in error["loc"] if p not in ("filesystem", "s3") or error["loc"][0] != "storage"]
    key = ".".join(loc) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{key}: {message}"
