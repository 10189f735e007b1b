"""The audit trail on SQLite and PostgreSQL: recording in batches, an append-only table,
a bounded queue, exports as DICOM audit messages (PS3.15 A.5), syslog over UDP and TCP
(RFC 5424, 5426, 6587), and ``huren audit export``."""

from __future__ import annotations

import argparse
import base64
import datetime
import itertools
import logging
import re
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from archive.audit import AuditEvent, AuditTrail, atna_message, events, export
from archive.config import Config, Syslog
from archive.index.database import Database
from archive.index.schema import audit_events
from archive.policy import Caller
from huren import audit as command

T0 = datetime.datetime(2026, 11, 30, 8, 0, tzinfo=datetime.UTC)
STUDY, SERIES, SOP = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"
CT_A = Caller("dimse", "CT_A", hospital_id="bj-a", address="10.1.2.3")
VIEWER = Caller("http", "3f2a9c0d11e4b7a8", hospital_id="tj-b", address="2001:db8::7")
ADMIN = Caller("cli", "root", admin=True)
ACTIONS = ("store", "query", "retrieve", "delete", "token", "share", "login")
OUTCOMES = ("success", "failure", "denied")


def sample(action: str, outcome: str, at: datetime.datetime = T0) -> AuditEvent:
    """An event such as the doors record for `action`."""
    if action == "store":
        return AuditEvent("store", outcome, CT_A, STUDY, SERIES, SOP,
                          None if outcome == "success" else "0xA700", at)
    if action == "query":
        return AuditEvent("query", outcome, VIEWER, detail="StudyDate=20261101-&ModalitiesInStudy=CT", at=at)
    if action == "retrieve":
        return AuditEvent("retrieve", outcome, VIEWER, STUDY, detail="12 instances", at=at)
    if action == "delete":
        return AuditEvent("delete", outcome, ADMIN, STUDY, SERIES, detail="2 instance(s)", at=at)
    if action == "token":
        return AuditEvent("token", outcome, ADMIN, detail="created token 3f2a9c0d11e4b7a8 for tj-b", at=at)
    if action == "share":
        return AuditEvent("share", outcome, ADMIN, STUDY, detail="shared with tj-b until 2026-12-30", at=at)
    return AuditEvent("login", outcome, Caller("dimse", "UNKNOWN_AE", address="10.9.9.9"),
                      detail="association rejected: calling AE title not known", at=at)


@pytest.fixture
def db(index_url: str) -> Iterator[Database]:
    database = Database(index_url)
    database.migrate()
    yield database
    database.dispose()


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """Every SQL statement the engine runs inside the block."""
    seen: list[str] = []

    def note(_conn, _cursor, statement, *_args) -> None:
        seen.append(statement)

    sqlalchemy_event.listen(db.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        sqlalchemy_event.remove(db.engine, "before_cursor_execute", note)


@contextmanager
def index_down(db: Database) -> Iterator[None]:
    """Writes to the index fail inside the block, as when the database is unreachable."""
    @contextmanager
    def refuse():
        raise OperationalError("INSERT", {}, ConnectionRefusedError("index down"))
        yield

    db.writing = refuse
    try:
        yield
    finally:
        del db.writing


def rows(db: Database) -> list:
    with db.reading() as conn:
        return conn.execute(select(audit_events).order_by(audit_events.c.pk)).all()


def utc(moment: datetime.datetime) -> datetime.datetime:
    return moment.replace(tzinfo=datetime.UTC) if moment.tzinfo is None else moment


# -- recording ---------------------------------------------------------------------------------


def test_every_action_and_outcome_is_recorded_append_only(db: Database) -> None:
    trail = AuditTrail(db, interval=3600)
    recorded = [sample(action, outcome, T0 + datetime.timedelta(seconds=n))
                for n, (action, outcome) in enumerate(itertools.product(ACTIONS, OUTCOMES))]
    with statements(db) as seen:
        for event in recorded:
            trail.record(event)
        trail.flush()
        trail.close()
    found = rows(db)
    assert len(found) == len(recorded) == 21
    for row, event in zip(found, recorded):
        assert (row.door, row.action, row.outcome, row.hospital_id, row.actor, row.address) == (
            event.caller.door, event.action, event.outcome, event.caller.hospital_id,
            event.caller.actor, event.caller.address)
        assert (row.study_uid, row.series_uid, row.sop_uid, row.detail) == (
            event.study_uid, event.series_uid, event.sop_uid, event.detail)
        assert utc(row.at) == event.at
    assert found[0].sop_uid == SOP and found[1].detail == "0xA700"
    # Append-only: the trail only ever inserts.
    assert any(s.lstrip().upper().startswith("INSERT INTO AUDIT_EVENTS") for s in seen)
    assert not [s for s in seen if re.match(r"\s*(UPDATE|DELETE)\b", s, re.IGNORECASE)]


def test_many_events_are_written_in_few_transactions(db: Database) -> None:
    trail = AuditTrail(db)
    commits = []
    sqlalchemy_event.listen(db.engine, "commit", lambda _conn: commits.append(1))
    for n in range(2000):
        trail.record(AuditEvent("store", "success", CT_A, STUDY, SERIES, f"{SOP}.{n}", at=T0))
    trail.close()
    assert len(rows(db)) == 2000
    assert len({row.sop_uid for row in rows(db)}) == 2000
    assert len(commits) <= 40  # batches of up to 500, never one transaction per event


def test_the_writer_thread_writes_without_flush(db: Database) -> None:
    trail = AuditTrail(db, interval=0.05)
    trail.record(sample("query", "success"))
    deadline = time.monotonic() + 30
    while not rows(db) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [row.action for row in rows(db)] == ["query"]
    trail.close()


def test_a_failed_write_is_logged_and_kept_for_the_next_try(db: Database, caplog) -> None:
    trail = AuditTrail(db, interval=3600)
    caplog.set_level(logging.ERROR, logger="huren.audit")
    with index_down(db):
        trail.record(sample("store", "success"))
        trail.record(sample("retrieve", "success"))
        trail.flush()
    assert rows(db) == []
    failed = [r for r in caplog.records if r.name == "huren.audit" and getattr(r, "events", None) == 2]
    assert failed and "index down" in failed[0].error
    trail.flush()
    assert [row.action for row in rows(db)] == ["store", "retrieve"]
    trail.close()


def test_beyond_the_bound_the_oldest_are_dropped_and_counted(db: Database, caplog) -> None:
    trail = AuditTrail(db, interval=3600, max_queued=3)
    caplog.set_level(logging.ERROR, logger="huren.audit")
    with index_down(db):
        for n in range(5):
            trail.record(AuditEvent("query", "success", VIEWER, detail=f"n={n}", at=T0))
        trail.flush()
        trail.record(AuditEvent("query", "success", VIEWER, detail="n=5", at=T0))
        trail.flush()
    dropped = [r.dropped for r in caplog.records if r.name == "huren.audit" and hasattr(r, "dropped")]
    assert dropped == [2, 1]
    trail.close()
    assert [row.detail for row in rows(db)] == ["n=3", "n=4", "n=5"]


def test_events_are_checked() -> None:
    with pytest.raises(ValueError, match="action"):
        AuditEvent("erase", "success", VIEWER)
    with pytest.raises(ValueError, match="outcome"):
        AuditEvent("query", "ok", VIEWER)
    with pytest.raises(ValueError, match="time zone"):
        AuditEvent("query", "success", VIEWER, at=datetime.datetime(2026, 1, 1))


# -- DICOM audit messages (PS3.15 A.5) ----------------------------------------------------------

CODED = ("csd-code", "codeSystemName", "originalText")  # CodedValueType: all three required


def check_schema(xml: str) -> ET.Element:
    """What the audit message schema (PS3.15 A.5.1.1) requires, checked on a parsed message."""
    root = ET.fromstring(xml)
    assert root.tag == "AuditMessage"
    tags = [child.tag for child in root]
    # EventIdentification, ActiveParticipant+, AuditSourceIdentification, ParticipantObjectIdentification*
    assert re.fullmatch(r"E(A)+S(P)*", "".join({
        "EventIdentification": "E", "ActiveParticipant": "A", "AuditSourceIdentification": "S",
        "ParticipantObjectIdentification": "P"}[tag] for tag in tags)), tags

    event = root.find("EventIdentification")
    assert event.get("EventActionCode") in ("C", "R", "U", "D", "E")
    assert event.get("EventOutcomeIndicator") in ("0", "4", "8", "12")
    moment = datetime.datetime.fromisoformat(event.get("EventDateTime"))
    assert moment.utcoffset() == datetime.timedelta(0)  # UTC (A.5.2.5)
    assert [child.tag for child in event][0] == "EventID"
    for code in event.findall("EventID") + event.findall("EventTypeCode"):
        assert all(code.get(name) for name in CODED), code.attrib

    participants = root.findall("ActiveParticipant")
    for participant in participants:
        assert participant.get("UserID")
        assert participant.get("UserIsRequestor") in ("true", "false")
        assert participant.get("NetworkAccessPointTypeCode") in (None, "1", "2", "3", "4", "5")
        for role in participant.findall("RoleIDCode"):
            assert all(role.get(name) for name in CODED), role.attrib
    # A.5.2: at most one participant is the requestor.
    assert sum(p.get("UserIsRequestor") == "true" for p in participants) <= 1

    assert root.find("AuditSourceIdentification").get("AuditSourceID")

    for subject in root.findall("ParticipantObjectIdentification"):
        assert subject.get("ParticipantObjectID")
        assert subject.get("ParticipantObjectTypeCode") in ("1", "2", "3", "4")
        assert 1 <= int(subject.get("ParticipantObjectTypeCodeRole")) <= 26
        id_type = subject.find("ParticipantObjectIDTypeCode")
        assert all(id_type.get(name) for name in CODED), id_type.attrib
        assert [child.tag for child in subject][0] == "ParticipantObjectIDTypeCode"
        for query in subject.findall("ParticipantObjectQuery"):
            base64.b64decode(query.text or "", validate=True)
        for detail in subject.findall("ParticipantObjectDetail"):
            assert detail.get("type")
            base64.b64decode(detail.get("value"), validate=True)
    return root


def code(element: ET.Element, tag: str) -> str:
    return element.find(tag).get("csd-code")


def participant(root: ET.Element, user_id: str) -> ET.Element:
    return next(p for p in root.findall("ActiveParticipant") if p.get("UserID") == user_id)


def roles(element: ET.Element) -> set[str]:
    return {role.get("csd-code") for role in element.findall("RoleIDCode")}


def studies(root: ET.Element) -> list[ET.Element]:
    return [s for s in root.findall("ParticipantObjectIdentification")
            if code(s, "ParticipantObjectIDTypeCode") == "110180"]


@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("action", ACTIONS)
def test_every_message_has_what_the_schema_requires(action: str, outcome: str) -> None:
    root = check_schema(atna_message(sample(action, outcome), "HUREN"))
    event = root.find("EventIdentification")
    assert event.get("EventOutcomeIndicator") == {"success": "0", "denied": "4", "failure": "8"}[outcome]
    assert event.get("EventDateTime") == "2026-11-30T08:00:00.000Z"
    assert root.find("AuditSourceIdentification").get("AuditSourceID") == "HUREN"
    assert participant(root, "HUREN").get("UserIsRequestor") == "false"


def test_store_is_instances_transferred_to_huren() -> None:
    root = check_schema(atna_message(sample("store", "failure"), "HUREN"))
    event = root.find("EventIdentification")
    assert (code(event, "EventID"), event.get("EventActionCode")) == ("110104", "C")  # A.5.3.7
    assert event.findtext("EventOutcomeDescription") == "0xA700"
    sender = participant(root, "CT_A")
    assert sender.get("UserIsRequestor") == "true"
    assert sender.get("AlternativeUserID") == "AETITLES=CT_A"  # A.5.2.2
    assert roles(sender) == {"110153", "bj-a"}  # Source, and the hospital it acts for
    assert (sender.get("NetworkAccessPointID"), sender.get("NetworkAccessPointTypeCode")) == ("10.1.2.3", "2")
    assert roles(participant(root, "HUREN")) == {"110152"}  # Destination
    [study] = studies(root)
    assert (study.get("ParticipantObjectID"), study.get("ParticipantObjectTypeCode"),
            study.get("ParticipantObjectTypeCodeRole")) == (STUDY, "2", "3")
    [series] = study.findall("ParticipantObjectDetail")
    assert series.get("type") == "SeriesInstanceUID" and base64.b64decode(series.get("value")).decode() == SERIES
    assert study.find("ParticipantObjectDescription/SOPClass/Instance").get("UID") == SOP


def test_delete_is_instances_accessed_with_action_d() -> None:
    root = check_schema(atna_message(sample("delete", "success"), "HUREN"))
    event = root.find("EventIdentification")
    assert (code(event, "EventID"), event.get("EventActionCode")) == ("110103", "D")  # A.5.3.6
    assert [s.get("ParticipantObjectID") for s in studies(root)] == [STUDY]


def test_retrieve_is_instances_transferred_from_huren() -> None:
    root = check_schema(atna_message(sample("retrieve", "success"), "HUREN"))
    assert code(root.find("EventIdentification"), "EventID") == "110104"
    viewer = participant(root, VIEWER.actor)
    assert roles(viewer) == {"110152", "tj-b"} and viewer.get("UserIsRequestor") == "true"
    assert viewer.get("AlternativeUserID") is None  # not a DICOM application
    assert viewer.get("NetworkAccessPointTypeCode") == "2"  # an IPv6 address is an IP address too
    assert roles(participant(root, "HUREN")) == {"110153"}
    assert [s.get("ParticipantObjectID") for s in studies(root)] == [STUDY]


def test_query_carries_the_query_base64() -> None:
    root = check_schema(atna_message(sample("query", "success"), "HUREN"))
    event = root.find("EventIdentification")
    assert (code(event, "EventID"), event.get("EventActionCode")) == ("110112", "E")  # A.5.3.10
    assert event.find("EventOutcomeDescription") is None
    [query] = root.findall("ParticipantObjectIdentification")
    assert code(query, "ParticipantObjectIDTypeCode") == "110181"
    assert query.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.1.2.2.1"
    assert base64.b64decode(query.findtext("ParticipantObjectQuery")).decode() == \
        "StudyDate=20261101-&ModalitiesInStudy=CT"
    assert roles(participant(root, VIEWER.actor)) == {"110153", "tj-b"}
    assert roles(participant(root, "HUREN")) == {"110152"}


def test_refused_association_is_a_failed_login() -> None:
    root = check_schema(atna_message(sample("login", "denied"), "HUREN"))
    event = root.find("EventIdentification")
    assert (code(event, "EventID"), code(event, "EventTypeCode")) == ("110114", "110122")  # A.5.3.12
    user = participant(root, "UNKNOWN_AE")
    # A.5.3.12: the user's network access point is mandatory.
    assert (user.get("NetworkAccessPointID"), user.get("NetworkAccessPointTypeCode")) == ("10.9.9.9", "2")
    assert root.find("ParticipantObjectIdentification") is None


def test_token_and_share_changes_are_security_alerts() -> None:
    token = check_schema(atna_message(sample("token", "success"), "HUREN"))
    event = token.find("EventIdentification")
    assert (code(event, "EventID"), code(event, "EventTypeCode")) == ("110113", "110137")  # A.5.3.11
    assert event.findtext("EventOutcomeDescription") == "created token 3f2a9c0d11e4b7a8 for tj-b"
    assert {p.get("UserIsRequestor") for p in token.findall("ActiveParticipant")} == {"false"}
    share = check_schema(atna_message(sample("share", "success"), "HUREN"))
    assert code(share.find("EventIdentification"), "EventTypeCode") == "110135"
    [study] = studies(share)
    [alert] = study.findall("ParticipantObjectDetail")
    assert alert.get("type") == "Alert Description"
    assert base64.b64decode(alert.get("value")).decode() == "shared with tj-b until 2026-12-30"


def test_text_is_escaped_and_kept_well_formed() -> None:
    nasty = 'a<b>&"c"\x00\x1b</AuditMessage>'
    caller = Caller("http", 'sub|<script>"', hospital_id="bj-a&b", address="host.example")
    message = atna_message(AuditEvent("retrieve", "failure", caller, STUDY, detail=nasty, at=T0), 'HU"REN')
    root = check_schema(message)
    assert "\n" not in message
    assert root.find("EventIdentification").findtext("EventOutcomeDescription") == \
        'a<b>&"c"\ufffd\ufffd</AuditMessage>'
    assert participant(root, 'sub|<script>"').get("NetworkAccessPointTypeCode") == "1"  # a host name
    query = check_schema(atna_message(AuditEvent("query", "success", caller, detail=nasty, at=T0), "HUREN"))
    assert base64.b64decode(query.findtext(".//ParticipantObjectQuery")).decode() == nasty


# -- export -------------------------------------------------------------------------------------


def test_export_streams_a_window_in_time_order(db: Database) -> None:
    trail = AuditTrail(db, interval=3600)
    minutes = [5, 1, 3, 3, 0, 9, 7]  # recorded out of order; two at the same moment
    for n, minute in enumerate(minutes):
        trail.record(AuditEvent("query", "success", VIEWER, detail=f"n={n}",
                                at=T0 + datetime.timedelta(minutes=minute)))
    trail.close()
    since, until = T0 + datetime.timedelta(minutes=1), T0 + datetime.timedelta(minutes=9)
    expected = ["n=1", "n=2", "n=3", "n=0", "n=6"]  # 1, 3, 3, 5, 7; 0 and 9 are outside
    # Pages of two rows: the two events at minute 3 straddle a page boundary.
    assert [e.detail for e in events(db, since, until, batch=2)] == expected
    assert [e.detail for e in events(db, since, until)] == expected
    messages = list(export(db, since, until, source_id="PACS_HUB"))
    assert len(messages) == 5
    for message, n in zip(messages, expected):
        root = check_schema(message)
        assert root.find("AuditSourceIdentification").get("AuditSourceID") == "PACS_HUB"
        assert base64.b64decode(root.findtext(".//ParticipantObjectQuery")).decode() == n
    times = [ET.fromstring(m).find("EventIdentification").get("EventDateTime") for m in messages]
    assert times == sorted(times) and times[0] == "2026-11-30T08:01:00.000Z"
    assert len(list(events(db, since))) == 6  # no end: up to the latest
    # Another time zone names the same moments.
    beijing = datetime.timezone(datetime.timedelta(hours=8))
    assert len(list(events(db, since.astimezone(beijing), until.astimezone(beijing)))) == 5


def test_exported_messages_of_every_kind_pass_the_schema_checks(db: Database) -> None:
    trail = AuditTrail(db, interval=3600)
    for n, (action, outcome) in enumerate(itertools.product(ACTIONS, OUTCOMES)):
        trail.record(sample(action, outcome, T0 + datetime.timedelta(seconds=n)))
    trail.close()
    messages = list(export(db, T0))
    assert len(messages) == 21
    for n, (message, (action, outcome)) in enumerate(zip(messages, itertools.product(ACTIONS, OUTCOMES))):
        check_schema(message)
        # What the index keeps is all a message needs: the export says what was said at the time.
        assert message == atna_message(sample(action, outcome, T0 + datetime.timedelta(seconds=n)), "HUREN")


# -- syslog ------------------------------------------------------------------------------------

SYSLOG = re.compile(rb"<(\d+)>1 (\S+) (\S+) huren (\d+) IHE\+RFC-3881 - \xef\xbb\xbf(<AuditMessage>.*)", re.DOTALL)


def test_syslog_over_udp(db: Database) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(10)
        port = collector.getsockname()[1]
        trail = AuditTrail(db, Syslog(host="127.0.0.1", port=port, protocol="udp"), "HUREN", interval=3600)
        trail.record(sample("store", "success"))
        trail.record(sample("login", "denied"))
        trail.flush()
        datagrams = [collector.recv(65535), collector.recv(65535)]
        trail.close()
    first, second = (SYSLOG.fullmatch(d) for d in datagrams)
    assert first.group(1) == b"85" and second.group(1) == b"84"  # authpriv.notice, authpriv.warning
    assert first.group(2) == b"2026-11-30T08:00:00.000Z"
    assert first.group(3) == socket.gethostname().encode()
    assert code(check_schema(first.group(5).decode()).find("EventIdentification"), "EventID") == "110104"
    assert code(check_schema(second.group(5).decode()).find("EventIdentification"), "EventID") == "110114"
    assert len(rows(db)) == 2  # the index keeps them too


def read_frames(data: bytes) -> list[bytes]:
    """Split RFC 6587 octet-counted frames: MSG-LEN SP SYSLOG-MSG."""
    frames = []
    while data:
        length, _, rest = data.partition(b" ")
        frames.append(rest[:int(length)])
        data = rest[int(length):]
    return frames


def test_syslog_over_tcp_is_octet_counted(db: Database) -> None:
    received = bytearray()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def collect() -> None:
            connection, _ = listener.accept()
            with connection:
                while chunk := connection.recv(65536):
                    received.extend(chunk)

        collector = threading.Thread(target=collect)
        collector.start()
        syslog = Syslog(host="127.0.0.1", port=listener.getsockname()[1], protocol="tcp")
        trail = AuditTrail(db, syslog, "HUREN", interval=3600)
        for action in ACTIONS:
            trail.record(sample(action, "success"))
        trail.close()  # closes the connection, so the collector sees the end
        collector.join(10)
    frames = read_frames(bytes(received))
    assert len(frames) == len(ACTIONS)
    for frame, action in zip(frames, ACTIONS):
        match = SYSLOG.fullmatch(frame)
        assert match and match.group(1) == b"85"
        assert match.group(5).decode() == atna_message(sample(action, "success"), "HUREN")


def test_an_unreachable_syslog_host_is_logged_and_the_index_still_written(db: Database, caplog) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    caplog.set_level(logging.ERROR, logger="huren.audit")
    trail = AuditTrail(db, Syslog(host="127.0.0.1", port=port, protocol="tcp"), interval=3600)
    trail.record(sample("query", "success"))
    trail.record(sample("query", "failure"))
    trail.close()
    assert len(rows(db)) == 2
    [failed] = [r for r in caplog.records if r.getMessage() == "audit events not sent to syslog"]
    assert failed.events == 2 and failed.host == "127.0.0.1"


# -- huren audit export ------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="huren")
    command.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.mark.parametrize("argv", [
    ["--since", "2026-13-01"], ["--since", "yesterday"], ["--since", "２０２６-01-01"],
    ["--since", "2026-11-30", "--until", "2026-02-30"], ["--since", "2026-11-30", "--until", "2026-11-29"],
])
def test_export_refuses_bad_dates(argv: list[str], tmp_path: Path, capsys) -> None:
    config = Config.model_validate({"index": {"url": f"sqlite:///{tmp_path / 'index.db'}"}})
    assert command.run(parse(["audit", "export", *argv]), config) == 2
    assert "huren: --" in capsys.readouterr().err
    assert not (tmp_path / "index.db").exists()  # refused before opening anything


def test_export_to_syslog_needs_a_syslog_host(tmp_path: Path, capsys) -> None:
    config = Config.model_validate({"index": {"url": f"sqlite:///{tmp_path / 'index.db'}"}})
    assert command.run(parse(["audit", "export", "--since", "2026-11-30", "--syslog"]), config) == 2
    assert "audit.syslog" in capsys.readouterr().err


def recorded_days(db: Database) -> None:
    """Queries on 29 Nov, 30 Nov (two) and 1 Dec 2026, UTC."""
    trail = AuditTrail(db, interval=3600)
    for n, hours in enumerate([-10, 1, 2, 17]):
        trail.record(AuditEvent("query", "success", VIEWER, detail=f"n={n}",
                                at=T0 + datetime.timedelta(hours=hours)))
    trail.close()


def test_export_writes_one_xml_document(db: Database, index_url: str, tmp_path: Path, capsys) -> None:
    recorded_days(db)
    config = Config.model_validate({"index": {"url": index_url}, "dicom": {"ae_title": "PACS_HUB"}})
    output = tmp_path / "audit.xml"
    args = parse(["audit", "export", "--since", "2026-11-30T00:00:00Z", "--until", "2026-12-01T00:00:00+00:00",
                  "--output", str(output)])
    assert command.run(args, config) == 0
    assert "2 audit messages written" in capsys.readouterr().err
    document = ET.parse(output).getroot()
    assert document.tag == "AuditMessages"
    found = [check_schema(ET.tostring(m, encoding="unicode")) for m in document]
    assert [base64.b64decode(m.findtext(".//ParticipantObjectQuery")).decode() for m in found] == ["n=1", "n=2"]
    assert {m.find("AuditSourceIdentification").get("AuditSourceID") for m in found} == {"PACS_HUB"}
    # To standard output; moments in UTC+8 (29 Nov 16:00 to 30 Nov 15:59:59 UTC).
    args = parse(["audit", "export", "--since", "2026-11-30T00:00:00+08:00", "--until", "2026-11-30T23:59:59+08:00"])
    assert command.run(args, config) == 0
    assert len(ET.fromstring(capsys.readouterr().out)) == 3


def test_export_until_a_day_includes_that_day(db: Database, index_url: str, capsys, monkeypatch) -> None:
    recorded_days(db)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        config = Config.model_validate({"index": {"url": index_url}})
        assert command.run(parse(["audit", "export", "--since", "2026-11-30", "--until", "2026-11-30"]), config) == 0
        out = capsys.readouterr().out
        assert out.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<AuditMessages>\n')
        assert len(ET.fromstring(out)) == 2
        assert command.run(parse(["audit", "export", "--since", "2026-11-29"]), config) == 0
        assert len(ET.fromstring(capsys.readouterr().out)) == 4
    finally:
        monkeypatch.undo()
        time.tzset()


def test_export_sends_to_syslog(db: Database, index_url: str, capsys) -> None:
    recorded_days(db)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(10)
        config = Config.model_validate({"index": {"url": index_url}, "audit": {
            "syslog": {"host": "127.0.0.1", "port": collector.getsockname()[1]}}})
        assert command.run(parse(["audit", "export", "--since", "2026-11-01", "--syslog"]), config) == 0
        datagrams = [collector.recv(65535) for _ in range(4)]
    assert "4 audit messages sent to 127.0.0.1" in capsys.readouterr().err
    assert capsys.readouterr().out == ""
    assert all(SYSLOG.fullmatch(d) for d in datagrams)
