"""Bad input, fuzzed with hypothesis: the DICOM header reader, the ingest path, the
multipart reader, the QIDO-RS parameters, and malformed PDUs on the DIMSE port.

Each property says what bad input may cause: a refusal in the standard's terms
(``UnreadableInstance``, a DIMSE status, ``ValueError``, HTTP 400), never
another exception or a 500; and nothing already archived changes. Examples are
derived from a fixed seed and bounded in number, so the file runs in about a
minute and fails the same way twice.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom.sop_class import Verification
from starlette.testclient import TestClient

from archive.config import Config
from archive.guideline.compliance import Compliance
from archive.header import InstanceHeader, UnreadableInstance, read_header
from archive.ingest import IngestError, Stored
from archive.verify import verify
from dicomweb.app import build_app
from dicomweb.multipart import PartReader, write_parts
from tests.conftest import PYDICOM_FILES, Archive, Huren, audit_trail, dcmtk, dcmtk_env, huren_config
from tests.factory import instance, write
from tests.peer import association_request

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
SEED_FILES = ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "image_dfl.dcm",
              "JPEG2000.dcm", "rtplan.dcm", "no_meta.dcm", "SC_rgb_rle_2frame.dcm", "nested_priv_SQ.dcm"]


def _seeds(folder: Path) -> list[bytes]:
    made = write(instance(frames=2), folder / "made.dcm").read_bytes()
    return [made, *((PYDICOM_FILES / name).read_bytes() for name in SEED_FILES)]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A real file, changed a few times: bytes flipped or overwritten, cut, spliced, lengths set wild."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        match draw(st.sampled_from(["flip", "cut", "insert", "delete", "length"])):
            case "flip":
                data[at:at + 1] = bytes([data[at] ^ draw(st.integers(1, 255))]) if data else b""
            case "cut":
                del data[at:]
            case "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=64))
            case "delete":
                del data[at:at + draw(st.integers(1, 256))]
            case "length":  # a 16- or 32-bit length field somewhere made huge, zero or odd
                data[at:at + 4] = struct.pack("<L", draw(st.sampled_from([0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF])))
    return bytes(data)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return _seeds(tmp_path_factory.mktemp("seeds"))


def test_header_reader_refuses_what_it_cannot_read(seeds: list[bytes], tmp_path: Path) -> None:
    path = tmp_path / "fuzzed.dcm"

    @FUZZ
    @given(data=st.one_of(mutated(seeds), st.binary(max_size=512).map(lambda b: b"\0" * 128 + b"DICM" + b)))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        try:
            assert isinstance(read_header(path), InstanceHeader)
        except UnreadableInstance as exc:
            assert str(exc)  # says why

    check()


def test_ingest_answers_a_status_and_harms_nothing_stored(seeds: list[bytes], tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path)
    kept = archive.add()
    key = f"{kept.study_uid}/{kept.series_uid}/{kept.sop_uid}.dcm"
    digest = hashlib.sha256(b"".join(archive.store.read(key))).hexdigest()

    @settings(FUZZ, max_examples=80)
    @given(data=mutated(seeds))
    def check(data: bytes) -> None:
        path = tmp_path / "received.dcm"
        path.write_bytes(data)
        try:
            assert isinstance(archive.ingest.ingest(path, archive.source), Stored)
        except IngestError as exc:
            assert 0 < exc.failure.value <= 0xFFFF and str(exc)
        assert not path.exists()  # consumed either way

    check()
    assert hashlib.sha256(b"".join(archive.store.read(key))).hexdigest() == digest
    assert verify(archive.db, archive.store, grace=0).agree


BOUNDARY_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"


def _feed(reader: PartReader, body: bytes, cuts: list[int]) -> None:
    last = 0
    for cut in sorted({c % (len(body) + 1) for c in cuts}) + [len(body)]:
        reader.feed(body[last:cut])
        last = cut


def test_multipart_reader_gives_back_every_part(tmp_path: Path) -> None:
    @FUZZ
    @given(boundary=st.text(BOUNDARY_CHARS, min_size=1, max_size=70),
           parts=st.lists(st.binary(max_size=3000), min_size=1, max_size=5),
           cuts=st.lists(st.integers(0, 20000), max_size=12))
    def check(boundary: str, parts: list[bytes], cuts: list[int]) -> None:
        if any(f"\r\n--{boundary}".encode() in b"\r\n" + part for part in parts):
            return  # a body part may not hold its delimiter (RFC 2046 §5.1.1)
        body = b"".join(write_parts(boundary, ((({"Content-Type": "application/dicom"}), iter([part]))
                                               for part in parts)))
        folder = tmp_path / "parts"
        folder.mkdir()
        reader = PartReader(boundary, folder)
        _feed(reader, body, cuts)
        assert [p.path.read_bytes() for p in reader.finish()] == parts
        assert all(p.content_type == "application/dicom" for p in reader.parts)
        shutil.rmtree(folder)

    check()


def test_multipart_reader_refuses_garbage_with_value_error(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()

    @FUZZ
    @given(body=st.one_of(st.binary(max_size=2000), st.lists(st.sampled_from(
               [b"--xyz", b"\r\n", b"--xyz--", b"Content-Type: application/dicom", b":", b"\r\n\r\n", b"DICM",
                b"\0" * 10, b"--", b"x"]), max_size=40).map(b"".join)),
           cuts=st.lists(st.integers(0, 2000), max_size=8))
    def check(body: bytes, cuts: list[int]) -> None:
        reader = PartReader("xyz", folder)
        try:
            _feed(reader, body, cuts)
            reader.finish()
        except ValueError:
            pass
        reader.discard()
        assert list(folder.iterdir()) == []  # nothing left behind

    check()


QIDO_KEYS = ["PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
             "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality", "00100010", "0020000D",
             "00080020", "limit", "offset", "includefield", "fuzzymatching", "IssuerOfPatientID",
             "RequestAttributesSequence.AccessionNumber", "00400275.00401001", "NotAKeyword", "FFFFFFFF",
             "PixelData", "SeriesNumber", "InstanceNumber", "ReferringPhysicianName", "StudyDescription"]


def test_qido_parameters_give_an_answer_or_a_400(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path)
    for name in ("CT_small.dcm", "MR_small.dcm"):
        archive.add(path=PYDICOM_FILES / name)
    config = Config()
    app = build_app(config, archive.db, archive.store, archive.ingest, tmp_path / "spool",
                    Compliance(archive.db, config), audit_trail(archive.db))
    values = st.one_of(st.text(max_size=40), st.sampled_from(
        ["*", "?", "-", "20200101-", "-20201231", "20200101-20191231", "1.2.3", "all", "true", "0", "-1",
         "99999999999999999999", "A*B?", "\\", "=", "^", "王^小东", "\x00", "1e3", ",", "19700101-1970"]))

    @settings(FUZZ, max_examples=200)
    @given(level=st.sampled_from(["/studies", "/series", "/instances", "/studies/1.2.3/series",
                                  "/studies/1.2.3/series/4.5/instances"]),
           params=st.lists(st.tuples(st.one_of(st.sampled_from(QIDO_KEYS), st.text(max_size=12)), values),
                           max_size=6))
    def check(level: str, params: list[tuple[str, str]]) -> None:
        answer = client.get("/dicom-web" + level, params=params)
        assert answer.status_code in (200, 204, 400), (answer.status_code, answer.text)
        if answer.status_code == 400:
            assert answer.json()["error"]

    with TestClient(app) as client:
        check()


def _rss_kib(pid: int) -> int:
    """The resident memory of a process and its children (the workers), in KiB."""
    total = 0
    for task in [pid, *_children(pid)]:
        for line in Path(f"/proc/{task}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Huren]:
    folder = tmp_path_factory.mktemp("dimse")
    huren = Huren(folder, huren_config(folder, dicom={"network_timeout": 5})).start()
    yield huren
    huren.stop()


def _send(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # the server sees the end instead of waiting for more
            while sock.recv(65536):
                pass
        except OSError:
            pass  # the server hung up first: an answer too


def _echo(server: Huren) -> str:
    """C-ECHO with DCMTK's echoscu: "" when it succeeds, else what it said."""
    done = subprocess.run([dcmtk("echoscu"), "-aec", server.ae_title, "127.0.0.1", str(server.dicom_port)],
                          env=dcmtk_env(), capture_output=True, text=True, timeout=30)
    return "" if done.returncode == 0 else done.stderr + done.stdout


def test_malformed_pdus_leave_the_server_answering(server: Huren, tmp_path: Path) -> None:
    stored = write(instance(), tmp_path / "kept.dcm")
    assert server.storescu(stored).returncode == 0
    config = Config.model_validate(server.config)
    from archive.index.database import Database
    from archive.storage import open_store

    store = open_store(config)
    before = {key: hashlib.sha256(b"".join(store.read(key))).hexdigest() for key in store.keys()}
    assert server.process is not None
    rss = _rss_kib(server.process.pid)
    request = association_request(server.dicom_port, Verification, calling="FUZZER")

    pdu = st.builds(lambda kind, length, body: struct.pack(">BBL", kind, 0, length) + body,
                    st.integers(1, 7), st.one_of(st.integers(0, 0xFFFFFFFF), st.integers(0, 300)),
                    st.binary(max_size=300))

    @settings(FUZZ, max_examples=120)
    @given(data=st.one_of(
        st.binary(max_size=400),
        pdu,
        st.lists(pdu, min_size=2, max_size=4).map(b"".join),
        mutated([request]),
        st.tuples(st.just(request), pdu).map(b"".join),  # a request, then a bad PDU in the association
    ))
    def check(data: bytes) -> None:
        _send(server.dicom_port, data)

    started = time.monotonic()
    check()
    assert time.monotonic() - started < 90
    # C-ECHO after all that, once associations the fuzzer left half-open have timed out
    # (dicom.network_timeout: 5 s here), which frees their places under the association limit.
    deadline = time.monotonic() + 30
    while (refused := _echo(server)) and time.monotonic() < deadline:
        time.sleep(1)
    assert refused == ""
    assert server.process.poll() is None
    assert _rss_kib(server.process.pid) - rss < 64 * 1024  # memory stays bounded
    assert {key: hashlib.sha256(b"".join(store.read(key))).hexdigest() for key in store.keys()} == before
    db = Database(config.index.url)
    try:
        assert verify(db, store, grace=0).agree
    finally:
        db.dispose()
    assert os.path.exists(server.log)


def test_a_pdu_longer_than_we_accept_ends_the_connection_unread(server: Huren) -> None:
    assert server.process is not None
    rss = _rss_kib(server.process.pid)
    chunk = b"\0" * 1024**2
    sent = 0
    with socket.create_connection(("127.0.0.1", server.dicom_port), timeout=10) as sock:
        try:  # an association request declaring 300 MiB, then the bytes to fill it
            sock.sendall(struct.pack(">BBL", 0x01, 0, 300 * 1024**2))
            while sent < 250:
                sock.sendall(chunk)
                sent += 1
        except OSError:
            pass  # hung up on: what should happen
    assert sent < 250, "the server read on"
    assert _rss_kib(server.process.pid) - rss < 64 * 1024
    assert _echo(server) == ""
