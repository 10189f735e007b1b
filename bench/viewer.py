"""What a web viewer waits for, Huren beside Orthanc: rendered images, thumbnails, frames, WADO-URI, metadata.

Run::

    .venv/bin/python -m bench.viewer            # a 3,000-instance CT study
    .venv/bin/python -m bench.viewer --quick    # 300 instances, fewer requests
    .venv/bin/python -m bench.viewer --only huren

Each server is started fresh (the starters of :mod:`bench.run`) and sent the
same generated CT study (512x512, 16-bit; :func:`bench.studies.ct_study`)
plus one slice of it compressed as JPEG 2000 lossless, by STOW-RS. Each row
is the median latency in milliseconds of ``--requests`` GETs after one warm-up
(lower is better), from one client on the same machine; rounds alternate the
servers. Thumbnails are timed on distinct slices, so every request is a cache
miss for the first round and shows the cost of making one. Orthanc's DICOMweb
plugin has no thumbnail resource: that cell is n/a.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import httpx
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, generate_uid

from bench import run, studies

ROWS = {
    "rendered": "rendered JPEG of one CT slice (/rendered)",
    "thumbnail": "thumbnail of one CT slice (/thumbnail), each a different slice",
    "frame_j2k": "one frame, stored J2K lossless, as explicit VR LE octet-stream",
    "wadouri": "WADO-URI JPEG of one CT slice",
    "metadata": "study metadata (JSON)",
}


ORTHANC_GDCM = "/usr/share/orthanc/plugins/libOrthancGdcm.so"  # Debian's orthanc-gdcm


class Orthanc(run.Orthanc):
    """Orthanc as :mod:`bench.run` configures it, with WADO-URI switched on."""

    def write_config(self) -> None:
        super().write_config()
        path = self.workdir / "orthanc.json"
        config = json.loads(path.read_text())
        config["DicomWeb"]["EnableWado"] = True
        config["DicomWeb"]["WadoRoot"] = "/wado"
        if Path(ORTHANC_GDCM).exists():  # Orthanc decodes JPEG 2000 only through this plugin
            config["Plugins"].append(ORTHANC_GDCM)
        path.write_text(json.dumps(config, indent=2))


SERVERS: dict[str, type[run.Server]] = {"huren": run.Huren, "orthanc": Orthanc}
FAILURES: list[str] = []  # requests a server could not answer, listed under the table


def corpus(folder: Path, thin: int) -> tuple[list[Path], Path]:
    """The CT study's files, and one slice of it recompressed as JPEG 2000 lossless."""
    files = studies.ct_study(folder / "ct", thin_slices=thin, thick_slices=60, seed=7)
    ds = dcmread(files[len(files) // 2])
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    j2k = folder / "j2k.dcm"
    ds.save_as(j2k, enforce_file_format=True)
    return files, j2k


def timed(client: httpx.Client, url: str, accept: str, params: dict[str, str] | None = None) -> float:
    """Seconds for one GET read to the end; raises on a non-200 answer."""
    if params:  # '/' kept literal: Orthanc does not decode a percent-encoded contentType
        url += "?" + urllib.parse.urlencode(params, safe="/")
    t0 = time.perf_counter()
    response = client.get(url, headers={"Accept": accept})
    elapsed = time.perf_counter() - t0
    if response.status_code != 200:
        raise RuntimeError(f"GET {response.url}: HTTP {response.status_code}: {response.content[:300]!r}")
    return elapsed


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000


def measure(server: run.Server, files: list[Path], j2k: Path, requests: int) -> dict[str, float]:
    """Median milliseconds per row against a started `server` holding nothing yet."""
    with run.http_client() as client:
        run.stow(client, server, run.multipart_bodies([*files, j2k], 50))
        headers = [dcmread(path, stop_before_pixels=True) for path in files[: requests + 2]]
        compressed = dcmread(j2k, stop_before_pixels=True)
        root = server.dicomweb

        def path(ds) -> str:
            return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"

        one = headers[0]
        results: dict[str, float] = {}
        for key, url, accept, params in (
            ("rendered", root + path(one) + "/rendered", "image/jpeg", None),
            ("frame_j2k", root + path(compressed) + "/frames/1",
             'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1', None),
            ("wadouri", f"http://{run.HOST}:{server.http_port}/wado", "image/jpeg",
             {"requestType": "WADO", "studyUID": one.StudyInstanceUID, "seriesUID": one.SeriesInstanceUID,
              "objectUID": one.SOPInstanceUID, "contentType": "image/jpeg"}),
            ("metadata", f"{root}/studies/{one.StudyInstanceUID}/metadata", "application/dicom+json", None),
        ):
            try:
                timed(client, url, accept, params)  # warm-up
            except RuntimeError as exc:  # left n/a in the table, said under it
                FAILURES.append(f"{server.name}, {ROWS[key]}: {str(exc)[:200]}")
                continue
            results[key] = median_ms([timed(client, url, accept, params) for _ in range(requests)])
        if isinstance(server, run.Huren):
            results["thumbnail"] = median_ms([timed(client, root + path(ds) + "/thumbnail", "image/jpeg")
                                              for ds in headers[1: requests + 1]])
        return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300 instances, 5 requests, 1 round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--only", choices=list(SERVERS), action="append")
    args = parser.parse_args(argv)
    thin = 240 if args.quick else 2940
    rounds, requests = (1, 5) if args.quick else (args.rounds, args.requests)
    names = args.only or [n for n in SERVERS if n != "orthanc" or Path(run.ORTHANC).exists()]
    samples: dict[str, dict[str, list[float]]] = {n: {k: [] for k in ROWS} for n in names}
    with tempfile.TemporaryDirectory(prefix="huren-viewer-bench-") as tmp:
        work = Path(tmp)
        run.log(f"generating a {thin + 60}-instance CT study")
        files, j2k = corpus(work, thin)
        try:
            for number in range(rounds):
                for name in names:
                    server = SERVERS[name](work / f"{name}-{number}")
                    run.log(f"round {number + 1}: {name}")
                    server.start()
                    try:
                        for key, value in measure(server, files, j2k, requests).items():
                            samples[name][key].append(value)
                    finally:
                        server.stop()
        finally:
            for server in list(run._RUNNING):
                server.stop()
    header = ["Row (ms, lower is better)", *names] + (["Huren/Orthanc"] if len(names) == 2 else [])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for key, label in ROWS.items():
        label = label if key != "metadata" else f"{label}, {thin + 61} instances"
        cells = [label, *(run.cell(samples[n][key]) for n in names)]
        if len(names) == 2:
            cells.append(run.ratio(samples["huren"][key], samples["orthanc"][key], "lower"))
        print("| " + " | ".join(cells) + " |")
    for failure in FAILURES:
        print(f"\n- n/a: {failure}")
    print(f"\n{run.versions()}" if "orthanc" in names else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
