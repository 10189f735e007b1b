"""``workers: N``: N processes serve DICOM and HTTP on the same ports, supervised by one parent."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient

from tests import factory
from tests.conftest import Huren, dcmtk, dcmtk_env, huren_config


def children(pid: int) -> set[int]:
    """The PIDs of the live processes whose parent is `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Fields after the command name, which is in parentheses: state, ppid, ...
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                found.add(int(entry.name))
    return found


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: it only waits for its parent to collect it.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[Huren]:
    server = Huren(tmp_path, huren_config(tmp_path, workers=2)).start()
    assert server.process is not None
    assert wait_for(lambda: len(children(server.process.pid)) == 2)
    yield server
    server.stop()


def test_parallel_senders_are_all_archived(two_workers: Huren, tmp_path: Path) -> None:
    study = factory.instance().StudyInstanceUID
    batches = []
    for b in range(4):
        files = [factory.write(factory.instance(StudyInstanceUID=study, InstanceNumber=i + 1),
                               tmp_path / f"batch{b}" / f"{i}.dcm") for i in range(15)]
        batches.append(files)
    stowed = [factory.instance(StudyInstanceUID=study) for _ in range(10)]
    web = DICOMwebClient(two_workers.dicomweb)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        sends = [pool.submit(two_workers.storescu, *files) for files in batches]
        stow = pool.submit(web.store_instances, stowed)
        for send in sends:
            assert send.result().returncode == 0, send.result().stderr
        stow.result()
    found = web.search_for_instances(study_instance_uid=study)
    assert len(found) == 4 * 15 + 10


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_a_dead_worker_is_replaced(two_workers: Huren, how: signal.Signals) -> None:
    """Killed or stopped on its own, a worker is replaced, and the sockets it shared stay open:
    every connection below lands on a worker, the new one or the other."""
    assert two_workers.process is not None
    parent = two_workers.process.pid
    victim = min(children(parent))
    os.kill(victim, how)
    assert wait_for(lambda: victim not in children(parent) and len(children(parent)) == 2)
    for _ in range(6):
        echo = subprocess.run([dcmtk("echoscu"), "-aec", two_workers.ae_title, "127.0.0.1",
                               str(two_workers.dicom_port)], env=dcmtk_env(), capture_output=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
        assert httpx.get(two_workers.url + "/health", timeout=5).status_code == 200


def test_sigterm_stops_every_worker(two_workers: Huren) -> None:
    assert two_workers.process is not None
    workers = children(two_workers.process.pid)
    two_workers.process.send_signal(signal.SIGTERM)
    assert two_workers.process.wait(20) == 0
    assert wait_for(lambda: not any(alive(pid) for pid in workers))


def test_workers_stop_when_the_parent_is_killed(two_workers: Huren) -> None:
    assert two_workers.process is not None
    workers = children(two_workers.process.pid)
    two_workers.process.kill()
    two_workers.process.wait(10)
    assert wait_for(lambda: not any(alive(pid) for pid in workers))
    with pytest.raises(httpx.HTTPError):
        httpx.get(two_workers.url + "/health", timeout=2)


def test_auto_serves_from_one_worker_per_core(tmp_path: Path) -> None:
    """The default, ``workers: auto``: one worker per core this process may run on
    (a single core: the serving process itself, no fork)."""
    config = huren_config(tmp_path)
    del config["workers"]
    server = Huren(tmp_path, config).start()
    try:
        assert server.process is not None
        cores = min(64, len(os.sched_getaffinity(0)))
        expected = cores if cores > 1 else 0
        assert wait_for(lambda: len(children(server.process.pid)) == expected)
        assert server.storescu(factory.write(factory.instance(), tmp_path / "one.dcm")).returncode == 0
    finally:
        server.stop()
