"""bench.load's own arithmetic: C-STORE times read from a storescu log, and percentiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import percentile, store_log

# The shape of storescu 3.6.7's output with bench.load's --log-config (seconds.ms.us).
LOG = """\
1796664301.773.521 INFO: checking input files ...
1796664301.787.788 INFO: Association Accepted (Max Send PDV: 131060)
1796664301.787.811 INFO: Sending file: /tmp/ct/0001.dcm
1796664301.788.043 INFO: Sending Store Request (MsgID 1, CT)
XMIT: .....
1796664301.812.469 INFO: Received Store Response (Success)
1796664301.812.522 INFO: Sending file: /tmp/ct/0002.dcm
1796664301.812.687 INFO: Sending Store Request (MsgID 2, CT)
XMIT: .....
1796664302.825.027 INFO: Received Store Response (Success)
1796664302.860.173 INFO: Releasing Association
"""


def test_store_log_times_each_request_to_its_response(tmp_path: Path) -> None:
    path = tmp_path / "storescu.log"
    path.write_text(LOG)
    times, problems = store_log(path, 2)
    assert problems == []
    assert times == pytest.approx([0.024426, 1.01234], abs=1e-6)


def test_store_log_reports_failures_and_missing_responses(tmp_path: Path) -> None:
    path = tmp_path / "storescu.log"
    path.write_text(LOG.replace("1796664302.825.027 INFO: Received Store Response (Success)",
                                "1796664302.825.027 INFO: Received Store Response (Failed: 0xa700)")
                    + "1796664302.900.000 ERROR: Association Abort\n")
    times, problems = store_log(path, 3)
    assert len(times) == 2
    assert problems == ["Received Store Response (Failed: 0xa700)", "Association Abort",
                        "2 C-STORE responses for 3 files"]


@pytest.mark.parametrize(("q", "expected"), [(50, 50), (99, 99), (100, 100), (1, 1), (0.5, 1)])
def test_percentile_is_nearest_rank(q: float, expected: int) -> None:
    assert percentile(list(range(100, 0, -1)), q) == expected


def test_percentile_of_few_samples_is_the_largest_for_p99() -> None:
    assert percentile([3.0, 1.0, 2.0], 99) == 3.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
