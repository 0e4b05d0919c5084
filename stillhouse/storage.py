"""The artifact store's local-directory implementation: uploads, job work directories and artifacts
live under ``Settings.data_dir`` with server-generated names only (client names are never paths)."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from stillhouse.settings import Settings, get_settings


class LocalStore:
    """Paths inside ``data_dir``. Keys are relative POSIX paths made by the server, e.g. ``files/file_ab12``."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.root = (settings or get_settings()).data_dir.resolve()

    def path(self, key: str) -> Path:
        """The absolute path of ``key``. Raises ValueError if the key would leave the store."""
        p = (self.root / key).resolve()
        if self.root not in p.parents:
            raise ValueError(f"storage key {key!r} escapes the store")
        return p

    def temp_path(self) -> Path:
        """A fresh path under ``tmp/`` for an upload in progress (same filesystem, so ``publish`` is a rename)."""
        d = self.root / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"upload-{uuid.uuid4().hex}"

    def sweep_temp(self, older_than_s: float = 3600.0) -> int:
        """Remove upload temp files (``tmp/upload-*``) not modified for ``older_than_s`` seconds: those of uploads
        cut by a killed API process (every other failure removes its own at once). An upload in progress
        writes at least every chunk, so it is never that idle. Returns how many were removed."""
        import time

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

    def publish(self, src: Path, key: str) -> Path:
        """Atomically move ``src`` to ``key`` and return the final path."""
        dst = self.path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        return dst

    def delete(self, key: str) -> None:
        """Remove a stored file or directory (missing is fine)."""
        p = self.path(key)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    @staticmethod
    def file_key(file_id: str) -> str:
        """Key of an uploaded file."""
        return f"files/{file_id}"

    @staticmethod
    def job_key(job_id: str) -> str:
        """Key of a job's directory (``work/`` with checkpoints, ``artifacts/`` once published)."""
        return f"jobs/{job_id}"


def sha256_file(path: Path, chunk: int = 1024 * 1024) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
