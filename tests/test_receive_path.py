"""The event-driven receive path (gateway/reactor.py) against ordinary and awkward peers.

The gateway runs in this process (``gateway.scp.start``, as ``huren serve`` calls
it) so that its threads can be counted. After each exchange: nothing half-stored
(the index and the store agree, an interrupted instance is in neither, its partial
file is gone from the receive folder) and no thread left behind. The digests
taken while receiving are checked against the files' own.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, dimse_messages
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RP, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

from archive.config import Config, Tls
from archive.digests import file_digests
from archive.index.database import Database
from archive.index.schema import instances
from archive.ingest import Ingest, Source, Stored
from archive.storage.filesystem import FilesystemStore
from archive.tls import server_context
from archive.verify import verify
from gateway import scp
from tests.conftest import PYDICOM_FILES, audit_trail, dcmtk, dcmtk_env, huren_config
from tests.factory import instance, write
from tests.peer import association_request
from tests.test_tls import Pki, pki  # noqa: F401  (the fixture, for the TLS test)

NETWORK_TIMEOUT = 2.0  # dicom.network_timeout here: ARTIM and idle timeouts, in seconds
SETTLE = NETWORK_TIMEOUT + 5  # how long an ended association's threads may take to go


class RecordingIngest(Ingest):
    """The ingest path, noting for each file the digests it was given and the file's own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.digests: list[tuple[tuple[str, str] | None, tuple[str, str]]] = []

    def ingest(self, path: Path, source: Source, **options: Any) -> Stored:
        self.digests.append((options.get("digests"), file_digests(path)))
        return super().ingest(path, source, **options)


@dataclass
class Gateway:
    port: int
    db: Database
    store: FilesystemStore
    receive: Path
    ingest: RecordingIngest
    server: scp.NoDelayServer
    baseline: set[threading.Thread]

    def sop_uids(self) -> set[str]:
        with self.db.reading() as conn:
            return set(conn.execute(select(instances.c.sop_uid)).scalars())

    def settled(self) -> None:
        """Nothing half-stored, no partial file, and every thread of ended associations gone."""
        deadline = time.monotonic() + SETTLE
        while (extra := set(threading.enumerate()) - self.baseline) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not extra, f"threads left behind: {sorted(t.name for t in extra)}"
        assert list(self.receive.iterdir()) == []
        assert verify(self.db, self.store, grace=0).agree
        for given, read in self.ingest.digests:
            assert given == read  # taken while receiving, and equal to the file's


def _start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ssl_context: ssl.SSLContext | None = None,
           **dicom: Any) -> Gateway:
    # build_ae sets these for the whole process: put them back after the test.
    monkeypatch.setattr(pynetdicom_config, "STORE_RECV_CHUNKED_DATASET", pynetdicom_config.STORE_RECV_CHUNKED_DATASET)
    monkeypatch.setattr(pynetdicom_config, "LOG_HANDLER_LEVEL", pynetdicom_config.LOG_HANDLER_LEVEL)
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", dimse_messages.NamedTemporaryFile)
    receive = tmp_path / "receive"
    receive.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(receive))
    config = Config.model_validate(huren_config(tmp_path, dicom={"network_timeout": NETWORK_TIMEOUT, **dicom}))
    db = Database(config.index.url)
    db.migrate()
    store = FilesystemStore(tmp_path / "archive")
    ingest = RecordingIngest(db, store, "reject")
    listen = socket.create_server(("127.0.0.1", 0))
    server = scp.start(config, ingest, audit_trail(db), listen, ssl_context)
    return Gateway(listen.getsockname()[1], db, store, receive, ingest, server, set(threading.enumerate()))


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    started = _start(tmp_path, monkeypatch, max_pdu=128 * 1024)
    yield started
    started.server.shutdown()
    started.db.dispose()


def _ct(folder: Path, count: int, size: int = 512) -> list[Path]:
    study, series = "1.2.826.0.1.3680043.8.498.7", "1.2.826.0.1.3680043.8.498.7.1"
    return [write(instance(rows=size, columns=size, StudyInstanceUID=study, SeriesInstanceUID=series,
                           InstanceNumber=n, SOPInstanceUID=f"{series}.{n}"), folder / f"{n:04d}.dcm")
            for n in range(1, count + 1)]


# A peer speaking PDUs over a raw socket, built with pynetdicom's PDU classes (PS3.8 §9.3).

def _store_pdus(path: Path, max_pdu: int = 16384) -> list[bytes]:
    """The P-DATA-TF PDUs of a C-STORE request for the file at `path` on context 1."""
    return [P_DATA_TF(fragment).encode() for fragment in _store_fragments(path, max_pdu)]


def _store_fragments(path: Path, max_pdu: int) -> list[P_DATA]:
    """The P-DATA primitives of a C-STORE request for the file at `path` on context 1,
    each with one presentation data value (the command first, whole)."""
    ds = dcmread(path)
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(encode(ds, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return list(message.encode_msg(1, max_pdu))


def _p_data_tf(values: list[tuple[int, bytes]]) -> bytes:
    """One P-DATA-TF PDU carrying `values` (context ID, control header + fragment)."""
    primitive = P_DATA()
    primitive.presentation_data_value_list.extend(values)
    return P_DATA_TF(primitive).encode()


def _release_rq() -> bytes:
    pdu = A_RELEASE_RQ()
    return pdu.encode()


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = _read_exactly(sock, 6)
    kind, _, length = struct.unpack(">BBL", header)
    return kind, _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def _connect(gateway: Gateway) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=SETTLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _associated(gateway: Gateway) -> socket.socket:
    sock = _connect(gateway)
    sock.sendall(association_request(gateway.port, CTImageStorage))
    assert _read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _status(p_data: bytes) -> int:
    """The Status (0000,0900) of the C-STORE-RSP command in one P-DATA-TF PDU's body."""
    at = p_data.index(b"\x00\x00\x00\x09\x02\x00\x00\x00")  # tag, then length 2 (implicit VR LE)
    return int.from_bytes(p_data[at + 8:at + 10], "little")


# The tests.

PINNED = {
    # "module:qualified name" -> the first 16 hex digits of the SHA-256 of its source in pynetdicom 3.0.4.
    # gateway/reactor.py overrides or relies on each of these, gateway/store.py on the last few.
    "pynetdicom.transport:RequestHandler._create_association": "05c8d12b79863cdb",
    "pynetdicom.transport:AssociationSocket.close": "c726c8db53813d55",
    "pynetdicom.transport:AssociationSocket._shutdown_socket": "e2b2628faa81a578",
    "pynetdicom.association:Association.__init__": "eb07516b8009ad8f",
    "pynetdicom.association:Association.run_reactor": "ed8bbbe3b3d6ddae",
    "pynetdicom.association:Association._run_reactor": "f28838c5559e462a",
    "pynetdicom.association:Association.kill": "8f9713666a7f4cff",
    "pynetdicom.association:Association.release": "c7d713502b77d702",
    "pynetdicom.dul:DULServiceProvider.__init__": "c82dafa9438ddf70",
    "pynetdicom.dul:DULServiceProvider.run_reactor": "e3a10eb3a0931e48",
    "pynetdicom.dul:DULServiceProvider._is_transport_event": "8725ed03bb8fbdef",
    "pynetdicom.dul:DULServiceProvider._read_pdu_data": "19f2d4e38c13c835",
    "pynetdicom.dul:DULServiceProvider._decode_pdu": "fc71dd1bf853e1ce",
    "pynetdicom.dul:DULServiceProvider._send": "a850a7919e68484e",
    "pynetdicom.dul:DULServiceProvider._process_recv_primitive": "4c0ebbb3e646e35e",
    "pynetdicom.dul:DULServiceProvider.kill_dul": "5ceccf8dd01c2072",
    "pynetdicom.dul:DULServiceProvider.stop_dul": "28a7e0be126e7b30",
    "pynetdicom.fsm:StateMachine.do_action": "9a883f44c7f31641",
    "pynetdicom.timer:Timer": "77ddae7423f544b1",
    "pynetdicom.pdu:P_DATA_TF.to_primitive": "3cba1cd31f03fdf0",
    "pynetdicom.pdu:P_DATA_TF._generate_items": "55a5deea47745b72",
    "pynetdicom.dimse:DIMSEServiceProvider.receive_primitive": "5f99c86b14a15cef",
    "pynetdicom.dimse:DIMSEServiceProvider.get_msg": "890e3e04283f5aeb",
    "pynetdicom.dimse_messages:DIMSEMessage.decode_msg": "f51c777e841a76be",
    "pynetdicom.dimse_messages:DIMSEMessage.message_to_primitive": "f8f43d34e43450ef",
    "pynetdicom.service_class:StorageServiceClass.SCP": "63afca7fc6c6e7ee",
    # gateway/dimse.py reads C-STORE requests and writes their responses as these do.
    "pynetdicom.dimse:DIMSEServiceProvider.send_msg": "a839cf2fb46976d9",
    "pynetdicom.dsutils:create_file_meta": "035ed415f5aeea15",
    "pynetdicom.dimse_messages:DIMSEMessage.primitive_to_message": "71fd61d5997f0f0c",
    "pynetdicom.dimse_messages:DIMSEMessage.encode_msg": "73000c902c52832d",
    "pynetdicom.dimse_primitives:C_STORE.__init__": "d6deffe2538504c1",
}


def test_the_pynetdicom_code_the_receive_path_builds_on_is_unchanged() -> None:
    changed = []
    for name, recorded in PINNED.items():
        module, qualified = name.split(":")
        target: Any = importlib.import_module(module)
        for part in qualified.split("."):
            target = getattr(target, part)
        if hashlib.sha256(inspect.getsource(target).encode()).hexdigest()[:16] != recorded:
            changed.append(name)
    assert not changed, (
        f"pynetdicom changed {changed}: re-check gateway/reactor.py (EventRequests, EventAssociation, "
        "EventDUL), gateway/dimse.py (StoreDIMSE) and gateway/store.py (DigestingFile) against the new code, "
        "then record the new hashes here")


@pytest.mark.parametrize("max_send_pdu", [16384, 131072])
def test_a_series_in_16_and_128_kib_pdus(gateway: Gateway, tmp_path: Path, max_send_pdu: int) -> None:
    paths = _ct(tmp_path / "ct", 12)
    result = subprocess.run([dcmtk("storescu"), "-aec", "HUREN", "+sd", "--max-send-pdu", str(max_send_pdu),
                             "127.0.0.1", str(gateway.port), str(tmp_path / "ct")],
                            env=dcmtk_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert gateway.sop_uids() == {dcmread(p).SOPInstanceUID for p in paths}
    assert len(gateway.ingest.digests) == 12
    assert all(given is not None for given, _ in gateway.ingest.digests)
    gateway.settled()


def test_compressed_files_are_hashed_as_received(gateway: Gateway) -> None:
    names = ["JPEG2000.dcm", "MR_small_RLE.dcm", "image_dfl.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
    result = subprocess.run([dcmtk("dcmsend"), "-aec", "HUREN", "127.0.0.1", str(gateway.port),
                             *(str(PYDICOM_FILES / name) for name in names)],
                            env=dcmtk_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(gateway.sop_uids()) == len(names)
    assert all(given is not None for given, _ in gateway.ingest.digests)
    gateway.settled()


def test_many_short_associations_in_a_row(gateway: Gateway, tmp_path: Path) -> None:
    paths = [write(instance(), tmp_path / f"{n}.dcm") for n in range(25)]
    for path in paths:
        result = subprocess.run([dcmtk("storescu"), "-aec", "HUREN", "127.0.0.1", str(gateway.port), str(path)],
                                env=dcmtk_env(), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        echo = subprocess.run([dcmtk("echoscu"), "-aec", "HUREN", "127.0.0.1", str(gateway.port)],
                              env=dcmtk_env(), capture_output=True, text=True, timeout=60)
        assert echo.returncode == 0, echo.stderr
    assert len(gateway.sop_uids()) == 25
    gateway.settled()


@pytest.mark.parametrize("ending", ["A-ABORT", "connection dropped"])
def test_an_association_ended_mid_transfer_stores_nothing(gateway: Gateway, tmp_path: Path, ending: str) -> None:
    whole, cut = write(instance(), tmp_path / "whole.dcm"), write(instance(rows=256, columns=256), tmp_path / "cut.dcm")
    sock = _associated(gateway)
    with sock:
        for pdu in _store_pdus(whole):
            sock.sendall(pdu)
        kind, body = _read_pdu(sock)
        assert kind == 0x04 and _status(body) == 0x0000
        pdus = _store_pdus(cut)
        assert len(pdus) > 4
        for pdu in pdus[:len(pdus) // 2]:
            sock.sendall(pdu)
        deadline = time.monotonic() + SETTLE  # the partial data set is being written
        while not list(gateway.receive.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.01)
        if ending == "A-ABORT":
            abort = A_ABORT_RQ()
            abort.source, abort.reason_diagnostic = 0x00, 0x00
            sock.sendall(abort.encode())
            assert _closed_by_server(sock)
    assert gateway.sop_uids() == {dcmread(whole).SOPInstanceUID}
    gateway.settled()


def test_artim_ends_a_silent_peer(gateway: Gateway) -> None:
    with _connect(gateway) as sock:
        started = time.monotonic()
        assert _closed_by_server(sock)  # connected, sent nothing: ARTIM runs out (PS3.8 §9.1.5)
        assert NETWORK_TIMEOUT - 0.5 < time.monotonic() - started < NETWORK_TIMEOUT + 2
    gateway.settled()


def test_a_release_collision_ends_cleanly(gateway: Gateway) -> None:
    """Both sides ask to release at once (PS3.8 §7.2.2.7, states 9 to 12)."""
    with _associated(gateway) as sock:
        [assoc] = gateway.server.active_associations
        releasing = threading.Thread(target=assoc.release)
        releasing.start()
        assert _read_pdu(sock)[0] == 0x05  # the gateway's A-RELEASE-RQ
        sock.sendall(_release_rq())  # ours, crossing it: we are the requestor, so we answer first
        sock.sendall(A_RELEASE_RP().encode())
        assert _read_pdu(sock)[0] == 0x06  # then the gateway's A-RELEASE-RP
        assert _closed_by_server(sock)
        releasing.join(SETTLE)
        assert not releasing.is_alive()
        assert assoc.is_released and not assoc.is_aborted
    gateway.settled()


def test_a_peer_sending_one_byte_at_a_time(gateway: Gateway, tmp_path: Path) -> None:
    path = write(instance(rows=32, columns=32), tmp_path / "slow.dcm")

    def dribble(data: bytes) -> None:
        for at in range(len(data)):
            sock.send(data[at:at + 1])
            if at % 64 == 0:
                time.sleep(0.001)  # so that the gateway sees the PDU in many pieces

    with _connect(gateway) as sock:
        dribble(association_request(gateway.port, CTImageStorage))
        assert _read_pdu(sock)[0] == 0x02
        for pdu in _store_pdus(path):
            dribble(pdu)
        kind, body = _read_pdu(sock)
        assert kind == 0x04 and _status(body) == 0x0000
        dribble(_release_rq())
        assert _read_pdu(sock)[0] == 0x06
    assert gateway.sop_uids() == {dcmread(path).SOPInstanceUID}
    gateway.settled()


def test_a_command_and_its_data_set_in_one_pdu(gateway: Gateway, tmp_path: Path) -> None:
    """PS3.8 §9.3.5 lets one P-DATA-TF carry the command and data set fragments together."""
    path = write(instance(rows=32, columns=32), tmp_path / "one.dcm")
    values = [value for fragment in _store_fragments(path, 0) for value in fragment.presentation_data_value_list]
    assert [value[1][0] for value in values] == [0x03, 0x02]
    with _associated(gateway) as sock:
        sock.sendall(_p_data_tf(values))
        kind, body = _read_pdu(sock)
        assert kind == 0x04 and _status(body) == 0x0000
        sock.sendall(_release_rq())
        assert _read_pdu(sock)[0] == 0x06
    assert gateway.sop_uids() == {dcmread(path).SOPInstanceUID}
    gateway.settled()


def test_a_command_in_fragments_is_read_by_pynetdicom(gateway: Gateway, tmp_path: Path) -> None:
    path = write(instance(rows=32, columns=32), tmp_path / "split.dcm")
    command, *data = _store_fragments(path, 16384)
    (context_id, whole), = command.presentation_data_value_list
    first, last = (context_id, b"\x01" + whole[1:21]), (context_id, b"\x03" + whole[21:])
    with _associated(gateway) as sock:
        sock.sendall(_p_data_tf([first]) + _p_data_tf([last]) + b"".join(P_DATA_TF(d).encode() for d in data))
        kind, body = _read_pdu(sock)
        assert kind == 0x04 and _status(body) == 0x0000
    assert gateway.sop_uids() == {dcmread(path).SOPInstanceUID}
    gateway.settled()


def test_a_command_inside_a_data_set_aborts(gateway: Gateway, tmp_path: Path) -> None:
    path = write(instance(rows=256, columns=256), tmp_path / "cut.dcm")
    command, *data = _store_fragments(path, 16384)
    assert len(data) > 2
    with _associated(gateway) as sock:
        sock.sendall(P_DATA_TF(command).encode() + P_DATA_TF(data[0]).encode() + P_DATA_TF(command).encode())
        kind, _ = _read_pdu(sock)
        assert kind == 0x07  # A-ABORT (PS3.8 §9.3.8): an unexpected PDV, not a guess at what was meant
        assert _closed_by_server(sock)
    assert gateway.sop_uids() == set()
    gateway.settled()


def test_an_instance_is_answered_when_the_next_file_cannot_be_made(gateway: Gateway, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = (write(instance(rows=32, columns=32), tmp_path / f"{n}.dcm") for n in (1, 2))
    with _associated(gateway) as sock:
        sock.sendall(b"".join(_store_pdus(first)))
        kind, body = _read_pdu(sock)
        assert kind == 0x04 and _status(body) == 0x0000
        # The receive folder is gone: the file made for the second instance is in hand,
        # the one to be made after it cannot be.
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
        sock.sendall(b"".join(_store_pdus(second)))
        kind, body = _read_pdu(sock)
        assert kind == 0x04 and _status(body) == 0x0000
        sock.sendall(_release_rq())
        assert _read_pdu(sock)[0] == 0x06
    assert gateway.sop_uids() == {dcmread(first).SOPInstanceUID, dcmread(second).SOPInstanceUID}
    gateway.settled()


def test_a_pdu_longer_than_announced_is_not_read(gateway: Gateway) -> None:
    with _associated(gateway) as sock:
        sock.sendall(struct.pack(">BBL", 0x04, 0, 1024**3))  # a GiB of P-DATA announced
        assert _closed_by_server(sock)
    gateway.settled()


def test_tls_store_and_abort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:  # noqa: F811
    tls = server_context(Tls(**pki.tls()))
    gateway = _start(tmp_path, monkeypatch, tls)
    try:
        paths = _ct(tmp_path / "ct", 4, size=256)
        ae = AE(ae_title="TLSPEER")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        client = ssl.create_default_context(cafile=pki.pem("ca"))
        assoc = ae.associate("127.0.0.1", gateway.port, ae_title="HUREN", max_pdu=16384,
                             tls_args=(client, "localhost"))
        assert assoc.is_established
        assert [assoc.send_c_store(dcmread(path)).Status for path in paths] == [0, 0, 0, 0]
        assoc.release()
        again = ae.associate("127.0.0.1", gateway.port, ae_title="HUREN", tls_args=(client, "localhost"))
        assert again.is_established
        again.abort()
        assert len(gateway.sop_uids()) == 4
        gateway.settled()
    finally:
        gateway.server.shutdown()
        gateway.db.dispose()
