"""One verdict for a study judged by several rule sets."""

from __future__ import annotations

VERDICTS = ("pass", "fail", "not_applicable")


def summary_verdict(verdicts: list[str]) -> str | None:
    """Pass if any rule set passes it, else fail if any fails it; ``None`` if never judged."""
    for verdict in VERDICTS:
        if verdict in verdicts:
            return verdict
    return None
