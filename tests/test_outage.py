"""The object store goes away (frozen with SIGSTOP, stopped with SIGTERM) on a real
S3 server (SeaweedFS) while DCMTK's storescu and STOW-RS send: every instance is
answered within the bound, every acknowledged one is read from the outage queue
meanwhile and is in the bucket, byte for byte, once the store is back."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select, text, update

from archive.config import OutageQueue, S3Storage
from archive.index.database import Database
from archive.index.schema import queued_objects
from archive.ingest import Ingest, Outcome, Source
from archive.outbox import Outbox, Queued
from archive.storage.filesystem import FilesystemStore
from archive.storage.s3 import S3Store
from tests.conftest import Huren, free_port, huren_config
from tests.factory import instance, write
from tests.seaweed import SeaweedFS, running

AFTER = 1.5          # storage.queue.after: how long a put may take before the object is queued
BOUND = AFTER + 3.0  # what one C-STORE or STOW-RS may take, all told, while the store is out
DICOM = "application/dicom"


@pytest.fixture
def seaweedfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedFS]:
    yield from running(tmp_path / "seaweedfs", monkeypatch)


def outage_config(tmp_path: Path, seaweedfs: SeaweedFS, index_url: str, **queue: Any) -> dict[str, Any]:
    storage = seaweedfs.storage(
        # A read timeout well beyond the bound: what answers in time is the queue's deadline.
        connect_timeout=1, read_timeout=20, max_attempts=1,
        queue={"path": str(tmp_path / "queue"), "after": AFTER, "redrive_interval": 0.5, **queue},
    )
    return huren_config(tmp_path, storage=storage, index_url=index_url)


def stow(server: Huren, *paths: Path) -> httpx.Response:
    boundary = "outage-boundary"
    body = b"".join(f"--{boundary}\r\nContent-Type: {DICOM}\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
                    for p in paths) + f"--{boundary}--\r\n".encode()
    return httpx.post(server.dicomweb + "/studies", content=body, timeout=60, headers={
        "Content-Type": f'multipart/related; type="{DICOM}"; boundary={boundary}',
    })


def retrieve(server: Huren, ds: Any, timeout: float = 30) -> httpx.Response:
    return httpx.get(f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                     f"/instances/{ds.SOPInstanceUID}", headers={"Accept": f'multipart/related; type="{DICOM}"'},
                     timeout=timeout)


def part_body(answer: httpx.Response) -> bytes:
    """The single part of a multipart/related answer."""
    boundary = answer.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"').encode()
    part = answer.content.split(b"--" + boundary)[1]
    return part.split(b"\r\n\r\n", 1)[1][:-2]


def indexed(server: Huren) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (blob key, SHA-256) of every instance row."""
    engine = create_engine(server.config["index"]["url"])
    with engine.connect() as conn:
        rows = {sop: (key, digest) for sop, key, digest in
                conn.execute(text("SELECT sop_uid, blob_key, sha256 FROM instances"))}
    engine.dispose()
    return rows


def ready(server: Huren) -> httpx.Response:
    return httpx.get(server.url + "/readyz", timeout=15)


def wait_drained(server: Huren, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = ready(server)
        if answer.status_code == 200 and answer.json()["queue"]["objects"] == 0:
            return answer.json()
        time.sleep(0.3)
    raise AssertionError(f"the queue did not drain within {timeout}s: {ready(server).json()}")


def bucket_objects(seaweedfs: SeaweedFS, storage: dict[str, Any]) -> dict[str, bytes]:
    client = seaweedfs.client()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=storage["bucket"]):
        for item in page.get("Contents", []):
            key = item["Key"].removeprefix(storage["prefix"] + "/")
            found[key] = client.get_object(Bucket=storage["bucket"], Key=item["Key"])["Body"].read()
    return found


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["frozen", "stopped"])
def test_store_outage_during_cstore_and_stow(outage: str, seaweedfs: SeaweedFS, index_url: str,
                                            tmp_path: Path) -> None:
    config = outage_config(tmp_path, seaweedfs, index_url)
    server = Huren(tmp_path, config).start()
    try:
        before = write(instance(), tmp_path / "before.dcm")
        assert server.storescu(before).returncode == 0
        study = instance()
        sent = [write(instance(StudyInstanceUID=study.StudyInstanceUID, SeriesInstanceUID=study.SeriesInstanceUID,
                               InstanceNumber=n, frames=3), tmp_path / f"c{n}.dcm") for n in range(1, 5)]
        by_stow = [write(instance(StudyInstanceUID=study.StudyInstanceUID, InstanceNumber=10 + n),
                         tmp_path / f"s{n}.dcm") for n in range(2)]

        seaweedfs.freeze() if outage == "frozen" else seaweedfs.stop()

        for path in sent:  # one association per instance, as modalities often send
            started = time.monotonic()
            result = server.storescu(path)
            took = time.monotonic() - started
            assert result.returncode == 0, result.stderr
            assert took < BOUND, f"C-STORE answered after {took:.1f} s"
        for path in by_stow:
            started = time.monotonic()
            answer = stow(server, path)
            took = time.monotonic() - started
            assert answer.status_code == 200, answer.text
            assert took < BOUND, f"STOW-RS answered after {took:.1f} s"
        queue = Path(config["storage"]["queue"]["path"])
        assert len(list(queue.iterdir())) == len(sent) + len(by_stow)

        # Reads are served from the queue meanwhile: instances, metadata, frames.
        served = {}
        for path in sent + by_stow:
            ds = dcmread(path)
            answer = retrieve(server, ds)
            assert answer.status_code == 200
            served[ds.SOPInstanceUID] = part_body(answer)
        first = dcmread(sent[0])
        frame = httpx.get(f"{server.dicomweb}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
                          f"/instances/{first.SOPInstanceUID}/frames/2", timeout=30,
                          headers={"Accept": 'multipart/related; type="application/octet-stream"'})
        assert frame.status_code == 200 and first.PixelData[512:1024] in frame.content
        metadata = httpx.get(f"{server.dicomweb}/studies/{study.StudyInstanceUID}/metadata", timeout=30)
        assert metadata.status_code == 200 and len(metadata.json()) == len(sent) + len(by_stow)
        # An instance archived before the outage cannot be read: a prompt 503, never a 200 cut short.
        started = time.monotonic()
        answer = retrieve(server, dcmread(before))
        assert answer.status_code == 503 and "store" in answer.json()["error"]
        assert time.monotonic() - started < BOUND
        old = dcmread(before)
        started = time.monotonic()
        answer = httpx.get(f"{server.dicomweb}/studies/{old.StudyInstanceUID}/series/{old.SeriesInstanceUID}"
                           f"/instances/{old.SOPInstanceUID}/frames/1", timeout=30,
                           headers={"Accept": 'multipart/related; type="application/octet-stream"'})
        assert answer.status_code == 503 and "store unavailable" in answer.json()["error"]
        assert time.monotonic() - started < BOUND
        # Not ready (reads of archived objects fail), the queue saying what it holds.
        probe = ready(server)
        assert probe.status_code == 503
        assert probe.json()["index"] == "ok" and probe.json()["store"] != "ok"
        assert probe.json()["queue"]["objects"] == len(sent) + len(by_stow)

        seaweedfs.thaw() if outage == "frozen" else seaweedfs.start()
        assert wait_drained(server)["store"] == "ok"
        assert list(queue.iterdir()) == []
    finally:
        server.stop()

    rows = indexed(server)
    objects = bucket_objects(seaweedfs, config["storage"])
    assert set(objects) == {key for key, _ in rows.values()}
    for sop, (key, digest) in rows.items():
        assert hashlib.sha256(objects[key]).hexdigest() == digest
        if sop in served:
            assert objects[key] == served[sop]  # what was read from the queue is what the store has
    for path in by_stow:  # STOW-RS parts are archived as sent
        ds = dcmread(path)
        assert objects[rows[ds.SOPInstanceUID][0]] == path.read_bytes()


def test_a_full_queue_refuses_with_0xa700_and_503(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    one = write(instance(), tmp_path / "one.dcm")
    config = outage_config(tmp_path, seaweedfs, f"sqlite:///{tmp_path / 'index.db'}",
                           max_bytes=int(one.stat().st_size * 1.5))
    server = Huren(tmp_path, config).start()
    try:
        seaweedfs.stop()
        assert server.storescu(one).returncode == 0  # queued
        refused = write(instance(), tmp_path / "two.dcm")
        result = server.storescu(refused, extra=("-d",))  # -d: the response's Error Comment too
        said = result.stdout + result.stderr
        assert "0xa700: Refused: Out of resources" in said and "store unavailable and queue full" in said, said
        answer = stow(server, write(instance(), tmp_path / "three.dcm"))
        assert answer.status_code == 503 and answer.headers["Retry-After"]
        assert "queue full" in answer.headers["Warning"]
        failed = answer.json()["00081198"]["Value"]
        assert [item["00081197"]["Value"] for item in failed] == [[0xA700]]
        log = server.log.read_text()
        assert "store unavailable and queue full" in log

        seaweedfs.start()
        wait_drained(server)
    finally:
        server.stop()
    rows = indexed(server)
    one_ds = dcmread(one)
    assert set(rows) == {one_ds.SOPInstanceUID}  # nothing accepted that was not kept
    assert set(bucket_objects(seaweedfs, config["storage"])) == {rows[one_ds.SOPInstanceUID][0]}


def test_a_restart_with_a_full_queue_drains_it(seaweedfs: SeaweedFS, index_url: str, tmp_path: Path) -> None:
    config = outage_config(tmp_path, seaweedfs, index_url)
    server = Huren(tmp_path, config).start()
    paths = [write(instance(InstanceNumber=n), tmp_path / f"i{n}.dcm") for n in range(3)]
    try:
        seaweedfs.stop()
        for path in paths:
            assert stow(server, path).status_code == 200
    finally:
        server.stop()
    assert len(indexed(server)) == 3
    seaweedfs.start()
    server.start()
    try:
        wait_drained(server)
    finally:
        server.stop()
    objects = bucket_objects(seaweedfs, config["storage"])
    assert sorted(objects.values()) == sorted(p.read_bytes() for p in paths)
    assert list(Path(config["storage"]["queue"]["path"]).iterdir()) == []


def test_without_a_queue_a_stopped_store_refuses_saying_why(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    config = outage_config(tmp_path, seaweedfs, f"sqlite:///{tmp_path / 'index.db'}", max_bytes=0)
    server = Huren(tmp_path, config).start()
    try:
        seaweedfs.stop()
        result = server.storescu(write(instance(), tmp_path / "one.dcm"), extra=("-d",))
    finally:
        server.stop()
    said = result.stdout + result.stderr
    host = config["storage"]["endpoint_url"].removeprefix("http://")
    # The Error Comment (64 characters) leads with what happened and where.
    assert "0xa700: Refused: Out of resources" in said
    assert f"[store unavailable: cannot connect to {host}" in said, said
    assert indexed(server) == {}


def test_each_queued_object_is_uploaded_by_one_process(index_url: str, tmp_path: Path) -> None:
    db = Database(index_url)
    db.migrate()
    store = FilesystemStore(tmp_path / "archive")
    settings = OutageQueue(path=tmp_path / "queue", after=5)
    first, second = Outbox(db, store, settings), Outbox(db, store, settings)  # two processes, one host
    sent = {}
    for n in range(3):
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(bytes([n]) * 1000)
        placed = first.put(f"1.2/1.2.3/1.2.3.{n}.dcm", path, hashlib.sha256(path.read_bytes()).hexdigest(),
                           behind_queue=True)
        assert isinstance(placed, Queued)
        with db.writing() as conn:
            first.add_row(conn, placed)
        sent[placed.key] = path.read_bytes()
        path.unlink()
    with db.reading() as conn:
        pks = conn.execute(select(queued_objects.c.pk).order_by(queued_objects.c.pk)).scalars().all()

    assert len(second._claim(pks[:1], "second")) == 1
    assert first._claim(pks[:1], "first") == []  # claimed: nobody else uploads it
    assert first.redrive("first") == 2
    assert first.depth() == (1, 1000)
    assert len(list(settings.path.iterdir())) == 1

    # The claimant died: once its lease runs out, another process takes the object over.
    with db.writing() as conn:
        conn.execute(update(queued_objects).values(claimed_until=datetime.now(UTC) - timedelta(seconds=1)))
    assert first.redrive("first") == 1
    assert first.depth() == (0, 0) and list(settings.path.iterdir()) == []
    assert {key: b"".join(store.read(key)) for key in store.keys()} == sent
    for outbox in (first, second):
        outbox.close()
    db.dispose()


def test_wado_rs_checks_before_its_200_and_aborts_mid_stream(huren: Huren, tmp_path: Path) -> None:
    first = instance(InstanceNumber=1)
    second = instance(InstanceNumber=2, StudyInstanceUID=first.StudyInstanceUID,
                      SeriesInstanceUID=first.SeriesInstanceUID)
    paths = [write(ds, tmp_path / f"{n}.dcm") for n, ds in enumerate((first, second))]
    assert huren.storescu(*paths).returncode == 0
    archive = Path(huren.config["storage"]["path"])
    study = f"{huren.dicomweb}/studies/{first.StudyInstanceUID}"
    accept = {"Accept": f'multipart/related; type="{DICOM}"'}

    # The second object is gone: the 200 has begun when it fails, so the transfer is broken off.
    (archive / first.StudyInstanceUID / first.SeriesInstanceUID / f"{second.SOPInstanceUID}.dcm").unlink()
    with httpx.stream("GET", study, headers=accept, timeout=30) as answer:
        assert answer.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            answer.read()
    # The first is gone too: found before the 200, a 500 naming the instance.
    (archive / first.StudyInstanceUID / first.SeriesInstanceUID / f"{first.SOPInstanceUID}.dcm").unlink()
    answer = httpx.get(study, headers=accept, timeout=30)
    assert answer.status_code == 500 and first.SOPInstanceUID in answer.json()["error"]
    log = huren.log.read_text()
    assert log.count("index/store disagreement") >= 2 and second.SOPInstanceUID in log


def test_a_new_version_of_a_queued_instance_queues_behind_it(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "huren")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "huren-secret")
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    settings = OutageQueue(path=tmp_path / "queue", after=5)
    # Nothing listens there: every put fails at once.
    unreachable = S3Store(S3Storage(backend="s3", bucket="huren-gone", endpoint_url=f"http://127.0.0.1:{free_port()}",
                                    region="us-east-1", connect_timeout=1, max_attempts=1))
    source = Source("dimse", None, "CT_A")
    ds = instance()
    older = write(ds, tmp_path / "v1.dcm").read_bytes()
    ds.PatientName = "CHANGED^NAME"
    newer = write(ds, tmp_path / "v2.dcm").read_bytes()
    key = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"

    during = Ingest(db, unreachable, "replace", settings)
    shutil.copy(tmp_path / "v1.dcm", tmp_path / "staged.dcm")
    assert during.ingest(tmp_path / "staged.dcm", source).outcome is Outcome.STORED
    # The store is back, the older version not yet uploaded: the newer one must not overtake it.
    store = FilesystemStore(tmp_path / "archive")
    after = Ingest(db, store, "replace", settings)
    shutil.copy(tmp_path / "v2.dcm", tmp_path / "staged.dcm")
    assert after.ingest(tmp_path / "staged.dcm", source).outcome is Outcome.REPLACED
    assert list(store.keys()) == []
    assert [p.read_bytes() for p in settings.path.iterdir()] == [newer]  # the older queue file is gone
    assert older != newer

    assert after.outbox.redrive("p") == 1
    assert b"".join(store.read(key)) == newer and list(settings.path.iterdir()) == []
    for ingest in (during, after):
        ingest.outbox.close()
    db.dispose()


def test_a_queue_folder_is_tidied_and_kept_across_host_names(index_url: str, tmp_path: Path) -> None:
    db = Database(index_url)
    db.migrate()
    store = FilesystemStore(tmp_path / "archive")
    settings = OutageQueue(path=tmp_path / "queue", after=5)
    before = Outbox(db, store, settings, host="huren-7f3a")  # a container, before its restart
    path = tmp_path / "one.dcm"
    path.write_bytes(b"queued" * 100)
    placed = before.put("1.2/1.2.3/1.2.3.4.dcm", path, hashlib.sha256(path.read_bytes()).hexdigest(),
                        behind_queue=True)
    assert isinstance(placed, Queued)
    with db.writing() as conn:
        before.add_row(conn, placed)
    crashed, young = settings.path / "1.2.3.5.dcm.0123456789ab", settings.path / "1.2.3.6.dcm.0123456789ab"
    crashed.write_bytes(b"never acknowledged")
    young.write_bytes(b"an ingest between queueing and commit")
    hour_ago = time.time() - 3601
    os.utime(crashed, (hour_ago, hour_ago))
    os.utime(settings.path / placed.file, (hour_ago, hour_ago))  # old, but its row keeps it

    after = Outbox(db, store, settings, host="huren-c21e")  # the same folder, a new host name
    assert after.sweep() == 1
    assert sorted(p.name for p in settings.path.iterdir()) == sorted([placed.file, young.name])
    assert after.depth() == (1, 600) and after.redrive("p") == 1
    assert b"".join(store.read("1.2/1.2.3/1.2.3.4.dcm")) == b"queued" * 100
    for outbox in (before, after):
        outbox.close()
    db.dispose()
