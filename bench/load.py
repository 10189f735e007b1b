"""Load: 8 modalities sending a CT each at once while radiologists read, Huren beside Orthanc.

Run from the repository root, with the project's virtual environment::

    .venv/bin/python -m bench.load                # 3 rounds of 8 x 300 slices, about 5 minutes
    .venv/bin/python -m bench.load --quick        # 1 round of 8 x 100 slices, about 1 minute
    .venv/bin/python -m bench.load --only huren   # one server only

Progress goes to stderr, the Markdown table to stdout.

What it does
------------
Each round starts each server fresh, as :mod:`bench.run` does (its
:class:`~bench.run.Huren` and :class:`~bench.run.Orthanc`: 127.0.0.1, free
ports, temporary storage, Huren with one worker per core, Orthanc durable and
uncompressed); the servers take turns going first and never run together.

1. One CT study (``--slices`` 512x512 slices) is stored first, untimed: the
   study the radiologists already have on their list.
2. ``--modalities`` (8) DCMTK ``storescu`` processes start at once, each
   sending its own CT study of ``--slices`` (300) slices over one association,
   proposing only the contexts its files need (``--required``), with
   ``TCP_NODELAY=1`` as in :mod:`bench.run`.
3. While they send, ``--readers`` (2) radiologists, each an HTTP client in its
   own thread, loop: a QIDO-RS worklist query (the day's studies,
   ``limit=100``), a WADO-RS retrieve of the stored study's series, the
   worklist again, and a retrieve of the series of one of the arriving studies
   it lists (however much of it has arrived). They stop when the last
   ``storescu`` has finished.
4. Then QIDO-RS lists the instances of every study: each must hold exactly the
   instances sent, none twice.

What the rows are
-----------------
*Ingest*: the instances (and MB of Part-10 files) of the arriving studies
divided by the time from starting the senders to the last one finishing.

*C-STORE response time*: per instance, the time from ``storescu`` logging
"Sending Store Request" to its logging "Received Store Response", read from
its log with microsecond timestamps (``--log-config``): writing the request and
the data set to the socket, paced by how fast the server reads it, and the
server's answer. Reading the file from disk is before that span. Why
``storescu`` and not a pynetdicom SCU of our own timing ``send_c_store``: the
pynetdicom requestor polls in both its threads with 1 ms sleeps and encodes in
Python, so eight of them would add milliseconds per instance of their own and
take CPU from the server on a 2-core machine; ``storescu`` is C++, blocks on
its socket and costs little, so what it times is the server and the loopback.
p50 and p99 are over all instances of the round (nearest rank).

*Radiologists*: the latency of each request, read to the end; the
arriving-series retrieves vary in size, so they are given as a rate. Each
round has only as many requests as fit in the send, so a p99 over fewer than
100 is the slowest request: the sample counts are under the table.

*Memory*: the peak over the round of the summed PSS of the server process and
all its children, sampled every 0.25 s (:class:`bench.run.MemoryWatch`); the
processes' shares at the peak are under the table. *Server CPU*: user plus
system time of the server's processes during the send, per instance stored,
the radiologists' requests included.

How to read the table: as for :mod:`bench.run`, the median over rounds with
the lowest and highest round in brackets, and Huren's median over Orthanc's.
The machine may be shared: the load average and how busy the whole machine
was during each send are under the table.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pydicom

from bench import run, studies

DAY = "20240320"  # every generated study's StudyDate: the day's worklist
WORKLIST_LIMIT = 100
# storescu's log lines with the time since the epoch to the microsecond ("%Q": ms.us).
LOG_CONFIG = """\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%s.%Q} %p: %m%n
"""
LOG_LINE = re.compile(r"^(\d+)\.(\d{3})\.(\d{3}) (\w+): (.*)$")


# --------------------------------------------------------------------------- settings and studies


@dataclass(frozen=True)
class Settings:
    """What one run does; the defaults are the full scenario."""

    rounds: int = 3
    modalities: int = 8
    slices: int = 300
    readers: int = 2
    only: tuple[str, ...] = ("huren", "orthanc")
    tmp: Path = Path(tempfile.gettempdir())


QUICK = Settings(rounds=1, slices=100)


@dataclass(frozen=True)
class Study:
    """One generated CT study (a single series) and the UIDs a server must hold for it."""

    files: list[Path]
    study_uid: str
    series_uid: str
    sop_uids: frozenset[str]

    @property
    def size(self) -> int:
        """Bytes of its Part-10 files."""
        return sum(path.stat().st_size for path in self.files)


def _generate(folder: str, slices: int, number: int) -> tuple[list[str], str, str, list[str]]:
    """Worker: CT study `number` (patient, accession and UIDs differ by number); paths and UIDs."""
    (surname, surname_hanzi), (given, given_hanzi) = (studies.CHINESE_NAMES[0][number],
                                                      studies.CHINESE_NAMES[1][number])
    exam = studies.Exam(f"{surname}^{given}={surname_hanzi}^{given_hanzi}", f"BENCH-LOAD-{number:04d}",
                        DAY, f"ACC-LOAD-{number:04d}")
    files = studies.ct_study(Path(folder), thin_slices=slices, thick_slices=0, exam=exam, seed=100 + number)
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    return ([str(p) for p in files], str(headers[0].StudyInstanceUID), str(headers[0].SeriesInstanceUID),
            [str(h.SOPInstanceUID) for h in headers])


def generate(root: Path, settings: Settings) -> tuple[Study, list[Study]]:
    """The stored study and one arriving study per modality, generated on every core."""
    count = settings.modalities + 1
    run.log(f"generating {count} CT studies of {settings.slices} slices in {root}")
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        made = list(pool.map(_generate, [str(root / f"ct-{n}") for n in range(count)],
                             [settings.slices] * count, range(count)))
    stored, *arriving = (Study([Path(p) for p in files], study, series, frozenset(sops))
                         for files, study, series, sops in made)
    return stored, arriving


# --------------------------------------------------------------------------- statistics


def percentile(samples: Sequence[float], q: float) -> float:
    """The nearest-rank `q`-th percentile: the smallest sample that q% of the samples do not exceed."""
    ordered = sorted(samples)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time used so far by `pid` and its descendants, reaped ones included."""
    ticks = 0
    for member in run.process_tree(pid):
        try:
            after_name = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited since the tree was read
            continue
        # utime, stime, cutime, cstime: fields 14-17 of proc(5), 12-15 after the name.
        ticks += sum(int(value) for value in after_name[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all cores have spent running something since boot (the first line of /proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the senders


def store_log(path: Path, expected: int) -> tuple[list[float], list[str]]:
    """C-STORE response times in seconds from one storescu log, and what went wrong in it."""
    times: list[float] = []
    problems: list[str] = []
    sent_at: float | None = None
    for line in path.read_text(errors="replace").splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        seconds, ms, us, level, message = match.groups()
        at = int(seconds) + int(ms) / 1e3 + int(us) / 1e6
        if level in ("ERROR", "FATAL"):
            problems.append(message)
        elif message.startswith("Sending Store Request"):
            sent_at = at
        elif message.startswith("Received Store Response") and sent_at is not None:
            times.append(at - sent_at)
            sent_at = None
            if not message.endswith("(Success)"):
                problems.append(message)
    if len(times) != expected:
        problems.append(f"{len(times)} C-STORE responses for {expected} files")
    return times, problems


def send_all(server: run.Server, arriving: list[Study], folder: Path) -> tuple[float, list[float]]:
    """Start one storescu per study at once and wait for all; (seconds, response times in seconds).

    Raises RuntimeError, with the first problems, when any storescu failed or
    an instance was not answered with Success.
    """
    config = folder / "storescu-log.cfg"
    config.write_text(LOG_CONFIG)
    env = {**os.environ, "TCP_NODELAY": "1"}
    logs = [folder / f"storescu-{n}.log" for n in range(len(arriving))]
    processes = []
    t0 = time.perf_counter()
    for study, log_path in zip(arriving, logs, strict=True):
        with open(log_path, "wb") as out:
            processes.append(subprocess.Popen(
                [run.STORESCU, "--log-config", str(config), "--required", "-aet", run.CALLING_AET,
                 "-aec", server.aet, run.HOST, str(server.dicom_port), *map(str, study.files)],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    codes = [process.wait() for process in processes]
    elapsed = time.perf_counter() - t0
    times: list[float] = []
    problems: list[str] = []
    for study, log_path, code in zip(arriving, logs, codes, strict=True):
        these, wrong = store_log(log_path, len(study.files))
        times += these
        problems += [f"{log_path.name}: {w}" for w in wrong]
        if code:
            problems.append(f"{log_path.name}: storescu exit {code}")
    if problems:
        raise RuntimeError(f"C-STORE to {server.name}: " + "; ".join(problems[:6]))
    return elapsed, times


# --------------------------------------------------------------------------- the radiologists


@dataclass
class Readings:
    """What one radiologist's requests took."""

    worklist: list[float] = field(default_factory=list)  # seconds
    stored: list[float] = field(default_factory=list)  # seconds
    arriving_rates: list[float] = field(default_factory=list)  # bytes per second
    errors: list[str] = field(default_factory=list)


class Radiologist(threading.Thread):
    """Queries the day's worklist and opens series until `stop` is set.

    Parameters
    ----------
    number : int
        Which radiologist; they start on different arriving studies.
    server : bench.run.Server
        The server to read from.
    stored : Study
        The study already stored before the senders started.
    arriving : list of Study
        The studies being sent; one listed by the worklist is opened each loop.
    stop : threading.Event
        Set when the senders have finished.
    """

    def __init__(self, number: int, server: run.Server, stored: Study, arriving: list[Study],
                 stop: threading.Event) -> None:
        super().__init__(name=f"radiologist-{number}", daemon=True)
        self.number, self.server, self.stored, self.stop = number, server, stored, stop
        self.series = {study.study_uid: study.series_uid for study in arriving}
        self.readings = Readings()

    def run(self) -> None:
        turn = self.number
        with run.http_client() as client:
            while not self.stop.is_set():
                try:
                    self.worklist(client)
                    if self.stop.is_set():
                        break
                    self.open(self.stored.study_uid, self.stored.series_uid, self.stored.size)
                    if self.stop.is_set():
                        break
                    listed = self.worklist(client)
                    if listed and not self.stop.is_set():
                        study = listed[turn % len(listed)]
                        self.open(study, self.series[study], None)
                except (httpx.HTTPError, RuntimeError) as exc:  # a finding; the radiologist goes on
                    self.readings.errors.append(f"{self.name}: {str(exc)[:200]}")
                    self.stop.wait(0.5)
                turn += 1

    def worklist(self, client: httpx.Client) -> list[str]:
        """The day's studies (QIDO-RS); the arriving ones it lists, in a fixed order."""
        seconds, body = run.timed_get(client, self.server.dicomweb + "/studies",
                                      {"StudyDate": DAY, "limit": str(WORKLIST_LIMIT)})
        self.readings.worklist.append(seconds)
        listed = {study["0020000D"]["Value"][0] for study in orjson.loads(body)} if body.strip() else set()
        return sorted(listed & self.series.keys())

    def open(self, study: str, series: str, expected: int | None) -> None:
        """Retrieve a whole series (WADO-RS); `expected` bytes of files when it is complete."""
        seconds, received = run.retrieve(f"{self.server.dicomweb}/studies/{study}/series/{series}")
        if expected is None:
            self.readings.arriving_rates.append(received / seconds)
            return
        if received < expected:  # multipart framing makes a full answer a little larger
            raise RuntimeError(f"stored series retrieve returned {received} bytes, expected over {expected}")
        self.readings.stored.append(seconds)


# --------------------------------------------------------------------------- one server, one round


def check_stored(server: run.Server, everything: list[Study], result: run.RoundResult) -> None:
    """Record how many instances QIDO-RS lists, and fail the round unless each is there exactly once."""
    found = duplicates = missing = extra = 0
    with run.http_client() as client:
        for study in everything:
            _, body = run.timed_get(client, f"{server.dicomweb}/studies/{study.study_uid}/instances")
            listed = [item["00080018"]["Value"][0] for item in orjson.loads(body)] if body.strip() else []
            found += len(listed)
            duplicates += len(listed) - len(set(listed))
            missing += len(study.sop_uids - set(listed))
            extra += len(set(listed) - study.sop_uids)
    result.counts.update(found=found, duplicates=duplicates, missing=missing, extra=extra)
    if duplicates or missing or extra:
        raise RuntimeError(f"QIDO-RS lists {found} instances: {duplicates} duplicates, {missing} missing, "
                           f"{extra} not sent")


def load(server: run.Server, stored: Study, arriving: list[Study], settings: Settings,
         result: run.RoundResult) -> None:
    """The senders and the radiologists at once; fills `result` with the rows' values."""
    stop = threading.Event()
    readers = [Radiologist(n, server, stored, arriving, stop) for n in range(settings.readers)]
    assert server.process is not None
    result.values["loadavg"] = os.getloadavg()[0]
    cpu0, busy0, t0 = cpu_seconds(server.process.pid), machine_busy_seconds(), time.perf_counter()
    for reader in readers:
        reader.start()
    try:
        seconds, times = send_all(server, arriving, server.workdir)
    finally:
        stop.set()
        cpu, busy = cpu_seconds(server.process.pid) - cpu0, machine_busy_seconds() - busy0
        wall = time.perf_counter() - t0
        for reader in readers:
            reader.join()
    instances = sum(len(study.files) for study in arriving)
    values = result.values
    values["ips"] = instances / seconds
    values["mbs"] = sum(study.size for study in arriving) / run.MB / seconds
    values["store_p50"], values["store_p99"] = (percentile(times, q) * 1000 for q in (50, 99))
    values["cpu_per_instance"] = cpu / instances * 1000
    values["server_cores"], values["machine_cores"] = cpu / wall, busy / wall
    readings = [reader.readings for reader in readers]
    worklist = [s for r in readings for s in r.worklist]
    opened = [s for r in readings for s in r.stored]
    rates = [s for r in readings for s in r.arriving_rates]
    if worklist:
        values["qido_p50"], values["qido_p99"] = (percentile(worklist, q) * 1000 for q in (50, 99))
    if opened:
        values["stored_p50"], values["stored_p99"] = (percentile(opened, q) * 1000 for q in (50, 99))
    if rates:
        values["arriving_mbs"] = statistics.median(rates) / run.MB
    result.counts.update(worklist=len(worklist), stored=len(opened), arriving=len(rates))
    result.failures += [f"{server.name}: {e}" for r in readings for e in r.errors]
    run.log(f"  {server.name}: {instances} instances in {seconds:.1f} s = {values['ips']:.0f} inst/s, "
            f"{values['mbs']:.0f} MB/s; C-STORE p50 {values['store_p50']:.1f} ms, p99 {values['store_p99']:.1f} ms")
    run.log(f"  {server.name}: radiologists: {len(worklist)} worklists, {len(opened)} stored and "
            f"{len(rates)} arriving series; server {values['server_cores']:.2f} cores, "
            f"machine {values['machine_cores']:.2f}")


def shares_at_peak(server: run.Server) -> str:
    """Each server process's PSS at the peak, the main process first."""
    assert server.memory is not None
    root, sizes = server.memory.pid, server.memory.at_peak
    parts = [f"main {sizes[root]:.0f}"] if root in sizes else []
    parts += [f"child {sizes[pid]:.0f}" for pid in sorted(sizes) if pid != root]
    return ", ".join(parts) + " MiB"


def server_round(kind: type[run.Server], workdir: Path, stored: Study, arriving: list[Study],
                 settings: Settings) -> tuple[run.RoundResult, str]:
    """Start a fresh `kind`, run the scenario, check and stop it; the result and the memory shares."""
    result = run.RoundResult()
    server = kind(workdir)
    shares = ""
    run.log(f"starting {server.name} in {workdir}")
    try:
        server.start()
        run.storescu(server, stored.files, 1)
        load(server, stored, arriving, settings, result)
        check_stored(server, [stored, *arriving], result)
        result.values["memory"] = server.peak_memory_mib()
        shares = shares_at_peak(server)
        run.log(f"  {server.name} every instance stored once; peak memory {result.values['memory']:.0f} MiB "
                f"({shares})")
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a failing server is a finding: the round is reported, not lost
        result.failures.append(f"{server.name}: {exc}")
        run.log(f"FAILED {server.name}: {exc}\n{server.log_tail()}")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return result, shares


# --------------------------------------------------------------------------- the report


def rows(settings: Settings) -> list[run.Row]:
    ct = f"{settings.modalities} x CT {settings.slices} x 512x512, 1 association each"
    return [
        run.Row("ips", f"Ingest, {ct}", "inst/s", "higher"),
        run.Row("mbs", f"Ingest, {ct}", "MB/s", "higher"),
        run.Row("store_p50", "C-STORE response time per instance, p50", "ms", "lower"),
        run.Row("store_p99", "C-STORE response time per instance, p99", "ms", "lower"),
        run.Row("qido_p50", f"Radiologists: QIDO worklist (StudyDate, limit={WORKLIST_LIMIT}), p50", "ms", "lower"),
        run.Row("qido_p99", f"Radiologists: QIDO worklist (StudyDate, limit={WORKLIST_LIMIT}), p99", "ms", "lower"),
        run.Row("stored_p50", f"Radiologists: WADO-RS stored series ({settings.slices} inst.), p50", "ms",
                "lower"),
        run.Row("stored_p99", f"Radiologists: WADO-RS stored series ({settings.slices} inst.), p99", "ms",
                "lower"),
        run.Row("arriving_mbs", "Radiologists: WADO-RS arriving series, median rate", "MB/s", "higher"),
        run.Row("cpu_per_instance", "Server CPU per instance stored (readers' requests included)", "ms",
                "lower"),
        run.Row("memory", "Peak memory (summed PSS of the server's processes)", "MiB", "lower"),
    ]


def report(settings: Settings, results: dict[str, list[run.RoundResult]], shares: dict[str, list[str]],
           minutes: float) -> str:
    out = [
        f"## Load: {settings.modalities} modalities at once ({settings.rounds} round(s), "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {minutes:.1f} min)",
        "",
        f"{run.versions()}. {settings.readers} radiologists reading during the send. Medians over rounds, "
        "[lowest–highest round]. Ratio = Huren / Orthanc.",
        "",
        run.table(rows(settings), results),
        "",
    ]
    sent = (settings.modalities + 1) * settings.slices
    for name, rounds in results.items():
        out.append(f"- {name.capitalize()}, by round:")
        for number, (result, share) in enumerate(zip(rounds, shares[name], strict=True), 1):
            c, v = result.counts, result.values
            if "found" not in c:
                out.append(f"  - round {number}: no check (failed)")
                continue
            out.append(
                f"  - round {number}: QIDO lists {c['found']:,} of {sent:,} sent, {c['duplicates']} duplicates, "
                f"{c['missing']} missing; {c['worklist']} worklist queries, {c['stored']} stored and "
                f"{c['arriving']} arriving series retrieved; load average {v['loadavg']:.2f} at the "
                f"start, whole machine {v['machine_cores']:.2f} cores busy during the send, the server "
                f"{v['server_cores']:.2f}; PSS at the peak: {share}")
    failures = [f for rounds in results.values() for r in rounds for f in r.failures]
    if failures:
        out += ["", "Failures:", *(f"- {f.splitlines()[0]}" for f in failures)]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 round, 100-slice CTs")
    parser.add_argument("--rounds", type=int, help="alternating rounds (3)")
    parser.add_argument("--modalities", type=int, help="studies sent at once, one association each (8)")
    parser.add_argument("--slices", type=int, help="slices per CT study (300)")
    parser.add_argument("--readers", type=int, help="radiologists reading during the send (2)")
    parser.add_argument("--only", choices=sorted(run.SERVERS), action="append",
                        help="run only this server (repeatable)")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the studies and the servers' storage go (a real disk, not tmpfs)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else Settings()
    chosen = {k: v for k in ("rounds", "modalities", "slices", "readers") if (v := getattr(args, k)) is not None}
    settings = Settings(**{**base.__dict__, **chosen, "tmp": args.tmp,
                           "only": tuple(args.only) if args.only else base.only})
    if settings.rounds < 1 or settings.slices < 1 or settings.readers < 0 or not (
            1 <= settings.modalities < len(studies.CHINESE_NAMES[1])):
        parser.error(f"--rounds and --slices must be at least 1, --readers at least 0, --modalities "
                     f"1 to {len(studies.CHINESE_NAMES[1]) - 1}")
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    signal.signal(signal.SIGTERM, run._interrupt)
    work = Path(tempfile.mkdtemp(prefix="huren-load-", dir=settings.tmp))
    started = time.perf_counter()
    results: dict[str, list[run.RoundResult]] = {name: [] for name in settings.only}
    shares: dict[str, list[str]] = {name: [] for name in settings.only}
    try:
        stored, arriving = generate(work / "studies", settings)
        for number in range(settings.rounds):
            order = list(settings.only) if number % 2 == 0 else list(reversed(settings.only))
            run.log(f"round {number + 1}/{settings.rounds}: {' then '.join(order)}")
            for name in order:
                result, share = server_round(run.SERVERS[name], work / f"round{number + 1}-{name}", stored,
                                             arriving, settings)
                results[name].append(result)
                shares[name].append(share)
        print(report(settings, results, shares, (time.perf_counter() - started) / 60))
        return 0
    except KeyboardInterrupt:
        run.log("interrupted")
        return 130
    finally:
        for server in list(run._RUNNING):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
