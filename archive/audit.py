"""The audit trail: who stored, searched, fetched or changed what, and who was refused.

Every door records one :class:`AuditEvent` per action: per C-STORE or STOW-RS
instance, per query, per retrieve, per refused credential or association,
per token or share change. :class:`AuditTrail` appends them to the index's
``audit_events`` table (rows are inserted, never updated or deleted) and,
when ``audit.syslog`` is configured, also sends each to the region's audit
record repository as RFC 5424 syslog (IHE ATNA). :func:`atna_message`
writes an event as a DICOM audit message (PS3.15 A.5); :func:`export`
streams a period's events in that form for review.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
import re
import threading
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Row, and_, insert, or_, select

from archive.config import Syslog
from archive.index.database import Database
from archive.index.schema import audit_events
from archive.policy import Caller
from archive.syslog import SyslogSender, timestamp, utc

log = logging.getLogger("huren.audit")

Action = Literal["store", "query", "retrieve", "delete", "token", "share", "login"]
Outcome = Literal["success", "failure", "denied"]

#: Events waiting for the index beyond this many drop the oldest. An index
#: outage must not grow a server's memory without end (hundreds of C-STORE
#: events a second); 100,000 events are some tens of MB and several minutes
#: of the busiest traffic, enough to ride out a database restart. The oldest
#: go because the error log keeps their number, while the newest are what
#: someone looking into the outage as it happens needs.
MAX_QUEUED = 100_000


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class AuditEvent:
    """One audited action at one door.

    `action` is ``store``, ``query``, ``retrieve``, ``delete``, ``token``, ``share`` or
    ``login`` (a credential or an association refused); `outcome` is
    ``success``, ``failure`` or ``denied``. `detail` says what else a
    reviewer needs: the query string, a status such as ``0xA700``, a count,
    ``created token 3f2a…``. Events name studies, series and instances by
    UID only: the doors pass UIDs and queries, never patient names or other
    demographics, so the trail and the messages sent off the server carry
    none.

    Raises
    ------
    ValueError
        If `action` or `outcome` is not one of the above, or `at` has no
        time zone.
    """

    action: Action
    outcome: Outcome
    caller: Caller
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    detail: str | None = None
    at: datetime.datetime = field(default_factory=_utc_now)

    def __post_init__(self) -> None:
        if self.action not in EVENT_ID:
            raise ValueError(f"unknown audit action {self.action!r}")
        if self.outcome not in OUTCOME:
            raise ValueError(f"unknown audit outcome {self.outcome!r}")
        if self.at.tzinfo is None:
            raise ValueError("an audit event's time needs a time zone")


# A coded value of the audit schema: (csd-code, codeSystemName, originalText) (PS3.15 A.5.1).
Code = tuple[str, str, str]

# EventID per action, from the message PS3.15 A.5.3 defines for it.
EVENT_ID: dict[str, Code] = {
    "store": ("110104", "DCM", "DICOM Instances Transferred"),  # A.5.3.7
    "retrieve": ("110104", "DCM", "DICOM Instances Transferred"),  # A.5.3.7
    "query": ("110112", "DCM", "Query"),  # A.5.3.10
    "delete": ("110103", "DCM", "DICOM Instances Accessed"),  # A.5.3.6, EventActionCode D
    "login": ("110114", "DCM", "User Authentication"),  # A.5.3.12
    # Tokens and shares change who may see what: a Security Alert (A.5.3.11)
    # whose EventTypeCode says whose security attributes changed.
    "token": ("110113", "DCM", "Security Alert"),
    "share": ("110113", "DCM", "Security Alert"),
}
# EventTypeCode where the message requires one (A.5.3.11, A.5.3.12).
EVENT_TYPE: dict[str, Code] = {
    "login": ("110122", "DCM", "Login"),
    "token": ("110137", "DCM", "User Security Attributes Changed"),  # a credential of a hospital
    "share": ("110135", "DCM", "Object Security Attributes Changed"),  # a study opened to a hospital
}
# EventActionCode: A.5.3.7 gives "C" to the receiver of instances it did not
# hold (a store) and "E" to an audit source that is not the receiver (a
# retrieve); A.5.3.10-12 give "E" to queries, alerts and authentication.
ACTION_CODE = {"store": "C", "retrieve": "E", "query": "E", "delete": "D", "login": "E", "token": "E", "share": "E"}
# EventOutcomeIndicator (A.5.1, A.5.2): a refusal is a minor failure (the
# caller may come back with the right credential, like the standard's invalid
# password on a first try); a failure ended the action, a serious one. 12,
# "major failure", means Huren itself became unavailable: no door records that.
OUTCOME = {"success": "0", "denied": "4", "failure": "8"}

SOURCE: Code = ("110153", "DCM", "Source Role ID")  # PS3.16 CID 402
DESTINATION: Code = ("110152", "DCM", "Destination Role ID")
# (the caller's RoleIDCode, Huren's) in the messages that require them (A.5.3.7, A.5.3.10).
ROLES: dict[str, tuple[Code, Code]] = {
    "store": (SOURCE, DESTINATION),
    "retrieve": (DESTINATION, SOURCE),
    "query": (SOURCE, DESTINATION),
}
# Huren grants access by hospital (archive.policy), so a caller's hospital is
# the role it acts in: a RoleIDCode in a code system of Huren's own (A.5.2
# allows further roles beside the ones a message requires).
HOSPITAL_CODES = "HUREN hospital"

STUDY_INSTANCE_UID: Code = ("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID: Code = ("110181", "DCM", "SOP Class UID")
# QIDO-RS and C-FIND both search the Study Root information model (PS3.4 C.6.2).
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
# ParticipantObjectTypeCode 2 "system object", ParticipantObjectTypeCodeRole 3
# "report": what A.5.3.7 and A.5.3.10 require of studies and queries.
SYSTEM_OBJECT, REPORT = "2", "3"
# AuditSourceTypeCode 4: an application server process (A.5.1.2.1).
APPLICATION_SERVER = "4"

# Characters XML 1.0 cannot carry at all (§2.2), even escaped: a query with a
# NUL in it must not make the message unreadable.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def atna_message(event: AuditEvent, source_id: str) -> str:
    """The DICOM audit message for `event`: one ``<AuditMessage>`` element, one line.

    Follows the schema of PS3.15 A.5.1 and the message A.5.3 defines for
    the action (see ``EVENT_ID``). `source_id` names Huren, as the audit
    source and as the application taking part: its AE title
    (``dicom.ae_title``). Studies are participant objects (type 2, role 3,
    ID type (110180, DCM, "Study Instance UID")), with the series as a
    ``SeriesInstanceUID`` detail and the instance in the description; a
    query is one too (ID type (110181, DCM, "SOP Class UID"), the Study Root
    FIND SOP class, the query text base64 in ``ParticipantObjectQuery``).

    A.5.3.10 asks for a ``TransferSyntax`` detail with a query, which
    describes a DICOM data set; the doors record queries as text (the QIDO-RS
    query string, a C-FIND identifier written the same way), "the query in
    the format of the protocol used", so a ``QueryEncoding`` detail (UTF-8)
    says how to read it instead. Patient participant objects are left out:
    events carry no patient identifiers.
    """
    alert = event.action in ("token", "share")
    caller = event.caller
    message = ET.Element("AuditMessage")
    identification = ET.SubElement(message, "EventIdentification", {
        "EventActionCode": ACTION_CODE[event.action],
        "EventDateTime": timestamp(event.at),
        "EventOutcomeIndicator": OUTCOME[event.outcome],
    })
    _coded(identification, "EventID", EVENT_ID[event.action])
    if event.action in EVENT_TYPE:
        _coded(identification, "EventTypeCode", EVENT_TYPE[event.action])
    if event.detail and event.action != "query":  # a query is kept in its participant object
        ET.SubElement(identification, "EventOutcomeDescription").text = _text(event.detail)

    caller_role, huren_role = ROLES.get(event.action, (None, None))
    # A.5.3.11: the persons performing a security change are not its requestor.
    person = _participant(message, caller.actor, caller.door, requestor=not alert, role=caller_role)
    if caller.hospital_id:
        _coded(person, "RoleIDCode", (caller.hospital_id, HOSPITAL_CODES, f"hospital {caller.hospital_id}"))
    if caller.address:
        person.set("NetworkAccessPointID", _text(caller.address))
        person.set("NetworkAccessPointTypeCode", "2" if _is_ip(caller.address) else "1")
    # Huren's own network address is left out: an export may run on another machine
    # than the one that served the event.
    _participant(message, source_id, caller.door, requestor=False, role=huren_role)

    source = ET.SubElement(message, "AuditSourceIdentification", {"AuditSourceID": _text(source_id)})
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": APPLICATION_SERVER})

    if event.action == "query":
        query = _participant_object(message, STUDY_ROOT_FIND, SOP_CLASS_UID)
        ET.SubElement(query, "ParticipantObjectQuery").text = _base64(event.detail or "")
        _detail(query, "QueryEncoding", "UTF-8")
    if event.study_uid:
        study = _participant_object(message, event.study_uid, STUDY_INSTANCE_UID)
        if event.series_uid:
            _detail(study, "SeriesInstanceUID", event.series_uid)
        if event.action == "share":  # A.5.3.11: the alert subject says what happened to it
            _detail(study, "Alert Description", event.detail or "sharing changed")
        if event.sop_uid:
            description = ET.SubElement(study, "ParticipantObjectDescription")
            sop_class = ET.SubElement(description, "SOPClass", {"NumberOfInstances": "1"})
            ET.SubElement(sop_class, "Instance", {"UID": _text(event.sop_uid)})
    return ET.tostring(message, encoding="unicode")


def _participant(message: ET.Element, user_id: str, door: str, *, requestor: bool,
                 role: Code | None) -> ET.Element:
    participant = ET.SubElement(message, "ActiveParticipant", {
        "UserID": _text(user_id), "UserIsRequestor": "true" if requestor else "false",
    })
    if door == "dimse":  # A.5.2.2: a DICOM application's AE titles
        participant.set("AlternativeUserID", f"AETITLES={_text(user_id)}")
    if role is not None:
        _coded(participant, "RoleIDCode", role)
    return participant


def _participant_object(message: ET.Element, object_id: str, id_type: Code) -> ET.Element:
    participant = ET.SubElement(message, "ParticipantObjectIdentification", {
        "ParticipantObjectID": _text(object_id),
        "ParticipantObjectTypeCode": SYSTEM_OBJECT,
        "ParticipantObjectTypeCodeRole": REPORT,
    })
    _coded(participant, "ParticipantObjectIDTypeCode", id_type)
    return participant


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    value, system, meaning = code
    return ET.SubElement(parent, tag, {
        "csd-code": _text(value), "codeSystemName": system, "originalText": _text(meaning),
    })


def _detail(parent: ET.Element, kind: str, value: str) -> None:
    # A.5.1: detail values are base64 even when they are text, so that nothing
    # in them (an XML fragment, a NUL) can change the message around them.
    ET.SubElement(parent, "ParticipantObjectDetail", {"type": kind, "value": _base64(value)})


def _base64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


class AuditTrail:
    """Records audit events in the index, in batches, off the hot path.

    :meth:`record` only queues an event; a background thread writes what is
    queued in batches of up to `batch` rows, one transaction each, at least
    every `interval` seconds and as soon as a batch is full. A failed write
    is logged and its events kept for the next try; beyond `max_queued`
    waiting events the oldest are dropped, logged with their number. With
    `syslog`, each written event is also sent there (a send that fails is
    logged; the index stays the record). `source_id` is Huren's AE title
    (see :func:`atna_message`). Call :meth:`close` when the doors have
    stopped.
    """

    def __init__(self, db: Database, syslog: Syslog | None = None, source_id: str = "HUREN", *,
                 max_queued: int = MAX_QUEUED, interval: float = 0.5, batch: int = 500) -> None:
        self.db = db
        self.source_id = source_id
        self._sender = SyslogSender(syslog) if syslog is not None else None
        self._max_queued = max_queued
        self._interval = interval
        self._batch = batch
        self._queue: deque[AuditEvent] = deque()
        self._dropped = 0
        self._queued = threading.Lock()  # guards _queue and _dropped
        self._writing = threading.Lock()  # one writer at a time: the thread or flush()
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="huren-audit", daemon=True)
        self._thread.start()

    def record(self, event: AuditEvent) -> None:
        """Queue `event` for the index (and syslog); returns at once."""
        with self._queued:
            self._queue.append(event)
            self._bound()
            full = len(self._queue) >= self._batch
        if full:
            self._wake.set()

    def flush(self) -> None:
        """Write what is queued now, in this thread; a failure is logged and the events kept."""
        with self._writing:
            self._write_queued()

    def close(self) -> None:
        """Stop the writer thread, write what is left and close the syslog connection."""
        self._closing = True
        self._wake.set()
        self._thread.join()
        self.flush()
        with self._queued:
            left = len(self._queue)
        if left:
            log.error("audit events lost at shutdown: the index cannot be written", extra={"events": left})
        if self._sender is not None:
            self._sender.close()

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._closing:
                return
            try:
                self.flush()
            except Exception:  # a bug must not stop the trail: the next round tries again
                log.exception("audit writer failed")

    def _bound(self) -> None:
        # The caller holds self._queued.
        while len(self._queue) > self._max_queued:
            self._queue.popleft()
            self._dropped += 1

    def _write_queued(self) -> None:
        while True:
            with self._queued:
                dropped, self._dropped = self._dropped, 0
                batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            if dropped:
                log.error("audit queue full: oldest events dropped", extra={"dropped": dropped})
            if not batch:
                return
            try:
                with self.db.writing() as connection:
                    connection.execute(insert(audit_events), [_row(event) for event in batch])
            except Exception as exc:  # the index is down or refuses: keep them for the next try
                with self._queued:
                    self._queue.extendleft(reversed(batch))
                    self._bound()
                log.error("audit events not written; kept for the next try",
                          extra={"events": len(batch), "error": str(exc)})
                return
            if self._sender is not None:
                self._send(batch)

    def _send(self, batch: list[AuditEvent]) -> None:
        assert self._sender is not None
        for done, event in enumerate(batch):
            try:
                self._sender.send(event, atna_message(event, self.source_id))
            except OSError as exc:
                # Not retried: the index has them, and `huren audit export --syslog` resends.
                log.error("audit events not sent to syslog", extra={
                    "events": len(batch) - done, "host": self._sender.syslog.host, "error": str(exc)})
                return


def _row(event: AuditEvent) -> dict[str, Any]:
    caller = event.caller
    return {
        "at": utc(event.at), "door": caller.door, "action": event.action, "outcome": event.outcome,
        "hospital_id": caller.hospital_id, "actor": caller.actor, "address": caller.address,
        "study_uid": event.study_uid, "series_uid": event.series_uid, "sop_uid": event.sop_uid,
        "detail": event.detail,
    }


def events(db: Database, since: datetime.datetime, until: datetime.datetime | None = None, *,
           batch: int = 1000) -> Iterator[AuditEvent]:
    """The events recorded from `since` (inclusive) to `until` (exclusive), oldest first.

    Read `batch` rows at a time, each read a short query of its own that
    continues after the last row seen, so a long export holds neither all
    rows in memory nor a transaction open.

    Raises
    ------
    ValueError
        If `since` or `until` has no time zone.
    """
    if since.tzinfo is None or (until is not None and until.tzinfo is None):
        raise ValueError("since and until need a time zone")
    window = audit_events.c.at >= utc(since)
    if until is not None:
        window = and_(window, audit_events.c.at < utc(until))
    query = select(audit_events).where(window).order_by(audit_events.c.at, audit_events.c.pk).limit(batch)
    after = query
    while True:
        with db.reading() as connection:
            rows = connection.execute(after).all()
        yield from (_event(row) for row in rows)
        if len(rows) < batch:
            return
        last = rows[-1]
        after = query.where(or_(audit_events.c.at > last.at,
                                and_(audit_events.c.at == last.at, audit_events.c.pk > last.pk)))


def export(db: Database, since: datetime.datetime, until: datetime.datetime | None = None, *,
           source_id: str = "HUREN") -> Iterator[str]:
    """The events from `since` to `until` as DICOM audit messages, oldest first (see :func:`events`)."""
    for event in events(db, since, until):
        yield atna_message(event, source_id)


def _event(row: Row) -> AuditEvent:
    return AuditEvent(
        action=row.action, outcome=row.outcome,
        caller=Caller(row.door, row.actor, hospital_id=row.hospital_id, address=row.address),
        study_uid=row.study_uid, series_uid=row.series_uid, sop_uid=row.sop_uid, detail=row.detail,
        at=utc(row.at),
    )
