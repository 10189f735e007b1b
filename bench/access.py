"""What the sharing policy costs QIDO-RS: the same worklist queries asked by an admin and by hospitals.

From the repository root: ``.venv/bin/python -m bench.access [--quick] [--studies N] [--runs N]``;
progress goes to stderr, the Markdown tables to stdout.

Each index (SQLite, and a fresh PostgreSQL database if 127.0.0.1:5432 answers, dropped afterwards)
gets 100,000 studies from ``bench.guideline.fill`` (70 % DR chests, 20 % CT chests, 10 % failing
ones), spread over 100 hospitals of Beijing, Tianjin and Hebei: realistic levels, six medical
alliances, one suspended hospital, and a tertiary hospital sending about 15 times what a primary one
does, the studies of all hospitals interleaved as they arrive. Each study gets a current judgement and
its exam item's result (one in ten, drawn at random, fails), carrying the mark its hospital's
assessments give it (``item_mark``): JJJHR for Beijing's and half of the other 三级甲等 hospitals, a city
mark (BJHR, TJHR, HEHR) for most others, none for most primary hospitals. Then 300 shares (a fifth expired or revoked),
and one CT ingested and judged as C-STORE would, whose thin series has 300 instances. Patient names
are redrawn over the 25 commonest surnames (about 12 % ZHANG) in the index columns only (their pinyin
column too, for the fuzzy matching row).

Timed are the queries of a QIDO-RS worklist, each through ``archive.index.query.search`` with the
caller's ``visible(config, caller)`` built per request as ``dicomweb.resources.visible_to`` does, and
with the limit QIDO passes to the index (the client's limit + 1, or the 1,000-result cap + 1). It runs
in process: over HTTP both callers pay the same routing, authentication and JSON, which would only
hide the ratio. The callers: an admin (the policy is ``true()``), a typical hospital (二级甲等, Beijing,
in an alliance) and a small primary one (一级乙等, Hebei, in no alliance); under the guideline's
rules a lower level accepts higher levels' results, so the small hospital sees more than its size
suggests. Each query has a warm-up round, then ``--runs`` rounds in which the callers take turns
going first; cells are medians in ms, [lowest–highest], and the ratio is a hospital's median over the
admin's. The issue asks for ratios within 1.2.

SQLite is measured without ``ANALYZE`` (Huren never runs it), PostgreSQL after ``VACUUM ANALYZE``
(autovacuum's work within a minute of the bulk insert). The machine is small and shared: read the ratios.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pydicom
import yaml
from pydicom.datadict import tag_for_keyword
from sqlalchemy import bindparam, create_engine, func, insert, select, text, update
from sqlalchemy.exc import OperationalError

from archive.config import Config, Hospital, config_with_rule_sets
from archive.guideline.compliance import Compliance
from archive.guideline.marks import item_mark, recognition
from archive.index.database import Database
from archive.index.query import Level, Query, search
from archive.index.schema import instances, item_results, judgements, patients, series, shares, studies
from archive.ingest import Ingest, Source
from archive.policy import Caller, visible
from archive.storage.filesystem import FilesystemStore
from bench.guideline import FILL_BATCH, PG_ADMIN, RULES, ct_chest, fill, index, table
from bench.run import CALLING_AET, cell, log

ROOT_URL = "http://127.0.0.1:8042/dicom-web"
CAP = 1000  # http.max_query_results' default: QIDO asks the index for one more
# Hospital levels, and how many studies one sends relative to the others.
LEVELS = {"三级甲等": 10.0, "三级乙等": 5.0, "二级甲等": 2.5, "二级乙等": 1.5, "一级甲等": 0.8, "一级乙等": 0.6}
# Regions: the name, and how many hospitals of each level of LEVELS.
REGIONS = {"BJ": ("北京", (12, 3, 11, 7, 4, 3)), "TJ": ("天津", (5, 2, 8, 5, 3, 2)),
           "HE": ("河北", (5, 3, 11, 8, 5, 3))}
# Surnames by their share of the population (per mille), pinyin and characters.
SURNAMES = [("WANG", "王", 72), ("LI", "李", 70), ("ZHANG", "张", 69), ("LIU", "刘", 54), ("CHEN", "陈", 45),
            ("YANG", "杨", 31), ("ZHAO", "赵", 23), ("HUANG", "黄", 22), ("ZHOU", "周", 21), ("WU", "吴", 20),
            ("XU", "徐", 17), ("SUN", "孙", 15), ("HU", "胡", 13), ("ZHU", "朱", 12), ("GAO", "高", 12),
            ("LIN", "林", 11), ("HE", "何", 11), ("GUO", "郭", 11), ("MA", "马", 11), ("LUO", "罗", 9),
            ("ZHENG", "郑", 8), ("LIANG", "梁", 8), ("SONG", "宋", 7), ("XIE", "谢", 7), ("TANG", "唐", 7)]
GIVEN = [("WEI", "伟"), ("FANG", "芳"), ("NA", "娜"), ("MIN", "敏"), ("JING", "静"), ("LEI", "磊"), ("QIANG", "强"),
         ("YANG", "洋"), ("YAN", "艳"), ("JUN", "军"), ("JIE", "杰"), ("TAO", "涛")]
ITEMS = {"DX": "JJJ-DR-CHEST", "CT": "JJJ-CT-CHEST"}  # the exam items of fill's studies
STUDY_DATES = ("20250601", "20250630")  # the month asked for; fill spreads studies over 2025-2026


def hospitals(rng: random.Random) -> list[dict[str, Any]]:
    """100 hospitals of REGIONS, six alliances, one hospital suspended."""
    found: list[dict[str, Any]] = []
    for region, (name, counts) in REGIONS.items():
        levels = [level for level, count in zip(LEVELS, counts) for _ in range(count)]
        rng.shuffle(levels)
        found += [{"id": f"{region.lower()}-{len(found) + n:03d}", "name": f"{name}第{len(found) + n}医院",
                   "level": level, "region": region, "alliances": []} for n, level in enumerate(levels, 1)]
    for region in REGIONS:  # two alliances a region: a 三级甲等 hospital and four lower ones near it
        here = [h for h in found if h["region"] == region]
        leads = [h for h in here if h["level"] == "三级甲等"][:2]
        others = [h for h in here if h["level"] not in ("三级甲等", "三级乙等")]
        for n, lead in enumerate(leads):
            for member in [lead, *others[4 * n: 4 * n + 4]]:
                member["alliances"].append(f"医联体-{lead['id']}")
    suspended = next(h for h in found if h["level"] == "二级乙等")
    suspended.update(status="suspended", since=datetime.date(2025, 10, 1))
    return found


def assessments(found: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """The marks of the chest DR and CT items (the only items in fill's studies), by level."""
    result = []
    for hospital in found:
        city = f"{hospital['region']}HR"
        level = hospital["level"]
        if level == "三级甲等":
            scope, items = "JJJHR" if hospital["region"] == "BJ" or rng.random() < 0.5 else city, ITEMS.values()
        elif level in ("三级乙等", "二级甲等"):
            scope, items = city, ITEMS.values()
        elif level == "二级乙等":
            scope, items = city, [ITEMS["DX"]] if rng.random() < 0.7 else []
        else:
            scope, items = city, [ITEMS["DX"]] if rng.random() < 0.3 else []
        since = datetime.date(2017 + rng.randrange(6), 1 + rng.randrange(12), 1)
        result += [{"hospital": hospital["id"], "item": item, "scope": scope, "since": since} for item in items]
    return result


def regional_config(folder: Path) -> Config:
    """The 100 hospitals and the shipped rule set with their assessments (written to `folder`)."""
    rng = random.Random(7)
    found = hospitals(rng)
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    rules["assessments"] = assessments(found, rng)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RULES.name
    path.write_text(yaml.safe_dump(rules, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return config_with_rule_sets(Config(hospitals=found, guideline={"rule_sets": [path]}))


def spread(db: Database, config: Config, rng: random.Random) -> None:
    """Give fill's studies their hospitals, patient names, judgements and item results.

    Instances keep fill's sending hospital: the policy reads only the study's.
    """
    sources = config.hospitals
    rule_set = config.rule_sets[0]
    with db.reading() as conn:
        rows = conn.execute(select(studies.c.pk, studies.c.study_date).order_by(studies.c.pk)).all()
        ct = set(conn.execute(select(series.c.study_pk).where(series.c.modality == "CT").distinct()).scalars())
        patient_pks = conn.execute(select(patients.c.pk)).scalars().all()
    owners = rng.choices(sources, weights=[LEVELS[str(h.level)] for h in sources], k=len(rows))
    now = datetime.datetime.now(datetime.UTC)
    names = rng.choices(SURNAMES, weights=[w for *_name, w in SURNAMES], k=len(patient_pks))
    for start in range(0, len(rows), FILL_BATCH * 5):
        batch = range(start, min(start + FILL_BATCH * 5, len(rows)))
        judged, items = [], []
        for n in batch:
            (pk, day), owner = rows[n], owners[n]
            item = ITEMS["CT" if pk in ct else "DX"]
            verdict = "fail" if rng.random() < 0.1 else "pass"
            mark = (item_mark(rule_set, owner, item, datetime.datetime.strptime(day, "%Y%m%d").date())
                    if verdict == "pass" else None)
            judged.append({"pk": pk, "study_pk": pk, "rule_set": rule_set.id, "version": rule_set.version,
                           "verdict": verdict, "record": orjson.dumps({"marks": {item: mark}}),
                           "judged_at": now, "current": True})
            items.append({"judgement_pk": pk, "study_pk": pk, "hospital_id": owner.id, "rule_set": rule_set.id,
                          "item": item, "verdict": verdict, "mark": mark, "study_date": day,
                          "failed_rules": "" if verdict == "pass" else "report.verified", "judged_at": now})
        with db.writing() as conn:
            conn.execute(update(studies).where(studies.c.pk == bindparam("b_pk")).values(
                hospital_id=bindparam("b_hospital"), recognition=bindparam("b_recognition")),
                [{"b_pk": rows[n][0], "b_hospital": owners[n].id,
                  "b_recognition": recognition([(rule_set.id, item["mark"])] if item["mark"] else [])}
                 for n, item in zip(batch, items)])
            conn.execute(insert(judgements), judged)
            conn.execute(insert(item_results), items)
    with db.writing() as conn:
        conn.execute(update(patients).where(patients.c.pk == bindparam("b_pk")).values(
            name_alphabetic=bindparam("b_alphabetic"), name_ideographic=bindparam("b_ideographic"),
            name_pinyin=bindparam("b_alphabetic"), patient_name=bindparam("b_name")), [
            {"b_pk": pk, "b_alphabetic": f"{pinyin}^{given[0]}", "b_ideographic": f"{hanzi}^{given[1]}",
             "b_name": f"{pinyin}^{given[0]}={hanzi}^{given[1]}"}
            for pk, (pinyin, hanzi, _w), given in zip(patient_pks, names, rng.choices(GIVEN, k=len(names)))])
    if not db.is_sqlite:  # keys were chosen here and by fill: move PostgreSQL's sequences past them for ingest
        with db.writing() as conn:
            for keyed in (patients, studies, series, instances, judgements):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{keyed.name}', 'pk'), "
                                  f"(SELECT max(pk) FROM {keyed.name}))"))
    log(f"  {len(rows):,} studies spread over {len(sources)} hospitals, "
        f"{sum(o.level == '三级甲等' for o in owners) / len(rows):.0%} from 三级甲等 ones")


def share(db: Database, config: Config, rng: random.Random, count: int = 300) -> None:
    """`count` shares of random studies with other hospitals: a tenth expired, a tenth revoked."""
    now = datetime.datetime.now(datetime.UTC)
    with db.reading() as conn:
        owned = conn.execute(select(studies.c.pk, studies.c.hospital_id).order_by(func.random()).limit(count)).all()
    rows = []
    for n, (pk, owner) in enumerate(owned):
        to = rng.choice([h.id for h in config.hospitals if h.id != owner])
        expires = now + datetime.timedelta(days=-1 if n % 10 == 0 else rng.randrange(1, 31))
        rows.append({"study_pk": pk, "hospital_id": to, "expires_at": expires, "created_by": f"token-of-{owner}",
                     "created_at": now - datetime.timedelta(days=1), "revoked_at": now if n % 10 == 1 else None})
    with db.writing() as conn:
        conn.execute(insert(shares), rows)


def large_ct(db: Database, config: Config, folder: Path, hospital_id: str) -> tuple[str, str]:
    """Ingest and judge a CT of 300 thin and 60 thick slices from `hospital_id`; its study and thin series UIDs."""
    files = ct_chest(folder / "ct", 300, 60)  # the thin series first
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid, series_uid = first.StudyInstanceUID, first.SeriesInstanceUID
    archive = Ingest(db, FilesystemStore(folder / "archive"))
    for path in files:
        archive.ingest(path, Source("dimse", hospital_id, CALLING_AET))
    with db.reading() as conn:
        study_pk = conn.execute(select(studies.c.pk).where(studies.c.study_uid == study_uid)).scalar_one()
    compliance = Compliance(db, config)
    claim = compliance.claim(study_pk, "bench")
    assert claim is not None and compliance.judge(claim, "bench")
    assert (compliance.record(study_uid) or {}).get("verdict") == "pass", "the large CT should pass"
    return study_uid, series_uid


def as_caller(hospital: Hospital) -> Caller:
    """A hospital's token holder on the HTTP door."""
    return Caller("http", f"token-of-{hospital.id}", hospital.id)


def callers(config: Config) -> dict[str, Caller]:
    """The admin, a typical hospital and a small primary one, by the names the table gives them."""
    typical = next(h for h in config.hospitals if h.level == "二级甲等" and h.region == "BJ" and h.alliances)
    small = next(h for h in config.hospitals if h.level == "一级乙等" and h.region == "HE" and not h.alliances)
    return {"admin": Caller("http", "token-of-admin", admin=True),
            **{f"{h.id} ({h.level}, {h.region})": as_caller(h) for h in (typical, small)}}


def worklist(study_uid: str, ct_uid: str, series_uid: str) -> dict[str, Query]:
    """The QIDO-RS queries timed, by the request a viewer sends."""
    def tag(keyword: str) -> int:
        found = tag_for_keyword(keyword)
        assert found is not None
        return found

    def studies_matching(limit: int, **matches: str) -> Query:
        return Query(Level.STUDY, {tag(k): v for k, v in matches.items()}, set(), limit=limit + 1)

    return {
        "/studies?limit=100": studies_matching(100),
        "/studies?PatientName=ZHANG*&limit=100": studies_matching(100, PatientName="ZHANG*"),
        "/studies?PatientName=zhang*&fuzzymatching=true&limit=100": replace(
            studies_matching(100, PatientName="zhang*"), fuzzy=True),
        f"/studies?StudyDate={'-'.join(STUDY_DATES)}&limit=100": studies_matching(100, StudyDate="-".join(STUDY_DATES)),
        "/studies?StudyInstanceUID={uid}": studies_matching(CAP, StudyInstanceUID=study_uid),
        "/studies/{uid}/series": Query(Level.SERIES, {}, set(), limit=CAP + 1, study_uid=study_uid),
        "/studies/{uid}/series/{uid}/instances (300)": Query(Level.INSTANCE, {}, set(), limit=CAP + 1,
                                                             study_uid=ct_uid, series_uid=series_uid),
    }


def measure(db: Database, config: Config, who: dict[str, Caller], queries: dict[str, Query],
            runs: int) -> dict[str, dict[str, list[float]]]:
    """Milliseconds of each query for each caller: a warm-up round, then `runs` with the callers taking turns."""
    samples: dict[str, dict[str, list[float]]] = {q: {c: [] for c in who} for q in queries}
    order = [*who]
    for r in range(runs + 1):
        for name, query in queries.items():
            for caller in order[r % len(order):] + order[: r % len(order)]:
                t0 = time.perf_counter()
                with db.reading() as conn:
                    found = search(conn, query, ROOT_URL, visible(config, who[caller]))
                ms = (time.perf_counter() - t0) * 1000
                if r == 0:
                    log(f"  {name} by {caller}: {len(found)} results, {ms:.1f} ms")
                else:
                    samples[name][caller].append(ms)
    return samples


def visible_counts(db: Database, config: Config, who: dict[str, Caller]) -> dict[str, int]:
    """How many studies each caller may see."""
    with db.reading() as conn:
        return {name: conn.execute(select(func.count()).select_from(studies).where(visible(config, caller)))
                .scalar_one() for name, caller in who.items()}


def backend_part(backend: str, work: Path, config: Config, count: int, runs: int) -> str:
    """Build one backend's index and time the worklist on it, as a table."""
    rng = random.Random(11)
    with index(backend, work) as db:
        log(f"{backend}: {count:,} studies over {len(config.hospitals)} hospitals")
        fill(db, work / f"mix-{backend}", count)
        spread(db, config, rng)
        share(db, config, rng)
        source = next(h for h in config.hospitals if h.level == "三级甲等" and h.region == "BJ" and not h.alliances)
        ct_uid, series_uid = large_ct(db, config, work / f"ct-{backend}", source.id)
        with db.reading() as conn:  # a marked study of the same source, for the look-ups by UID
            study_uid = conn.execute(
                select(studies.c.study_uid).join(item_results, item_results.c.study_pk == studies.c.pk)
                .where(studies.c.hospital_id == source.id, item_results.c.mark == "JJJHR",
                       studies.c.pk > count // 2).order_by(studies.c.pk).limit(1)).scalar_one()
        if backend == "PostgreSQL":  # what autovacuum does within a minute of the bulk insert
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))
        who = callers(config)
        seen = visible_counts(db, config, who)
        everyone = [*visible_counts(db, config, {h.id: as_caller(h) for h in config.hospitals}).values()]
        samples = measure(db, config, who, worklist(study_uid, ct_uid, series_uid), runs)
    admin, *hospital_names = who
    rows = [["Studies the caller may see", "–", f"{seen[admin]:,}",
             *(v for name in hospital_names for v in (f"{seen[name]:,} ({seen[name] / seen[admin]:.0%})", ""))]]
    for query, by in samples.items():
        base = statistics.median(by[admin])
        rows.append([f"`{query}`", str(len(by[admin])), cell(by[admin]), *(
            v for name in hospital_names for v in (cell(by[name]), f"{statistics.median(by[name]) / base:.2f}"))])
    return (f"### {backend}, {count:,} studies\n\n" + table(
        ["Query", "Runs", "Admin, ms", *(v for name in hospital_names for v in (f"{name}, ms", "ratio"))], rows)
        + f"\n\nThe {len(everyone)} hospitals may see {min(everyone) / seen[admin]:.0%} to "
        f"{max(everyone) / seen[admin]:.0%} of the studies (median {statistics.median(everyone) / seen[admin]:.0%}).")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.access", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 studies, 5 runs")
    parser.add_argument("--studies", type=int, help="studies in the index (100000)")
    parser.add_argument("--runs", type=int, help="timed rounds after the warm-up (100)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up, as on Ctrl-C
    count, runs = args.studies or (5000 if args.quick else 100_000), args.runs or (5 if args.quick else 100)
    work, started = Path(tempfile.mkdtemp(prefix="huren-access-")), time.perf_counter()
    try:
        config = regional_config(work)
        backends = ["SQLite"]
        with suppress(OperationalError):
            create_engine(PG_ADMIN).connect().close()
            backends.append("PostgreSQL")
        sections = [backend_part(backend, work, config, count, runs) for backend in backends]
        print(f"## Sharing policy ({time.strftime('%Y-%m-%d %H:%M')}, {(time.perf_counter() - started) / 60:.1f} min, "
              f"{os.cpu_count()} CPUs)\n\nMedians in ms, [lowest–highest] run; ratio = the hospital's median / "
              f"the admin's.\n\n" + "\n\n".join(sections))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
