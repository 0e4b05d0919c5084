"""The core's shared teacher cache (``distill.shared_cache.SharedCache``) kept in the service's artifact store under
``cache/teachers/...``, so every worker (on any machine sharing the store) reuses one teacher's measurements and its
outputs on the training rows: a sweep's trials run the teacher over the training data once."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from distill.shared_cache import DirCache
from stillhouse.storage import ArtifactStore, StoreError

PREFIX = "cache"


class StoreSharedCache:
    """``SharedCache`` over an ``ArtifactStore``: entries are store keys ``cache/<key>``; reads go through
    ``local_path`` (the file itself in a local store, a verified local copy from object storage); locks are ``flock``
    files in this machine's ``data_dir/cache/.locks`` (they serialise the workers of one machine; workers of
    different machines may both compute an entry, which is harmless: entries are pure functions of their key)."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self._locks = DirCache(store.local(PREFIX))

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
        """This machine's lock named ``key`` for the block."""
        with self._locks.lock(key):
            yield
