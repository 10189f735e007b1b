"""Compliance records: judging archived studies from the index, once each.

A study is due when it has new instances (``judge_pending``) and none has
arrived for ``guideline.quiet_period`` seconds. Any number of processes may
look for due studies at once: each claims a study with a compare-and-set on
its row (``claimed_until`` in the past, or unset) and only the winner judges
it. A process that dies mid-judgement leaves the claim to run out, and the
study is judged again by whoever comes next. The judgement records the
study's revision it saw, so instances that arrive meanwhile leave the study
pending and it is judged again after them.

Judging reads only the index (each instance's facts, recorded at ingest),
never the blobs.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, delete, insert, or_, select, update

from archive.config import Config
from archive.guideline.facts import instance_facts
from archive.guideline.judge import Judgement, judge
from archive.guideline.marks import item_mark, recognition
from archive.guideline.verdict import summary_verdict
from archive.index.database import Database
from archive.index.schema import instances, item_results, judgements, series, studies, study_identities

log = logging.getLogger("huren.guideline")


@dataclass(frozen=True)
class Claim:
    study_pk: int
    study_uid: str
    revision: int


class Compliance:
    """Judge studies against the configured rule sets and keep their records."""

    def __init__(self, db: Database, config: Config) -> None:
        self.db = db
        self.config = config
        self.rule_sets = config.rule_sets

    # Finding and claiming due studies.

    def due(self, now: datetime.datetime | None = None, limit: int = 100) -> list[int]:
        """Study keys that are pending, quiet and not claimed by a live process, oldest first."""
        now = now or _now()
        quiet_since = now - datetime.timedelta(seconds=self.config.guideline.quiet_period)
        with self.db.reading() as conn:
            return list(conn.execute(
                select(studies.c.pk).where(
                    studies.c.judge_pending.is_(True), studies.c.updated_at <= quiet_since,
                    or_(studies.c.claimed_until.is_(None), studies.c.claimed_until < now),
                ).order_by(studies.c.updated_at).limit(limit)
            ).scalars())

    def claim(self, study_pk: int, owner: str, now: datetime.datetime | None = None) -> Claim | None:
        """Claim a study for judging; ``None`` if another process holds it."""
        now = now or _now()
        until = now + datetime.timedelta(seconds=self.config.guideline.claim_timeout)
        with self.db.writing() as conn:
            claimed = conn.execute(
                update(studies).where(
                    studies.c.pk == study_pk,
                    or_(studies.c.claimed_until.is_(None), studies.c.claimed_until < now),
                ).values(claimed_until=until, claimed_by=owner)
            ).rowcount
            if claimed != 1:
                return None
            row = conn.execute(
                select(studies.c.study_uid, studies.c.revision).where(studies.c.pk == study_pk)
            ).one()
        return Claim(study_pk, row.study_uid, row.revision)

    def run_due(self, owner: str, now: datetime.datetime | None = None) -> int:
        """Judge every due study this process can claim; returns how many it judged."""
        judged = 0
        for study_pk in self.due(now):
            claim = self.claim(study_pk, owner, now)
            if claim is not None and self.judge(claim, owner):
                judged += 1
        return judged

    # Judging.

    def judge(self, claim: Claim, owner: str) -> bool:
        """Judge a claimed study and record the result; ``False`` if the claim was lost."""
        started = _now()
        with self.db.reading() as conn:
            study = conn.execute(
                select(studies.c.hospital_id, studies.c.study_date).where(studies.c.pk == claim.study_pk)
            ).one()
            facts = _study_facts(conn, claim.study_pk)
        hospital = self.config.hospital(study.hospital_id)
        study_date = _date(study.study_date)
        verdicts = [judge(rule_set, facts) for rule_set in self.rule_sets]
        marks = [
            {item.code: item_mark(rule_set, hospital, item.code, study_date)
             for item in verdict.items if _markable(verdict, item.code)}
            for rule_set, verdict in zip(self.rule_sets, verdicts)
        ]
        with self.db.writing() as conn:
            released = conn.execute(
                update(studies).where(studies.c.pk == claim.study_pk, studies.c.claimed_by == owner)
                .values(judged_revision=claim.revision, judge_pending=studies.c.revision != claim.revision,
                        claimed_until=None, claimed_by=None, recognition=recognition(
                            (verdict.rule_set, mark) for verdict, item_marks in zip(verdicts, marks)
                            for item in verdict.items
                            if item.verdict == "pass" and (mark := item_marks.get(item.code))))
            ).rowcount
            if released != 1:
                log.warning("judging claim lost", extra={"study": claim.study_uid, "owner": owner})
                return False
            _record(conn, claim.study_pk, study, verdicts, marks, started)
            _identify(conn, claim.study_pk, study.hospital_id, facts)
        log.info("study judged", extra={
            "study": claim.study_uid, "hospital": study.hospital_id, "instances": len(facts),
            "verdicts": {v.rule_set: v.verdict for v in verdicts},
            "duration_ms": round((_now() - started).total_seconds() * 1000, 1),
        })
        return True

    def judge_now(self, study_uid: str, owner: str) -> bool:
        """Judge one study at once (on demand), waiting for no quiet period.

        Returns ``False`` if there is no such study or another process is judging it.
        """
        with self.db.reading() as conn:
            study_pk = conn.execute(
                select(studies.c.pk).where(studies.c.study_uid == study_uid)
            ).scalar_one_or_none()
        claim = None if study_pk is None else self.claim(study_pk, owner)
        return claim is not None and self.judge(claim, owner)

    def mark_all_pending(self) -> int:
        """Make every study due again (after a rule edit); returns how many."""
        with self.db.writing() as conn:
            return conn.execute(update(studies).values(judge_pending=True)).rowcount

    def rejudge(self, owner: str, progress: Callable[[int, int], None] = lambda done, total: None,
                batch: int = 500) -> int:
        """Re-judge every stored study now, quiet or not; returns how many were judged.

        `progress(done, total)` is called after each batch.
        """
        total = self.mark_all_pending()
        far_future = _now() + datetime.timedelta(days=36500)  # every study counts as quiet
        done = 0
        progress(0, total)
        while keys := self.due(far_future, limit=batch):
            for study_pk in keys:
                claim = self.claim(study_pk, owner)
                if claim is not None and self.judge(claim, owner):
                    done += 1
            progress(done, total)
        return done

    # Reading records.

    def record(self, study_uid: str) -> dict[str, Any] | None:
        """The current compliance record of a study (each rule set's judgement and
        its item marks), with the earlier judgements; ``None`` for an unknown study."""
        with self.db.reading() as conn:
            study = conn.execute(
                select(studies.c.pk, studies.c.hospital_id, studies.c.judge_pending)
                .where(studies.c.study_uid == study_uid)
            ).first()
            if study is None:
                return None
            rows = conn.execute(
                select(judgements).where(judgements.c.study_pk == study.pk)
                .order_by(judgements.c.judged_at.desc(), judgements.c.pk.desc())
            ).all()
        current = [_as_json(row) for row in rows if row.current]
        return {
            "study_instance_uid": study_uid,
            "hospital": study.hospital_id,
            "pending": bool(study.judge_pending),
            "verdict": summary_verdict([row["verdict"] for row in current]),
            "judgements": current,
            "history": [_as_json(row) for row in rows if not row.current],
        }


def _markable(verdict: Judgement, item: str) -> bool:
    """An item is marked only when it passes and nothing study-wide fails."""
    study_wide_failure = any(f.outcome == "fail" and f.item is None for f in verdict.findings)
    return not study_wide_failure and any(i.code == item and i.verdict == "pass" for i in verdict.items)


def _study_facts(conn: Connection, study_pk: int) -> list[dict[str, Any]]:
    """Each instance's facts, with the row's UID, transfer syntax and checksum."""
    rows = conn.execute(
        select(instances.c.sop_uid, instances.c.transfer_syntax, instances.c.sha256,
               instances.c.facts, instances.c.metadata)
        .join(series, instances.c.series_pk == series.c.pk)
        .where(series.c.study_pk == study_pk)
        .order_by(series.c.pk, instances.c.instance_number, instances.c.pk)
    )
    facts = []
    for row in rows:
        # Instances archived before facts were recorded: from their stored metadata.
        known = orjson.loads(row.facts) if row.facts is not None else instance_facts(orjson.loads(row.metadata))
        known.update(sop_uid=row.sop_uid, transfer_syntax=row.transfer_syntax, sha256=row.sha256)
        facts.append(known)
    return facts


def _record(conn: Connection, study_pk: int, study: Any, verdicts: list[Judgement],
            marks: list[dict[str, str | None]], judged_at: datetime.datetime) -> None:
    conn.execute(update(judgements).where(judgements.c.study_pk == study_pk, judgements.c.current.is_(True))
                 .values(current=False))
    conn.execute(delete(item_results).where(item_results.c.study_pk == study_pk))
    for verdict, item_marks in zip(verdicts, marks):
        record = verdict.to_json()
        record["marks"] = item_marks
        judgement_pk = conn.execute(insert(judgements).values(
            study_pk=study_pk, rule_set=verdict.rule_set, version=verdict.version,
            verdict=verdict.verdict, record=orjson.dumps(record), judged_at=judged_at, current=True,
        ).returning(judgements.c.pk)).scalar_one()
        rows = [{
            "judgement_pk": judgement_pk, "study_pk": study_pk, "hospital_id": study.hospital_id,
            "rule_set": verdict.rule_set, "item": item.code, "verdict": item.verdict,
            "mark": item_marks.get(item.code), "study_date": study.study_date or "",
            "failed_rules": " ".join(sorted({f.rule for f in verdict.findings
                                             if f.outcome == "fail" and f.item in (item.code, None)})),
            "judged_at": judged_at,
        } for item in verdict.items]
        if rows:
            conn.execute(insert(item_results), rows)


def _identify(conn: Connection, study_pk: int, hospital_id: str | None,
              facts: list[dict[str, Any]]) -> None:
    """Record every identifier of the study's patient (see ``study_identities``).

    A PatientID without an issuer is scoped to the sending hospital, as the
    patients table scopes it, so a bare PatientID never links two hospitals;
    other IDs count only with their issuer.
    """
    found: set[tuple[str, str]] = set()
    for fact in facts:
        if fact.get("patient_id"):
            found.add((fact["patient_id"], fact.get("issuer") or hospital_id or ""))
        for other_id, issuer in fact.get("other_ids", []):
            if other_id and issuer:
                found.add((other_id, issuer))
    conn.execute(delete(study_identities).where(study_identities.c.study_pk == study_pk))
    if found:
        conn.execute(insert(study_identities), [
            {"study_pk": study_pk, "patient_id": pid[:64], "issuer": issuer[:128]} for pid, issuer in sorted(found)
        ])


def _as_json(row: Any) -> dict[str, Any]:
    record = orjson.loads(row.record)
    record["judged_at"] = row.judged_at.isoformat()
    return record


def _date(value: str | None) -> datetime.date | None:
    try:
        return datetime.datetime.strptime(value or "", "%Y%m%d").date()
    except ValueError:
        return None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
