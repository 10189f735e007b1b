"""Shared fixtures: real servers on 127.0.0.1 — Huren itself, moto's S3 server, PostgreSQL.

Huren runs as ``python -m huren serve --config FILE``, the command a hospital
runs, in a subprocess. DCMTK tools are called by absolute path because
pynetdicom installs console scripts with the same names.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from archive.audit import AuditTrail
from archive.index.database import Database
from archive.index.query import Level, Query, parse_attribute, search
from archive.ingest import Ingest, Source, Stored
from archive.storage.filesystem import FilesystemStore
from tests.factory import instance, write

ROOT = Path(__file__).resolve().parent.parent
PYDICOM_FILES = Path(__import__("pydicom").__file__).parent / "data" / "test_files"
ROOT_URL = "http://archive.example/dicom-web"
PG_ADMIN_URL = os.environ.get("HUREN_TEST_POSTGRES", "postgresql+psycopg://root@127.0.0.1:5432/test")


def dcmtk(tool: str) -> str:
    """The absolute path of a DCMTK tool (not pynetdicom's namesake)."""
    path = Path("/usr/bin") / tool
    if not path.exists():
        pytest.fail(f"DCMTK's {tool} is not installed: apt-get install dcmtk")
    return str(path)


def dcmtk_env() -> dict[str, str]:
    # Debian's DCMTK keeps Nagle's algorithm on unless told otherwise.
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Huren:
    """A running ``huren serve`` and what a test needs to talk to it."""

    workdir: Path
    config: dict[str, Any]
    process: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / "huren.log"

    @property
    def ae_title(self) -> str:
        return self.config["dicom"]["ae_title"]

    @property
    def dicom_port(self) -> int:
        return self.config["dicom"]["port"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config['http']['port']}"

    @property
    def dicomweb(self) -> str:
        return self.url + self.config["http"]["dicomweb_root"]

    def start(self, timeout: float = 60.0) -> Huren:
        path = self.workdir / "huren.yaml"
        path.write_text(yaml.safe_dump(self.config))
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "huren", "serve", "--config", str(path)],
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"huren exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"huren did not answer within {timeout}s:\n{self.log.read_text()}")

    def token(self, hospital: str | None = None, *, admin: bool = False, expires: int | None = None) -> str:
        """A new API token made with ``huren token create``, as an admin would."""
        args = ["token", "create", "--config", str(self.workdir / "huren.yaml")]
        args += ["--hospital", hospital] if hospital else []
        args += ["--admin"] if admin else []
        args += ["--expires", str(expires)] if expires is not None else []
        made = subprocess.run([sys.executable, "-m", "huren", *args], cwd=self.workdir,
                              capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def storescu(self, *files: Path | str, calling: str = "STORESCU", extra: tuple[str, ...] = (),
                 tool: str = "storescu") -> subprocess.CompletedProcess:
        """Send files with DCMTK (storescu, or dcmsend which sends compressed files as they are)."""
        if tool == "dcmsend":
            args = [dcmtk("dcmsend"), "-aet", calling, "-aec", self.ae_title,
                    "127.0.0.1", str(self.dicom_port), *extra, *map(str, files)]
        else:
            args = [dcmtk("storescu"), "-aet", calling, "-aec", self.ae_title, *extra,
                    "127.0.0.1", str(self.dicom_port), *map(str, files)]
        return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=600)


def huren_config(workdir: Path, *, storage: dict[str, Any] | None = None,
                 index_url: str | None = None, **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "dicom": {"ae_title": "HUREN", "host": "127.0.0.1", "port": free_port()},
        "http": {"host": "127.0.0.1", "port": free_port(), "dicomweb_root": "/dicom-web"},
        "storage": storage or {"backend": "filesystem", "path": str(workdir / "archive")},
        "index": {"url": index_url or f"sqlite:///{workdir / 'index.db'}"},
        "ingest": {"receive_folder": str(workdir / "spool")},
        # One process, whose logs and state a test can follow (the default is one per core).
        "workers": 1,
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(name, {}).update(values)
        else:
            config[name] = values
    return config


class Archive:
    """The archive in-process, without a server: an index, a folder store and the ingest path."""

    source = Source("dimse", "hosp-a", "CT_A")

    def __init__(self, url: str, folder: Path, on_conflict: str = "reject") -> None:
        self.db = Database(url)
        self.db.migrate()
        self.store = FilesystemStore(folder / "archive")
        self.ingest = Ingest(self.db, self.store, on_conflict)
        self.folder = folder
        self.count = 0

    def add(self, ds: Any = None, path: Path | None = None, source: Source | None = None,
            **attributes: Any) -> Stored:
        """Ingest a dataset (or a copy of a file) and return the result."""
        self.count += 1
        staged = self.folder / f"staged-{self.count}.dcm"
        if path is not None:
            shutil.copy(path, staged)
        else:
            write(ds if ds is not None else instance(**attributes), staged)
        return self.ingest.ingest(staged, source or self.source)

    def find(self, level: Level = Level.STUDY, **matches: str) -> list[dict[str, Any]]:
        query = Query(level=level, matches={parse_attribute(k): v for k, v in matches.items()},
                      include=set())
        with self.db.reading() as conn:
            return search(conn, query, ROOT_URL)

    def uids(self, level: Level = Level.STUDY, **matches: str) -> set[str]:
        tag = {Level.STUDY: "0020000D", Level.SERIES: "0020000E", Level.INSTANCE: "00080018"}[level]
        return {r[tag]["Value"][0] for r in self.find(level, **matches)}


_trails: list[AuditTrail] = []


def audit_trail(db: Database) -> AuditTrail:
    """An audit trail for an app built in-process; closed after the test."""
    trail = AuditTrail(db)
    _trails.append(trail)
    return trail


@pytest.fixture(autouse=True)
def _close_audit_trails() -> Iterator[None]:
    # Its writer thread would otherwise outlive the test and the database it writes to.
    yield
    while _trails:
        _trails.pop().close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's standalone S3 server over HTTP on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_storage(s3_endpoint: str) -> dict[str, Any]:
    """A fresh bucket on the S3 server, as a storage config section."""
    import boto3

    bucket = f"huren-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return {"backend": "s3", "endpoint_url": s3_endpoint, "bucket": bucket, "prefix": "pilot",
            "region": "us-east-1", "multipart_threshold": 5 * 1024**2, "multipart_chunk": 5 * 1024**2}


def _postgres_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database; skipped when no server answers (CI insists on one)."""
    if not _postgres_answers():
        if os.environ.get("HUREN_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL does not answer at 127.0.0.1:5432")
        pytest.skip("PostgreSQL does not answer at 127.0.0.1:5432")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"huren_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each index test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def huren(tmp_path: Path) -> Iterator[Huren]:
    """Huren on its embedded defaults: a folder archive and SQLite."""
    server = Huren(tmp_path, huren_config(tmp_path)).start()
    yield server
    server.stop()


@pytest.fixture(params=["filesystem+sqlite", "s3+postgresql"])
def any_huren(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Huren]:
    """Huren on the embedded defaults, and on S3 with a PostgreSQL index."""
    if request.param == "filesystem+sqlite":
        config = huren_config(tmp_path)
    else:
        config = huren_config(tmp_path, storage=request.getfixturevalue("s3_storage"),
                              index_url=request.getfixturevalue("postgres_url"))
    server = Huren(tmp_path, config).start()
    yield server
    server.stop()


@pytest.fixture
def copy_dir(tmp_path: Path):
    """Copy files into a fresh folder (DCMTK sends a folder's files in one association)."""
    def copy(files: list[Path], name: str = "send") -> Path:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        for i, source in enumerate(files):
            shutil.copy(source, folder / f"{i:05d}.dcm")
        return folder
    return copy
