"""OHIF, the web viewer radiologists use, in a real browser against ``huren serve`` (issue 10, part 8).

OHIF's built app (npm ``@ohif/app``'s ``dist/``, fetched into ``tests/viewer/ohif``
by ``tests/viewer/install.sh``, which ``.ci/run`` runs) is served by a small static server on its own 127.0.0.1
port, and Debian's Chromium, driven headless by ``tests/viewer/drive.mjs``
(playwright-core), opens a study in the viewer with a hospital's bearer token,
goes back to the study list and opens the CT and the ultrasound cine from there.
Twice: once with OHIF calling Huren (a folder and SQLite) straight from its own
origin (CORS, ``access.cors.origins``), once with the static server also passing
``/dicom-web`` on to Huren (S3 and PostgreSQL, no CORS), as a reverse proxy in
front of both would.

What is checked is what a radiologist sees: on the pixels of the screenshots,
the patients' names drawn in the list where the page says they are (one in
Chinese characters), the CT drawn with its window (lungs black, soft tissue
mid-grey, bone white), the MR, the ultrasound and Huren's series thumbnails
drawn (the MR stored as JPEG-LS and the cine as JPEG 2000, their frames handed
out as stored and decoded by OHIF); a search in Chinese characters leaving one
row; and that no DICOMweb request failed and the console stayed clean. The
screenshots are kept under the folder the test prints (``tests/viewer/artefacts/``,
ignored by git).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image
from pydicom import dcmread
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, UltrasoundMultiFrameImageStorage
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from bench.studies import Exam, ct_study, mr_study
from tests.conftest import ROOT, Huren, free_port, huren_config
from tests.factory import instance, write

VIEWER = ROOT / "tests" / "viewer"
OHIF = VIEWER / "ohif"
ARTEFACTS = VIEWER / "artefacts"
CHROMIUM = Path("/usr/bin/chromium")
HOSPITAL = {"id": "bj-a", "name": "北京甲医院", "ae_titles": ["MODALITY"], "level": "三级甲等", "region": "BJ"}
# One patient per study. The CT's name has an alphabetic and an ideographic group (ISO_IR 192).
CT_EXAM = Exam("WANG^XIAODONG=王^小东", "VIEW-CT-1", "20261130", "ACC-VIEW-CT")
MR_EXAM = Exam("MUELLER^HANS", "VIEW-MR-1", "20261129", "ACC-VIEW-MR")
# As many Chinese modalities send it: ideographs in the first group (OHIF lists only that one).
US_NAME = "李娜^Li Na"
# OHIF asks Huren for each series' thumbnail (PS3.18 §10.4.1.1.4) instead of drawing one from frames.
THUMBNAILS = "thumbnail"
US_ACCESSION = "ACC-VIEW-US"
# The names as OHIF's study list writes them (family, given).
LISTED = ["WANG, XIAODONG", "MUELLER, HANS", "李娜, Li Na"]
DRIVE_TIMEOUT_MS = 120_000

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and shutil.which("node") and (OHIF / "index.html").exists()
         and (VIEWER / "node_modules" / "playwright-core").exists()),
    reason="needs Debian's chromium, node, and tests/viewer set up (bash .ci/run installs all three)",
)


@dataclass
class Studies:
    """The studies' files, in send order, and the Study Instance UID of each."""

    files: list[list[Path]]
    ct: str
    mr: str
    us: str


def us_cine(folder: Path) -> Path:
    """A 24-frame 8-bit ultrasound cine loop: a sector with a beating ellipse (US Multi-frame)."""
    rows, columns, frames = 480, 640, 24
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    angle = np.arctan2(x - columns / 2, y + 40)
    radius = np.hypot(x - columns / 2, y + 40)
    sector = (np.abs(angle) < 0.6) & (radius < rows)
    cine = np.zeros((frames, rows, columns), dtype=np.uint8)
    for k in range(frames):
        beat = 1 + 0.15 * np.sin(2 * np.pi * k / frames)
        cavity = ((x - columns / 2) / (90 * beat)) ** 2 + ((y - 260) / (70 * beat)) ** 2 <= 1
        cine[k][sector] = (110 + 30 * np.sin(radius[sector] / 7 + k)).astype(np.uint8)
        cine[k][sector & cavity] = 15
    ds = instance(
        rows=rows, columns=columns, frames=frames, SOPClassUID=UltrasoundMultiFrameImageStorage,
        Modality="US", SpecificCharacterSet="ISO_IR 192", PatientName=US_NAME, PatientID="VIEW-US-1",
        AccessionNumber=US_ACCESSION, StudyDate="20261128", StudyDescription="US HEART",
        BodyPartExamined="HEART", BitsAllocated=8, BitsStored=8, HighBit=7,
        FrameTime="40", FrameIncrementPointer=0x00181063, PixelData=cine.tobytes(),
    )
    return write(ds, folder / "us.dcm")


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Studies:
    """A 50-slice 512x512 CT, a two-series MR and a 24-frame ultrasound cine, one patient each.

    The CT is uncompressed, the MR JPEG-LS and the cine JPEG 2000 lossless, as modalities send
    them: Huren keeps them so and hands their frames out as stored, for the browser to decode.
    """
    data = tmp_path_factory.mktemp("studies")
    ct = ct_study(data / "ct", thin_slices=50, thick_slices=0, exam=CT_EXAM, seed=10)
    mr = [compressed(path, JPEGLSLossless) for path in mr_study(data / "mr", sequences=2, slices=12,
                                                                   exam=MR_EXAM, seed=11)]
    us = [compressed(us_cine(data / "us"), JPEG2000Lossless)]
    uid = {name: str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
           for name, files in (("ct", ct), ("mr", mr), ("us", us))}
    return Studies([ct, mr, us], **uid)


def compressed(path: Path, syntax: UID) -> Path:
    """Re-encode the file at `path` in place in `syntax` (pydicom's encoders)."""
    ds = dcmread(path)
    ds.compress(syntax, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class Case:
    """One way of serving OHIF: Huren with the studies, the viewer's port and its DICOMweb root."""

    origin: str
    huren: Huren
    port: int

    @property
    def dicomweb(self) -> str:
        """Where OHIF calls: Huren itself, or the viewer's own origin that passes calls on."""
        if self.origin == "cross-origin":
            return self.huren.dicomweb
        return f"http://127.0.0.1:{self.port}/dicom-web"


@pytest.fixture(params=["cross-origin", "same-origin"])
def case(request: pytest.FixtureRequest, tmp_path: Path, studies: Studies) -> Iterator[Case]:
    """Cross-origin: a folder and SQLite, CORS open to the viewer's origin. Same origin: S3 and
    PostgreSQL, and no CORS at all (one origin needs none)."""
    port = free_port()
    if request.param == "cross-origin":
        config = huren_config(tmp_path, hospitals=[HOSPITAL],
                              access={"cors": {"origins": [f"http://127.0.0.1:{port}"]}})
    else:
        config = huren_config(tmp_path, hospitals=[HOSPITAL], storage=request.getfixturevalue("s3_storage"),
                              index_url=request.getfixturevalue("postgres_url"))
    server = Huren(tmp_path, config).start()
    try:
        for files in studies.files:
            sent = server.storescu(*files, calling="MODALITY", tool="dcmsend")  # as they are
            assert sent.returncode == 0, sent.stderr
        yield Case(request.param, server, port)
    finally:
        server.stop()


class SinglePageApp(StaticFiles):
    """OHIF's files; any other path is one of its routes (``/viewer``), answered with index.html."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as error:
            if error.status_code != 404:
                raise
            return await super().get_response("index.html", scope)


def viewer_app(dicomweb: str, huren_dicomweb: str | None) -> Starlette:
    """OHIF with its configuration pointed at `dicomweb`; with `huren_dicomweb`, ``/dicom-web``
    is passed on to Huren, Host header and all, so Huren's URLs name this origin."""
    setting = json.dumps({"dicomweb": dicomweb, "thumbnailRendering": THUMBNAILS})
    config = f"window.HUREN = {setting};\n" + (VIEWER / "app-config.js").read_text()

    async def app_config(request: Request) -> Response:
        return Response(config, media_type="text/javascript")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
        async with httpx.AsyncClient(timeout=60) as client:
            yield {"client": client}

    routes: list[BaseRoute] = [Route("/app-config.js", app_config)]
    if huren_dicomweb is not None:

        async def proxy(request: Request) -> Response:
            client: httpx.AsyncClient = request.state.client
            url = huren_dicomweb + request.url.path.removeprefix("/dicom-web")
            forwarded = client.build_request(
                request.method, httpx.URL(url, query=request.url.query.encode()),
                headers=[(k, v) for k, v in request.headers.items() if k.lower() != "content-length"],
                content=await request.body())
            answer = await client.send(forwarded, stream=True)
            headers = {k: v for k, v in answer.headers.items()
                       if k.lower() not in ("content-length", "transfer-encoding", "connection")}
            return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code, headers=headers,
                                     background=BackgroundTask(answer.aclose))

        routes.append(Route("/dicom-web/{path:path}", proxy, methods=["GET", "POST", "DELETE"]))
    routes.append(Mount("/", SinglePageApp(directory=OHIF)))
    return Starlette(routes=routes, lifespan=lifespan)


class Site:
    """An ASGI app served by uvicorn in a thread on 127.0.0.1:`port`."""

    def __init__(self, app: Starlette, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Site:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the viewer's server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def drive(job: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run tests/viewer/drive.mjs on `job`; its report, with the screenshots in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "job.json"
    path.write_text(json.dumps({**job, "out": str(out), "timeout": DRIVE_TIMEOUT_MS}))
    done = subprocess.run(["node", str(VIEWER / "drive.mjs"), str(path)], cwd=VIEWER,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return report


def grey(path: Path, box: dict[str, float] | None = None) -> np.ndarray:
    """A screenshot as grey levels 0-255, cropped to a box in CSS pixels (x, y, width, height)."""
    image = Image.open(path).convert("L")
    if box is not None:
        image = image.crop((round(box["x"]), round(box["y"]),
                            round(box["x"] + box["width"]), round(box["y"] + box["height"])))
    return np.asarray(image, dtype=np.float32)


def image_point(viewport: np.ndarray, shape: tuple[int, int], x: float, y: float) -> float:
    """The median grey around a point of an image of `shape` (rows, columns) drawn fitted and
    centred in `viewport`; `x`, `y` in [-1, 1] across its columns and down its rows, as
    bench.studies draws its phantoms."""
    height, width = viewport.shape
    rows, columns = shape
    scale = min(width / columns, height / rows)
    column = (width - scale * columns) / 2 + (x + 1) / 2 * columns * scale
    row = (height - scale * rows) / 2 + (y + 1) / 2 * rows * scale
    r, c = round(row), round(column)
    return float(np.median(viewport[r - 3 : r + 4, c - 3 : c + 4]))


def check_viewer(report: dict[str, Any], out: Path) -> None:
    """What a radiologist sees in the screenshots of one run of drive.mjs, and no failed request."""
    assert "error" not in report, f"{report['error']} (screenshot: {out / 'error.png'})"
    assert report["failed"] == [], report["failed"]
    assert report["pageErrors"] == [], report["pageErrors"]
    assert report["console"] == [], report["console"]

    # Every study's row, its patient's name drawn where the page says (text strokes on the
    # list's dark background: neither an empty cell nor a filled block).
    for name, box in report["names"].items():
        assert box is not None, f"{name} not in the study list"
        cell = grey(out / "list.png", box)
        ink = np.mean(np.abs(cell - np.median(cell)) > 60)
        assert 0.02 < ink < 0.6, f"{name}: {ink:.3f} of its cell differs from the background"

    # Searched for in Chinese characters (QIDO-RS PatientName=*李娜*, fuzzy), the US patient is
    # the one row left; where the MR's row was, nothing is drawn. (OHIF filters Huren's answer
    # again on the names it shows, the first group only: 王 would find the CT at Huren, but
    # OHIF would then drop "WANG, XIAODONG".)
    assert report["searches"] and all(search["matches"] == 1 for search in report["searches"]), report["searches"]
    found = grey(out / "search.png", report["found"])
    assert np.mean(np.abs(found - np.median(found)) > 60) > 0.02, "the patient found is not drawn"
    gone = grey(out / "search.png", report["names"][LISTED[1]])
    assert np.mean(np.abs(gone - np.median(gone)) > 60) < 0.005, "a patient not searched for is still listed"

    # The MR it opened on (window 600/1200): white matter grey, air black.
    mr = grey(out / "entry.png", report["viewports"]["entry"])
    assert image_point(mr, (256, 256), 0, 0) > 80 > 20 > image_point(mr, (256, 256), -0.9, -0.9)

    # The CT opened from the list, drawn with its first window (40/400 HU): air and lungs
    # black, soft tissue mid-grey, vertebra white. Unwindowed (0-4095 stored), all would be dark.
    ct = grey(out / "ct.png", report["viewports"]["ct"])
    air, lung = image_point(ct, (512, 512), 0, -0.9), image_point(ct, (512, 512), -0.33, 0.0)
    tissue, bone = image_point(ct, (512, 512), 0.65, 0.05), image_point(ct, (512, 512), 0, 0.4)
    assert air < 30 and lung < 30, (air, lung)
    assert 80 < tissue < 180, tissue
    assert bone > 220, bone

    # Each study's first series thumbnail, Huren's rendering of its middle image: not blank.
    for name in ("entry", "ct", "us"):
        box = report["thumbnails"][name]
        assert box is not None, f"no series thumbnail beside the {name} viewer"
        thumbnail = grey(out / f"{name}.png", box)
        assert np.percentile(thumbnail, 95) - np.percentile(thumbnail, 5) > 60, f"{name}: blank thumbnail"

    # The ultrasound cine: its sector drawn, the cavity in it dark, outside the sector black.
    us = grey(out / "us.png", report["viewports"]["us"])
    sector, cavity = image_point(us, (480, 640), 0, -0.4), image_point(us, (480, 640), 0, 0.08)
    outside = image_point(us, (480, 640), -0.95, -0.9)
    assert sector > 80 and cavity < 60 and outside < 20, (sector, cavity, outside)


def test_ohif_reads_huren(case: Case, studies: Studies) -> None:
    """OHIF lists Huren's studies by name and draws them, the CT windowed, from its own origin or Huren's."""
    # Access is enforced: every answer the browser gets below, it got with the token.
    assert httpx.get(case.huren.dicomweb + "/studies").status_code == 401
    token = case.huren.token(HOSPITAL["id"])
    proxied = None if case.origin == "cross-origin" else case.huren.dicomweb
    out = ARTEFACTS / case.origin
    shutil.rmtree(out, ignore_errors=True)
    print(f"screenshots: {out}")
    with Site(viewer_app(case.dicomweb, proxied), case.port) as site:
        report = drive({"app": site.url, "dicomweb": case.dicomweb, "token": token, "entry": studies.mr,
                        "names": LISTED, "open": [{"row": CT_EXAM.accession, "name": "ct"},
                                                  {"row": US_ACCESSION, "name": "us"}],
                        "search": {"text": "李娜", "finds": LISTED[2]}}, out)
    check_viewer(report, out)
    # Every study's pixel data came as frames; the compressed ones as stored (PS3.18 §8.7.3.5.2:
    # transfer-syntax=* in OHIF's Accept), decoded by OHIF in the browser.
    framed: dict[str, set[str]] = {}
    for r in report["requests"]:
        if "/frames/" in r["url"]:
            framed.setdefault(r["url"].split("/studies/")[1].split("/")[0], set()).add(r["type"])
    assert set(framed) == {studies.ct, studies.mr, studies.us}, framed
    assert all(JPEGLSLossless in kind for kind in framed[studies.mr]), framed[studies.mr]
    assert all(JPEG2000Lossless in kind for kind in framed[studies.us]), framed[studies.us]
