"""Person names (PN) normalised for matching.

A PN value has up to three component groups — alphabetic, ideographic and
phonetic (PS3.5 §6.2.1) — e.g. ``Wang^Xiaoming=王^小明=おう^しょうめい``. The index
keeps each group upper-cased with trailing empty components dropped; a query
without ``=`` matches any group, a query with ``=`` matches group by group.
"""

from __future__ import annotations

from pydicom.valuerep import PersonName


def normalise(value: str) -> str:
    """Upper-case one component group and drop trailing empty components and spaces."""
    return value.strip().rstrip("^ ").upper()


def groups(name: PersonName | str | None) -> tuple[str, str, str]:
    """Return the (alphabetic, ideographic, phonetic) groups of `name`, normalised."""
    if name is None:
        return ("", "", "")
    if isinstance(name, PersonName):
        parts = list(name.components)
    else:
        parts = str(name).split("=")
    parts = (parts + ["", "", ""])[:3]
    return (normalise(parts[0]), normalise(parts[1]), normalise(parts[2]))
