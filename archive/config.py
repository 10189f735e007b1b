"""The configuration model: what ``conf/huren.yaml`` may say, and its defaults.

Every room reads its settings from :class:`Config`; nothing else parses YAML.
Unknown keys are refused so that a misspelt setting never silently falls back
to a default. Relative paths are taken from the working directory the
``huren`` command runs in, but rule set files from the configuration file's
folder, beside which they live.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

    from archive.guideline.rules import RuleSet

AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tls(Section):
    """A certificate and key to serve TLS with; `client_ca` asks clients for
    certificates signed by it (mapped to hospitals by ``hospitals[].certificates``)."""

    certificate: Path
    key: Path
    client_ca: Path | None = None
    # True: a client without a valid certificate is refused during the handshake.
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _ca_for_required(self) -> Tls:
        if self.require_client_certificate and self.client_ca is None:
            raise ValueError("require_client_certificate needs client_ca")
        return self


class DicomTls(Tls):
    port: int = Field(2762, ge=1, le=65535)  # the port PS3.15 registers for DICOM over TLS


class DicomConfig(Section):
    """The DIMSE listener (PS3.8)."""

    ae_title: AETitle = "HUREN"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    # pynetdicom pays per PDU, so a large PDU is what makes C-STORE fast.
    max_pdu: int = Field(1_048_576, ge=16_384, le=2**32 - 1)
    # True: refuse associations addressed to another called AE title.
    check_called_ae: bool = True
    network_timeout: float = Field(60.0, gt=0)
    # DICOM over TLS (PS3.15 Annex B.1 secure transport) on a second port.
    tls: DicomTls | None = None


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
    # HTTPS served directly (certificate and key as PEM files).
    tls: Tls | None = None

    @field_validator("dicomweb_root")
    @classmethod
    def _root_is_a_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value.rstrip("/") or ""


class Oidc(Section):
    """OpenID Connect access tokens (JWT) from an identity provider."""

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    # Where the provider's signing keys are: its JWKS URL, or a PEM public key file.
    jwks_url: str | None = None
    key_file: Path | None = None
    algorithms: list[str] = ["RS256", "ES256"]
    # The claim naming the caller's hospital (a hospitals[].id).
    hospital_claim: str = "hospital"
    # A claim that makes the caller an admin when it is true or lists "admin".
    admin_claim: str = "huren_admin"

    @model_validator(mode="after")
    def _one_key_source(self) -> Oidc:
        if (self.jwks_url is None) == (self.key_file is None):
            raise ValueError("give exactly one of jwks_url and key_file")
        return self


class Cors(Section):
    """Browser viewers (OHIF) on other origins using DICOMweb with a bearer token."""

    origins: list[str] = []
    max_age: int = Field(600, ge=0)


class AccessConfig(Section):
    """Who may call: hospital tokens (``huren token``), OIDC, CORS.

    Access is enforced once hospitals or OIDC are configured. Without either,
    the HTTP door is open, which ``huren serve`` allows on a loopback address only.
    """

    oidc: Oidc | None = None
    cors: Cors = Cors()


class Syslog(Section):
    """Where audit messages are also sent, as RFC 5424 syslog."""

    host: str = Field(min_length=1)
    port: int = Field(514, ge=1, le=65535)
    protocol: Literal["udp", "tcp"] = "udp"


class AuditConfig(Section):
    """The audit trail of every store, query and retrieve (IHE ATNA)."""

    syslog: Syslog | None = None


class OutageQueue(Section):
    """The outage queue: objects the blob store did not take within ``after``
    seconds wait here, durably, and are uploaded in the background.

    Not the receive folder (``ingest.receive_folder``, swept at start): what is here was
    acknowledged and must survive restarts. Put it on the same disk as the
    receive folder, so queueing is a link, not a copy.
    """

    path: Path = Path("./var/queue")
    # Bytes the queue may hold; beyond, instances are refused (0xA700 / 503). 0: no queue.
    max_bytes: int = Field(10 * 1024**3, ge=0)
    # Seconds a store put may take before the object is queued instead; with the
    # time to receive and index, what a C-STORE or STOW-RS waits at most for the store.
    after: float = Field(10.0, gt=0)
    # How often each process looks for queued objects to upload once the store answers.
    redrive_interval: float = Field(5.0, gt=0)
    # A process that claimed an object and died leaves it to others after this long.
    claim_timeout: float = Field(600.0, gt=0)


class FilesystemStorage(Section):
    backend: Literal["filesystem"] = "filesystem"
    path: Path = Path("./var/archive")
    queue: OutageQueue = OutageQueue()


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
    # Seconds to wait for a connection and for each answer, and attempts per call,
    # so that a store that does not answer is found out in bounded time.
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=10)
    queue: OutageQueue = OutageQueue()

    @field_validator("prefix")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        return value.strip("/")


class IndexConfig(Section):
    """The SQL index; SQLite embedded by default, PostgreSQL when it grows."""

    url: str = "sqlite:///./var/index.db"
    pool_size: int = Field(8, ge=1)
    # Seconds to wait for a connection (from the pool or to PostgreSQL), and for one
    # statement (PostgreSQL's statement_timeout; SQLite's wait for its write lock).
    connect_timeout: float = Field(5.0, gt=0)
    statement_timeout: float = Field(60.0, gt=0)
    # Attempts at a new PostgreSQL connection, all within connect_timeout (a server restarting).
    connect_attempts: int = Field(3, ge=1)

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
    # Received objects (C-STORE data sets, STOW-RS parts) are written here until archived or refused;
    # "spool", its name before the outage queue existed, is still read.
    receive_folder: Path = Field(Path("./var/receive"), validation_alias=AliasChoices("receive_folder", "spool"))


class SweepConfig(Section):
    """No leaks (:mod:`archive.sweep`): at start and every `interval` seconds, the
    receive folders of ended processes, incomplete uploads and objects without
    an index row are cleared."""

    interval: float = Field(3600.0, gt=0)
    # Uploads begun longer ago than this and never completed are aborted; longer
    # than any live upload takes (the store's timeouts bound each part).
    upload_age: float = Field(6 * 3600.0, ge=0)
    # An object without an index row this old is adopted or moved to quarantine;
    # younger ones may be an ingest between its upload and its commit.
    orphan_grace: float = Field(900.0, ge=0)


class DeleteConfig(Section):
    """Deleting studies, series and instances over DICOMweb (``DELETE``); the
    ``huren delete`` command works whatever this says."""

    enabled: bool = False


class Hospital(Section):
    """A pilot hospital: the AE titles its modalities and PACS call from, and
    what decides whose results it recognises and who recognises its own."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = Field(min_length=1)
    ae_titles: list[AETitle] = []
    # Network addresses its AE titles call from (IP or CIDR); empty: any address.
    addresses: list[str] = []

    @field_validator("addresses")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or network (CIDR)") from None
        return values
    # TLS client certificates that speak for it: subject common names or SHA-256 fingerprints.
    certificates: list[str] = []
    # Hospital level (三级甲等 … 一级), one of the rule sets' recognition.levels.
    level: str | None = None
    # Region code (BJ, TJ, HE): a recognition scope covers some regions.
    region: str | None = None
    # Medical alliances (医联体) it belongs to; members recognise each other.
    alliances: list[str] = []
    # The pilot's exit mechanism: from `since`, a suspended or withdrawn
    # hospital's results are no longer recognised.
    status: Literal["active", "suspended", "withdrawn"] = "active"
    since: datetime.date | None = None

    @model_validator(mode="after")
    def _dated_status(self) -> Hospital:
        if self.status != "active" and self.since is None:
            raise ValueError(f"status {self.status!r} needs the date it took effect (since)")
        return self

    def recognised_on(self, day: datetime.date) -> bool:
        """Whether this hospital's results count on `day` (not suspended or withdrawn by then)."""
        return self.status == "active" or (self.since is not None and day < self.since)


class GuidelineConfig(Section):
    """The sharing guideline: which rule sets judge studies, and when."""

    # Rule set files; relative paths are taken from the configuration file's
    # folder (they live beside it, in conf/guideline/). None: studies are
    # archived, not judged.
    rule_sets: list[Path] = []
    # A study is judged once no instance has arrived for this many seconds.
    quiet_period: float = Field(60.0, ge=0)
    # How often each process looks for studies that have become quiet.
    poll_interval: float = Field(5.0, gt=0)
    # A process that claimed a study and died leaves it to others after this long.
    claim_timeout: float = Field(300.0, gt=0)


class Config(Section):
    dicom: DicomConfig = DicomConfig()
    http: HttpConfig = HttpConfig()
    storage: Annotated[FilesystemStorage | S3Storage, Field(discriminator="backend")] = (
        FilesystemStorage()
    )
    index: IndexConfig = IndexConfig()
    ingest: IngestConfig = IngestConfig()
    hospitals: list[Hospital] = []
    guideline: GuidelineConfig = GuidelineConfig()
    access: AccessConfig = AccessConfig()
    audit: AuditConfig = AuditConfig()
    sweep: SweepConfig = SweepConfig()
    delete: DeleteConfig = DeleteConfig()
    #: Processes that serve DICOM and HTTP together; one uses one CPU core.
    #: ``auto``: one per core this process may run on.
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = "auto"

    _rule_sets: tuple[RuleSet, ...] = PrivateAttr(default=())

    @property
    def rule_sets(self) -> tuple[RuleSet, ...]:
        """The loaded ``guideline.rule_sets`` (empty unless read by :func:`load_config`)."""
        return self._rule_sets

    @property
    def worker_count(self) -> int:
        """The number of serving processes ``workers`` asks for."""
        if self.workers == "auto":
            return max(1, min(64, len(os.sched_getaffinity(0))))
        return self.workers

    @property
    def access_enforced(self) -> bool:
        """Whether callers must say who they are (hospitals or OIDC configured)."""
        return bool(self.hospitals) or self.access.oidc is not None

    def hospital(self, hospital_id: str | None) -> Hospital | None:
        """The hospital with `hospital_id`, or ``None``."""
        return next((h for h in self.hospitals if h.id == hospital_id), None)

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
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
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + "; ".join(_describe(err) for err in exc.errors())) from None
    rule_sets = [path.parent / file for file in config.guideline.rule_sets]
    config = config.model_copy(update={
        "guideline": config.guideline.model_copy(update={"rule_sets": rule_sets}),
    })
    return config_with_rule_sets(config)


def config_with_rule_sets(config: Config) -> Config:
    """Load the rule sets `config` names into it (see :attr:`Config.rule_sets`).

    Raises :class:`ConfigError` naming the file and key of a bad rule set.
    """
    config._rule_sets = tuple(_load_rule_sets(config))
    return config


def _load_rule_sets(config: Config) -> list[RuleSet]:
    """Load the guideline's rule sets and check them against the hospitals.

    Raises :class:`ConfigError` naming the rule set file and key, or the
    hospital and key, that is wrong.
    """
    from archive.guideline.rules import RuleSetError, load_rule_set

    rule_sets: list[RuleSet] = []
    for path in config.guideline.rule_sets:
        try:
            rule_set = load_rule_set(path)
        except RuleSetError as exc:
            raise ConfigError(str(exc)) from None
        known = {hospital.id for hospital in config.hospitals}
        for n, assessment in enumerate(rule_set.assessments):
            if assessment.hospital not in known:
                raise ConfigError(f"{path}: assessments[{n}].hospital: unknown hospital "
                                  f"{assessment.hospital!r} (not under hospitals)")
        for n, hospital in enumerate(config.hospitals):
            if hospital.level is not None and hospital.level not in rule_set.recognition.levels:
                raise ConfigError(f"hospitals[{n}] ({hospital.id}).level: {hospital.level!r} is not "
                                  f"a level of rule set {rule_set.id} ({path}): "
                                  + ", ".join(rule_set.recognition.levels))
        if any(other.id == rule_set.id for other in rule_sets):
            raise ConfigError(f"{path}: id: rule set {rule_set.id!r} is listed twice")
        rule_sets.append(rule_set)
    return rule_sets


def _describe(error: ErrorDetails) -> str:
    # Drop pydantic's union-branch names (e.g. "s3") so the key reads as in YAML.
    loc = [str(p) for p in error["loc"] if p not in ("filesystem", "s3") or error["loc"][0] != "storage"]
    key = ".".join(loc) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{key}: {message}"
