"""Huren against Orthanc: the same DICOM and DICOMweb workload, side by side.

Run from the repository root, with the project's virtual environment::

    .venv/bin/python -m bench.run                 # full: 3 rounds, about 45 minutes
    .venv/bin/python -m bench.run --quick         # smoke test, about 1 minute
    .venv/bin/python -m bench.run --only orthanc  # one server only
    .venv/bin/python -m bench.run --data /var/tmp/bench-data   # keep the studies for next time

Progress goes to stderr, the Markdown table to stdout.

What it measures
----------------
Every round starts each server fresh (``python -m huren serve --config FILE``
with the Huren of the tree this script is in, and ``/usr/sbin/Orthanc`` with
the DICOMweb plugin), on 127.0.0.1 and free ports, with its own temporary
storage, runs the steps below against it and deletes it. The servers take
turns going first from round to round and never run at the same time. To
benchmark one commit while the tree changes, run from an export of it
(``git archive``) with ``bench/`` copied in.

1. C-STORE of a 300-slice 512x512 CT thin series with DCMTK's ``storescu``
   over one association, then of a second CT's thin series split over four
   parallel ``storescu`` processes (four associations): instances/s and MB/s.
   The first CT's 60-slice thick series and a 4-series MR study are sent
   too (untimed), then a single 15 MB DR image (MB/s).
2. STOW-RS of a third CT's thin series: ``POST /studies``, 25 instances per
   request, one client; the request bodies are built before the clock starts.
3. 2,000 tiny studies (one 8x8 instance each) for the index, C-STORE with
   four ``storescu`` processes, many instances per association.
4. QIDO-RS latencies, the median of ``--requests`` requests after one warm-up:
   a study by StudyInstanceUID, ``PatientName=ZHANG*`` and a one-month
   ``StudyDate`` range (both ``limit=100``, as a worklist asks), and the
   instances of the 300-slice series.
5. WADO-RS study metadata of the CT study (the first request, then the median
   of the following ones) and retrieval of the thin series as
   ``multipart/related; type="application/dicom"`` read to the end by ``curl``
   (MB/s; a Python client would be the bottleneck).
6. Peak memory of the server process and its children: the sum of their
   PSS (proportional set size, so pages forked workers share count once),
   sampled every 0.25 s from the moment the server is ready.
7. In the first ``--big-rounds`` rounds (default 1): the index is topped up to
   ``--big`` (100,000) studies, and steps 4 and 6 are repeated.

Why the sizes and the top-up are what they are: the top-up is sent with STOW-RS
(500 instances per request, the request bodies read from disk while the clock
runs), the door a bulk import would use; its rate is a row of the table. On
the 2-core reference machine Huren's top-up takes about 10 minutes, Orthanc's
about 7, generating the 100,000 tiny studies about 3, and the full run (three
rounds, 100,000 studies in the first only) about 25 minutes. Rounds 2 and 3 stop at 2,000
studies. Deleting a server's storage after the 100,000-study round takes a
minute or two and is not measured.

Fairness. ``TCP_NODELAY=1`` is in the environment of every DCMTK process and of
Orthanc (Debian's DCMTK keeps Nagle's algorithm on without it, and every
message would wait about 40 ms); Huren sets it on its sockets itself.
Both servers may use every core: Huren runs one worker process per core
(``workers``), Orthanc its threads.
``storescu`` proposes only the presentation contexts its files need
(``--required``), as a modality does. Orthanc runs without storage or HTTP
compression (the client asks for ``Accept-Encoding: identity`` too), with its
largest PDU (128 KiB; Huren's default is 1 MiB), ``StorageAccessOnFind:
Answers`` (it filters on its database and reads files only to build answers),
no saved jobs, no result limits, and ``SyncStorageArea: true`` (fsync per
file), as Huren is durable too; its SQLite index commits with
``synchronous=NORMAL`` where Huren's uses ``FULL``. Orthanc 1.10 cannot bind its
DICOM port to one address, so that port listens on all interfaces; its HTTP
port refuses remote clients (``RemoteAccessAllowed: false``).

How to read the table
---------------------
Each cell is the median over rounds, with the lowest and highest round in
brackets; "Rounds" says how many rounds each server has in the row. The last
column is Huren's median divided by Orthanc's. For throughput rows
(instances/s, MB/s) higher is better, so a ratio above 1 means Huren is
faster; for latency and memory rows lower is better, so a ratio below 1 means
Huren is better. The machine is small and may be shared: where the two
servers' [lowest–highest] ranges overlap, do not read the ratio as a
difference. MB is 10^6 bytes of Part-10 files as generated. Answer sizes that
differ between the servers, or from what was stored, are listed under the
table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import httpx
import orjson
import pydicom
import pynetdicom

from bench import studies

STORESCU = "/usr/bin/storescu"  # DCMTK's, not pynetdicom's console script of the same name
ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
REPO = Path(__file__).resolve().parent.parent
CALLING_AET = "BENCH"
HOST = "127.0.0.1"
MB = 1e6
STOW_BATCH = 25  # CT instances per STOW-RS request (about 13 MB)
STOW_TINY_BATCH = 500  # tiny instances per STOW-RS request when topping up the index
STORESCU_BATCH = 5000  # files per storescu process (one association each)
TINY_CHUNK = 5000  # tiny studies generated per worker task
NAME_QUERY = "ZHANG*"
DATE_QUERY = "20200101-20200131"
QIDO_LIMIT = 100
MANIFEST_VERSION = 1


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- settings and data


@dataclass(frozen=True)
class Settings:
    """What one run does; the defaults are the full benchmark."""

    rounds: int = 3
    tiny: int = 2000
    big: int = 100_000
    big_rounds: int = 1
    thin: int = 300
    thick: int = 60
    mr_sequences: int = 4
    requests: int = 20
    retrieves: int = 3
    only: tuple[str, ...] = ("huren", "orthanc")
    data: Path | None = None
    tmp: Path = Path(tempfile.gettempdir())

    @property
    def tiny_total(self) -> int:
        """How many tiny studies the run needs."""
        return max(self.tiny, self.big if self.big_rounds else 0)

    @property
    def tops_up(self) -> bool:
        return self.big_rounds > 0 and self.big > self.tiny


@dataclass
class Corpus:
    """The generated studies and the UIDs the queries ask for."""

    ct_thin: list[Path]
    ct_thick: list[Path]
    ct_parallel: list[Path]
    ct_stow: list[Path]
    mr: list[Path]
    dr: list[Path]
    tiny: list[Path]
    ct_study_uid: str
    ct_thin_series_uid: str

    def to_json(self) -> dict[str, Any]:
        """Paths as strings, for the manifest."""
        return {k: [str(p) for p in v] if isinstance(v, list) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Corpus:
        """The inverse of :meth:`to_json`."""
        fields: dict[str, Any] = {k: [Path(p) for p in v] if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)


def _generate_tiny(root: str, start: int, count: int) -> list[str]:
    """Worker: tiny studies start..start+count-1 (strings pickle faster than Paths)."""
    return [str(p) for p in studies.tiny_studies(Path(root), count, start=start, seed=0)]


def _tiny_in_parallel(root: Path, count: int) -> list[Path]:
    """Tiny studies 0..count-1, generated in chunks on every core."""
    starts = range(0, count, TINY_CHUNK)
    sizes = [min(TINY_CHUNK, count - s) for s in starts]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        parts = pool.map(_generate_tiny, [str(root)] * len(starts), starts, sizes)
        return [Path(p) for part in parts for p in part]


def _corpus_key(settings: Settings) -> dict[str, int]:
    """What must match for generated studies to be reused."""
    return {"version": MANIFEST_VERSION, "thin": settings.thin, "thick": settings.thick,
            "mr_sequences": settings.mr_sequences}


def _reusable(root: Path, settings: Settings) -> Corpus | None:
    """The corpus already in `root`, if it was made with the same settings and is big enough."""
    manifest = root / "manifest.json"
    if not manifest.exists():
        return None
    have = json.loads(manifest.read_text())
    key = _corpus_key(settings)
    if {k: have.get(k) for k in key} != key or have.get("tiny", 0) < settings.tiny_total:
        return None
    corpus = Corpus.from_json(have["corpus"])
    corpus.tiny = corpus.tiny[: settings.tiny_total]
    return corpus


def _clear(root: Path) -> None:
    """Empty `root` for new studies, but only if it is ours (it has a manifest) or empty."""
    if not root.exists():
        return
    if not (root / "manifest.json").exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty and holds no bench manifest.json; not deleting it")
    shutil.rmtree(root)


def build_corpus(root: Path, settings: Settings) -> Corpus:
    """Generate (or reuse, when ``root/manifest.json`` matches) every study the run sends."""
    corpus = _reusable(root, settings)
    if corpus is not None:
        log(f"reusing generated studies in {root}")
        return corpus
    _clear(root)
    t0 = time.perf_counter()
    log(f"generating studies in {root}: 3 CT ({settings.thin} thin slices), MR, DR, "
        f"{settings.tiny_total:,} tiny")
    ct = studies.ct_study(root / "ct-a", thin_slices=settings.thin, thick_slices=settings.thick, seed=1)
    ct_parallel = studies.ct_study(
        root / "ct-b", thin_slices=settings.thin, thick_slices=0, seed=2,
        exam=studies.Exam("CHEN^JING=陈^静", "BENCH-CT-0002", "20240315", "ACC-CT-0002"),
    )
    ct_stow = studies.ct_study(
        root / "ct-c", thin_slices=settings.thin, thick_slices=0, seed=3,
        exam=studies.Exam("LIU^YANG=刘^洋", "BENCH-CT-0003", "20240315", "ACC-CT-0003"),
    )
    first = pydicom.dcmread(ct[0], stop_before_pixels=True)
    corpus = Corpus(
        ct_thin=ct[: settings.thin], ct_thick=ct[settings.thin :], ct_parallel=ct_parallel,
        ct_stow=ct_stow, mr=studies.mr_study(root / "mr", sequences=settings.mr_sequences, seed=4),
        dr=studies.dr_study(root / "dr", seed=5), tiny=_tiny_in_parallel(root / "tiny", settings.tiny_total),
        ct_study_uid=str(first.StudyInstanceUID), ct_thin_series_uid=str(first.SeriesInstanceUID),
    )
    (root / "manifest.json").write_text(json.dumps(
        {**_corpus_key(settings), "tiny": settings.tiny_total, "corpus": corpus.to_json()}))
    log(f"generated in {time.perf_counter() - t0:.1f} s")
    return corpus


def size_mb(paths: Iterable[Path]) -> float:
    """Total size of `paths` in MB (10^6 bytes)."""
    return sum(p.stat().st_size for p in paths) / MB


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants that are still running."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def memory_by_process(pid: int) -> dict[int, float]:
    """Memory of `pid` and each of its descendants now: their PSS, in MiB, by process id.

    PSS (proportional set size) counts a page shared by n processes as 1/n in
    each, so forked workers that share their code are not counted n times over,
    as summed RSS would count them.
    """
    sizes: dict[int, float] = {}
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    sizes[member] = int(line.split()[1]) / 1024
        except OSError:  # it exited since the tree was read
            pass
    return sizes


def memory_mib(pid: int) -> float:
    """Memory of `pid` and its descendants now: the sum of their PSS, in MiB."""
    return sum(memory_by_process(pid).values())


class MemoryWatch(threading.Thread):
    """Samples the PSS of a server's processes every `interval` seconds and keeps the peak.

    `peak` is the highest sum seen; `at_peak` is each process's share of it (MiB by pid).
    """

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(name=f"memory-{pid}", daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0.0
        self.at_peak: dict[int, float] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            sizes = memory_by_process(self.pid)
            if sum(sizes.values()) > self.peak:
                self.peak, self.at_peak = sum(sizes.values()), sizes


class Server:
    """A server under test, started fresh in its own work directory."""

    name = "server"
    aet = "SERVER"
    dicomweb_path = "/dicom-web"
    startup_timeout = 90.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.dicom_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.dicom_port:
            self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.memory: MemoryWatch | None = None
        self.log_path = workdir / "server.log"

    @property
    def dicomweb(self) -> str:
        return f"http://{HOST}:{self.http_port}{self.dicomweb_path}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready_url(self) -> str:
        raise NotImplementedError

    def write_config(self) -> None:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {**os.environ, "TCP_NODELAY": "1"}

    def start(self) -> None:
        """Start the server and wait until both its ports answer."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                self.command(), cwd=self.workdir, env=self.environment(),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: Ctrl-C reaches only us, we stop it
            )
        _RUNNING.add(self)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.process.returncode} "
                                   f"while starting:\n{self.log_tail()}")
            if self.is_ready():
                self.memory = MemoryWatch(self.process.pid)
                self.memory.start()
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def is_ready(self) -> bool:
        try:
            response = httpx.get(self.ready_url(), timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and port_open(self.dicom_port)

    def peak_memory_mib(self) -> float:
        """The highest memory (PSS) seen since the server became ready."""
        assert self.memory is not None
        return max(self.memory.peak, memory_mib(self.memory.pid))

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])

    def stop(self) -> None:
        """Stop the server's process group (only what we started), then forget it."""
        process, self.process = self.process, None
        _RUNNING.discard(self)
        if self.memory is not None:
            self.memory.stopped.set()
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


class Orthanc(Server):
    name = "orthanc"
    aet = "ORTHANC"

    def command(self) -> list[str]:
        return [ORTHANC, str(self.workdir / "orthanc.json")]

    def ready_url(self) -> str:
        return f"http://{HOST}:{self.http_port}/system"

    def write_config(self) -> None:
        config = {
            "Name": "huren-bench",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [ORTHANC_DICOMWEB],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                         "Host": f"{HOST}:{self.http_port}", "Ssl": False},
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            # Fairness (see the module docstring): the same work as Huren, durable, uncompressed.
            "StorageCompression": False,
            "HttpCompressionEnabled": False,
            "MaximumPduLength": 131072,
            "StorageAccessOnFind": "Answers",
            "SaveJobs": False,
            "SyncStorageArea": True,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
        }
        (self.workdir / "orthanc.json").write_text(json.dumps(config, indent=2))


class Huren(Server):
    name = "huren"
    aet = "HUREN"

    def command(self) -> list[str]:
        # The interpreter running us is the project's venv, with Huren's dependencies.
        return [sys.executable, "-m", "huren", "serve", "--config", str(self.workdir / "huren.yaml")]

    def environment(self) -> dict[str, str]:
        # The Huren under test is the one in the tree this script is in, whatever the venv installed.
        env = super().environment()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def ready_url(self) -> str:
        return f"http://{HOST}:{self.http_port}/health"

    def write_config(self) -> None:
        config = {
            "dicom": {"ae_title": self.aet, "host": HOST, "port": self.dicom_port},
            "http": {"host": HOST, "port": self.http_port, "dicomweb_root": self.dicomweb_path},
            "storage": {"backend": "filesystem", "path": str(self.workdir / "archive")},
            "index": {"url": f"sqlite:///{self.workdir / 'index.db'}"},
            "ingest": {"spool": str(self.workdir / "spool")},  # same disk: archived by rename
            "workers": os.cpu_count() or 1,  # Orthanc's threads use every core too
        }
        # JSON is YAML, and quotes every path whatever characters it holds.
        (self.workdir / "huren.yaml").write_text(json.dumps(config, indent=2))


SERVERS: dict[str, type[Server]] = {"huren": Huren, "orthanc": Orthanc}
_RUNNING: set[Server] = set()  # stopped on the way out, whatever happened


# --------------------------------------------------------------------------- clients


def storescu(server: Server, files: Sequence[Path], associations: int = 1,
             progress: bool = False) -> float:
    """Send `files` with DCMTK storescu over `associations` parallel processes; seconds taken.

    Each process sends a contiguous share of the files (so a series' instances
    stay together), at most ``STORESCU_BATCH`` files per association. With
    `progress`, a line is logged after every association.
    """
    env = {**os.environ, "TCP_NODELAY": "1"}
    size = -(-len(files) // associations)
    shares = [list(files[i : i + size]) for i in range(0, len(files), size)]
    errors: list[str] = []
    sent = 0
    lock = threading.Lock()
    t0 = time.perf_counter()

    def send(share: list[Path]) -> None:
        nonlocal sent
        for start in range(0, len(share), STORESCU_BATCH):
            batch = share[start : start + STORESCU_BATCH]
            command = [STORESCU, "--required", "-aet", CALLING_AET, "-aec", server.aet,
                       HOST, str(server.dicom_port), *map(str, batch)]
            done = subprocess.run(command, env=env, capture_output=True, text=True, errors="replace")
            output = (done.stdout + done.stderr).strip().splitlines()
            failed = [line for line in output if line.startswith(("E:", "F:"))]
            with lock:
                if done.returncode != 0 or failed:
                    errors.append(f"storescu exit {done.returncode}: " + "\n".join((failed or output)[:8]))
                sent += len(batch)
                if progress and sent < len(files):
                    log(f"  {server.name}: {sent:,}/{len(files):,} sent, "
                        f"{sent / (time.perf_counter() - t0):.0f} inst/s")

    threads = [threading.Thread(target=send, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"C-STORE to {server.name} failed:\n" + "\n".join(errors[:4]))
    return elapsed


def http_client() -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0),
                        headers={"Accept-Encoding": "identity"})


class Body(NamedTuple):
    """One STOW-RS request body and how many instances it carries."""

    boundary: str
    data: bytes
    instances: int


def multipart_bodies(files: Sequence[Path], batch: int) -> Iterator[Body]:
    """``multipart/related; type="application/dicom"`` bodies of `batch` files each."""
    for start in range(0, len(files), batch):
        boundary = uuid.uuid4().hex
        chunk = files[start : start + batch]
        parts = []
        for path in chunk:
            parts += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                      path.read_bytes(), b"\r\n"]
        parts.append(f"--{boundary}--\r\n".encode())
        yield Body(boundary, b"".join(parts), len(chunk))


def stow(client: httpx.Client, server: Server, bodies: Iterable[Body], progress: int = 0) -> float:
    """POST every body to /studies in turn and check that all were stored; seconds taken.

    With `progress`, a line is logged about every `progress` instances.
    """
    sent = 0
    t0 = time.perf_counter()
    for body in bodies:
        response = client.post(
            server.dicomweb + "/studies", content=body.data,
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={body.boundary}',
                     "Accept": "application/dicom+json"},
        )
        if response.status_code != 200:
            raise RuntimeError(f"STOW-RS to {server.name}: HTTP {response.status_code}: {response.text[:500]}")
        stored = len(orjson.loads(response.content).get("00081199", {}).get("Value", []))
        if stored != body.instances:
            raise RuntimeError(f"STOW-RS to {server.name}: {stored} of {body.instances} instances stored")
        sent += body.instances
        if progress and sent // progress != (sent - body.instances) // progress:
            log(f"  {server.name}: {sent:,} sent, {sent / (time.perf_counter() - t0):.0f} inst/s")
    return time.perf_counter() - t0


def timed_get(client: httpx.Client, url: str, params: dict[str, str] | None = None) -> tuple[float, bytes]:
    """GET `url` as DICOM JSON; (seconds, body). Raises on a non-200 answer."""
    if params:  # keep '*' literal: Orthanc does not match a percent-encoded wildcard
        url += "?" + urllib.parse.urlencode(params, safe="*")
    t0 = time.perf_counter()
    response = client.get(url, headers={"Accept": "application/dicom+json"})
    body = response.content
    elapsed = time.perf_counter() - t0
    if response.status_code != 200:
        raise RuntimeError(f"GET {response.url}: HTTP {response.status_code}: {body[:300]!r}")
    return elapsed, body


def latency(client: httpx.Client, url: str, params: dict[str, str] | None, requests: int) -> tuple[float, int]:
    """Median latency in ms over `requests` GETs after one warm-up, and the answer's length."""
    _, body = timed_get(client, url, params)
    count = len(orjson.loads(body)) if body.strip() else 0
    times = [timed_get(client, url, params)[0] for _ in range(requests)]
    return statistics.median(times) * 1000, count


def retrieve(url: str) -> tuple[float, int]:
    """Stream a WADO-RS multipart/related DICOM answer to the end; (seconds, bytes).

    Read by ``curl`` into /dev/null, as a viewer's C++ network stack would read it:
    Python's httpx spends about as much CPU per byte as the servers do, and on two
    cores would cap both at the same rate.
    """
    done = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "--http1.1", "--output", "/dev/null",
         "--header", 'Accept: multipart/related; type="application/dicom"',
         "--header", "Accept-Encoding: identity",
         "--write-out", "%{time_total} %{size_download}", url],
        capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"GET {url}: {done.stderr.strip() or f'curl exit {done.returncode}'}")
    seconds, received = done.stdout.split()
    return float(seconds), int(received)


# --------------------------------------------------------------------------- the table rows


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    better: Literal["higher", "lower"]


def rows_for(settings: Settings) -> list[Row]:
    """The table's rows, labelled with this run's sizes."""
    thin, thick = settings.thin, settings.thick
    series = f"CT thin series ({thin} x 512x512)"
    rows = [
        Row("store1_ips", f"C-STORE {series}, 1 association", "inst/s", "higher"),
        Row("store1_mbs", f"C-STORE {series}, 1 association", "MB/s", "higher"),
        Row("store4_ips", f"C-STORE {series}, 4 associations", "inst/s", "higher"),
        Row("store4_mbs", f"C-STORE {series}, 4 associations", "MB/s", "higher"),
        Row("store_dr_mbs", "C-STORE one DR image (3000x2500, 15 MB)", "MB/s", "higher"),
        Row("stow_ips", f"STOW-RS {series}, {STOW_BATCH} per request", "inst/s", "higher"),
        Row("stow_mbs", f"STOW-RS {series}, {STOW_BATCH} per request", "MB/s", "higher"),
        Row("load_small_ips", f"C-STORE tiny studies 0..{settings.tiny:,}, 4 associations", "inst/s", "higher"),
    ]
    levels = [("small", settings.tiny)]
    if settings.tops_up:
        rows.append(Row("load_big_ips", f"STOW-RS tiny studies {settings.tiny:,}..{settings.big:,}, "
                        f"{STOW_TINY_BATCH} per request", "inst/s", "higher"))
        levels.append(("big", settings.big))
    for level, count in levels:
        at = f"@ {count:,} studies"
        rows += [
            Row(f"qido_uid_{level}", f"QIDO studies by StudyInstanceUID {at}", "ms", "lower"),
            Row(f"qido_name_{level}", f"QIDO studies PatientName={NAME_QUERY}&limit={QIDO_LIMIT} {at}",
                "ms", "lower"),
            Row(f"qido_date_{level}", f"QIDO studies StudyDate={DATE_QUERY}&limit={QIDO_LIMIT} {at}",
                "ms", "lower"),
            Row(f"qido_inst_{level}", f"QIDO instances of the {thin}-slice series {at}", "ms", "lower"),
        ]
    rows += [
        Row("meta_first", f"WADO-RS study metadata ({thin + thick} instances), first request", "ms", "lower"),
        Row("meta", f"WADO-RS study metadata ({thin + thick} instances), median", "ms", "lower"),
        Row("retrieve_mbs", f"WADO-RS retrieve thin series ({thin} instances)", "MB/s", "higher"),
        Row("memory_small", f"Peak memory (PSS) of the server @ {settings.tiny:,} studies", "MiB", "lower"),
    ]
    if settings.tops_up:
        rows.append(Row("memory_big", f"Peak memory (PSS) of the server @ {settings.big:,} studies", "MiB", "lower"))
    return rows


# --------------------------------------------------------------------------- one server, one round


@dataclass
class RoundResult:
    values: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # answer sizes, to compare servers
    failures: list[str] = field(default_factory=list)


@dataclass
class Measurements:
    """The steps of one round against one running server; each fills `result`."""

    server: Server
    client: httpx.Client
    corpus: Corpus
    settings: Settings
    result: RoundResult

    def step(self, what: str, action: Callable[[], None]) -> None:
        """Run one measurement; a failure is recorded and the round goes on."""
        try:
            action()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # any failure of the server under test is a finding
            message = f"{self.server.name}: {what}: {exc}"
            log("FAILED " + message)
            traceback.print_exc(file=sys.stderr)
            self.result.failures.append(message)

    def say(self, message: str) -> None:
        log(f"  {self.server.name} {message}")

    def run(self, big: bool) -> None:
        corpus, tiny = self.corpus, self.settings.tiny
        self.step("C-STORE 1 association", lambda: self.store(corpus.ct_thin, 1, "store1", "thin, 1 assoc"))
        if corpus.ct_thick:
            self.step("C-STORE thick series", lambda: self.store(corpus.ct_thick, 1, None, "thick"))
        self.step("C-STORE 4 associations",
                  lambda: self.store(corpus.ct_parallel, 4, "store4", "thin, 4 assoc"))
        self.step("C-STORE MR", lambda: self.store(corpus.mr, 1, None, "MR"))
        self.step("C-STORE DR", lambda: self.store(corpus.dr, 1, "store_dr", "DR"))
        self.step("STOW-RS", self.stow_ct)
        self.step("load tiny studies", lambda: self.store(corpus.tiny[:tiny], 4, "load_small", "tiny studies"))
        self.qido("small")
        self.step("WADO-RS metadata", self.metadata)
        self.step("WADO-RS retrieve", self.retrieve)
        self.step("peak memory", lambda: self.memory("memory_small"))
        if big and self.settings.tops_up:
            self.step("top up tiny studies", self.top_up)
            self.qido("big")
            self.step("peak memory (big)", lambda: self.memory("memory_big"))

    def store(self, files: list[Path], associations: int, key: str | None, what: str) -> None:
        """C-STORE `files`; with `key`, record ``key_ips`` and ``key_mbs``."""
        seconds = storescu(self.server, files, associations, progress=len(files) > 2 * STORESCU_BATCH)
        rate, mbps = len(files) / seconds, size_mb(files) / seconds
        if key:
            self.result.values[f"{key}_ips"] = rate
            self.result.values[f"{key}_mbs"] = mbps
        self.say(f"C-STORE {what}: {len(files)} in {seconds:.2f} s = {rate:.0f} inst/s, {mbps:.1f} MB/s"
                 + ("" if key else " (not in the table)"))

    def stow_ct(self) -> None:
        files = self.corpus.ct_stow
        bodies = list(multipart_bodies(files, STOW_BATCH))  # read before the clock starts
        seconds = stow(self.client, self.server, bodies)
        self.result.values["stow_ips"] = len(files) / seconds
        self.result.values["stow_mbs"] = size_mb(files) / seconds
        self.say(f"STOW-RS: {len(files)} in {seconds:.2f} s = {len(files) / seconds:.0f} inst/s")

    def top_up(self) -> None:
        files = self.corpus.tiny[self.settings.tiny : self.settings.big]
        seconds = stow(self.client, self.server, multipart_bodies(files, STOW_TINY_BATCH), progress=10_000)
        self.result.values["load_big_ips"] = len(files) / seconds
        self.say(f"STOW-RS tiny studies: {len(files):,} in {seconds:.0f} s = {len(files) / seconds:.0f} inst/s")

    def qido(self, level: str) -> None:
        base, corpus = self.server.dicomweb, self.corpus
        limit = str(QIDO_LIMIT)
        queries: dict[str, tuple[str, dict[str, str] | None]] = {
            "uid": (base + "/studies", {"StudyInstanceUID": corpus.ct_study_uid}),
            "name": (base + "/studies", {"PatientName": NAME_QUERY, "limit": limit}),
            "date": (base + "/studies", {"StudyDate": DATE_QUERY, "limit": limit}),
            "inst": (f"{base}/studies/{corpus.ct_study_uid}/series/{corpus.ct_thin_series_uid}/instances",
                     None),
        }
        for name, (url, params) in queries.items():
            key = f"qido_{name}_{level}"

            def measure(url: str = url, params: dict[str, str] | None = params, key: str = key) -> None:
                ms, count = latency(self.client, url, params, self.settings.requests)
                self.result.values[key] = ms
                self.result.counts[key] = count
                self.say(f"{key}: {ms:.1f} ms, {count} results")

            self.step(key, measure)

    def metadata(self) -> None:
        url = f"{self.server.dicomweb}/studies/{self.corpus.ct_study_uid}/metadata"
        first, body = timed_get(self.client, url)
        self.result.values["meta_first"] = first * 1000
        self.result.counts["meta"] = len(orjson.loads(body))
        times = [timed_get(self.client, url)[0] for _ in range(self.settings.requests)]
        self.result.values["meta"] = statistics.median(times) * 1000
        self.say(f"metadata: first {first * 1000:.0f} ms, median {self.result.values['meta']:.0f} ms, "
                 f"{self.result.counts['meta']} instances, {len(body) / MB:.1f} MB")

    def retrieve(self) -> None:
        url = f"{self.server.dicomweb}/studies/{self.corpus.ct_study_uid}/series/{self.corpus.ct_thin_series_uid}"
        expected = size_mb(self.corpus.ct_thin) * MB
        runs = [retrieve(url) for _ in range(self.settings.retrieves)]
        short = [n for _, n in runs if n < expected]  # multipart framing makes a full answer a little larger
        if short:
            raise RuntimeError(f"series retrieve returned {short[0]} bytes, expected over {expected:.0f}")
        # MB of the files, not of the answer, so that both servers are measured on the same bytes.
        self.result.values["retrieve_mbs"] = statistics.median(expected / s for s, _ in runs) / MB
        self.say(f"retrieve: {runs[0][1] / MB:.1f} MB at {self.result.values['retrieve_mbs']:.0f} MB/s")

    def memory(self, key: str) -> None:
        self.result.values[key] = self.server.peak_memory_mib()
        self.say(f"peak memory: {self.result.values[key]:.0f} MiB")


def run_server_round(kind: type[Server], workdir: Path, corpus: Corpus, settings: Settings,
                     big: bool) -> RoundResult:
    """Start a fresh `kind` server, run every measurement, stop it and delete its storage."""
    result = RoundResult()
    server = kind(workdir)
    log(f"starting {server.name} (DICOM {server.dicom_port}, HTTP {server.http_port}) in {workdir}")
    try:
        t0 = time.perf_counter()
        server.start()
        log(f"{server.name} ready in {time.perf_counter() - t0:.1f} s")
        with http_client() as client:
            Measurements(server, client, corpus, settings, result).run(big)
        if result.failures:
            log(f"{server.name} log tail:\n{server.log_tail()}")
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a server that does not start is a finding too
        result.failures.append(f"{server.name}: {exc}")
        log(f"FAILED {server.name}: {exc}")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- the report


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(samples: list[float]) -> str:
    """The median, and [lowest–highest] when there is more than one round."""
    if not samples:
        return "n/a"
    text = fmt(statistics.median(samples))
    if len(samples) > 1:
        text += f" [{fmt(min(samples))}–{fmt(max(samples))}]"
    return text


def ratio(huren: list[float], orthanc: list[float], better: str) -> str:
    if not huren or not orthanc or statistics.median(orthanc) <= 0:
        return f"n/a ({better} is better)"
    return f"{statistics.median(huren) / statistics.median(orthanc):.2f} ({better} is better)"


def table(rows: list[Row], results: dict[str, list[RoundResult]]) -> str:
    names = [n for n in SERVERS if n in results]
    both = len(names) == 2
    header = ["Measurement", "Unit", "Rounds", *(n.capitalize() for n in names)]
    if both:
        header.append("Huren/Orthanc")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        samples = {n: [r.values[row.key] for r in results[n] if row.key in r.values] for n in names}
        cells = [row.label, row.unit, "/".join(str(len(samples[n])) for n in names),
                 *(cell(samples[n]) for n in names)]
        if both:
            cells.append(ratio(samples["huren"], samples["orthanc"], row.better))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def count_mismatches(results: dict[str, list[RoundResult]], corpus: Corpus) -> list[str]:
    """Answers whose size differs from what was stored, or between the servers."""
    thin = len(corpus.ct_thin)
    expected = {"qido_uid_small": 1, "qido_uid_big": 1, "qido_inst_small": thin, "qido_inst_big": thin,
                "meta": thin + len(corpus.ct_thick)}
    seen: dict[str, dict[str, set[int]]] = {}
    for name, rounds in results.items():
        for result in rounds:
            for key, count in result.counts.items():
                seen.setdefault(key, {}).setdefault(name, set()).add(count)
    notes = []
    for key, by_server in sorted(seen.items()):
        for name, counts in by_server.items():
            if key in expected and counts != {expected[key]}:
                notes.append(f"{name} {key}: {sorted(counts)} results, expected {expected[key]}")
        if len(by_server) == 2 and by_server["huren"] != by_server["orthanc"]:
            notes.append(f"{key}: Huren answered {sorted(by_server['huren'])} results, "
                         f"Orthanc {sorted(by_server['orthanc'])}")
    return notes


def versions() -> str:
    """The software under test and the machine, for the report."""

    def first_line(command: list[str]) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).splitlines()[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    return (f"Orthanc {first_line([ORTHANC, '--version']).split()[-1]}, "
            f"{first_line(['dpkg-query', '-W', 'orthanc-dicomweb']).replace(chr(9), ' ')}, "
            f"{first_line([STORESCU, '--version']).strip('$ ')}, Python {platform.python_version()}, "
            f"pydicom {pydicom.__version__}, pynetdicom {pynetdicom.__version__}, "
            f"{os.cpu_count()} CPUs")


def report(rows: list[Row], results: dict[str, list[RoundResult]], corpus: Corpus,
           settings: Settings, seconds: float) -> str:
    big = (f"{settings.big:,} studies in the first {settings.big_rounds} round(s)"
           if settings.tops_up else "no top-up")
    title = " vs ".join(n.capitalize() for n in SERVERS if n in results)
    out = [
        f"## {title} ({settings.rounds} round(s), {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{seconds / 60:.1f} min)",
        "",
        f"{versions()}. Index sizes: {settings.tiny:,} studies in every round, {big}. "
        "Medians over rounds, [lowest–highest round]. Throughput: higher is better; "
        "latency and memory: lower is better. Ratio = Huren / Orthanc.",
        "",
        table(rows, results),
    ]
    mismatches = count_mismatches(results, corpus)
    failures = [f for rounds in results.values() for r in rounds for f in r.failures]
    if mismatches:
        out += ["", "Answer sizes that differ:", *(f"- {m}" for m in mismatches)]
    if failures:
        out += ["", "Failures:", *(f"- {f.splitlines()[0]}" for f in failures)]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


QUICK = Settings(rounds=1, tiny=200, big=1000, thin=60, thick=12, mr_sequences=2, requests=5, retrieves=2)


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 round, 60-slice CT, 200 then 1,000 tiny studies, 5 requests")
    parser.add_argument("--rounds", type=int, help="alternating rounds (3)")
    parser.add_argument("--tiny", type=int, help="studies in the index for the first QIDO set (2000)")
    parser.add_argument("--big", type=int, help="studies in the index for the second QIDO set (100000)")
    parser.add_argument("--big-rounds", type=int, help="rounds that top the index up to --big (1; 0 skips it)")
    parser.add_argument("--thin", type=int, help="thin CT slices (300); the thick series gets a fifth")
    parser.add_argument("--requests", type=int, help="requests per latency figure (20)")
    parser.add_argument("--only", choices=sorted(SERVERS), action="append",
                        help="run only this server (repeatable)")
    parser.add_argument("--data", type=Path, help="keep the generated studies here and reuse them next time")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the servers keep their temporary storage (a real disk, not tmpfs)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else Settings()
    chosen = {k: getattr(args, k) for k in ("rounds", "tiny", "big", "big_rounds", "thin", "requests")}
    values = {**asdict(base), **{k: v for k, v in chosen.items() if v is not None}}
    if args.thin is not None:
        values["thick"] = max(args.thin // 5, 1)
    values.update(data=args.data, tmp=args.tmp, only=tuple(args.only) if args.only else base.only)
    settings = Settings(**values)
    if settings.rounds < 1 or settings.tiny < 1 or settings.thin < 4 or settings.big_rounds < 0:
        parser.error("--rounds and --tiny must be at least 1, --thin at least 4, --big-rounds at least 0")
    return settings


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM behaves like Ctrl-C: the servers are stopped and the storage removed."""
    raise KeyboardInterrupt


def run_rounds(corpus: Corpus, settings: Settings, work: Path) -> dict[str, list[RoundResult]]:
    """Every round, each server in turn, the first one alternating."""
    results: dict[str, list[RoundResult]] = {name: [] for name in settings.only}
    for number in range(settings.rounds):
        order = list(settings.only) if number % 2 == 0 else list(reversed(settings.only))
        big = number < settings.big_rounds
        log(f"round {number + 1}/{settings.rounds}: {' then '.join(order)}"
            + (f", index up to {settings.big:,} studies" if big and settings.tops_up else ""))
        for name in order:
            workdir = work / f"round{number + 1}-{name}"
            results[name].append(run_server_round(SERVERS[name], workdir, corpus, settings, big))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="huren-bench-", dir=settings.tmp))
    started = time.perf_counter()
    try:
        corpus = build_corpus(settings.data or work / "corpus", settings)
        results = run_rounds(corpus, settings, work)
        print(report(rows_for(settings), results, corpus, settings, time.perf_counter() - started))
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for server in list(_RUNNING):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
