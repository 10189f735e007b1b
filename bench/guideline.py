"""What judging studies against the sharing guideline costs Huren.

``.venv/bin/python -m bench.guideline [--quick] [--studies N]`` from the repository root; progress goes to stderr.

1. ``Compliance.judge`` of one ingested chest CT of 1,000 instances (167 slices of 5 mm and 832
   of 1 mm over the same range, a signed SR): reading the facts (``_study_facts``), judging
   (``judge``) and the rest, writing the record; and its memory.
2. ``Compliance.rejudge`` (``huren guideline rejudge`` after a rule edit) of 100,000 studies,
   bulk-inserted as the rows ingest would make (ingest would take hours). Parts 1 and 2 run on
   SQLite and, if 127.0.0.1:5432 answers, a fresh PostgreSQL database (analysed after the load).
3. Ingest with and without judging: ``huren serve`` as ``bench/run.py`` starts it (a worker per
   core, SQLite) gets CT studies of 300 512x512 slices back to back over one ``storescu``
   association; with a 2 s quiet period, polled every second, each study is judged while the
   next arrives. In turns: the tree before the guideline (``git archive 4fca5c1``, no facts at
   ingest), this tree without rule sets, and this tree judging with ``conf/guideline/jjj.yaml``.

Headers as ``bench/studies.py`` writes them (16x16 pixels in 1-2); where [lowest–highest] ranges overlap, read noise.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from resource import RUSAGE_SELF, getrusage
from typing import Any
from unittest import mock

import orjson
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import BasicTextSRStorage, generate_uid
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from archive.config import Config, config_with_rule_sets
from archive.guideline import compliance as compliance_module
from archive.guideline.compliance import Compliance
from archive.header import read_header
from archive.index.database import Database
from archive.index.schema import instances, judgements, patients, series, studies
from archive.ingest import Ingest, Source
from archive.storage.filesystem import FilesystemStore
from bench import studies as make
from bench.run import CALLING_AET, REPO, Huren, cell, log, storescu

RULES = REPO / "conf" / "guideline" / "jjj.yaml"
PG_ADMIN = "postgresql+psycopg://root@127.0.0.1:5432/postgres"
BEFORE = "4fca5c1"  # the last commit before the guideline
HOSPITAL = {"id": "bj-bench", "name": "北京测试医院", "ae_titles": [CALLING_AET], "level": "三级甲等", "region": "BJ"}
FILL_BATCH = 2000  # studies per bulk-insert transaction
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"
SR_COPIED = ["PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
             "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName", "InstitutionName"]


def report(image: Path, out: Path, verified: bool = True) -> Path:
    """Write a Basic Text SR report (PS3.3 A.35.1) for the study of `image`, signed or not."""
    def _ds(**attributes: Any) -> Dataset:
        ds = Dataset()
        ds.update(attributes)
        return ds

    sr = pydicom.dcmread(image, specific_tags=SR_COPIED)  # the patient and study of `image`
    code = _ds(CodeValue="18748-4", CodingSchemeDesignator="LN", CodeMeaning="Diagnostic Imaging Report")
    sr.update(dict(SOPClassUID=BasicTextSRStorage, SOPInstanceUID=generate_uid(), Modality="SR",
                   SeriesInstanceUID=generate_uid(), SeriesNumber=99, InstanceNumber=1, SeriesDescription="诊断报告",
                   ContentDate=sr.StudyDate, ContentTime="120000", ValueType="CONTAINER",
                   ConceptNameCodeSequence=[code], ContinuityOfContent="SEPARATE", CompletionFlag="COMPLETE",
                   VerificationFlag="VERIFIED" if verified else "UNVERIFIED",
                   ContentSequence=[_ds(RelationshipType="CONTAINS", ValueType="TEXT", TextValue="未见明显异常。",
                                        ConceptNameCodeSequence=[code])]))
    if verified:  # who signed it (PS3.3 C.17.2)
        sr.VerifyingObserverSequence = [_ds(
            VerifyingObserverName="LI^MING=李^明", VerifyingOrganization=sr.InstitutionName,
            VerificationDateTime=sr.StudyDate + "123000", VerifyingObserverIdentificationCodeSequence=[])]
    sr.file_meta.MediaStorageSOPClassUID, sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPClassUID, sr.SOPInstanceUID
    sr.save_as(out, enforce_file_format=True)
    return out


def dr_chest(folder: Path, verified: bool = True) -> list[Path]:
    """A DR chest: ``dr_study``'s PA image, a lateral in a series of its own, an SR."""
    pa = make.dr_study(folder, rows=16, columns=16, seed=1)[0]
    lateral = pydicom.dcmread(pa)
    lateral.update({"SOPInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(), "SeriesNumber": 2,
                    "SeriesDescription": "Chest LAT", "ViewPosition": "LL", "PatientOrientation": ["A", "F"]})
    lateral.file_meta.MediaStorageSOPInstanceUID = lateral.SOPInstanceUID
    lateral.save_as(folder / "lat.dcm", enforce_file_format=True)
    return [pa, folder / "lat.dcm", report(pa, folder / "sr.dcm", verified)]


def ct_chest(folder: Path, thin: int, thick: int) -> list[Path]:
    """A chest CT from ``ct_study`` (16x16 pixels) with a signed SR."""
    images = make.ct_study(folder, thin_slices=thin, thick_slices=thick, matrix=16, seed=2)
    return [*images, report(images[0], folder / "sr.dcm")]


@contextmanager
def index(backend: str, folder: Path) -> Iterator[Database]:
    """A fresh, migrated index: a SQLite file in `folder`, or a PostgreSQL database dropped afterwards."""
    name = f"huren_bench_{os.getpid()}_{time.monotonic_ns()}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    if backend == "PostgreSQL":
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    db = Database(make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
                  if backend == "PostgreSQL" else f"sqlite:///{folder / name}.db")
    try:
        db.migrate()
        yield db
    finally:
        db.dispose()
        if backend == "PostgreSQL":
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def judge_one(db: Database, config: Config, files: Sequence[Path], folder: Path, runs: int) -> dict[str, list[float]]:
    """Ingest the large study as C-STORE does, then judge it: a warm-up, `runs` timed, one traced."""
    archive = Ingest(db, FilesystemStore(folder / "archive"))
    for path in files:  # ingest consumes the file it archives
        shutil.copy(path, folder / "staged.dcm")
        archive.ingest(folder / "staged.dcm", Source("dimse", HOSPITAL["id"], CALLING_AET))
    compliance = Compliance(db, config)
    with db.reading() as conn:
        study_pk, study_uid = conn.execute(select(studies.c.pk, studies.c.study_uid)).one()

    def once() -> float:
        claim, t0 = compliance.claim(study_pk, "bench"), time.perf_counter()
        assert claim is not None and compliance.judge(claim, "bench")
        return time.perf_counter() - t0

    def timed(spent: dict[str, float], name: str) -> Any:
        """Patch `name` in the compliance module to add the seconds spent in it to `spent`."""
        original = getattr(compliance_module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            result = original(*args, **kwargs)
            spent[name] += time.perf_counter() - t0
            return result
        return mock.patch.object(compliance_module, name, wrapper)

    once()  # warm-up
    samples: dict[str, list[float]] = {"total": [], "read": [], "judge": [], "write": []}
    for _ in range(runs):
        spent = {"_study_facts": 0.0, "judge": 0.0}
        with timed(spent, "_study_facts"), timed(spent, "judge"):
            total = once()
        read, judged = spent.values()
        for key, seconds in zip(samples, (total, read, judged, total - read - judged)):
            samples[key].append(seconds * 1000)
    tracemalloc.start()
    once()
    samples["traced"] = [tracemalloc.get_traced_memory()[1] / 2**20]
    tracemalloc.stop()
    assert (compliance.record(study_uid) or {}).get("verdict") == "pass", "the large CT should pass"
    return samples


class Template:
    """A small study's index rows as ingest makes them, kept as JSON text to copy with new identifiers."""

    def __init__(self, files: list[Path]) -> None:
        first = (headers := [read_header(path) for path in files])[0]
        uids = [first.study_uid, *dict.fromkeys(h.series_uid for h in headers), *(h.sop_uid for h in headers)]
        self.old = [*uids, first.patient["patient_id"], first.study["accession_number"], first.study["study_date"]]
        self.pattern = re.compile("|".join(map(re.escape, sorted(self.old, key=len, reverse=True))))  # longest first
        self.text = orjson.dumps({
            "patient": {**{k: v for k, v in first.patient.items() if k != "issuer"},
                        "id_scope": first.patient["issuer"] or HOSPITAL["id"]},  # as ingest scopes a PatientID
            "study": {**first.study, "study_uid": first.study_uid, "hospital_id": HOSPITAL["id"], "revision": 1},
            "series": {h.series_uid: {**h.series, "series_uid": h.series_uid} for h in headers},
            "instances": [{**h.instance, "sop_uid": h.sop_uid, "series_uid": h.series_uid, "size": path.stat().st_size,
                           "sop_class_uid": h.sop_class_uid, "transfer_syntax": h.transfer_syntax,
                           "metadata": h.metadata.decode(), "facts": h.facts.decode(), "calling_ae": CALLING_AET,
                           "hospital_id": HOSPITAL["id"]}
                          for h, path in zip(headers, files)],
        }).decode()

    def copy(self, number: int, keys: dict[str, Iterator[int]]) -> dict[str, list[dict[str, Any]]]:
        """Study `number`'s rows by table, keys drawn from `keys`; a patient row for every third study."""
        day = datetime.date(2025, 1, 1) + datetime.timedelta(days=number * 7919 % 540)  # spread over 18 months
        new = dict(zip(self.old, [*(f"{UID_ROOT}.{number}.{n}" for n in range(len(self.old) - 3)),
                                  f"P{number // 3:08d}", f"A{number:010d}", day.strftime("%Y%m%d")]))
        rows = orjson.loads(self.pattern.sub(lambda m: new[m.group()], self.text))
        now, study, patient = datetime.datetime.now(datetime.UTC), number + 1, number // 3 + 1  # their keys
        series_pk = {uid: next(keys["series"]) for uid in rows["series"]}
        for row, pk in zip(rows["instances"], keys["instances"]):  # sha256: unique, as real files' hashes are
            row.update(pk=pk, series_pk=series_pk[row.pop("series_uid")], sha256=f"{pk:064x}", received_at=now,
                       metadata=row["metadata"].encode(), facts=row["facts"].encode(), blob_key=f"b/{row['sop_uid']}")
        return {"patients": [{**rows["patient"], "pk": patient}] if number % 3 == 0 else [],
                "studies": [{**rows["study"], "pk": study, "patient_pk": patient, "created_at": now,
                             "updated_at": now}],
                "series": [{**row, "pk": series_pk[uid], "study_pk": study} for uid, row in rows["series"].items()],
                "instances": rows["instances"]}


def fill(db: Database, folder: Path, count: int) -> None:
    """Bulk-insert `count` studies, FILL_BATCH per transaction: 70 % DR chests (PA, lateral, signed SR),
    20 % CT chests of 3 + 11 slices; failing, 5 % DR chests unsigned and 5 % CTs without thin slices."""
    mix = [(14, dr_chest(folder / "dr")), (4, ct_chest(folder / "ct", 11, 3)),
           (1, dr_chest(folder / "dr-unsigned", verified=False)), (1, ct_chest(folder / "ct-thick", 0, 3))]
    kinds = [kind for weight, files in mix for kind in [Template(files)] * weight]  # one per 5 %
    keys, t0 = {"series": itertools.count(1), "instances": itertools.count(1)}, time.perf_counter()
    for start in range(0, count, FILL_BATCH):
        rows: dict[str, list[dict[str, Any]]] = {"patients": [], "studies": [], "series": [], "instances": []}
        for number in range(start, min(start + FILL_BATCH, count)):
            for table, table_rows in kinds[number % len(kinds)].copy(number, keys).items():
                rows[table] += table_rows
        with db.writing() as conn:
            for table in (patients, studies, series, instances):
                conn.execute(insert(table), rows[table.name])
    if not db.is_sqlite:  # as autovacuum would (it is off here); unanalysed, _study_facts scans every instance
        with db.writing() as conn:
            conn.execute(text("ANALYZE"))
    log(f"  filled {count:,} studies ({next(keys['instances']) - 1:,} instances) in {time.perf_counter() - t0:.0f} s")


def rejudge(db: Database, config: Config, folder: Path, count: int) -> dict[str, list[float]]:
    """Fill the index with `count` studies, then time ``Compliance.rejudge`` over them."""
    fill(db, folder, count)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here (Linux)
    t0 = time.perf_counter()
    judged = Compliance(db, config).rejudge("bench", lambda done, total: log(
        f"  rejudged {done:,}/{total:,}, {done / (time.perf_counter() - t0):.0f}/s") if done % 10_000 < 500 else None)
    seconds = time.perf_counter() - t0
    with db.reading() as conn:
        log(f"  rejudged {judged:,} in {seconds:.0f} s: " + str(dict(conn.execute(
            select(judgements.c.verdict, func.count()).group_by(judgements.c.verdict)).all())))
    assert judged == count, f"rejudge judged {judged} of {count} studies"
    return {"rate": [judged / seconds], "seconds": [seconds], "rss": [getrusage(RUSAGE_SELF).ru_maxrss / 1024]}


class Tree(Huren):
    """``huren serve`` of the source tree `tree`, judging with the shipped rule set or not."""

    def __init__(self, workdir: Path, tree: Path, judging: bool) -> None:
        super().__init__(workdir)
        self.tree, self.judging = tree, judging

    def environment(self) -> dict[str, str]:
        env = super().environment()  # this repository first on PYTHONPATH: put `tree` before it
        env["PYTHONPATH"] = f"{self.tree}{os.pathsep}{env['PYTHONPATH']}"
        return env

    def write_config(self) -> None:
        super().write_config()
        if self.judging:  # the file is JSON, which is YAML
            config = json.loads((self.workdir / "huren.yaml").read_text())
            config["guideline"] = {"rule_sets": [str(RULES)], "quiet_period": 2, "poll_interval": 1}
            (self.workdir / "huren.yaml").write_text(json.dumps(config, indent=2))


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header), *rows])


def index_part(work: Path, count: int, runs: int) -> str:
    """Parts 1 and 2 on each index, as a table."""
    names = ["SQLite"]
    with suppress(OperationalError):
        create_engine(PG_ADMIN).connect().close()
        names.append("PostgreSQL")
    config = config_with_rule_sets(Config(hospitals=[HOSPITAL], guideline={"rule_sets": [RULES]}))
    big, results = ct_chest(work / "big-ct", 832, 167), {}
    for backend in names:
        log(f"{backend}: judging one {len(big):,}-instance study, then rejudging {count:,} studies")
        with index(backend, work) as db:
            results[backend] = judge_one(db, config, big, work, runs)
        with index(backend, work) as db:
            results[backend].update(rejudge(db, config, work / f"mix-{backend}", count))
    rows = [("total", f"Judge one {len(big):,}-instance CT study (Compliance.judge)", "ms"),
            ("read", "… of which reading the facts from the index", "ms"), ("judge", "… of which judge()", "ms"),
            ("write", "… of which writing the record (the rest)", "ms"), ("traced", "… peak (tracemalloc)", "MiB"),
            ("rate", f"Rejudge {count:,} studies (Compliance.rejudge)", "studies/s"), ("seconds", "… in all", "s"),
            ("rss", "Peak RSS during the rejudge", "MiB")]
    return table(["Measurement", "Unit", "Runs", *names], [
        [label, unit, str(len(results[names[0]][key])), *(cell(results[b][key]) for b in names)]
        for key, label, unit in rows])


def ingest_part(work: Path, rounds: int, count: int) -> str:
    """Part 3: the three servers in turns, each sending `count` CT studies, as a table."""
    subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(work / "before.tar"), BEFORE], check=True)
    shutil.unpack_archive(work / "before.tar", work / "before")
    files = [path for k in range(count) for path in make.ct_study(
        work / f"send-{k}", thin_slices=300, thick_slices=0, seed=10 + k,
        exam=make.Exam(f"ZHOU^MIN{k}", f"BENCH-GL-{k}", "20260310", f"ACC-GL-{k}"))]
    servers = {"before": (work / "before", False), "none": (REPO, False), "judging": (REPO, True)}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    for r, name in [(i, n) for i in range(rounds) for n in [*servers][i % 3:] + [*servers][: i % 3]]:
        server = Tree(work / f"round{r}-{name}", *servers[name])
        try:
            server.start()
            values = {"ips": len(files) / storescu(server, files)}
            if server.judging:
                with closing(sqlite3.connect(server.workdir / "index.db", timeout=30)) as conn:
                    values["judged"] = conn.execute("SELECT count(*) FROM judgements").fetchone()[0]
            log(f"round {r + 1}/{rounds}, {name}: {values['ips']:.1f} inst/s, {values.get('judged', '-')} judged")
            results[name].append(values)
        finally:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)
    ips = {name: [v["ips"] for v in results[name]] for name in servers}
    median = {name: statistics.median(values) for name, values in ips.items()}
    return table(["Measurement", "Unit", "Rounds", f"Before ({BEFORE})", "Now, no rule sets", "Now, judging",
                  "Judging / no rule sets", "Judging / before"], [
        [f"C-STORE {count} CT studies of 300 512x512 slices, 1 association", "inst/s", str(rounds),
         *(cell(ips[name]) for name in servers), *(f"{median['judging'] / median[n]:.2f}" for n in ("none", "before"))],
        ["Studies judged before the send ended", "studies", str(rounds), "–", "–",
         ", ".join(str(v["judged"]) for v in results["judging"]), "", ""]])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guideline", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 studies, 5 runs, 1 round of 2 CT studies")
    parser.add_argument("--studies", type=int, help="studies to rejudge (100000)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop servers and clean up, as on Ctrl-C
    work, started = Path(tempfile.mkdtemp(prefix="huren-guideline-")), time.perf_counter()
    try:
        sections = [index_part(work, args.studies or (2000 if args.quick else 100_000), 5 if args.quick else 7),
                    ingest_part(work, 1 if args.quick else 3, 2 if args.quick else 3)]
        print(f"## Guideline ({time.strftime('%Y-%m-%d %H:%M')}, {(time.perf_counter() - started) / 60:.1f} min, "
              f"{os.cpu_count()} CPUs)\n\nMedians, [lowest–highest] run or round.\n\n" + "\n\n".join(sections))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
