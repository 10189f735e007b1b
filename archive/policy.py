"""Who may see what: one sharing policy, applied in SQL by every door.

A hospital sees its own studies, other hospitals' studies that are
recognised for it (a passing exam item whose mark it accepts: levels,
alliances, the mark's scope, the source hospital's standing; see
:mod:`archive.guideline.marks`), and studies shared with it for a
consultation or referral until the share expires or is revoked. Admins see
everything; so does everyone while access is not configured (no hospitals,
no OIDC), which ``huren serve`` allows on a loopback address only.

The policy is a SQL condition on the ``studies`` table, so searches page and
count correctly and an invisible study answers exactly as an absent one.
"""

from __future__ import annotations

import datetime
import itertools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, ColumnElement, and_, bindparam, false, or_, select, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from archive.config import Config
from archive.guideline.marks import recognises, recognition_key
from archive.guideline.rules import RuleSet
from archive.index.schema import shares, studies


@dataclass(frozen=True)
class Caller:
    """Who is asking, on either door.

    `actor` names the credential (a token id, an OIDC subject, a calling AE
    title) for the audit trail; `hospital_id` is ``None`` for an admin
    without a hospital and for anyone while access is open.
    """

    door: str                      # "http", "dimse" or "cli"
    actor: str
    hospital_id: str | None = None
    admin: bool = False
    address: str | None = None

    @property
    def sees_everything(self) -> bool:
        return self.admin or self.hospital_id is None


#: Anyone, while access is not configured (and the command line).
OPEN = Caller("cli", "open")


def visible(config: Config, caller: Caller, today: datetime.date | None = None) -> ColumnElement[bool]:
    """The condition on ``studies`` that selects the studies `caller` may see."""
    asker_id = caller.hospital_id
    if caller.sees_everything or asker_id is None:  # the second test only narrows the type
        return true()
    today = today or datetime.date.today()
    key = (id(config), asker_id, today)
    known = _remembered.get(key)
    if known is not None and known[1] is config.rule_sets:
        return known[2]
    condition = _condition(config, asker_id, today, f"{asker_id}@{today}#{next(_serial)}")
    if len(_remembered) >= _REMEMBERED:
        _remembered.clear()  # yesterday's and old configurations' entries
    _remembered[key] = (config, config.rule_sets, condition)
    return condition


# Conditions by (configuration, asker, day). Deciding which marks a hospital accepts takes
# ``recognises`` for every hospital and scope (400 calls for 100 hospitals), and building the condition
# as long again: more than a search by UID. Yet both change only with the configuration (never edited
# in place) and the day. Each entry holds its configuration, so that id() is not reused while it is
# here, and the rule sets it saw, which config_with_rule_sets sets in place.
_remembered: dict[tuple[int, str, datetime.date], tuple[Config, tuple[RuleSet, ...], ColumnElement[bool]]] = {}
_REMEMBERED = 1024  # entries; a new day needs one per hospital
_serial = itertools.count(1)


def _condition(config: Config, asker_id: str, today: datetime.date, name: str) -> ColumnElement[bool]:
    """:func:`visible` for a hospital, decided afresh; `name` is unique to it."""
    # The time shares must outlive is read as each query runs, so the condition can be kept.
    now = bindparam(None, callable_=lambda: datetime.datetime.now(datetime.UTC), type_=shares.c.expires_at.type)
    # A hospital's live shares are few: both engines read them once per query, then look each study up.
    shared = select(shares.c.study_pk).where(
        shares.c.hospital_id == asker_id, shares.c.revoked_at.is_(None), shares.c.expires_at > now,
    )
    # Both engines test the terms in this order, study by study: cheapest and likeliest first.
    fixed = _Fixed(name, or_(studies.c.hospital_id == asker_id, _recognised(config, asker_id, today)))
    return or_(fixed, studies.c.pk.in_(shared))


class _Fixed(ColumnElement[bool]):
    """A condition of constants that stays the same all day, known to SQLAlchemy by its `name` alone.

    Its lists of hospitals and marks run to hundreds of values. Written as
    ordinary expressions, each query would walk them to make its cache key
    and render them again into the SQL, half a millisecond a search: as much
    as a search by UID takes. Named, a statement holding it is compiled once
    and then found in SQLAlchemy's cache by a short key.
    """

    inherit_cache = False
    _traverse_internals = [("name", InternalTraversal.dp_string)]
    type = Boolean()

    def __init__(self, name: str, condition: ColumnElement[bool]) -> None:
        self.name = name
        self.condition = condition

    def self_group(self, against: Any = None) -> ColumnElement[Any]:
        # A predicate already, and grouped when compiled: not a boolean value that SQLite would compare with 1.
        return self


@compiles(_Fixed)
def _compile_fixed(element: _Fixed, compiler: SQLCompiler, **kw: Any) -> str:
    # Constants in the text, so that the compiled statement needs no values to run.
    return "(" + compiler.process(element.condition, **{**kw, "literal_binds": True}) + ")"


def _recognised(config: Config, asker_id: str, today: datetime.date) -> ColumnElement[bool]:
    """Studies with a passing, marked item that `asker_id` accepts.

    The acceptance rules are decided here, in Python, over the (few) configured
    hospitals and scopes: the SQL only lists which source hospitals' marks count.
    """
    asker = config.hospital(asker_id)
    if asker is None:
        return false()
    accepted: dict[tuple[str, str], list[str]] = {}  # (rule set, mark): sources
    for rule_set in config.rule_sets:
        for scope in rule_set.scopes:
            for source in config.hospitals:
                if source.id != asker.id and recognises(rule_set, asker, source, scope.code, today):
                    accepted.setdefault((rule_set.id, scope.code), []).append(source.id)
    # As few lists as can be: PostgreSQL plans a list of (source, rule set, mark) rows as one OR
    # branch per row, which took it longer than the query; marks accepted from the same sources
    # (a hospital's band for both JJJHR and its city's mark) share one list of sources.
    marks: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (rule_set_id, mark), sources in accepted.items():
        marks.setdefault((rule_set_id, tuple(sources)), []).append(mark)
    if not marks:
        return false()
    # Tested on the study row itself (studies.recognition), with no look-up of item results per study:
    # in both engines such a look-up cost more than the rest of a search.
    return or_(*(and_(studies.c.hospital_id.in_(sources), or_(*(
        studies.c.recognition.contains(recognition_key(rule_set_id, mark), autoescape=True) for mark in group)))
                 for (rule_set_id, sources), group in marks.items()))
