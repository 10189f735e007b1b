"""``huren verify [--repair] [--quick]`` (``huren repair`` is ``verify --repair``) and ``huren reindex``:
the index against the store, with progress bars (see :mod:`archive.verify` and :mod:`archive.reindex`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from archive.config import Config

if TYPE_CHECKING:
    from archive.index.database import Database
    from archive.storage import BlobStore


def add_parser(commands: argparse._SubParsersAction) -> None:
    verify = commands.add_parser("verify", help="check that the index and the blob store agree")
    verify.add_argument("--config", default="conf/huren.yaml", help="YAML configuration file")
    verify.add_argument("--repair", action="store_true", help="fix what can be fixed, say what cannot")
    verify.add_argument("--quick", action="store_true",
                        help="compare sizes only, without reading every object for its SHA-256")
    repair = commands.add_parser("repair", help="verify, then fix what can be fixed (huren verify --repair)")
    repair.add_argument("--config", default="conf/huren.yaml", help="YAML configuration file")
    repair.add_argument("--quick", action="store_true",
                        help="compare sizes only, without reading every object for its SHA-256")
    repair.set_defaults(repair=True)
    reindex = commands.add_parser("reindex", help="rebuild the whole index from the bucket into an empty database")
    reindex.add_argument("--config", default="conf/huren.yaml", help="YAML configuration file")


def run(args: argparse.Namespace, config: Config) -> int:
    """Exit status: 0 when the index and the store agree (after repairs), 1 when not, 2 when they cannot be opened."""
    from archive.verify import repair, verify

    with _archive(config) as opened:
        if opened is None:
            return 2
        db, store, work = opened
        if args.command == "reindex":
            return _reindex(db, store, work)
        with _bar("objects", "verifying", _rows(db)) as step:
            report = verify(db, store, queue=config.storage.queue.path.resolve(), checksums=not args.quick,
                            grace=config.sweep.orphan_grace, progress=step)
        print(f"{report.objects} objects, {report.rows} index rows, {report.queued} in the outage queue"
              + (f" ({report.queued_elsewhere} on other machines, not checked here)" if report.queued_elsewhere
                 else ""))
        for finding in report.missing:
            print(f"missing object: {finding.key} (study {finding.study_uid})")
        for key in report.orphans:
            print(f"orphan object (no index row): {key}")
        for finding in report.mismatches:
            print(f"mismatch: {finding.key}: {finding.detail}")
        if report.recent:
            print(f"{len(report.recent)} objects without an index row are younger than "
                  f"sweep.orphan_grace ({config.sweep.orphan_grace:g} s): an ingest may be committing them")
        if report.agree:
            print("the index and the store agree")
            return 0
        if not args.repair:
            print("run with --repair to fix what can be fixed")
            return 1
        from archive.sweep import Sweeper

        sweeper = Sweeper(db, store, config.ingest.receive_folder, work, upload_age=config.sweep.upload_age,
                          orphan_grace=config.sweep.orphan_grace)
        repairs = repair(db, store, report, sweeper)
        for line in repairs.fixed:
            print(f"repaired: {line}")
        for line in repairs.not_fixed:
            print(f"NOT repaired: {line}")
        return 1 if repairs.not_fixed else 0


def _reindex(db: Database, store: BlobStore, work: Path) -> int:
    from archive import inventory
    from archive.reindex import IndexNotEmpty, check_empty, reindex

    try:
        check_empty(db)
    except IndexNotEmpty as exc:
        print(f"huren: {exc}", file=sys.stderr)
        return 2
    with _bar("objects", "reindexing", sum(1 for _ in inventory.objects(store))) as step:
        done = reindex(db, store, work, step)
    for key, why in done.refused.items():
        print(f"not an instance Huren archives: {key}: {why}")
    print(f"{done.indexed} instances indexed, {done.duplicates} duplicate copies, {len(done.refused)} refused")
    return 1 if done.refused else 0


@contextmanager
def _archive(config: Config) -> Iterator[tuple[Database, BlobStore, Path] | None]:
    """The index (migrated), the store, and a receive folder for fetched copies; None
    (with the problems printed) when the index or the store does not answer."""
    from archive.index.database import Database
    from archive.receiving import ReceiveFolder
    from archive.storage import open_store
    from huren import connections

    db = Database.open(config.index)  # with the index timeouts
    try:
        if found := connections.problems(config, db):
            for problem in found:
                print(f"huren: {problem}", file=sys.stderr)
            yield None
            return
        folder = ReceiveFolder(config.ingest.receive_folder.resolve())
        try:
            yield db, open_store(config), folder.path
        finally:
            folder.close()
    finally:
        db.dispose()


def _rows(db: Database) -> int:
    from sqlalchemy import func, select

    from archive.index.schema import instances

    with db.reading() as conn:
        return conn.execute(select(func.count()).select_from(instances)).scalar_one()


@contextmanager
def _bar(unit: str, what: str, total: int) -> Iterator:
    from tqdm import tqdm

    with tqdm(total=total, unit=unit, desc=what, file=sys.stderr) as bar:
        yield bar.update
