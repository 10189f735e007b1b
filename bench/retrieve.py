"""WADO-RS series retrieve, this tree against another: MB/s, and what each part costs.

Run from the repository root::

    git worktree add --detach /tmp/wado-old HEAD~3
    .venv/bin/python -m bench.retrieve --old /tmp/wado-old [--rounds 5] [--slices 300] [--strace]

Each tree is served by its own ``huren serve`` (folder archive, SQLite, as
:mod:`bench.run` starts it), the same CT series is stored into both with
STOW-RS, and the series is retrieved as ``multipart/related;
type="application/dicom"`` by httpx, streamed to the end as :func:`bench.run.retrieve`
reads it, alternately from each server. Timings on a shared machine are noisy:
the medians of the rounds are printed with the lowest and highest, and two
deterministic probes beside them — the ASGI body messages the application sends
per part (the app driven in-process over the same archive), and with
``--strace`` the system calls the serving processes make per part.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pydicom

from bench import run, studies

ACCEPT = 'multipart/related; type="application/dicom"'


class TreeHuren(run.Huren):
    """Huren served from the code in `tree` (a checkout or worktree)."""

    def __init__(self, workdir: Path, tree: Path) -> None:
        super().__init__(workdir)
        self.tree = tree
        self.name = f"huren@{tree}"

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = str(self.tree)
        return env


def series_url(server: run.Server, files: list[Path]) -> str:
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return f"{server.dicomweb}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"


def asgi_sends(server: TreeHuren, url: str, parts: int) -> float:
    """Body messages per part the tree's application sends for the series (driven in-process)."""
    path = url.removeprefix(f"http://{run.HOST}:{server.http_port}")
    out = subprocess.run(
        [sys.executable, __file__, "--count-sends", str(server.workdir), path],
        env={**os.environ, "PYTHONPATH": str(server.tree)}, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / parts


def count_sends(workdir: Path, path: str) -> int:
    """Drive the application of the tree on PYTHONPATH over `workdir`'s archive; body messages sent."""
    from archive.audit import AuditTrail
    from archive.config import Config
    from archive.guideline.compliance import Compliance
    from archive.index.database import Database
    from archive.ingest import Ingest
    from archive.storage.filesystem import FilesystemStore
    from dicomweb.app import build_app

    db = Database(f"sqlite:///{workdir / 'index.db'}")
    store = FilesystemStore(workdir / "archive")
    config = Config()
    app = build_app(config, db, store, Ingest(db, store), workdir / "spool", Compliance(db, config),
                    AuditTrail(db))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"accept", ACCEPT.encode()), (b"host", b"bench")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    bodies = 0
    requested = False

    async def receive() -> dict:
        # The request once, then nothing until the answer is done (Starlette listens for a disconnect).
        nonlocal requested
        if requested:
            await asyncio.Event().wait()
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        nonlocal bodies
        bodies += message["type"] == "http.response.body"

    asyncio.run(app(scope, receive, send))
    return bodies


def _children_cpu() -> float:
    """CPU seconds of the finished child processes (the curl that read each answer)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def syscalls(server: TreeHuren, url: str, parts: int) -> dict[str, float]:
    """System calls per part of the serving processes during one retrieve (``strace -c``)."""
    assert server.process is not None
    pids = [str(p) for p in run.process_tree(server.process.pid)]
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as summary:
        tracer = subprocess.Popen(["strace", "-f", "-c", "-o", summary.name, *sum((["-p", p] for p in pids), [])],
                                  stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached
        run.retrieve(url)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
        counts: Counter[str] = Counter()
        for line in summary.read().splitlines():
            fields = line.split()
            if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[-1].isidentifier():
                counts[fields[-1]] += int(fields[3])
    return {name: n / parts for name, n in counts.most_common(8)}


def cpu_seconds(server: run.Server) -> float:
    """CPU time (user and system) the server's processes have used so far."""
    assert server.process is not None
    ticks = 0
    for pid in run.process_tree(server.process.pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, help="another tree to compare with (e.g. a git worktree of HEAD)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "huren-bench-retrieve")
    parser.add_argument("--strace", action="store_true", help="count system calls per part")
    parser.add_argument("--count-sends", nargs=2, metavar=("WORKDIR", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_sends:
        print(count_sends(Path(args.count_sends[0]), args.count_sends[1]))
        return
    ct = args.workdir / f"ct-{args.slices}"
    files = sorted((ct / "ct-thin").glob("*.dcm")) or studies.ct_study(
        ct, thin_slices=args.slices, thick_slices=0, seed=11)
    trees = [run.REPO] + ([args.old.resolve()] if args.old else [])
    servers = [TreeHuren(args.workdir / f"server-{n}", tree) for n, tree in enumerate(trees)]
    rates: dict[str, list[float]] = {s.name: [] for s in servers}
    cpu: dict[str, list[tuple[float, float, float]]] = {s.name: [] for s in servers}
    try:
        with run.http_client() as client:
            for server in servers:
                shutil.rmtree(server.workdir, ignore_errors=True)
                server.start()
                run.stow(client, server, run.multipart_bodies(files, run.STOW_BATCH))
            urls = {s.name: series_url(s, files) for s in servers}
            for server in servers:  # warm the page cache
                run.retrieve(urls[server.name])
            for _ in range(args.rounds):
                for server in servers:
                    served, used = cpu_seconds(server), _children_cpu()
                    seconds, size = run.retrieve(urls[server.name])
                    rates[server.name].append(size / seconds / run.MB)
                    cpu[server.name].append((cpu_seconds(server) - served, _children_cpu() - used, seconds))
            for server in servers:
                got = rates[server.name]
                served, used, wall = (statistics.median(c) * 1000 for c in zip(*cpu[server.name]))
                print(f"{server.name}: {statistics.median(got):.0f} MB/s median of {len(got)} "
                      f"(lowest {min(got):.0f}, highest {max(got):.0f}); median CPU per retrieve: "
                      f"server {served:.0f} ms, client {used:.0f} ms, of {wall:.0f} ms", flush=True)
            for server in servers:
                print(f"{server.name}: ASGI body messages per part "
                      f"{asgi_sends(server, urls[server.name], len(files)):.2f}", flush=True)
                if args.strace:
                    per_part = syscalls(server, urls[server.name], len(files))
                    print("  system calls per part: " + ", ".join(f"{k} {v:.2f}" for k, v in per_part.items()))
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    main()
