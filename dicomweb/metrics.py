"""Prometheus metrics at ``GET /metrics`` (text exposition format 0.0.4).

Counted as they happen, in every serving process: instances and bytes
archived by door and hospital, ingest latency, refusals by status, and index
and store errors met while archiving (:func:`observe`, an observer of
:class:`archive.ingest.Ingest`), and instances per index commit
(:func:`observe_commit`: above one when group commit batches them). Read from the index at each scrape, so
they are the same whichever process answers: the outage queue's depth, bytes
and oldest item per machine, and the judging backlog.

With ``workers: N`` each forked worker counts on its own; ``huren serve``
gives them one folder (``PROMETHEUS_MULTIPROC_DIR``, set before any metric
exists) where prometheus-client's multiprocess mode keeps each process's
values, and whichever worker answers a scrape sums them all.

Who may read: anyone while access is open (loopback only); otherwise an admin
credential (``huren token create --admin``, or an OIDC admin), since label
values name hospitals and counts reveal activity.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from archive.index.database import Database
from archive.index.schema import queued_objects, studies
from archive.ingest import Failure, IngestError, Outcome, Source, Stored
from dicomweb.errors import DicomWebError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

INSTANCES = Counter("huren_instances_total", "Instances received and answered with success, by outcome",
                    ["door", "hospital", "outcome"])
BYTES = Counter("huren_archived_bytes_total", "Bytes of instances archived (stored or replaced)",
                ["door", "hospital"])
LATENCY = Histogram("huren_ingest_seconds", "Seconds from a received file to its answer (archive and index)",
                    ["door"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
FAILURES = Counter("huren_ingest_failures_total", "Instances refused, by DIMSE status (= STOW-RS FailureReason)",
                   ["door", "hospital", "status"])
COMMIT_WRITES = Histogram("huren_index_commit_instances",
                          "Instances written to the index per commit (several when they arrive together)",
                          buckets=(1, 2, 4, 8, 16, 32, 64))
BACKEND_ERRORS = Counter("huren_backend_errors_total",
                         "Instances refused because the index or the blob store failed", ["backend"])

_ARCHIVED = (Outcome.STORED, Outcome.REPLACED)


def observe(source: Source, result: Stored | IngestError, size: int, seconds: float) -> None:
    """Count one ingest (an :attr:`archive.ingest.Ingest.observers` callback)."""
    hospital = source.hospital_id or ""
    LATENCY.labels(source.door).observe(seconds)
    if isinstance(result, Stored):
        INSTANCES.labels(source.door, hospital, result.outcome.value).inc()
        if result.outcome in _ARCHIVED:
            BYTES.labels(source.door, hospital).inc(size)
        return
    FAILURES.labels(source.door, hospital, f"0x{result.failure.value:04X}").inc()
    if result.failure is Failure.OUT_OF_RESOURCES:
        # The ingest's messages lead with what failed (archive.ingest, archive.outbox).
        BACKEND_ERRORS.labels("index" if str(result).startswith("index") else "store").inc()


def observe_commit(writes: int) -> None:
    """Count one index commit of `writes` instances (an
    :attr:`archive.index.groupcommit.GroupCommit.observers` callback)."""
    COMMIT_WRITES.observe(writes)


class IndexCollector(Collector):
    """What the index says at scrape time: the outage queue and the judging backlog."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("huren_queue_objects", "Objects in the outage queue, not yet in the store",
                                  labels=["host"])
        size = GaugeMetricFamily("huren_queue_bytes", "Bytes in the outage queue", labels=["host"])
        age = GaugeMetricFamily("huren_queue_oldest_seconds", "Age of the oldest object in the outage queue",
                                labels=["host"])
        now = time.time()
        with self.db.reading() as conn:
            for host, count, total, oldest in conn.execute(
                    select(queued_objects.c.host, func.count(), func.coalesce(func.sum(queued_objects.c.size), 0),
                           func.min(queued_objects.c.queued_at)).group_by(queued_objects.c.host)):
                depth.add_metric([host], count)
                size.add_metric([host], total)
                # SQLite gives naive datetimes (written as UTC).
                stamp = oldest.timestamp() if oldest.tzinfo else oldest.replace(tzinfo=UTC).timestamp()
                age.add_metric([host], max(now - stamp, 0.0))
            backlog = conn.execute(select(func.count()).select_from(studies)
                                   .where(studies.c.judge_pending.is_(True))).scalar_one()
        yield depth
        yield size
        yield age
        yield GaugeMetricFamily("huren_judging_backlog", "Studies with instances not yet judged", value=backlog)


async def metrics(request: Request) -> Response:
    """``GET /metrics``: every process's counters and the index's gauges."""
    state = request.app.state
    caller = request.state.caller
    if state.config.access_enforced and not caller.admin:
        raise DicomWebError(403, "metrics are for admins (huren token create --admin)")
    body = await run_in_threadpool(_exposition, state.db)
    return Response(body, media_type=CONTENT_TYPE)


def _exposition(db: Database) -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        counted = CollectorRegistry()
        MultiProcessCollector(counted)
    else:
        counted = REGISTRY
    index = CollectorRegistry(auto_describe=False)
    index.register(IndexCollector(db))
    return generate_latest(counted) + generate_latest(index)

