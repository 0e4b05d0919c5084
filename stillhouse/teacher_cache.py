"""The core's shared teacher cache (``distill.shared_cache.SharedCache``) kept in the service's artifact store under
``cache/teachers/...``, so every worker (on any machine sharing the store) reuses one teacher's measurements and its
outputs on the training rows: a sweep's trials run the teacher over the training data once.

Locks: a ``flock`` file on this machine (its workers), and, when the service's database is PostgreSQL (the
several-machine set-up), a PostgreSQL advisory lock on a key derived from the entry's name, which every machine
sharing the database sees: the first trial of a sweep computes an entry, the others, on any machine, wait and read it.
PostgreSQL releases an advisory lock when its session ends, so a worker that dies while computing frees it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from pathlib import Path
from typing import Iterator

from sqlalchemy import text
from sqlalchemy.engine import Engine

from distill.shared_cache import DirCache
from stillhouse.storage import ArtifactStore, StoreError

log = logging.getLogger("stillhouse.teacher_cache")

PREFIX = "cache"
LOCK_WAIT_S = 900.0  # longest wait for another machine's lock; then compute anyway (entries are pure: at worst twice)
LOCK_POLL_S = 0.1


def advisory_key(key: str) -> int:
    """The signed 64-bit PostgreSQL advisory-lock key of cache entry ``key`` (the first 8 bytes of sha256('stillhouse
    teacher cache:' + key))."""
    return int.from_bytes(hashlib.sha256(f"stillhouse teacher cache:{key}".encode()).digest()[:8], "big", signed=True)


class StoreSharedCache:
    """``SharedCache`` over an ``ArtifactStore``: entries are store keys ``cache/<key>``; reads go through
    ``local_path`` (the file itself in a local store, a verified local copy from object storage); locks are ``flock``
    files in this machine's ``data_dir/cache/.locks`` and, with ``engine`` on PostgreSQL, an advisory lock held on one
    of its connections for the block (so workers of different machines do not both compute an entry). Without a
    PostgreSQL engine (SQLite: one machine) the ``flock`` alone."""

    def __init__(self, store: ArtifactStore, engine: Engine | None = None, *, wait_s: float = LOCK_WAIT_S) -> None:
        self.store = store
        self._locks = DirCache(store.local(PREFIX))
        self._engine = engine if engine is not None and engine.dialect.name == "postgresql" else None
        self._wait_s = wait_s

    def load(self, key: str) -> Path | None:
        """A local path of entry ``key``; None when the store has none (or cannot be read: the job then computes)."""
        full = f"{PREFIX}/{key}"
        try:
            if self.store.stat(full) is None:
                return None
            return self.store.local_path(full)
        except (FileNotFoundError, StoreError):
            return None

    def save(self, src: Path, key: str) -> None:
        """Copy ``src`` into the store as ``cache/<key>``. Raises ``StoreError`` when the store refuses."""
        self.store.put(Path(src), f"{PREFIX}/{key}")

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """The lock named ``key`` for the block: this machine's ``flock``, then (PostgreSQL) the advisory lock, polled
        with ``pg_try_advisory_lock`` for up to ``wait_s`` seconds. Best effort: when the database cannot be reached
        or the wait runs out, the block runs without the cross-machine lock (logged); never raises for the lock."""
        with self._locks.lock(key):
            if self._engine is None:
                yield
                return
            with contextlib.ExitStack() as stack:
                self._advisory(stack, key)
                yield

    def busy(self, key: str) -> bool:
        """True when a worker of this machine (its ``flock``) or, with PostgreSQL, of any machine (the advisory lock)
        holds the lock of ``key`` now. A database error reads as not busy."""
        if self._locks.busy(key):
            return True
        if self._engine is None:
            return False
        k = advisory_key(key)
        try:
            conn = self._engine.connect()
        except Exception as e:  # noqa: BLE001 - a peek only orders work
            log.warning("teacher cache %s: could not check its lock (%s: %s)", key, type(e).__name__, e)
            return False
        try:
            if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": k}).scalar():
                return True
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": k})
            conn.commit()
        except Exception as e:  # noqa: BLE001
            log.warning("teacher cache %s: could not check its lock (%s: %s)", key, type(e).__name__, e)
            conn.invalidate()  # its lock state is unknown: never pooled again
        finally:
            conn.close()
        return False

    def _advisory(self, stack: contextlib.ExitStack, key: str) -> None:
        """Take the advisory lock of ``key`` on a connection of its own, released (and the connection closed) when
        ``stack`` closes. A connection whose lock state is unknown after an error is invalidated, never pooled with a
        lock still held."""
        k = advisory_key(key)
        try:
            conn = self._engine.connect()
        except Exception as e:  # noqa: BLE001 - the lock only saves duplicate work; the entry is correct either way
            log.warning("teacher cache %s: no cross-machine lock (%s: %s); computing without it", key, type(e).__name__, e)
            return
        stack.callback(conn.close)
        try:
            deadline = time.monotonic() + self._wait_s
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": k}).scalar():
                conn.rollback()  # no transaction left open (and idle) while waiting
                if time.monotonic() > deadline:
                    log.warning("teacher cache %s: another machine held its lock for %g s; computing without it", key, self._wait_s)
                    return
                time.sleep(LOCK_POLL_S)
            conn.commit()
        except Exception as e:  # noqa: BLE001
            log.warning("teacher cache %s: no cross-machine lock (%s: %s); computing without it", key, type(e).__name__, e)
            conn.invalidate()
            return

        def unlock() -> None:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": k})
                conn.commit()
            except Exception as e:  # noqa: BLE001 - closing the session releases it: the connection is not pooled again
                log.warning("teacher cache %s: could not release its lock (%s); dropping its connection", key, e)
                conn.invalidate()

        stack.callback(unlock)
