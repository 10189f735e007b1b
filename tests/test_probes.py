"""Liveness and readiness: /livez, and /readyz (= /health) naming what does not answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from archive.config import Config, S3Storage
from archive.guideline.compliance import Compliance
from archive.storage.s3 import S3Store
from dicomweb.app import build_app
from tests.conftest import Archive, Huren, audit_trail


def test_a_healthy_server(huren: Huren) -> None:
    assert httpx.get(huren.url + "/livez").json() == {"status": "alive"}
    for path in ("/readyz", "/health"):
        answer = httpx.get(huren.url + path)
        assert answer.status_code == 200
        assert answer.json() == {"status": "ready", "index": "ok", "store": "ok",
                                 "queue": {"objects": 0, "bytes": 0, "max_bytes": 10 * 1024**3}}


def app_on(archive: Archive, store: Any) -> TestClient:
    config = Config()
    return TestClient(build_app(config, archive.db, store, archive.ingest, archive.folder / "spool",
                                Compliance(archive.db, config), audit_trail(archive.db)))


def test_a_bucket_that_is_not_there_makes_it_unready(s3_endpoint: str, tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path)
    store = S3Store(S3Storage(backend="s3", endpoint_url=s3_endpoint, bucket="no-such-bucket", region="us-east-1"))
    with app_on(archive, store) as client:
        assert client.get("/livez").status_code == 200
        answer = client.get("/readyz")
    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] == "unavailable" and body["index"] == "ok" and body["store"] != "ok"
    archive.db.dispose()


def test_an_archive_folder_that_is_gone_makes_it_unready(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path)
    archive.store.root.rmdir()
    with app_on(archive, archive.store) as client:
        answer = client.get("/health")
    assert answer.status_code == 503 and "is gone" in answer.json()["store"]
    archive.db.dispose()


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/health"])
def test_probes_need_no_token(tmp_path: Path, path: str) -> None:
    archive = Archive(f"sqlite:///{tmp_path / 'index.db'}", tmp_path)
    config = Config(hospitals=[{"id": "a", "name": "A"}])
    app = build_app(config, archive.db, archive.store, archive.ingest, tmp_path / "spool",
                    Compliance(archive.db, config), audit_trail(archive.db))
    with TestClient(app) as client:
        assert client.get(path).status_code == 200
        assert client.get("/dicom-web/studies").status_code == 401
    archive.db.dispose()
