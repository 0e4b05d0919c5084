"""A job's checkpoints in the artifact store, so a worker on another machine can resume a job another worker started.

The distillation core writes its checkpoints (``checkpoint-epoch<E>-step<S>.pt`` every epoch, a ``-partial`` one at a
hand-back, ``baseline_checkpoint-…``, ``prune_checkpoint-…``; the last two of each pass are kept, older ones deleted,
see ``distill.training.checkpoints``) into the job's local working folder (``<data_dir>/jobs/<id>/work``, written
through a temp file and ``os.replace``, so a file opened there is always complete). With a local store that folder *is* the store and nothing needs doing. With object storage,
``CheckpointMirror``:

- ``restore()`` before the job runs: downloads each checkpoint the store holds under ``jobs/<id>/work/`` unless this
  machine has a newer one (newest wins, compared by the file's own mtime, kept as object metadata on upload: hosts
  must agree on the time, as the leases already require);
- a daemon thread uploads every new or changed checkpoint within ``interval_s`` of its writing, while the job's
  lease is held (``may_write``), so a worker killed outright loses at most the checkpoint it was writing;
- ``sync()`` at a hand-back uploads what is left before the job is released, so the next worker resumes at that step;
  every sync also deletes from the store the checkpoints it knows that the folder no longer has (pruned or set aside
  as unreadable), so the store holds what the folder holds.

Only the top-level ``*.pt`` files are mirrored; inputs, an unpacked teacher and staged artifacts stay local.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable

from stillhouse.storage import ArtifactStore, StoreError

log = logging.getLogger("stillhouse.worker")

CHECKPOINT_GLOB = "*.pt"


class CheckpointMirror:
    """Keeps ``store``'s ``jobs/<job_id>/work/<name>.pt`` objects in step with ``workdir`` (see the module doc).

    ``may_write()`` is asked before each upload (the lease is still held). ``interval_s``: seconds between scans
    of ``workdir``. Every method is a no-op for a local store."""

    def __init__(self, store: ArtifactStore, job_id: str, workdir: Path, may_write: Callable[[], bool],
                 interval_s: float = 1.0) -> None:
        self.store, self.job_id, self.workdir, self.may_write, self.interval_s = store, job_id, Path(workdir), may_write, interval_s
        self.prefix = f"{store.job_key(job_id)}/work"
        self.active = not store.is_local
        self._seen: dict[str, tuple[int, int]] = {}  # name -> (mtime_ns, size) of the version the store holds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def restore(self) -> list[str]:
        """Download the store's checkpoints that are newer than this machine's copies; returns their names.
        Raises StoreError when the store cannot be read."""
        if not self.active:
            return []
        self.workdir.mkdir(parents=True, exist_ok=True)
        fetched = []
        for obj in self.store.list(self.prefix):
            name = obj.key.rsplit("/", 1)[-1]
            if "/" in obj.key[len(self.prefix) + 1:] or not Path(name).match(CHECKPOINT_GLOB):
                continue
            info = self.store.stat(obj.key) or obj
            remote_ns = info.source_mtime_ns or int(info.mtime * 1e9)
            local = self.workdir / name
            try:
                st = local.stat()
                local_ns, local_size = st.st_mtime_ns, st.st_size
            except FileNotFoundError:
                local_ns, local_size = None, None
            if local_ns is not None and local_ns >= remote_ns:
                if (local_ns, local_size) == (remote_ns, info.size):
                    self._seen[name] = (local_ns, local_size)  # the same version: nothing to upload
                continue  # this machine's copy is newer (written here after the last upload): sync() uploads it
            self.store.fetch(obj.key, local)
            os.utime(local, ns=(remote_ns, remote_ns))
            self._seen[name] = (remote_ns, info.size)
            fetched.append(name)
        if fetched:
            log.info("job %s: restored checkpoint(s) %s from the store", self.job_id, ", ".join(fetched))
        return fetched

    def sync(self) -> list[str]:
        """Upload every checkpoint of ``workdir`` that changed since its last upload and delete the store's copies of those
        it no longer has (while ``may_write()``); returns the names uploaded. Raises StoreError when a transfer fails."""
        if not self.active:
            return []
        done = []
        with self._lock:
            for path in sorted(self.workdir.glob(CHECKPOINT_GLOB)):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if self._seen.get(path.name) == (st.st_mtime_ns, st.st_size) or not path.is_file():
                    continue
                if not self.may_write():
                    return done
                try:
                    with open(path, "rb") as f:  # this inode stays complete even if a newer checkpoint replaces the path
                        fst = os.fstat(f.fileno())
                        self.store.put(f, f"{self.prefix}/{path.name}", source_mtime_ns=fst.st_mtime_ns)
                except FileNotFoundError:
                    continue
                self._seen[path.name] = (fst.st_mtime_ns, fst.st_size)
                done.append(path.name)
            for name in [n for n in self._seen if not (self.workdir / n).exists()]:
                if not self.may_write():
                    return done
                self.store.delete(f"{self.prefix}/{name}")
                del self._seen[name]
        return done

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sync()
            except (StoreError, OSError) as e:  # retried at the next scan
                log.warning("job %s: could not upload a checkpoint (%s)", self.job_id, e)

    def start(self) -> "CheckpointMirror":
        """Start the upload thread (object storage only); returns self."""
        if self.active:
            self._thread = threading.Thread(target=self._run, name=f"ckpt-mirror-{self.job_id}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the upload thread (an upload in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
            self._thread = None
