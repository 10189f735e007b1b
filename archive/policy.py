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
from dataclasses import dataclass

from sqlalchemy import ColumnElement, exists, false, or_, select, true, tuple_

from archive.config import Config
from archive.guideline.marks import recognises
from archive.index.schema import item_results, shares, studies


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
    now = datetime.datetime.now(datetime.UTC)
    shared = exists().where(
        shares.c.study_pk == studies.c.pk, shares.c.hospital_id == asker_id,
        shares.c.revoked_at.is_(None), shares.c.expires_at > now,
    )
    return or_(studies.c.hospital_id == asker_id, shared, _recognised(config, asker_id, today))


def _recognised(config: Config, asker_id: str, today: datetime.date) -> ColumnElement[bool]:
    """Studies with a passing, marked item that `asker_id` accepts.

    The acceptance rules are decided here, in Python, over the (few) configured
    hospitals and scopes: the SQL only lists which (source hospital, rule set,
    mark) triples count.
    """
    asker = config.hospital(asker_id)
    if asker is None:
        return false()
    accepted = [
        (source.id, rule_set.id, scope.code)
        for rule_set in config.rule_sets for source in config.hospitals for scope in rule_set.scopes
        if source.id != asker.id and recognises(rule_set, asker, source, scope.code, today)
    ]
    if not accepted:
        return false()
    return exists(select(item_results.c.pk).where(
        item_results.c.study_pk == studies.c.pk, item_results.c.verdict == "pass",
        tuple_(item_results.c.hospital_id, item_results.c.rule_set, item_results.c.mark).in_(accepted),
    ))
