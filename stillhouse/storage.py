"""The artifact store: where uploads (``files/<file_id>``), job checkpoints (``jobs/<job_id>/work/<name>.pt``) and
published artifacts (``jobs/<job_id>/artifacts/attempt-<n>/<name>``) live, under server-generated keys only (client
names are never paths or keys).

One interface, ``ArtifactStore``, two implementations, picked by ``get_store(settings)``:

- ``LocalStore`` (the embedded default): a directory, ``STILLHOUSE_DATA_DIR``; every API and worker process must
  share it.
- ``S3Store`` (``STILLHOUSE_ARTIFACT_URL=s3://bucket/prefix``): any S3-compatible object store through boto3, so
  workers on other machines share nothing but the database, the broker and the bucket. Transfers stream both
  ways: uploads are multipart (``s3_part_bytes`` parts, ``s3_max_concurrency`` at once) read from a file, downloads
  ranged GETs written to a file or read a chunk at a time; memory stays flat whatever the object's size.

Both keep what one process needs locally under its own ``data_dir``: upload temp files (``tmp/``), a job's
working folder (``jobs/<job_id>/work``, mirrored to the store by ``stillhouse.jobs.scratch``) and, with S3,
a bounded cache of downloaded objects (``cache/<key>``, ``cache_max_bytes``, least recently used evicted first).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from stillhouse.settings import Settings, get_settings

log = logging.getLogger("stillhouse.storage")

MTIME_META = "stillhouse-mtime-ns"  # S3 user metadata: the source file's mtime (ns) when it was uploaded


@dataclass(frozen=True)
class ObjectInfo:
    """A stored object: its ``key`` (relative to the store), ``size`` (bytes), ``mtime`` (seconds since the epoch,
    the store's last-modified time) and ``source_mtime_ns`` (the uploaded file's own mtime, when recorded)."""

    key: str
    size: int
    mtime: float
    source_mtime_ns: int | None = None


class StoreError(RuntimeError):
    """The store could not be reached or refused a request (S3 credentials, bucket, network); the message says which."""


class ArtifactStore(ABC):
    """Bytes under server-generated keys (relative POSIX paths such as ``files/file_ab12``), plus the process's local
    scratch under ``root`` (``data_dir``)."""

    #: True when the store's bytes are files of ``root`` itself (the local directory store).
    is_local: bool = False

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.root = self.settings.data_dir.resolve()

    # -- keys ----------------------------------------------------------------------------------
    @staticmethod
    def file_key(file_id: str) -> str:
        """Key of an uploaded file."""
        return f"files/{file_id}"

    @staticmethod
    def job_key(job_id: str) -> str:
        """Key of a job's folder (``work/`` with checkpoints, ``artifacts/`` once published)."""
        return f"jobs/{job_id}"

    @staticmethod
    def check_key(key: str) -> str:
        """``key`` if it is a relative path without ``..`` or empty parts; raises ValueError otherwise."""
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\x00" in key:
            raise ValueError(f"storage key {key!r} escapes the store")
        return key

    def local(self, key: str) -> Path:
        """The path of ``key`` under this process's ``root`` (the stored file for ``LocalStore``; scratch or cache
        space for others). Raises ValueError if the key would leave ``root``."""
        p = (self.root / self.check_key(key)).resolve()
        if self.root not in p.parents:
            raise ValueError(f"storage key {key!r} escapes the store")
        return p

    # -- local scratch ---------------------------------------------------------------------------
    def temp_path(self) -> Path:
        """A fresh path under ``tmp/`` for an upload in progress (same filesystem as ``root``)."""
        d = self.root / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"upload-{uuid.uuid4().hex}"

    def sweep_temp(self, older_than_s: float = 3600.0) -> int:
        """Remove upload temp files (``tmp/upload-*``) not modified for ``older_than_s`` seconds: those of uploads
        cut by a killed API process (every other failure removes its own at once). An upload in progress
        writes at least every chunk, so it is never that idle. Returns how many were removed."""
        removed = 0
        cutoff = time.time() - older_than_s
        for p in (self.root / "tmp").glob("upload-*"):
            try:
                if p.is_file() and p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:  # removed meanwhile by its own request or another process
                continue
        return removed

    def scratch_dir(self, job_id: str) -> Path:
        """The local working folder of a job on this machine (``<data_dir>/jobs/<id>/work``; not created)."""
        return self.local(f"{self.job_key(job_id)}/work")

    # -- the store's bytes --------------------------------------------------------------------------
    @abstractmethod
    def publish(self, src: Path, key: str) -> None:
        """Store the local file ``src`` as ``key``; ``src`` is gone afterwards (moved into the store or its cache)."""

    @abstractmethod
    def put(self, src: Path | BinaryIO, key: str, *, source_mtime_ns: int | None = None) -> None:
        """Store a copy of ``src`` (a path, or a binary file open for reading) as ``key``, replacing what was there."""

    @abstractmethod
    def fetch(self, key: str, dst: Path) -> None:
        """Write ``key``'s bytes to the local file ``dst`` (atomically: a temp file renamed). Raises FileNotFoundError."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and times of ``key``, or None when absent."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """The objects whose keys start with ``prefix/`` (recursively), in key order."""

    @abstractmethod
    def open(self, key: str, start: int = 0) -> BinaryIO:
        """A binary stream of ``key`` from byte ``start`` to its end (read it in chunks; close it). Raises FileNotFoundError."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object ``key`` and everything under ``key/`` (missing is fine), and this process's local copies."""

    @abstractmethod
    def local_path(self, key: str, *, sha256: str | None = None) -> Path:
        """A local file holding ``key``'s bytes, to read now (the stored file itself, or a cached download checked
        against ``sha256`` when given). Raises FileNotFoundError, or StoreError when the bytes do not match."""

    def job_input(self, key: str, workdir: Path, *, sha256: str | None = None) -> Path:
        """A local file of ``key`` that stays readable for the whole job: the stored file itself for a local store,
        else a hard link (or copy) of the cached download inside ``workdir/inputs`` (so evicting the cache entry while
        the job runs cannot take it away)."""
        return self.local_path(key, sha256=sha256)

    def check(self) -> str | None:
        """None when the store is usable, else what is wrong (for /readyz)."""
        return None


class LocalStore(ArtifactStore):
    """The store as a directory: ``data_dir/<key>``. Every process must see the same directory."""

    is_local = True

    def path(self, key: str) -> Path:
        """The absolute path of ``key``. Raises ValueError if the key would leave the store."""
        return self.local(key)

    def publish(self, src: Path, key: str) -> None:
        """Atomically move ``src`` (on the same filesystem) to ``key``."""
        dst = self.path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)

    def put(self, src: Path | BinaryIO, key: str, *, source_mtime_ns: int | None = None) -> None:
        """Copy ``src`` to ``key`` through a temp file renamed into place."""
        dst = self.path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
        try:
            if isinstance(src, Path):
                shutil.copyfile(src, tmp)
            else:
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, 1024 * 1024)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)

    def fetch(self, key: str, dst: Path) -> None:
        """Copy ``key`` to ``dst``. Raises FileNotFoundError."""
        src = self.path(key)
        if not src.is_file():
            raise FileNotFoundError(key)
        if src == Path(dst).resolve():
            return
        self._copy_atomic(src, Path(dst))

    @staticmethod
    def _copy_atomic(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and mtime of the file ``key``; None when it is not a file."""
        try:
            st = self.path(key).stat()
        except FileNotFoundError:
            return None
        if not self.path(key).is_file():
            return None
        return ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime, source_mtime_ns=st.st_mtime_ns)

    def list(self, prefix: str) -> list[ObjectInfo]:
        """The files under ``prefix/``."""
        base = self.path(prefix)
        if not base.is_dir():
            return []
        out = []
        for p in sorted(base.rglob("*")):
            if p.is_file():
                st = p.stat()
                out.append(ObjectInfo(key=p.relative_to(self.root).as_posix(), size=st.st_size, mtime=st.st_mtime,
                                      source_mtime_ns=st.st_mtime_ns))
        return out

    def open(self, key: str, start: int = 0) -> BinaryIO:
        """The file ``key`` opened for reading at ``start``. Raises FileNotFoundError."""
        f = open(self.path(key), "rb")
        f.seek(start)
        return f

    def delete(self, key: str) -> None:
        """Remove a stored file or directory (missing is fine)."""
        p = self.path(key)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    def local_path(self, key: str, *, sha256: str | None = None) -> Path:
        """The stored file itself (it is local). Raises FileNotFoundError when missing."""
        p = self.path(key)
        if not p.is_file():
            raise FileNotFoundError(key)
        return p

    def check(self) -> str | None:
        """None when ``data_dir`` is a writable directory."""
        return None if os.access(self.root, os.W_OK) else f"{self.root} is not writable"


class S3Store(ArtifactStore):
    """The store in an S3-compatible bucket (``artifact_url`` = ``s3://bucket/prefix``), through boto3.

    Object keys are ``<prefix>/<key>``. Uploads of files larger than one part are multipart uploads read from the
    file a part at a time; downloads to files are ranged GETs in parallel; ``open`` streams one ranged GET. A boto3
    client is thread-safe and shared by all threads of a process. Credentials: ``s3_access_key_id`` /
    ``s3_secret_access_key``, else boto3's own chain (``AWS_*`` variables, ``~/.aws``, an instance role).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self.bucket, self.prefix = self.settings.s3_bucket_prefix
        self.client = _s3_client(self.settings.s3_endpoint_url, self.settings.s3_region, self.settings.s3_access_key_id,
                                 self.settings.s3_secret_access_key.get_secret_value() if self.settings.s3_secret_access_key else None,
                                 self.settings.s3_addressing_style)
        from boto3.s3.transfer import TransferConfig

        part = int(self.settings.s3_part_bytes)
        self.transfer = TransferConfig(multipart_threshold=part, multipart_chunksize=part,
                                       max_concurrency=self.settings.s3_max_concurrency, io_chunksize=256 * 1024)
        self.cache_root = self.root / "cache"
        self.cache_max_bytes = int(self.settings.cache_max_bytes)

    def _k(self, key: str) -> str:
        self.check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _unk(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _errors(self, what: str):
        return _S3Errors(what, self.bucket)

    # -- bytes ---------------------------------------------------------------------------------
    def publish(self, src: Path, key: str) -> None:
        """Upload ``src`` as ``key`` (multipart when larger than one part), then move it into this process's cache."""
        self.put(src, key)
        try:
            self._cache_insert(Path(src), key)
        except OSError:
            Path(src).unlink(missing_ok=True)

    def put(self, src: Path | BinaryIO, key: str, *, source_mtime_ns: int | None = None) -> None:
        """Upload a file (path or open binary file) as ``key``; ``source_mtime_ns`` is kept as object metadata."""
        extra = {"Metadata": {MTIME_META: str(source_mtime_ns)}} if source_mtime_ns is not None else None
        with self._errors(f"upload {key}"):
            if isinstance(src, Path):
                self.client.upload_file(str(src), self.bucket, self._k(key), ExtraArgs=extra, Config=self.transfer)
            else:
                self.client.upload_fileobj(src, self.bucket, self._k(key), ExtraArgs=extra, Config=self.transfer)

    def fetch(self, key: str, dst: Path) -> None:
        """Download ``key`` to ``dst`` (parallel ranged GETs into a temp file, then renamed). Raises FileNotFoundError."""
        dst = Path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
        try:
            with self._errors(f"download {key}"):
                self.client.download_file(self.bucket, self._k(key), str(tmp), Config=self.transfer)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)

    def stat(self, key: str) -> ObjectInfo | None:
        """HEAD of ``key``; None when absent."""
        try:
            with self._errors(f"stat {key}"):
                h = self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except FileNotFoundError:
            return None
        meta = (h.get("Metadata") or {}).get(MTIME_META)
        return ObjectInfo(key=key, size=int(h["ContentLength"]), mtime=h["LastModified"].timestamp(),
                          source_mtime_ns=int(meta) if meta and meta.isdigit() else None)

    def list(self, prefix: str) -> list[ObjectInfo]:
        """The objects under ``prefix/`` (metadata not included: ``source_mtime_ns`` is None; use ``stat``)."""
        out = []
        with self._errors(f"list {prefix}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._k(prefix) + "/")
            for page in pages:
                for o in page.get("Contents", []):
                    out.append(ObjectInfo(key=self._unk(o["Key"]), size=int(o["Size"]), mtime=o["LastModified"].timestamp()))
        return sorted(out, key=lambda o: o.key)

    def open(self, key: str, start: int = 0) -> BinaryIO:
        """One GET of ``key`` from ``start`` (``Range: bytes=start-``) as a stream. Raises FileNotFoundError."""
        kw = {"Range": f"bytes={start}-"} if start else {}
        with self._errors(f"read {key}"):
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key), **kw)["Body"]

    def delete(self, key: str) -> None:
        """Delete the object ``key`` and all under ``key/`` (batches of 1000), and the local scratch/cache copies."""
        keys = [self._k(key)] + [self._k(o.key) for o in self.list(key)]
        with self._errors(f"delete {key}"):
            for i in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
        for local, top in ((self.local(key), self.root), (self.cache_root / key, self.cache_root)):
            if local.is_dir():
                shutil.rmtree(local, ignore_errors=True)
            else:
                local.unlink(missing_ok=True)
            for parent in local.parents:  # folders left empty (jobs/<id>/ once its work/ is gone), not jobs/ itself
                if parent == top or parent.parent == top or top not in parent.parents:
                    break
                try:
                    parent.rmdir()
                except OSError:  # not empty, or already gone
                    break

    # -- the local cache ------------------------------------------------------------------------------
    def local_path(self, key: str, *, sha256: str | None = None) -> Path:
        """The cached download of ``key`` (downloaded first when missing, and checked against ``sha256`` then). Keys are
        immutable except checkpoints, which are never read through here."""
        self.check_key(key)
        p = self.cache_root / key
        if p.is_file():
            os.utime(p)  # recently used: evicted last
            return p
        tmp = self.cache_root / ".incoming" / f"{uuid.uuid4().hex}"
        self.fetch(key, tmp)
        try:
            if sha256 is not None and (got := sha256_file(tmp)) != sha256:
                raise StoreError(f"object {key} in bucket {self.bucket!r} has sha256 {got}, expected {sha256} (changed outside stillhouse?)")
            self._cache_insert(tmp, key)
        finally:
            tmp.unlink(missing_ok=True)
        return p

    def job_input(self, key: str, workdir: Path, *, sha256: str | None = None) -> Path:
        """A hard link (or copy) of the cached download in ``workdir/inputs/``."""
        cached = self.local_path(key, sha256=sha256)
        dst = Path(workdir) / "inputs" / key.replace("/", "_")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.unlink(missing_ok=True)
        try:
            os.link(cached, dst)
        except OSError:  # another filesystem, or no hard links: a copy
            shutil.copyfile(cached, dst)
        return dst

    def _cache_insert(self, src: Path, key: str) -> None:
        dst = self.cache_root / key
        dst.parent.mkdir(parents=True, exist_ok=True)
        size = src.stat().st_size
        if size > self.cache_max_bytes:
            src.unlink(missing_ok=True)
            return
        os.replace(src, dst)
        os.utime(dst)
        self._evict(keep=dst)

    def _evict(self, keep: Path) -> None:
        """Delete least recently used cache files until the cache holds at most ``cache_max_bytes``."""
        with _CACHE_LOCK:
            files = []
            for p in self.cache_root.rglob("*"):
                if p.is_file() and ".incoming" not in p.parts:
                    try:
                        st = p.stat()
                    except FileNotFoundError:
                        continue
                    files.append((st.st_mtime, st.st_size, p))
            total = sum(s for _, s, _ in files)
            for _, size, p in sorted(files, key=lambda f: f[0]):
                if total <= self.cache_max_bytes:
                    break
                if p == keep:
                    continue
                p.unlink(missing_ok=True)
                total -= size

    def check(self) -> str | None:
        """None when the bucket answers a HEAD with these credentials."""
        try:
            with self._errors("reach the bucket"):
                self.client.head_bucket(Bucket=self.bucket)
        except (StoreError, FileNotFoundError) as e:
            return str(e) if isinstance(e, StoreError) else f"bucket {self.bucket!r} does not exist"
        return None

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (a fresh SeaweedFS/MinIO); raises StoreError when that is refused."""
        try:
            with self._errors("reach the bucket"):
                self.client.head_bucket(Bucket=self.bucket)
            return
        except FileNotFoundError:
            pass
        with self._errors("create the bucket"):
            self.client.create_bucket(Bucket=self.bucket)
        log.info("created bucket %s", self.bucket)


_CACHE_LOCK = threading.Lock()


_AUTH_CODES = ("401", "403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch")


class _S3Errors:
    """Turns botocore errors into FileNotFoundError (404, NoSuchKey, NoSuchBucket on HEAD) or StoreError (the rest)."""

    def __init__(self, what: str, bucket: str) -> None:
        self.what, self.bucket = what, bucket

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                raise FileNotFoundError(f"{self.what}: not found in bucket {self.bucket!r} ({code})") from exc
            text = f"{code} {exc.response.get('Error', {}).get('Message', '')}".strip()
            hint = (" (check STILLHOUSE_S3_ACCESS_KEY_ID / STILLHOUSE_S3_SECRET_ACCESS_KEY and the bucket's permissions)"
                    if code in _AUTH_CODES else "")
            raise StoreError(f"object store (bucket {self.bucket!r}) refused to {self.what}: {text}{hint}") from exc
        if isinstance(exc, BotoCoreError):
            raise StoreError(f"object store: could not {self.what} in bucket {self.bucket!r}: {exc}") from exc
        return False


@lru_cache
def _s3_client(endpoint: str | None, region: str | None, key_id: str | None, secret: str | None, style: str):
    import boto3
    from botocore.config import Config

    cfg = Config(s3={"addressing_style": style}, retries={"max_attempts": 5, "mode": "standard"},
                 connect_timeout=10, read_timeout=60, max_pool_connections=32,
                 # SeaweedFS, MinIO and older S3-compatible stores reject the CRC trailers boto3 >= 1.36 adds by default
                 request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=key_id,
                                          aws_secret_access_key=secret, config=cfg)


def get_store(settings: Settings | None = None) -> ArtifactStore:
    """The configured store: ``S3Store`` when ``artifact_url`` is ``s3://…``, else ``LocalStore`` on ``data_dir``."""
    s = settings or get_settings()
    return S3Store(s) if s.artifact_url else LocalStore(s)


def sha256_file(path: Path, chunk: int = 1024 * 1024) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
