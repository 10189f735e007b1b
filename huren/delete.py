"""``huren delete --study UID [--series UID] [--instance UID] --yes``: delete from the archive.

Works on the index and blob store the configuration names, whether or not a
server runs, and whatever ``delete.enabled`` says (that key governs DICOMweb
only): whoever runs it can read the configuration, which holds the index's
credentials. Without ``--yes`` it only says what it would delete. It first
finishes any deletion a crash interrupted (:meth:`archive.delete.Deleter.resume`).
Exit status 0 when deleted (or, without ``--yes``, when there is something to
delete), 1 when nothing matches, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy import func, select

from archive.audit import AuditEvent, AuditTrail
from archive.config import Config
from archive.delete import Deleter, NothingToDelete, StillQueued
from archive.index.database import Database
from archive.index.schema import instances
from archive.policy import Caller
from archive.retrieve import _scoped
from archive.storage import open_store
from huren.tokens import _user


def add_parser(commands: Any) -> None:
    """Add ``delete`` to `commands` (the ``huren`` subparsers)."""
    command = commands.add_parser("delete", help="delete a study, series or instance: index rows and objects")
    command.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")
    command.add_argument("--series", metavar="UID", help="only this series of the study")
    command.add_argument("--instance", metavar="UID", help="only this instance (needs --series)")
    command.add_argument("--yes", action="store_true", help="delete; without it, only say what would go")
    command.add_argument("--config", default="conf/huren.yaml", help="YAML configuration file")


def run(args: argparse.Namespace, config: Config) -> int:
    """Run ``huren delete``; returns the exit status."""
    if args.instance and not args.series:
        print("huren: --instance needs --series (the instance's Series Instance UID)", file=sys.stderr)
        return 2
    db = Database.open(config.index)
    try:
        db.migrate()
        what = " ".join(filter(None, [f"study {args.study}", args.series and f"series {args.series}",
                                      args.instance and f"instance {args.instance}"]))
        if not args.yes:
            count = _count(db, args.study, args.series, args.instance)
            if not count:
                print(f"huren: nothing to delete: no {what} in the archive", file=sys.stderr)
                return 1
            print(f"huren: would delete {count} instance(s) of {what}; run again with --yes to delete",
                  file=sys.stderr)
            return 0
        where = {"study_uid": args.study, "series_uid": args.series, "sop_uid": args.instance}
        trail = AuditTrail(db, config.audit.syslog, config.dicom.ae_title)
        who = Caller("cli", _user(), admin=True)
        try:
            deleted = Deleter(db, open_store(config)).delete(args.study, args.series, args.instance)
        except (NothingToDelete, StillQueued) as exc:
            trail.record(AuditEvent("delete", "failure", who, detail=str(exc), **where))
            message = f"no {what} in the archive" if isinstance(exc, NothingToDelete) else str(exc)
            print(f"huren: nothing deleted: {message}", file=sys.stderr)
            return 1
        else:
            trail.record(AuditEvent("delete", "success", who, detail=f"{deleted.instances} instance(s)", **where))
        finally:
            trail.close()
        gone = "; the study is gone" if deleted.study_removed else ""
        print(f"huren: deleted {deleted.instances} instance(s) of {what}{gone}", file=sys.stderr)
        return 0
    finally:
        db.dispose()


def _count(db: Database, study_uid: str, series_uid: str | None, sop_uid: str | None) -> int:
    matching = _scoped([instances.c.pk], study_uid, series_uid, sop_uid, None).subquery()
    with db.reading() as conn:
        return conn.execute(select(func.count()).select_from(matching)).scalar_one()
