"""kill -9 at each step of ingest, then a restart: ``huren verify`` finds the index
and the store in agreement, with no orphan, no received file left behind and no
incomplete multipart upload. And the index's connections cut mid-ingest
(``pg_terminate_backend``, as a PostgreSQL restart does to them, without
restarting the server other engineers' tests share): every C-STORE is answered
with success or 0xA700 "index unavailable", and Huren recovers by itself.

The steps: receiving (the data set half received), queued (in the outage queue,
the store down), mid-upload (an S3 multipart upload begun), mid-commit (the
object put, the index transaction waiting on a lock this test holds), and
amid group commits (six associations sharing commits).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import create_engine, text

from archive.config import Config
from archive.receiving import PREFIX
from archive.storage import open_store
from tests.conftest import Huren, dcmtk, dcmtk_env, huren_config
from tests.factory import instance, write
from tests.seaweed import SeaweedFS, running

# Sweep at once and every second; an object without its row is an orphan at once.
SWEEP = {"interval": 1, "upload_age": 0, "orphan_grace": 0}


@pytest.fixture(params=["filesystem+sqlite", "s3+postgresql"])
def backends(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "filesystem+sqlite":
        return {}
    return {"storage": request.getfixturevalue("s3_storage"), "index_url": request.getfixturevalue("postgres_url")}


def _until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


def _received_bytes(spool: Path) -> int:
    return sum(p.stat().st_size for p in spool.glob(f"{PREFIX}*/*") if p.is_file()) if spool.exists() else 0


def _send(server: Huren, path: Path) -> subprocess.Popen:
    return subprocess.Popen([dcmtk("storescu"), "-aec", server.ae_title, "127.0.0.1", str(server.dicom_port),
                             str(path)], env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _uploads(config: dict[str, Any]) -> list[Any]:
    storage = config["storage"]
    if storage["backend"] != "s3":
        return []
    # A new session reads the credentials in the environment now (the default one keeps the first it read).
    client = boto3.session.Session().client("s3", endpoint_url=storage["endpoint_url"], region_name="us-east-1")
    return client.list_multipart_uploads(Bucket=storage["bucket"]).get("Uploads", [])


def _after_restart(server: Huren) -> None:
    """Restart, let the start-up sweep run, and check that nothing leaked."""
    server.start()
    spool = Path(server.config["ingest"]["receive_folder"])
    _until(lambda: not _uploads(server.config), 15, "incomplete multipart uploads aborted")
    path = server.workdir / "huren.yaml"
    checked = _until(lambda: (done := subprocess.run(
        [sys.executable, "-m", "huren", "verify", "--config", str(path)], cwd=server.workdir,
        capture_output=True, text=True, timeout=300)).returncode == 0 and done, 30, "huren verify agrees")
    assert "the index and the store agree" in checked.stdout
    assert "orphan" not in checked.stdout
    assert _received_bytes(spool) == 0
    assert [p.name for p in spool.iterdir() if p.is_file() and not p.name.startswith(".")] == []


@pytest.mark.slow
def test_kill_while_receiving(backends: dict[str, Any], tmp_path: Path) -> None:
    server = Huren(tmp_path, huren_config(tmp_path, sweep=SWEEP, **backends)).start()
    big = write(instance(rows=1024, columns=1024, frames=60), tmp_path / "big.dcm")  # 120 MiB
    sender = _send(server, big)
    spool = Path(server.config["ingest"]["receive_folder"])
    _until(lambda: _received_bytes(spool) > 20 * 1024**2 or sender.poll() is not None, 60, "half received")
    assert sender.poll() is None, "received whole before the kill"
    server.stop(signal.SIGKILL)
    assert sender.wait(60) != 0
    assert _received_bytes(spool) > 0  # what the killed process left
    try:
        _after_restart(server)
    finally:
        server.stop()


@pytest.mark.slow
def test_kill_mid_upload(s3_storage: dict[str, Any], postgres_url: str, tmp_path: Path) -> None:
    # moto dates every multipart upload 2010-11-10: a sweep while this one runs would abort
    # it, so the first server sweeps only at its start.
    config = huren_config(tmp_path, storage=s3_storage, index_url=postgres_url, sweep={**SWEEP, "interval": 3600})
    server = Huren(tmp_path, config).start()
    big = write(instance(rows=1024, columns=1024, frames=100), tmp_path / "big.dcm")  # 200 MiB, 40 parts
    sender = _send(server, big)
    _until(lambda: _uploads(config) or sender.poll() is not None, 120, "a multipart upload begun")
    server.stop(signal.SIGKILL)
    assert _uploads(config), "the upload completed before the kill"
    sender.wait(60)
    server.config["sweep"] = SWEEP
    try:
        _after_restart(server)
    finally:
        server.stop()


def _hold_index(url: str, holding: threading.Event, release: threading.Event) -> None:
    """Hold the lock the ingest's commit needs until `release` is set."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        holding.set()
        release.wait(120)
        conn.execute("ROLLBACK")
        conn.close()
        return
    engine = create_engine(url)
    with engine.connect() as conn:
        conn.execute(text("LOCK TABLE instances IN EXCLUSIVE MODE"))
        holding.set()
        release.wait(120)
        conn.rollback()
    engine.dispose()


def test_kill_mid_commit(backends: dict[str, Any], tmp_path: Path) -> None:
    config = huren_config(tmp_path, sweep=SWEEP, **backends)
    server = Huren(tmp_path, config).start()
    ds = instance()
    key = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    holding, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_index, args=(Config.model_validate(config).index.url, holding, release))
    holder.start()
    try:
        assert holding.wait(30)
        sender = _send(server, write(ds, tmp_path / "one.dcm"))
        store = open_store(Config.model_validate(config))
        _until(lambda: key in set(store.keys()), 60, "the object put, its commit waiting")
        server.stop(signal.SIGKILL)
        sender.wait(60)
    finally:
        release.set()
        holder.join(60)
    try:
        _after_restart(server)  # the sweep adopted the orphan: a complete instance
        found = httpx.get(f"{server.dicomweb}/instances", params={"SOPInstanceUID": ds.SOPInstanceUID}, timeout=30)
        assert found.status_code == 200 and len(found.json()) == 1
    finally:
        server.stop()


@pytest.fixture
def seaweedfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedFS]:
    yield from running(tmp_path / "seaweedfs", monkeypatch)


def test_kill_while_queued(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    storage = seaweedfs.storage(connect_timeout=1, read_timeout=2, max_attempts=1,
                                queue={"path": str(tmp_path / "queue"), "after": 1.5, "redrive_interval": 0.5})
    config = huren_config(tmp_path, storage=storage, sweep=SWEEP)
    server = Huren(tmp_path, config).start()
    seaweedfs.stop()
    ds = instance()
    try:
        assert server.storescu(write(ds, tmp_path / "one.dcm")).returncode == 0  # acknowledged from the queue
        assert any((tmp_path / "queue").iterdir())
        server.stop(signal.SIGKILL)
        seaweedfs.start()
        _after_restart(server)  # the re-driver uploaded it; verify finds it in the store
        key = f"pilot/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        client = seaweedfs.client()
        # verify counts a queued object as archived; the re-driver uploads it within a few turns.
        _until(lambda: key in {item["Key"] for item in client.list_objects_v2(
            Bucket=storage["bucket"], Prefix="pilot/").get("Contents", [])}, 60, "the queued object uploaded")
    finally:
        server.stop()


def test_index_connections_cut_mid_ingest(s3_storage: dict[str, Any], postgres_url: str, tmp_path: Path) -> None:
    config = huren_config(tmp_path, storage=s3_storage, index_url=postgres_url, sweep=SWEEP)
    server = Huren(tmp_path, config).start()
    files = [write(instance(), tmp_path / f"i{n:03d}.dcm") for n in range(40)]
    folder = tmp_path / "send"
    folder.mkdir()
    for path in files:
        path.rename(folder / path.name)
    database = postgres_url.rsplit("/", 1)[1]
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    stop = threading.Event()

    def cut() -> None:  # what a PostgreSQL restart does to Huren's connections, every 0.3 s
        with engine.connect() as conn:
            while not stop.wait(0.3):
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database})

    cutter = threading.Thread(target=cut)
    cutter.start()
    try:
        sent = subprocess.run([dcmtk("storescu"), "-v", "-nh", "+sd", "-aec", server.ae_title, "127.0.0.1",
                               str(server.dicom_port), str(folder)],
                              env=dcmtk_env(), capture_output=True, text=True, timeout=300)
    finally:
        stop.set()
        cutter.join(30)
        engine.dispose()
    try:
        log = sent.stdout + sent.stderr
        statuses = [line.split("(", 1)[1].rstrip(")") for line in log.splitlines() if "Received Store Response" in line]
        # Each answered: success, or 0xA700 (Refused: Out of Resources) saying the index is unavailable.
        assert len(statuses) == 40 and set(statuses) <= {"Success", "Refused: OutOfResources"}, log
        if "Refused: OutOfResources" in statuses:
            assert "index unavailable" in server.log.read_text()
        # Recovered without a restart: the refused ones go through when sent again.
        again = subprocess.run([dcmtk("storescu"), "+sd", "-aec", server.ae_title, "127.0.0.1",
                                str(server.dicom_port), str(folder)], env=dcmtk_env(), capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        found = httpx.get(f"{server.dicomweb}/instances", params={"limit": 100}, timeout=30)
        assert len(found.json()) == 40
        server.stop()
        _after_restart(server)
    finally:
        server.stop()



def _send_acknowledged(server: Huren, datasets: list[Any], acknowledged: list[str], stop: threading.Event) -> None:
    """Send `datasets` over one association, noting each SOP Instance UID answered with success."""
    ae = AE(ae_title="KILLTEST")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
    if not assoc.is_established:
        return
    try:
        for ds in datasets:
            if stop.is_set():
                break
            status = assoc.send_c_store(ds)
            if status and status.Status == 0x0000:
                acknowledged.append(ds.SOPInstanceUID)
            elif not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.abort()


@pytest.mark.slow
def test_kill_during_group_commits(backends: dict[str, Any], tmp_path: Path) -> None:
    """Six associations at once, so that instances share commits; SIGKILL once a hundred are
    acknowledged. After a restart every acknowledged instance is there and whole: none was
    answered before the commit that holds it."""
    config = huren_config(tmp_path, sweep=SWEEP, **backends)
    server = Huren(tmp_path, config).start()
    study = instance()
    senders = [[instance(StudyInstanceUID=study.StudyInstanceUID, SeriesInstanceUID=study.SeriesInstanceUID,
                         InstanceNumber=100 * n + i, rows=64, columns=64) for i in range(100)] for n in range(6)]
    acknowledged: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_send_acknowledged, args=(server, datasets, acknowledged, stop))
               for datasets in senders]
    for thread in threads:
        thread.start()
    try:
        _until(lambda: len(acknowledged) >= 100, 120, "a hundred instances acknowledged")
        commits = httpx.get(server.url + "/metrics", timeout=30).text
        server.stop(signal.SIGKILL)
        answered = set(acknowledged)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    # Instances were batched: fewer commits than instances written.
    count = _metric(commits, "huren_index_commit_instances_count")
    assert count < _metric(commits, "huren_index_commit_instances_sum"), commits
    try:
        _after_restart(server)  # the index and the store agree, nothing half-stored
        found = httpx.get(f"{server.dicomweb}/studies/{study.StudyInstanceUID}/instances",
                          params={"limit": 1000}, timeout=30)
        visible = {item["00080018"]["Value"][0] for item in found.json()}
        assert answered <= visible, f"{len(answered - visible)} acknowledged instances lost"
        for sop in sorted(answered)[:5]:  # and readable
            part = httpx.get(f"{server.dicomweb}/studies/{study.StudyInstanceUID}/series/"
                             f"{study.SeriesInstanceUID}/instances/{sop}", timeout=30)
            assert part.status_code == 200 and sop.encode() in part.content
    finally:
        server.stop()


def _metric(text_format: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text_format.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))
