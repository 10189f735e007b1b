"""``huren guideline check PATH…`` and ``huren guideline rejudge``.

``check`` judges local DICOM files, as a radiographer would before sending:
no server, no index; the same facts and rules as the archive's judging.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from archive.config import Config
from archive.guideline.judge import Judgement, judge
from archive.guideline.rules import RuleSet

VERDICT = {
    "pass": ("通过", "pass"),
    "fail": ("不通过", "FAIL"),
    "not_applicable": ("无适用项目", "no exam item recognised"),
}


def check(paths: list[str], rule_sets: tuple[RuleSet, ...], *, as_json: bool, lang: str) -> int:
    """Judge the studies in `paths` (files or folders); returns the exit status.

    0 when no study fails, 1 when any fails, 2 when nothing readable was found.
    """
    from archive.digests import file_sha256
    from archive.header import UnreadableInstance, read_header

    missing = [name for name in paths if not Path(name).exists()]
    if missing:
        print(f"huren: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2

    studies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    unreadable = []
    for path in _files(paths):
        try:
            header = read_header(path)
        except UnreadableInstance as exc:
            unreadable.append({"path": str(path), "error": str(exc)})
            continue
        facts = orjson.loads(header.facts)
        facts.update(sop_uid=header.sop_uid, transfer_syntax=header.transfer_syntax,
                     sha256=file_sha256(path))
        studies[header.study_uid].append(facts)
    if not studies:
        print(f"huren: no DICOM instances found in {' '.join(paths)}", file=sys.stderr)
        for bad in unreadable:
            print(f"  {bad['path']}: {bad['error']}", file=sys.stderr)
        return 2
    results = {uid: [judge(rule_set, facts) for rule_set in rule_sets] for uid, facts in studies.items()}
    if as_json:
        print(orjson.dumps({
            "studies": [{"study_instance_uid": uid, "instances": len(studies[uid]),
                         "judgements": [j.to_json() for j in judged]} for uid, judged in results.items()],
            "unreadable": unreadable,
        }, option=orjson.OPT_INDENT_2).decode())
    else:
        for uid, judged in results.items():
            _print_study(uid, len(studies[uid]), judged, lang)
        for bad in unreadable:
            print(f"{bad['path']}: {'无法读取' if lang == 'zh' else 'not readable'}: {bad['error']}")
    failed = any(j.verdict == "fail" for judged in results.values() for j in judged)
    return 1 if failed else 0


def rejudge(config: Config) -> int:
    """Re-judge every stored study against the configured rule sets, with a progress bar."""
    from tqdm import tqdm

    from archive.guideline.compliance import Compliance
    from archive.index.database import Database

    if not config.rule_sets:
        print("huren: no rule sets are configured (guideline.rule_sets)", file=sys.stderr)
        return 2
    db = Database(config.index.url, config.index.pool_size)
    db.migrate()
    bar = tqdm(unit="study", desc="rejudging", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        judged = Compliance(db, config).rejudge(f"rejudge:{os.getpid()}", progress)
    finally:
        bar.close()
        db.dispose()
    print(f"rejudged {judged} studies")
    return 0


def _print_study(uid: str, count: int, judged: list[Judgement], lang: str) -> None:
    zh = lang == "zh"
    print(f"{'检查' if zh else 'Study'} {uid} ({count} {'幅图像' if zh else 'instances'})")
    for judgement in judged:
        verdict = VERDICT[judgement.verdict][0 if zh else 1]
        print(f"  {judgement.rule_set} {judgement.version}: {verdict}")
        for item in judgement.items:
            print(f"    [{VERDICT[item.verdict][0 if zh else 1]}] {item.code} {item.name[lang]}")
        for finding in judgement.findings:
            kind = {"fail": "✗", "flag": "!"}.get(finding.outcome, "-")
            print(f"    {kind} {finding.message[lang]}  ({finding.rule})")


def _files(paths: list[str]) -> Iterator[Path]:
    for name in paths:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path
