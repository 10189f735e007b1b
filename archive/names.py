"""Person names (PN) normalised for matching.

A PN value has up to three component groups — alphabetic, ideographic and
phonetic (PS3.5 §6.2.1) — e.g. ``Wang^Xiaoming=王^小明=おう^しょうめい``. The index
keeps each group upper-cased with trailing empty components dropped; a query
without ``=`` matches any group, a query with ``=`` matches group by group.

For fuzzy matching (QIDO-RS ``fuzzymatching=true``) the index also keeps a
name's Hanyu Pinyin, made from its Han characters with pypinyin at ingest:
``王^小东`` is kept as ``WANG^XIAODONG`` whichever group the sender put it in,
so ``PatientName=wang*`` finds it with an indexed ``LIKE``.
"""

from __future__ import annotations

import functools
import re

from pydicom.valuerep import PersonName
from pypinyin import lazy_pinyin

# Surnames whose reading as a surname is not pypinyin's most common reading of
# the character (曾 is "zeng" as a surname, "ceng" elsewhere).
SURNAME_READINGS = {
    "曾": "ZENG", "单": "SHAN", "解": "XIE", "仇": "QIU", "区": "OU", "朴": "PIAO", "查": "ZHA",
    "盖": "GE", "缪": "MIAO", "覃": "QIN", "尉": "YU", "乐": "YUE", "召": "SHAO", "繁": "PO",
    "员": "YUN", "种": "CHONG", "秘": "BI", "长孙": "ZHANGSUN", "尉迟": "YUCHI", "万俟": "MOQI",
}
# Two-character surnames: in a name written without ``^`` they are the family name.
COMPOUND_SURNAMES = frozenset((
    "欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "尉迟", "公孙", "慕容", "令狐", "夏侯", "长孙",
    "宇文", "司徒", "端木", "轩辕", "独孤", "南宫", "万俟", "闻人", "澹台", "申屠", "呼延", "钟离",
))
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
_HAN_RUN = re.compile(_HAN.pattern + "+")


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


def pinyin(name: PersonName | str | None) -> str:
    """The romanised form of `name` that fuzzy matching compares: its Hanyu Pinyin.

    The first group written in Han characters is spelled: upper case, without
    tones, syllables of a component run together, ``ü`` as ``V`` (pypinyin's
    spelling): ``王^小东`` gives ``WANG^XIAODONG``. A name written without
    ``^`` (``王小东``, as many modalities send it) is split after its surname:
    the first character, or two for a compound surname. A name without Han
    characters is kept as :func:`query_pinyin` reads a query (``Wang^Xiao-Dong``
    gives ``WANG^XIAODONG``), so that one column serves every name.
    """
    found = groups(name)
    ideographic = next((group for group in found if _HAN.search(group)), "")
    if not ideographic:
        return query_pinyin(next((group for group in found if group), ""))
    components = ideographic.split("^")
    if len(components) == 1 and len(ideographic) > 1 and " " not in ideographic:
        cut = 2 if ideographic[:2] in COMPOUND_SURNAMES else 1
        components = [ideographic[:cut], ideographic[cut:]]
    family = components[0].strip()
    spelled = [SURNAME_READINGS.get(family) or _spell(family)]
    spelled += [_spell(component) for component in components[1:]]
    return normalise("^".join(spelled))


def query_pinyin(value: str) -> str:
    """A fuzzy query value in the form :func:`pinyin` keeps.

    Han characters are spelled (a homophone finds the name: ``王晓东`` finds
    ``王小东``); Latin letters are upper-cased, with the spellings of ``ü``
    (``LYU``, ``LU:``, ``LÜ``) as ``V`` and spaces, hyphens and apostrophes
    inside a component dropped. ``Wang Xiaodong`` (one space, no ``^``) is
    read as family name, then given name. Wildcards stay.
    """
    value = value.strip()
    if "^" not in value and value.count(" ") == 1:
        value = value.replace(" ", "^")
    if _HAN.search(value):
        if "^" not in value and "*" not in value and "?" not in value:
            return pinyin(value)
        if "^" not in value:
            # With wildcards (*王小东*, as a viewer sends what was typed) where the surname ends is
            # unknown: each Han run's syllables may have anything between them, ^ included.
            value = _HAN_RUN.sub(lambda run: "*".join(lazy_pinyin(run.group())), value)
            return normalise(re.sub(r"\*+", "*", value.upper()))
        family, _, given = value.partition("^")
        value = "^".join(filter(None, (SURNAME_READINGS.get(family) or _spell(family), _spell(given))))
    value = re.sub(r"[\s\-']", "", value.upper())
    value = re.sub(r"(?<=[LN])(YU|U:|Ü)", "V", value)
    return normalise(value)


@functools.lru_cache(maxsize=4096)
def _spell(text: str) -> str:
    # Characters that are not Han (wildcards, Latin letters) come back as they are.
    # Cached: every instance of a study spells its patient's name again.
    return "".join(lazy_pinyin(text.strip())).upper()
