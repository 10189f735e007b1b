"""Prometheus metrics at /metrics: counted in every worker and summed whichever
worker answers the scrape; read by admins only once access is enforced."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Huren, huren_config
from tests.factory import instance, write


def _samples(server: Huren, token: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(server.url + "/metrics", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def test_counts_are_summed_over_workers(tmp_path: Path) -> None:
    server = Huren(tmp_path, huren_config(tmp_path, workers=2)).start()
    try:
        files = [write(instance(), tmp_path / f"i{n}.dcm") for n in range(3)]
        for file in files:  # one association each, so both workers are likely to take some
            assert server.storescu(file).returncode == 0
        assert server.storescu(files[0]).returncode == 0  # the same instance again
        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\nnot DICOM\r\n--{boundary}--\r\n").encode()
        refused = httpx.post(server.dicomweb + "/studies", content=body, timeout=30, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert refused.status_code == 409

        with sqlite3.connect(tmp_path / "index.db") as conn:
            archived = conn.execute("SELECT sum(size) FROM instances").fetchone()[0]
        scrapes = [_samples(server) for _ in range(12)]  # new connections: answered by either worker
    finally:
        server.stop()
    dimse = (("door", "dimse"), ("hospital", ""))
    for samples in scrapes:
        assert samples[("huren_instances_total", (*dimse, ("outcome", "stored")))] == 3
        assert samples[("huren_instances_total", (*dimse, ("outcome", "duplicate")))] == 1
        assert samples[("huren_archived_bytes_total", dimse)] == archived
        assert samples[("huren_ingest_seconds_count", (("door", "dimse"),))] == 4
        assert samples[("huren_ingest_seconds_count", (("door", "stow"),))] == 1
        assert samples[("huren_ingest_failures_total", (("door", "stow"), ("hospital", ""), ("status", "0xC000")))] == 1
        assert samples[("huren_judging_backlog", ())] == 3
        assert not any(name.startswith("huren_queue_") for name, _ in samples)  # the queue is empty
    assert sorted(scrapes[0]) == sorted(scrapes[-1])


def test_only_admins_read_metrics_once_access_is_enforced(tmp_path: Path) -> None:
    hospitals = [{"id": "hosp-a", "name": "Hospital A", "ae_titles": ["CT_A"]}]
    server = Huren(tmp_path, huren_config(tmp_path, hospitals=hospitals)).start()
    try:
        sent = write(instance(), tmp_path / "a.dcm")
        assert server.storescu(sent, calling="CT_A").returncode == 0
        assert httpx.get(server.url + "/metrics", timeout=30).status_code == 401
        hospital = httpx.get(server.url + "/metrics", timeout=30,
                             headers={"Authorization": f"Bearer {server.token('hosp-a')}"})
        assert hospital.status_code == 403 and "admin" in hospital.json()["error"]
        samples = _samples(server, server.token(admin=True))
    finally:
        server.stop()
    assert samples[("huren_instances_total", (("door", "dimse"), ("hospital", "hosp-a"), ("outcome", "stored")))] == 1
